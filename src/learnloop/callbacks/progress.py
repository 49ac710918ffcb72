"""ProgressCallback: tqdm bars for epochs and batches, and the per-epoch table printed row by row."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TextIO

from tqdm.auto import tqdm

from ..callback import Callback, noop
from ..data import length
from ..events import Event

__all__ = ["MissingRecorderError", "ProgressCallback", "column_widths", "format_row"]


class MissingRecorderError(AttributeError, AssertionError):
    """A callback that shows the Recorder's values runs on a learner without one: the AttributeError reading
    `learn.recorder` raises, and the AssertionError of fastai's `assert hasattr(self.learn, 'recorder')`."""


def column_widths(names: Sequence[Any]) -> list[int]:
    """The epoch table's column widths, as fastprogress lays out its console table: each column as wide as its
    name (at least 8 characters) plus two spaces."""
    return [max(len(str(name)), 8) + 2 for name in names]


def format_row(values: Sequence[Any], widths: int | Sequence[int]) -> str:
    """One table row: floats with 6 decimals, each cell left-justified to its column's width (`widths`, or one
    width for all). A cell too wide for its column pushes the next one right, as in fastprogress (a negative
    metric one character wider than its name is followed by one space), but by at least one space: where
    fastprogress runs a much wider cell (a large regression loss) into the next, learnloop keeps them apart.
    With one width per column, cells past the last column are left out, as fastprogress cuts a row to its header
    (the Recorder's row of an epoch cancelled before its before_epoch repeats the last one, with a second time)."""
    cells = [f"{v:.6f}" if isinstance(v, float) else str(v) for v in values]
    sized = [widths] * len(cells) if isinstance(widths, int) else widths
    return "".join(c + " " * max(1, w - len(c)) for c, w in zip(cells, sized, strict=False)).rstrip()


#: The streams a pickled ProgressCallback's `file` is taken back to by name (the process's own, not picklable).
_STD_STREAMS = ("stdout", "stderr")


