"""ProgressCallback: plain lines off a terminal, tqdm bars on demand, the logger restored; no per-batch host sync."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import learnloop.callbacks.progress as progress_module
from conftest import synth_classif_learner, synth_learner
from learnloop import Callback, CancelEpochException, Learner, ProgressCallback, Recorder, TrainEvalCallback, accuracy
from learnloop.callbacks.progress import column_widths, format_row
from learnloop.errors import ArgumentError
from learnloop.events import Event


def _printing_learner(**kw: Any) -> tuple[Learner, io.StringIO]:
    """A synthetic learner whose progress callback writes to a StringIO (not a terminal)."""
    learn = synth_classif_learner(**kw)
    learn.logger = print
    out = io.StringIO()
    learn.progress.file = out
    return learn, out


def test_not_a_terminal_gives_a_header_and_one_plain_line_per_epoch() -> None:
    learn, out = _printing_learner(metrics=accuracy)
    learn.fit(3)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text and "|" not in text and "%" not in text
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    for epoch, (line, values) in enumerate(zip(lines[1:], learn.recorder.values, strict=True)):
        cells = line.split()
        assert cells[0] == str(epoch) and cells[1:4] == [f"{v:.6f}" for v in values]
        assert len(cells) == 5 and cells[4].count(":") == 1
    # the columns line up under the header
    header_cols = [lines[0].index(n) for n in ("train_loss", "valid_loss")]
    assert header_cols == [lines[1].index(c) for c in lines[1].split()[1:3]]


def test_a_repeated_row_with_a_second_time_is_cut_to_the_header_as_fastprogress_does() -> None:
    # An epoch cancelled before the Recorder's before_epoch: the Recorder logs the last row again, one time longer.
    learn, out = _printing_learner()

    def skip() -> None:
        if learn.epoch == 1:
            raise CancelEpochException

    learn.fit(2, cbs=Callback(before_epoch=skip))
    header, first, repeated = out.getvalue().splitlines()
    assert repeated == first and len(header.split()) == len(repeated.split()) == 4


def test_each_column_is_as_wide_as_its_name_plus_two_as_fastprogress_lays_it_out() -> None:
    def a_very_long_metric_name(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        return accuracy(pred, targ)

    learn, out = _printing_learner(metrics=a_very_long_metric_name)  # wider than 8: its column widens, no other
    learn.fit(1)
    header, row = out.getvalue().splitlines()
    assert header == "epoch     train_loss  valid_loss  a_very_long_metric_name  time"
    cells = row.split()
    starts = [row.index(c, i) for c, i in zip(cells, [0, 10, 22, 34, 59], strict=True)]
    assert starts == [0, 10, 22, 34, 59]  # each cell begins where its name does
    assert [header.index(n) for n in header.split()] == starts


def test_a_cell_wider_than_its_column_pushes_the_next_one_right_by_at_least_one_space() -> None:
    widths = column_widths(["epoch", "train_loss", "negv", "time"])
    # fastprogress's layout: a 9-character value under an 8-character name, then one space.
    assert format_row([0, 1.5, -0.1234567, "00:01"], widths) == "0         1.500000    -0.123457 00:01"
    # fastprogress would run these together ("...000000-0.123457"): one space keeps them apart.
    assert format_row([0, 123456789.0, -0.1234567, "00:01"], widths) == "0         123456789.000000 -0.123457 00:01"
    assert format_row([1, 2.0], 6) == "1     2.000000"  # one width for every column
    assert format_row(["a", "b", "c"], [3, 3]) == "a  b"  # past the last column: left out, as fastprogress does


def test_stdout_captured_by_pytest_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    learn = synth_learner()
    learn.logger = print
    learn.fit(2)
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 3 and "\r" not in out.out + out.err


def test_validate_and_get_preds_print_nothing() -> None:
    learn, out = _printing_learner()
    learn.fit(1)
    out.truncate(0)
    out.seek(0)
    learn.validate()
    learn.get_preds()
    assert out.getvalue() == ""


class Spy(progress_module.tqdm):  # type: ignore[misc, name-defined]
    """A tqdm that remembers every bar made and whether it was closed."""

    made: list[Spy] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = False
        Spy.made.append(self)

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def spy_bars(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Spy]]:
    Spy.made = []
    monkeypatch.setattr(progress_module, "tqdm", Spy)
    yield Spy.made


def test_bars_are_created_and_closed(spy_bars: list[Spy]) -> None:
    learn, out = _printing_learner()
    learn.progress.bars = True
    learn.fit(2)
    descs = [bar.desc for bar in spy_bars]
    assert descs == ["epoch", "train", "valid", "train", "valid"]
    assert all(bar.closed for bar in spy_bars)
    # The epoch bar is moved at before_epoch (as fastai's): to 1 when the second epoch began; batches done.
    assert spy_bars[0].n == 1 and spy_bars[1].n == 3 and spy_bars[2].n == 2
    assert spy_bars[1].total == 3
    rows = [line for line in out.getvalue().replace("\r", "\n").splitlines() if line[:1].isdigit()]
    assert len(rows) == 2  # the table still has a row per epoch
    assert learn.progress.epoch_bar is None and learn.progress.batch_bar is None


def test_epoch_bar_counts_the_epochs_begun_before_each_one(spy_bars: list[Spy]) -> None:
    learn, _ = _printing_learner()
    learn.progress.bars = True
    positions: list[int] = []
    learn.add_cb(Callback(before_epoch=lambda cb: positions.append(spy_bars[0].n)))  # order 0: before progress
    learn.add_cb(Callback(after_epoch=lambda cb: positions.append(spy_bars[0].n)))
    learn.fit(4, start_epoch=2)  # epochs 0 and 1 skipped (SkipToEpoch, order 70, cancels them after progress ran)
    # Read before and after each epoch: the bar moves to the epoch's index at its before_epoch, as fastai's.
    assert positions == [0, 0, 0, 1, 1, 2, 2, 3]


def test_no_bars_when_forced_off(spy_bars: list[Spy]) -> None:
    learn, _ = _printing_learner()
    learn.progress.bars = False
    learn.fit(1)
    assert spy_bars == []


def test_validate_and_get_preds_draw_their_bar_as_asked_now_not_as_the_last_fit_did(spy_bars: list[Spy]) -> None:
    learn, _ = _printing_learner()
    learn.progress.bars = True
    learn.get_preds()  # no fit before: fastai shows a bar over the batches too
    assert [(bar.desc, bar.n, bar.closed) for bar in spy_bars] == [("valid", 2, True)]
    learn.fit(1)
    learn.progress.bars = False
    spy_bars.clear()
    learn.validate()
    learn.get_preds()
    assert spy_bars == []  # the fit's bars do not carry over once they are turned off
    with learn.no_mbar():  # a fit without the epoch bar still has its batch bars, as fastai's
        learn.progress.bars = True
        learn.fit(1)
    assert [bar.desc for bar in spy_bars] == ["train", "valid"]


def _called_at_after_batch(learn: Learner) -> list[str]:
    return [type(cb).__name__ for cb, _ in learn._hooks[Event.after_batch]]


def test_after_batch_is_called_only_while_bars_are_drawn(spy_bars: list[Spy]) -> None:
    learn, out = _printing_learner()
    # Off a terminal there is no bar to move: the loop does not call ProgressCallback.after_batch at all...
    learn.fit(1)
    assert "ProgressCallback" not in _called_at_after_batch(learn)
    # ...though it is still among the callbacks that have the event, as in fastai.
    assert [type(cb).__name__ for cb in learn.ordered_cbs("after_batch")][-1] == "ProgressCallback"
    learn.progress.bars = True  # bars from the next fit on: after_batch is called again and moves them
    learn.fit(1)
    assert _called_at_after_batch(learn)[-1] == "ProgressCallback"
    assert [bar.n for bar in spy_bars if bar.desc == "train"] == [3]
    learn.progress.bars = False
    learn.fit(1)
    assert "ProgressCallback" not in _called_at_after_batch(learn)


def test_a_subclass_overriding_after_batch_gets_every_batch_without_bars() -> None:
    calls = []

    class Counting(progress_module.ProgressCallback):
        def after_batch(self) -> None:
            calls.append(self.iter)
            super().after_batch()

    learn = synth_classif_learner(cbs=Counting(bars=False))
    learn.remove_cb(learn.progress)
    learn.fit(1)
    assert calls == [0, 1, 2, 0, 1]  # 3 training and 2 validation batches
    learn.counting.bars = True
    with contextlib.redirect_stderr(io.StringIO()):
        learn.fit(1)
    assert calls == [0, 1, 2, 0, 1] * 2


def test_event_methods_given_as_keywords_run_without_bars() -> None:
    # As any fastai Callback, ProgressCallback takes event methods as keywords; an after_batch given so runs on
    # every batch even when no bar is drawn (the loop skips only the built-in one, which has nothing to do then).
    seen: list[int] = []
    learn = synth_classif_learner(default_cbs=False)
    learn.add_cbs([TrainEvalCallback(), Recorder(), progress_module.ProgressCallback(
        bars=False, after_batch=lambda cb: seen.append(cb.iter))])
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1)
    assert seen == [0, 1, 2, 0, 1]  # 3 training and 2 validation batches
    with pytest.raises(ArgumentError, match="'after_bacth', which is not an event. Did you mean 'after_batch'"):
        progress_module.ProgressCallback(after_bacth=print)


class Boom(Callback):
    def after_batch(self) -> None:
        raise RuntimeError("boom")


def test_logger_is_restored_after_fit_even_when_fit_raises(spy_bars: list[Spy]) -> None:
    learn, out = _printing_learner()
    learn.progress.bars = True
    rows: list[Any] = []
    learn.logger = rows.append
    learn.fit(1)
    assert learn.logger == rows.append
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=Boom())
    assert learn.logger == rows.append
    learn.fit(1)  # the next fit also closes the bars the failed one left open
    assert learn.logger == rows.append and all(bar.closed for bar in spy_bars)
    assert rows == []  # the progress callback prints the table itself while it runs, as fastai's does
    assert out.getvalue().count("epoch ") == 3  # a header per fit


def test_a_learner_printing_to_stderr_or_left_with_bars_open_can_be_copied() -> None:
    # pickle.dumps(learn) and copy.deepcopy(learn) failed with "cannot pickle '_io.TextIOWrapper' object" for
    # ProgressCallback(file=sys.stderr), and on the tqdm bars a fit that raised left open.
    learn = synth_classif_learner()
    learn.progress.file = sys.stderr
    learn.fit(1)
    for copied in (pickle.loads(pickle.dumps(learn)), copy.deepcopy(learn)):
        assert copied.progress.file is sys.stderr and learn.progress.file is sys.stderr
    learn, out = _printing_learner()
    learn.progress.bars = True
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=Boom())
    assert learn.progress.epoch_bar is not None  # left open: the next fit closes it
    copied = pickle.loads(pickle.dumps(learn))
    assert copied.progress.epoch_bar is None and copied.progress.batch_bar is None and copied.progress.bars is True
    assert learn.progress.epoch_bar is not None  # the original's are left as they are
    copied.progress.file = io.StringIO()
    copied.fit(1)
    assert copied.progress.file.getvalue().count("epoch ") == 1 and copied.progress.epoch_bar is None


def test_logger_changed_after_a_failed_fit_is_kept() -> None:
    learn, _ = _printing_learner()
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=Boom())
    rows: list[Any] = []
    learn.logger = rows.append
    learn.fit(1)
    assert learn.logger == rows.append
    with learn.no_bar():
        learn.fit(1)
    assert len(rows) == 1  # the user's logger, not the table writer of the failed fit


# ------------------------------------------------------------------ no host-device sync per batch
SYNCING = ("item", "__float__", "__int__", "__bool__", "tolist")


def test_default_callbacks_do_not_sync_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    learn, out = _printing_learner(n_train=16 * 20, n_valid=16 * 10, metrics=accuracy)  # 20 + 10 batches an epoch
    calls: dict[str, int] = dict.fromkeys(SYNCING, 0)
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _name: str = name, _orig: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return _orig(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    learn.fit(2)
    monkeypatch.undo()
    assert len(out.getvalue().splitlines()) == 3
    # Per epoch: the table row reads train_loss, valid_loss and accuracy, and torch's DataLoader draws a
    # seed with .item() for each iterator (train and valid): 5, with 30 batches an epoch.
    assert sum(calls.values()) <= 2 * 6, calls


def test_a_fit_under_no_mbar_prints_no_table() -> None:
    # fastai's ProgressCallback writes the epoch table to the bar no_mbar() kept it from making: nowhere.
    learn, out = _printing_learner()
    stdout = io.StringIO()
    with learn.no_mbar(), contextlib.redirect_stdout(stdout):
        learn.fit(2)
    assert out.getvalue() == stdout.getvalue() == "" and learn.logger is print  # not even the raw records
    learn.fit(1)  # the logger is back: the next fit prints its table
    assert out.getvalue().splitlines()[0].split() == ["epoch", "train_loss", "valid_loss", "time"]


def test_a_fit_without_a_recorder_says_the_progress_callback_needs_one() -> None:
    # fastai's ProgressCallback asserts the Recorder (and its callback error handling turns the message-less
    # AssertionError into an IndexError); learnloop's failed with "'Learner' object has no attribute 'recorder'".
    learn = synth_learner()
    learn.remove_cb(learn.recorder)
    with pytest.raises(AttributeError, match=r"ProgressCallback prints the Recorder's values.*add_cb\(Recorder\(\)\)"):
        learn.fit(1)
    with pytest.raises(AssertionError, match="no Recorder"):
        learn.fit(1)
    learn.remove_cb(ProgressCallback)
    learn.fit(1)  # without the progress callback it trains
