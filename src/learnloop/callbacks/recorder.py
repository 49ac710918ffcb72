"""Recorder: the history of a fit (losses, hyper-parameters, per-epoch values) and the epoch table rows."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..callback import Callback, is_side_run
from ..distributed import is_rank_zero, rank
from ..metrics import AvgLoss, AvgSmoothLoss, Metric
from ..reductions import combinable
from ..warn import NON_FINITE_ADVICE, NonFiniteLossWarning, warn_caller

__all__ = ["Recorder", "format_time"]


def format_time(seconds: float) -> str:
    """`mm:ss`, or `h:mm:ss` past an hour."""
    t = int(seconds)
    h, m, s = t // 3600, (t // 60) % 60, t % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _value(metric: Metric) -> Any:
    """A one-element tensor or numpy value (scikit-learn's and scipy's numpy scalars) as a Python number; any other
    value (a per-class tensor, say) as it is, like fastai."""
    v = metric.value
    if (isinstance(v, torch.Tensor) and v.numel() == 1) or (isinstance(v, (np.ndarray, np.generic)) and v.size == 1):
        return v.item()
    return v


def _stacked(losses: list[torch.Tensor]) -> Any:
    """The per-batch losses as one tensor: thousands of separate scalars are slow to save."""
    try:
        return torch.stack([t.detach().reshape(()) for t in losses]).cpu() if losses else torch.zeros(0)
    except RuntimeError:  # mixed devices or dtypes: keep them apart
        return [t.detach().cpu() for t in losses]


def _is_state(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, torch.Tensor) for v in value)
    if isinstance(value, bool):
        return False
    return value is None or isinstance(value, (torch.Tensor, int, float))


def metric_state(metric: Metric) -> dict[str, Any]:
    """A metric's running totals, for a checkpoint taken in the middle of a phase: its attributes that hold
    tensors, numbers or lists of tensors (``total``/``count``, ``preds``/``targs``, ...); other objects
    (a torchmetrics metric inside ``TorchMetric``) are not captured."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(metric).items() if _is_state(v)}