class ProgressCallback(Callback):
    """Shows a bar over epochs and one over the batches of each phase, and prints the epoch table.

    When the output is not a terminal (a log file, CI), no bar is drawn: the table is printed
    one plain line per epoch. `bars=True/False` forces the choice.
    """

    order = 60

    def __init__(
        self,
        bars: bool | None = None,
        file: TextIO | None = None,
        refresh_secs: float = 0.5,
        **hooks: Callable[..., Any],
    ) -> None:
        super().__init__(**hooks)  # event methods as keywords, as any Callback takes them
        self.bars, self.file, self.refresh_secs = bars, file, refresh_secs
        self.epoch_bar: Any = None
        self.batch_bar: Any = None
        self._old_logger: Callable[[Any], None] | None = None
        self._muted_logger: Callable[[Any], None] | None = None  # the logger a fit under no_mbar() silenced
        self._show_bars, self._widths = False, [10]

    def __getstate__(self) -> dict[str, Any]:
        # A copy (pickle.dumps(learn), copy.deepcopy(learn)) keeps the settings. The bars a fit that raised left
        # open are not copied (tqdm's cannot be pickled), and `file=sys.stdout` or `sys.stderr`, which cannot be
        # pickled either, is the copy's own sys.stdout or sys.stderr.
        state = self.__dict__.copy()
        state.update(epoch_bar=None, batch_bar=None)
        for name in _STD_STREAMS:
            if state.get("file") is not None and state["file"] is getattr(sys, name):
                state.update(file=None, _std_file=name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        std = state.pop("_std_file", None)
        self.__dict__.update(state)
        if std in _STD_STREAMS:
            self.file = getattr(sys, std)

    @property
    def _out(self) -> TextIO:
        return self.file if self.file is not None else sys.stdout

    def _use_bars(self) -> bool:
        if self.bars is not None:
            return self.bars
        isatty = getattr(self._out, "isatty", None)
        return bool(isatty and isatty())

    def before_fit(self) -> None:
        learn = self.learn
        if not learn.create_mbar:  # validate()/get_preds(), perhaps inside a fit: leave the fit's bars alone
            if not learn._in_fit:
                # Outside a fit, its batch bars are drawn as `bars` and the output say now, not as the last fit's were
                # (none before the first fit).
                self._choose_bars()
                if learn.logger is not noop:
                    # A fit under `no_mbar()`: fastai writes the table to the bar it did not make, so nowhere.
                    self._muted_logger, learn.logger = learn.logger, noop
            return
        self._cleanup()  # a fit that ended in an exception left its bars and logger behind
        recorder = getattr(learn, "recorder", None)
        if recorder is None:  # fastai asserts it, then rewrites the empty AssertionError into an IndexError
            raise MissingRecorderError(
                "ProgressCallback prints the Recorder's values, but the learner has no Recorder: add one "
                "(learn.add_cb(Recorder())) or remove the progress callback (learn.remove_cb(ProgressCallback))."
            )
        self._choose_bars()
        self._widths = column_widths(recorder.metric_names)
        if learn.create_mbar and learn.logger is not noop:
            self._old_logger, learn.logger = learn.logger, self._write_row
            self._write_row(recorder.metric_names)
        if self._show_bars:
            self.epoch_bar = tqdm(total=learn.n_epoch, desc="epoch", file=self._out, leave=False, dynamic_ncols=True)

    def _choose_bars(self) -> None:
        show_bars = self._use_bars()
        if show_bars != self._show_bars:
            self._show_bars = show_bars
            self.learn._build_hooks()  # after_batch is called only while there are bars (_idle_events)

    def _idle_events(self) -> Collection[Event]:
        # Without bars, after_batch has nothing to do: the loop need not call it for every batch (unless a subclass,
        # or an `after_batch=` given to the constructor, made it do something else).
        if self._show_bars or "after_batch" in vars(self) or type(self).after_batch is not ProgressCallback.after_batch:
            return ()
        return (Event.after_batch,)

    def _write_row(self, values: list[Any]) -> None:
        line = format_row(list(values), self._widths)
        if self._show_bars:
            tqdm.write(line, file=self._out)
        else:
            print(line, file=self._out, flush=True)

    def before_train(self) -> None:
        self._open_batch_bar("train")

    def before_validate(self) -> None:
        self._open_batch_bar("valid")

    def _open_batch_bar(self, desc: str) -> None:
        if self._show_bars:
            total = length(self.learn.dl)
            self.batch_bar = tqdm(total=total, desc=desc, file=self._out, leave=False, dynamic_ncols=True)
            self._last_refresh = time.monotonic()

    def after_batch(self) -> None:
        bar = self.batch_bar
        if bar is None:
            return
        bar.update(1)
        now = time.monotonic()
        # Reading the loss waits on the device, so it is shown only when the bar is redrawn.
        if self.learn.training and now - self._last_refresh > self.refresh_secs:
            smooth = getattr(self.learn, "smooth_loss", None)
            if smooth is not None:
                bar.set_postfix_str(f"loss {float(smooth):.4f}", refresh=False)
            self._last_refresh = now

    def _close_batch_bar(self) -> None:
        if self.batch_bar is not None:
            self.batch_bar.close()
            self.batch_bar = None

    def after_train(self) -> None:
        self._close_batch_bar()

    def after_validate(self) -> None:
        self._close_batch_bar()

    def before_epoch(self) -> None:
        # At before_epoch, as fastai's: the bar counts the epochs begun before this one (those skipped by
        # `start_epoch` or a resume included).
        bar = self.epoch_bar
        if bar is not None:
            bar.n = self.learn.epoch
            bar.refresh()

    def after_fit(self) -> None:
        if self._muted_logger is not None:
            if self.learn.logger is noop:
                self.learn.logger = self._muted_logger
            self._muted_logger = None
        if self.learn.create_mbar:
            self._cleanup()

    def _cleanup(self) -> None:
        self._close_batch_bar()
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None
        if self._old_logger is not None:
            if self.learn.logger == self._write_row:  # else it was already restored (or replaced) after a failed fit
                self.learn.logger = self._old_logger
            self._old_logger = None
