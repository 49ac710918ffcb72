"""Callbacks that watch a recorded value epoch by epoch: early stopping, saving the best model, lr on plateau.

A tracker reads its `monitor` ('valid_loss', 'accuracy', ...) from the row the Recorder has just
appended (`learn.recorder.values[-1]`), so it runs after the Recorder (order 60 > 50) and acts in
the epoch the value was measured. Lower is better when the name contains 'loss' or 'error',
higher otherwise, unless `comp` says (`np.less`, `np.greater`). An improvement must beat the best
by more than `min_delta` (a negative one is a tolerance: a value that much worse still counts, as in fastai).

As fastai's, every `before_fit` resets their state (the best value when `reset_on_fit`, the waiting
counters always), that of `validate()`, `get_preds()` and `lr_find()` included. Beyond that they act
only in `fit`: they do not judge the epoch of `validate()` or `get_preds()` (fastai reads a misaligned
row there), nor run in `lr_find()` (which puts their state back afterwards), nor judge epochs skipped
by `fit(start_epoch=...)` or cancelled (CancelEpochException) before their monitored value was recorded.
An epoch whose other phase was cancelled is judged: with validation cancelled, `monitor='train_loss'`
still has its value (fastai judges it too), 'valid_loss' has none and the epoch is skipped.
Their state (best value, waiting counters) travels in checkpoints through
`state_dict`/`load_state_dict`; state loaded that way before a fit is kept by it instead of being
reset, so a resumed run carries on where it stopped.
SaveModelCallback is in save_model.py (and still importable from here).

>>> learn.fit(20, cbs=[EarlyStoppingCallback(patience=3), SaveModelCallback(monitor='accuracy')])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..callback import Callback, is_side_run
from ..distributed import is_rank_zero
from ..errors import ArgumentError, to_number
from ..events import CancelFitException

if TYPE_CHECKING:  # at run time, from __getattr__ at the end of this module
    from .save_model import SaveModelCallback

__all__ = ["TrackerCallback", "EarlyStoppingCallback", "SaveModelCallback", "ReduceLROnPlateau"]

Comparison = Callable[[Any, Any], Any]


class UnrecordedMonitorError(ValueError, IndexError):
    """A tracker's `monitor` is a column of the table no row holds a value for: a ValueError, and the IndexError
    fastai's tracker raises reading it."""