def load_metric_state(metric: Metric, state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what :func:`metric_state` returned, tensors moved to ``device`` (the model's)."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and device is not None:
            v = v.to(device)
        elif isinstance(v, list) and device is not None:
            v = [t.to(device) for t in v]
        setattr(metric, k, v)


class Recorder(Callback):
    """Records the smoothed training loss and lr per batch, and `[train_loss, valid_loss, *metrics]` per epoch.

    Per batch it only keeps the (detached) loss and the lr: the smoothed losses are computed when
    `losses` (or `learn.smooth_loss`) is read, and at the latest at the end of each training phase
    (and every `AvgSmoothLoss.max_pending` batches), so recording costs no tensor op and no wait on
    the device.
    """

    order = 50
    remove_on_fetch = True  # FetchPredsCallback takes it out while it fetches (a fit's records)
    # The epoch's row, `[epoch, *values]`, from its before_epoch on (as in fastai, none before: an epoch cancelled
    # before the Recorder's first before_epoch fails at after_epoch, with nothing recorded).
    log: list[Any]
    start_epoch: float

    def __init__(
        self, add_time: bool = True, train_metrics: bool = False, valid_metrics: bool = True, beta: float = 0.98
    ) -> None:
        self.add_time, self.train_metrics, self.valid_metrics = add_time, train_metrics, valid_metrics
        self.loss, self.smooth_loss = AvgLoss(), AvgSmoothLoss(beta=beta)
        self.lrs: list[float] = []
        self.iters: list[int] = []
        self._losses: list[torch.Tensor] = []
        self._handed_out = False  # `losses` has returned this fit's list: someone may hold it
        self.values: list[list[Any]] = []
        # Per row of `values`: whether its training and its validation values were recorded (a phase cancelled, or
        # not run, leaves them out, shifting those after them left, as in fastai); `row_values` puts them back.
        self._layouts: list[tuple[bool, bool]] = []
        self._trained = False  # this epoch's row holds training values (validate() and get_preds() have none)
        self.hps: dict[str, list[Any]] = {}
        self.metric_names: list[str] = []
        self.cancel_train = self.cancel_valid = False
        self._previous_smooth: torch.Tensor | None = None  # the last fit's final smoothed loss
        self._warned_non_finite = False  # this fit has warned of a NaN/inf epoch loss
        self._warned_no_targets = False  # this fit has warned of training batches without targets
        # Called as each epoch's row is logged, before `learn.logger`: a CSVLogger writes the row there, so that
        # no callback between the two (stopping or failing the fit) loses it (fastai's wraps `learn.logger`).
        self.row_writers: list[Callable[[], None]] = []

    def before_fit(self) -> None:
        if self._handed_out:
            # A validate() inside a fit starts new lists too: the one being replaced gets its pending losses, for
            # whoever holds it (TensorBoardCallback's points not written yet). Only then: each costs a microsecond.
            self._compute_pending()
        self.lrs, self.iters, self._losses, self.values = [], [], [], []
        self._layouts = []
        self._handed_out = False
        if not self.learn._in_fit:  # a fit's own start, not validate() called inside it
            self._warned_non_finite = self._warned_no_targets = False
        self.metric_names = self._column_names()
        if self.smooth_loss.count:
            self._previous_smooth = self.smooth_loss.value
        self.smooth_loss.reset()

    def _column_names(self) -> list[str]:
        """The names of the columns of this learner's table: 'epoch', the losses and metrics, 'time'."""
        names = [m.name for m in self.learn.metrics]
        if self.train_metrics and self.valid_metrics:
            names = [f"train_{n}" for n in ["loss", *names]] + [f"valid_{n}" for n in ["loss", *names]]
        elif self.valid_metrics:
            names = ["train_loss", "valid_loss", *names]
        else:
            names = ["train_loss", *names]
        return ["epoch", *names, *(["time"] if self.add_time else [])]

    def before_epoch(self) -> None:
        self.cancel_train = self.cancel_valid = self._trained = False
        self.start_epoch = time.time()
        # Removed by a callback earlier at this event, it is still called (as in fastai), without a learner: epoch 0;
        # so is a learner that has not fit yet (`learn('before_epoch')` by hand), as fastai's getattr(self, 'epoch', 0).
        self.log = [getattr(self.learn, "epoch", 0) if self.learn is not None else 0]

    def before_train(self) -> None:
        for m in self._train_mets[1:]:
            m.reset()

    def before_validate(self) -> None:
        for m in self._valid_mets:
            m.reset()

    def after_batch(self) -> None:
        learn = self.learn
        state = learn._attrs  # the learner's own attributes, read at a plain object's cost (attrs.OwnAttrs)
        if not state.yb:
            return
        if not state.training:
            for m in self._valid_mets:
                m.accumulate(learn)
        elif not self.cancel_train:
            if self.train_metrics:
                for m in learn.metrics:
                    m.accumulate(learn)
            # After the metrics, as fastai appends to `losses` after them: a metric that fails leaves no loss recorded.
            # (fastai updates its smoothed average before the metrics; learnloop's one step does both after them, so a
            # metric reading `recorder.smooth_loss` sees the previous batch's, as `learn.smooth_loss` is in fastai too.)
            self.smooth_loss.accumulate(learn)
            self.lrs.append(state.opt.hypers[-1]["lr"])

    @property
    def losses(self) -> list[torch.Tensor]:
        """The smoothed training loss after each batch of the fit (0-dim float32 tensors).

        Each fit, and each `validate()` or `get_preds()`, starts a new list; a list read here before that is
        completed first, so it holds every batch recorded before the new one started.
        """
        self._compute_pending()
        self._handed_out = True
        return self._losses

    @losses.setter
    def losses(self, value: list[torch.Tensor]) -> None:
        self.smooth_loss.take_folded()  # what was pending belongs to the history being replaced
        self._losses = list(value)

    def _compute_pending(self) -> None:
        """Append the smoothed losses not computed yet to `_losses`: one device sync for all of them."""
        folded = self.smooth_loss.take_folded()
        if len(folded):
            self._losses.extend(folded.unbind())

    @property
    def smooth_value(self) -> torch.Tensor | None:
        """What `learn.smooth_loss` reads: the smoothed loss after the last batch recorded in this fit, or, until
        this fit records one, the previous fit's last (fastai keeps it too: `validate()` runs `before_fit`)."""
        return self.smooth_loss.value if self.smooth_loss.count else self._previous_smooth

    @smooth_value.setter
    def smooth_value(self, value: Any) -> None:
        if self.smooth_loss.count:
            self.smooth_loss.set_value(float(value))
        else:
            self._previous_smooth = torch.tensor(float(value))

    @property
    def n_losses(self) -> int:
        """How many smoothed losses this fit has recorded: ``len(losses)`` without computing them."""
        smooth = self.smooth_loss
        return len(self._losses) + smooth.n_folded + len(smooth.pending)

    def after_train(self) -> None:
        mets = self._train_mets
        self.log += [_value(m) for m in mets]
        self._trained = bool(mets)
        if mets and self.smooth_loss.count:  # nan without a batch (fastai's 0 / 0): nothing diverged
            self._check_finite("training", self.log[-len(mets)])
        elif mets and not self.cancel_train and vars(self.learn).get("train_iter") and not self._warned_no_targets:
            # Batches ran, and none had targets (a bare tensor or a 1-tuple per batch): no loss, no step, in silence
            # in fastai too, which records no loss for them either.
            self._warned_no_targets = True
            warn_caller(
                f"The training batches of epoch {self.learn.epoch} have no targets (each is a single tensor or a "
                "1-tuple), so the loop computed no loss and took no optimizer step, and there is no training loss: "
                "batches should be (input, target) tuples, as a TensorDataset(x, y) gives; set DataLoaders(n_inp=...) "
                "if a batch holds several inputs."
            )

    def after_validate(self) -> None:
        mets = self._valid_mets
        self.log += [_value(m) for m in mets]
        if mets:
            self._check_finite("validation", self.log[-len(mets)])

    def _check_finite(self, phase: str, loss: Any) -> None:
        """Warn (once a fit) when the phase's loss, read for the epoch table anyway, is NaN or infinite: fastai
        carries on in silence, and a table of nan is easy to miss in a long run. Not in an lr_find sweep (it runs
        until the loss blows up), nor in get_preds (no loss was asked for); on rank 0 alone of a distributed job
        (the values are the same on every rank)."""
        if self._warned_non_finite or not isinstance(loss, float) or math.isfinite(loss):
            return
        learn = self.learn
        if is_side_run(learn) or not is_rank_zero():
            return
        self._warned_non_finite = True
        which = f"training loss of epoch {learn.epoch}" if phase == "training" else "validation loss"
        warn_caller(
            NonFiniteLossWarning(
                f"The {which} is {loss}: training has diverged, or the data holds NaN or infinite values.",
                f"{NON_FINITE_ADVICE} TerminateOnNaNCallback() stops a fit at the first such batch.",
            )
        )

    def after_cancel_train(self) -> None:
        self.cancel_train = True

    def after_cancel_validate(self) -> None:
        self.cancel_valid = True

    def after_epoch(self) -> None:
        learn = self.learn
        learn.final_record = self.log[1:].copy()
        self.values.append(learn.final_record)
        self._layouts.append((self._trained, not self.cancel_valid))
        if self.add_time:
            self.log.append(format_time(time.time() - self.start_epoch))
        for write in getattr(self, "row_writers", ()):  # none on a Recorder pickled before there were any
            try:
                write()
            except Exception as e:  # the error is the writer's (a CSVLogger's full disk), not the Recorder's
                name = getattr(write, "__qualname__", repr(write))
                e.add_note(f"(raised by the row writer {name}, called by the Recorder)")
                raise
        learn.logger(self.log)
        self.iters.append(self.smooth_loss.count)

    def row_values(self, i: int) -> list[Any]:
        """`values[i]` laid out under `metric_names` (without 'epoch' and 'time'), None where that epoch recorded no
        value: a cancelled phase leaves its values out of the row (as in fastai), which shifts those after them, and
        so does the training phase `validate()` and `get_preds()` do not run.

        >>> learn.fit(1, cbs=ShortEpochCallback(short_valid=False)); learn.recorder.row_values(0)
        [None, 0.52, 0.81]
        """
        names = self.metric_names[1:]
        if self.add_time and names[-1:] == ["time"]:
            names = names[:-1]
        row = self.values[i]
        layouts = getattr(self, "_layouts", [])  # none on a Recorder pickled before there were any
        trained, validated = layouts[i] if len(layouts) == len(self.values) else (True, True)
        if self.train_metrics:
            n_train = len(names) // 2 if self.valid_metrics else len(names)
        else:
            n_train = min(1, len(names))  # the loss: metrics are validation values (or, without those, none)
        n_valid = len(names) - n_train if self.valid_metrics else 0
        where = [*(range(n_train) if trained else ()), *(range(n_train, n_train + n_valid) if validated else ())]
        if len(row) > len(where):  # a row a callback changed: taken as it is
            where = list(range(len(names)))
        out: list[Any] = [None] * len(names)
        # A row shorter than its layout lost its end (the epoch cancelled before the Recorder's after_validate).
        for at, value in zip(where, row, strict=False):
            out[at] = value
        return out

    @property
    def _train_mets(self) -> list[Metric]:
        if self.cancel_train:
            return []
        return [self.smooth_loss, *(self.learn.metrics if self.train_metrics else [])]

    @property
    def _valid_mets(self) -> list[Metric]:
        if self.cancel_valid or not self.valid_metrics:
            return []
        return [self.loss, *self.learn.metrics]

    def state_dict(self) -> dict[str, Any]:
        """The history, so a resumed run keeps its curves, and the running averages of the epoch in progress."""
        learn = self.learn
        losses = _stacked(self.losses)  # reading `losses` folds every pending loss into the running average
        return {
            "lrs": list(self.lrs),
            "iters": list(self.iters),
            "losses": losses,
            "values": [list(v) for v in self.values],
            "metric_names": list(self.metric_names),
            "layouts": [list(layout) for layout in getattr(self, "_layouts", [])],
            "hps": {k: list(v) for k, v in self.hps.items()},
            "smooth_loss": {"count": self.smooth_loss.count, "val": float(self.smooth_loss.val)},
            "train_metrics": [metric_state(m) for m in learn.metrics] if self.train_metrics and learn else [],
        }

    def check_state_dict(self, state: dict[str, Any]) -> str | None:
        """Why `state` cannot be resumed into this learner's Recorder (None when it can): rows recorded under other
        columns (other metrics, or other `train_metrics`/`valid_metrics`/`add_time`) would mix with this fit's."""
        saved = state.get("metric_names")  # none in a checkpoint written before they were saved
        if not saved or self.learn is None:
            return None
        now = self._column_names()
        if list(saved) == now:
            return None
        return (
            f"its table has the columns {list(saved)}, this learner's has {now}: give the resumed fit the same "
            "metrics (and Recorder options) as the saved run, so its rows can carry on."
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        losses = state["losses"]
        self.lrs, self.iters = list(state["lrs"]), list(state["iters"])
        self._losses = list(losses.unbind()) if isinstance(losses, torch.Tensor) else list(losses)
        self.values = [list(v) for v in state["values"]]
        self._layouts = [(bool(t), bool(v)) for t, v in state.get("layouts", [])]
        self.hps = {k: list(v) for k, v in state.get("hps", {}).items()}
        learn = self.learn
        param = next(learn.model.parameters(), None) if learn is not None else None
        device = param.device if param is not None else None
        self.smooth_loss.reset()
        self._previous_smooth = None
        if "smooth_loss" in state:
            smooth = state["smooth_loss"]
            count = int(smooth["count"])
            if "val" in smooth:
                val = float(smooth["val"])
            else:  # written before the average was kept on the host: the debiased value as a tensor
                avg = smooth.get("_avg")
                val = 0.0 if avg is None else float(avg) * (1 - self.smooth_loss.beta**count)
            self.smooth_loss.count, self.smooth_loss.val = count, torch.tensor(val, dtype=torch.float32)
        if learn is not None and state.get("train_metrics"):
            # Every rank of a distributed fit resumes from rank 0's file, whose training metrics hold the job's totals
            # (DistributedTrainer.agree_before_checkpoint): the other ranks' start from none.
            others = rank() != 0
            for m, saved in zip(learn.metrics, state["train_metrics"], strict=False):
                if others and combinable(m):
                    m.reset()
                else:
                    load_metric_state(m, saved, device)

    # ---- plots (learnloop.plots; matplotlib is imported on first use)
    def plot_loss(
        self,
        skip_start: int = 5,
        with_valid: bool = True,
        log: bool = False,
        show_epochs: bool = False,
        ax: Any = None,
        fname: str | Path | None = None,
    ) -> Any:
        """Training loss per batch and validation loss per epoch, on `ax` or a new figure (saved to `fname`);
        returns the Axes, as fastai's does."""
        from ..plots import plot_loss

        return plot_loss(self, skip_start, with_valid, log, show_epochs, ax, fname)

    def plot_sched(
        self,
        keys: str | Sequence[str] | None = None,
        figsize: tuple[float, float] | None = None,
        fname: str | Path | None = None,
    ) -> Any:
        """Every scheduled hyper-parameter (`hps`) per batch; returns the Figure (saved to `fname`)."""
        from ..plots import plot_sched

        return plot_sched(self, keys, figsize, fname)

    def plot_lr_find(
        self,
        skip_end: int = 5,
        return_fig: bool = True,
        suggestions: Sequence[tuple[float, float]] | None = None,
        nms: Sequence[str] | None = None,
        fname: str | Path | None = None,
        **kwargs: Any,
    ) -> Any:
        """Loss against lr (log scale) after `lr_find`, suggestions marked; returns the Figure (None with
        `return_fig=False`). Other keywords are taken and ignored, as fastai's are."""
        from ..plots import plot_lr_find

        return plot_lr_find(self, skip_end, return_fig, suggestions, nms, fname)

    def plot_metrics(
        self,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple[float, float] | None = None,
        fname: str | Path | None = None,
    ) -> Any:
        """Losses and every metric per epoch; returns the Figure (saved to `fname`)."""
        from ..plots import plot_metrics

        return plot_metrics(self, nrows, ncols, figsize, fname)