class TrackerCallback(Callback):
    """Keeps the best value of `monitor` seen so far; `new_best` says whether the last epoch improved on it."""

    order = 60
    remove_on_fetch = True  # FetchPredsCallback takes it out while it fetches (a fit's records)

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        reset_on_fit: bool = True,
    ) -> None:
        if comp is None:
            comp = np.less if "loss" in monitor or "error" in monitor else np.greater
        elif not callable(comp):  # fastai fails at the first epoch's comparison ("'str' object is not callable")
            raise ArgumentError(
                f"{type(self).__name__}: comp must be a function comparing two values, such as np.less (lower is "
                f"better) or np.greater (higher is better); got {comp!r}."
            )
        # fastai's fails at the end of the first epoch (a string's `* -1` is even accepted): checked here
        min_delta = to_number(min_delta, "min_delta", type(self).__name__)
        self.monitor, self.comp, self.reset_on_fit = monitor, comp, reset_on_fit
        # Which way is better, asked of `comp` itself, so operator.lt or a lambda work as well as np.less.
        self.lower_is_better = bool(comp(0.0, 1.0))
        # fastai's sign rule: negated when lower is better, so `comp(value - min_delta, best)` asks for an improvement
        # of more than min_delta; a negative min_delta is a tolerance (a slightly worse value still counts).
        self.min_delta = min_delta * -1 if self.lower_is_better else min_delta
        self.best: float | None = None
        self.idx = 0
        self._fit_started = False  # a training phase began in this fit (validate() has none)
        self._trained_epoch: int | None = None  # the fit epoch whose training phase began last (validate() has none)
        self._train_names: list[str] = []  # the values a training phase records, then those of a validation phase
        self._valid_names: list[str] = []
        self._restored = False

    # Set by each judged epoch's after_epoch only, as fastai's: unset before the first one, then kept
    # from one epoch (and fit) to the next until the next after_epoch.
    new_best: bool

    # ------------------------------------------------------------------ events
    def before_fit(self) -> None:
        learn = self.learn
        # fastai's rule: trackers sit out lr_find and get_preds (their state is still reset here, as fastai's).
        self.run = not is_side_run(learn)
        self._fit_started = False
        self._trained_epoch = None
        if not self._restored:  # state loaded before the fit (load_state_dict) is kept by it
            self.start_fit()
        names = monitored_names(learn)
        if self.monitor not in names:
            raise ValueError(
                f"{type(self).__name__} monitors {self.monitor!r}, which is not recorded; "
                f"the recorded values are {names}. Pass monitor=<one of those>, or add the metric to the Learner."
            )
        self.idx = names.index(self.monitor)
        self._train_names, self._valid_names = _split_names(learn, names)

    def before_train(self) -> None:
        self._fit_started = True
        self._trained_epoch = self.learn.epoch
        self._restored = False  # state loaded from here on (resuming) comes after this fit's reset

    def after_train(self) -> None:
        # Also when a callback before this one cancelled the phase at before_train (this before_train did not run):
        # the epoch still counts as trained, as fastai's SaveModelCallback(every_epoch=...) saves it.
        self._fit_started = True
        self._trained_epoch = self.learn.epoch
        # State loaded inside a training phase (resuming a mid-epoch checkpoint) comes after the reset it would skip.
        self._restored = False

    def start_fit(self) -> None:
        """Reset the state at the start of a fit (``before_fit``): the best value when ``reset_on_fit`` (or when
        there is none yet)."""
        if self.reset_on_fit or self.best is None:
            self.best = self._worst

    def after_epoch(self) -> None:
        """Compare this epoch's value with the best so far; sets `new_best`."""
        if self.monitor not in self._train_names and self.monitor not in self._valid_names:
            # A name in the table under Recorder(valid_metrics=False): no row ever holds a value for it. Refused where
            # fastai's fails reading it (an IndexError at the first epoch's end), not silently never acting.
            raise UnrecordedMonitorError(
                f"{type(self).__name__} monitors {self.monitor!r}, which the Recorder never records: with "
                f"Recorder(valid_metrics=False) the metrics are computed in no phase. Monitor one of "
                f"{self._train_names + self._valid_names}, or use Recorder(train_metrics=True) or "
                "Recorder(valid_metrics=True)."
            )
        value = self.current_value()
        if value is None or self.best is None:
            self.new_best = False
            return
        self.new_best = bool(self.comp(value - self.min_delta, self.best))
        if self.new_best:
            self.best = value

    # ------------------------------------------------------------------ helpers
    @property
    def _worst(self) -> float:
        return float("inf") if self.lower_is_better else -float("inf")

    @property
    def _epoch_trained(self) -> bool:
        """Whether the current epoch is one of the fit's whose training phase began: this tracker's before_train
        ran, or the phase ended with after_train, which also fires when a callback cancelled it at once
        (CancelTrainException at before_train). Not validate()'s or get_preds()'s epoch, nor one skipped by
        fit(start_epoch=...) or cancelled (CancelEpochException) before its training phase began."""
        return self._trained_epoch is not None and self._trained_epoch == self.learn.epoch

    def current_value(self) -> float | None:
        """The monitored value of the epoch that just ended, or None when this epoch has none to judge (its
        phase that records it was cancelled)."""
        if not self._epoch_trained:
            return None
        values = self.learn.recorder.values
        row = values[-1] if values else []
        names = self._row_names(row)
        if names is None or self.monitor not in names:
            return None
        value = row[names.index(self.monitor)]
        return None if value is None else float(value)

    def _row_names(self, row: list[Any]) -> list[str] | None:
        """The names of the values in the epoch's `row`, as the Recorder (order 50) recorded them: a phase's values
        unless that phase was cancelled, or unless its Recorder hook was skipped by a CancelEpochException a
        callback before the Recorder raised at after_train or after_validate (the row then ends early). A
        callback after the Recorder that cancels the epoch leaves the row complete, and it is judged, as in
        fastai. None when the row matches no layout (a callback changed it)."""
        recorder = self.learn.recorder
        train = [] if recorder.cancel_train else self._train_names
        valid = [] if recorder.cancel_valid else self._valid_names
        return next((names for names in (train + valid, train) if len(names) == len(row)), None)

    def say(self, message: str) -> None:
        """Print a message ("Better model found...") to stdout from rank 0, as fastai prints it, under
        `learn.no_logging()` too (that silences the epoch table); override it to send the messages elsewhere or
        nowhere."""
        if is_rank_zero():
            print(message)

    def state_dict(self) -> dict[str, Any]:
        """The best value so far."""
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; loaded outside a fit, the next fit keeps this state instead of resetting it. Loaded
        in a fit (one resuming from a checkpoint), it is that fit's: the next fit resets it as usual (even when the
        resumed fit had no epoch left to run, as fine_tune's frozen fit resumed from its last checkpoint)."""
        self.best = state["best"]
        self._restored = not getattr(self.learn, "_in_fit", False)


def monitored_names(learn: Any) -> list[str]:
    """The names of the values in each row of `learn.recorder.values` (metric_names without epoch and time)."""
    recorder = getattr(learn, "recorder", None)
    if recorder is None:
        raise ValueError("Trackers read the values recorded each epoch, so the Learner needs its Recorder callback.")
    names = list(recorder.metric_names[1:])
    if getattr(recorder, "add_time", False) and names and names[-1] == "time":
        names = names[:-1]
    return names


def _split_names(learn: Any, names: list[str]) -> tuple[list[str], list[str]]:
    """`names` (from `monitored_names`) split into the values a training phase records and those a validation
    phase records, as the Recorder (`train_metrics`, `valid_metrics`) lays out its rows."""
    recorder = learn.recorder
    n_train = 1 + (len(learn.metrics) if getattr(recorder, "train_metrics", False) else 0)
    valid = names[n_train:] if getattr(recorder, "valid_metrics", True) else []
    return names[:n_train], valid


class _PatienceTracker(TrackerCallback):
    """A tracker that acts once `patience` epochs in a row have not improved `monitor`."""

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        patience: int = 1,
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor=monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        self.patience = to_number(patience, "patience", type(self).__name__)  # fastai's: a TypeError epochs later
        self.wait = 0

    def start_fit(self) -> None:
        super().start_fit()
        self.wait = 0

    def _out_of_patience(self) -> bool:
        """Count this epoch (after `TrackerCallback.after_epoch`); True when patience has run out."""
        if self.current_value() is None:
            return False
        if self.new_best:
            self.wait = 0
            return False
        self.wait += 1
        return self.wait >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait = int(state["wait"])


class EarlyStoppingCallback(_PatienceTracker):
    """Stops training (CancelFitException) after `patience` epochs in a row without improvement."""

    order = TrackerCallback.order + 3

    def after_epoch(self) -> None:
        super().after_epoch()
        if self._out_of_patience():
            self.say(f"No improvement since epoch {self.learn.epoch - self.wait}: early stopping")
            raise CancelFitException


class ReduceLROnPlateau(_PatienceTracker):
    """Divides every parameter group's lr by `factor` (not below `min_lr`) after `patience` epochs without
    improvement.

    The optimizer's lr is changed directly, so this pairs with a constant-lr `fit`; a schedule
    (fit_one_cycle) sets the lr again at every batch.
    """

    order = TrackerCallback.order + 2

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        patience: int = 1,
        factor: float = 10.0,
        min_lr: float = 0,
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor=monitor, comp=comp, min_delta=min_delta, patience=patience, reset_on_fit=reset_on_fit)
        # Checked here, not when the first plateau comes (fastai compares a list `min_lr` with the lr there: a
        # TypeError epochs into the fit). One floor for every group, as fastai's (torch's takes one per group).
        factor = to_number(factor, "factor", "ReduceLROnPlateau")
        min_lr = to_number(min_lr, "min_lr", "ReduceLROnPlateau")
        if factor <= 0:
            raise ValueError(f"factor must be > 0 (the lr is divided by it), got {factor}.")
        self.factor, self.min_lr = factor, min_lr

    def after_epoch(self) -> None:
        super().after_epoch()
        if self._out_of_patience():
            opt = self.learn.opt
            old_lr = opt.hypers[-1]["lr"]
            opt.set_hypers(lr=[max(h["lr"] / self.factor, self.min_lr) for h in opt.hypers])
            self.wait = 0
            if opt.hypers[-1]["lr"] < old_lr:
                self.say(f"Epoch {self.learn.epoch}: reducing lr to {opt.hypers[-1]['lr']}")


def __getattr__(name: str) -> Any:
    # SaveModelCallback lived here: this path keeps importing it (and pickles of learners naming it by this path
    # keep loading). Imported on first use, since save_model.py imports TrackerCallback from this module.
    if name == "SaveModelCallback":
        from .save_model import SaveModelCallback

        return SaveModelCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "SaveModelCallback"])
