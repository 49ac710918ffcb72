"""Callbacks that change how training runs: gradient accumulation, gradient clipping, stopping on NaN, short
epochs, frozen BatchNorm statistics.

With MixedPrecision they run in this order (by ``order``)::

    GradientAccumulation (6)   after_loss: loss_grad scaled down;  before_step: scaled back up, and the batch
                               cancelled until enough samples (or batches) have accumulated, so
                               opt.step and zero_grad are skipped
    MixedPrecision       (10)  before_backward: loss_grad *= loss scale;  before_step: unscale, skip on inf/nan
    GradientClip         (11)  before_step: clip the (unscaled) gradients, then opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..callback import Callback
from ..errors import InputError, to_number, to_whole
from ..events import CancelBatchException, CancelFitException, CancelTrainException, CancelValidException
from ..warn import NON_FINITE_ADVICE, NonFiniteLossWarning, warn_caller
from .fp16 import MixedPrecision

__all__ = [
    "BnFreeze",
    "GradientAccumulation",
    "GradientClip",
    "ShortEpochCallback",
    "TerminateOnNaNCallback",
    "bn_types",
    "set_bn_eval",
]


def _first_tensor(x: Any) -> torch.Tensor | None:
    """The first tensor in `x`, depth first through tuples, lists and dict values; None if there is none."""
    if isinstance(x, torch.Tensor):
        return x
    items = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def batch_size(yb: tuple[Any, ...]) -> int:
    """The number of items in a batch: the first dimension of the first tensor in its targets, found inside
    tuples, lists and dicts as fastai's ``find_bs`` finds it (1 for a 0-dim tensor); the length of the first
    target when they hold no tensor (a list of strings, say)."""
    first = yb[0]
    if isinstance(first, torch.Tensor):  # the usual case, first: GradientAccumulation asks every batch
        return int(first.shape[0]) if first.ndim else 1
    tensor = _first_tensor(yb)
    if tensor is None:
        return len(first)
    return int(tensor.shape[0]) if tensor.ndim else 1


class GradientAccumulation(Callback):
    """Accumulate gradients over several batches before each optimizer step.

    fastai's semantics: with ``n_acc`` (32 when neither argument is given) the step happens once at
    least ``n_acc`` *samples* have been seen, and each batch's ``loss_grad`` is divided by
    ``n_acc / bs`` at ``after_loss``, so with a mean-reduced loss the accumulated gradient is the mean
    over the ``n_acc`` samples, as one batch of ``n_acc`` would give. With ``n_steps`` the step happens
    every ``n_steps`` batches and ``loss_grad`` is divided by ``n_steps``.

    At ``before_step`` the division is undone (``learn.loss_grad`` holds the unscaled loss again from
    there on), the batch is counted, and until enough has accumulated the batch is cancelled
    (CancelBatchException) before ``opt.step()`` and ``opt.zero_grad()``, so the gradients add up. The
    callbacks before it in ``order`` see ``before_step`` on every training batch; those after it only on
    the batches that step. The logged ``learn.loss`` is never scaled. A partial accumulation carries
    over to the next epoch (a ``validate()`` run inside the fit leaves it alone); at the end of a fit it is
    left as it is, as in fastai (``count`` and the gradients: true ones under fp16 loss scaling, which MixedPrecision
    takes off at ``after_fit``), and the next fit starts counting from zero.

    The schedule (ParamScheduler) follows ``pct_train`` as in fastai: hyper-parameters are set every
    batch but only the values at the stepping batches are used, and those sample the whole schedule,
    so a one-cycle spans the fit whatever ``n_acc``. Accumulation micro-batches are not skipped steps.

    In a distributed fit with ``DistributedTrainer(split_batch=True)``, ``n_acc`` counts the samples of the global
    batch (every rank's share), so the ranks step where one process would.

    >>> learn.fit(1, cbs=GradientAccumulation(n_acc=64))   # batches of 16: one step every 4 batches
    """

    order = MixedPrecision.order - 4
    run_valid = False

    def __init__(self, n_acc: float | None = None, n_steps: int | None = None) -> None:
        if n_acc is not None and n_steps is not None:
            raise ValueError(
                "GradientAccumulation: give n_acc (samples per step) or n_steps (batches per step), not both."
            )
        owner = "GradientAccumulation"
        self.n_steps = to_whole(n_steps, "n_steps", owner, "a number of batches") if n_steps is not None else None
        self.n_acc: int | float = 32
        if n_acc is not None:
            self.n_acc = to_number(n_acc, "n_acc", owner)  # an int stays an int; a float is used as it is, as fastai
            if not 1 <= self.n_acc < math.inf:
                raise InputError(f"{owner}: n_acc is a number of samples and must be >= 1 and finite, got {n_acc!r}.")
        self.count = 0

    @property
    def target(self) -> int | float:
        """How much accumulates before a step: samples (``n_acc``) or batches (``n_steps``)."""
        return self.n_steps if self.n_steps is not None else self.n_acc

    def _amount(self) -> int:
        """What the current batch adds to ``count``: one batch, or its number of samples."""
        return 1 if self.n_steps is not None else self._samples()

    def _divisor(self) -> float:
        """What the current batch's ``loss_grad`` is divided by: ``n_steps``, or ``n_acc / bs``."""
        return self.n_steps if self.n_steps is not None else self.n_acc / self._samples()

    _trainer: Any = None  # the fit's DistributedTrainer (None without one), looked up once a fit in before_fit

    def _samples(self) -> int:
        """The current batch's number of samples: of the global batch when ``DistributedTrainer(split_batch=True)``
        gave each rank a part of it (each rank then steps where one process would), else of this rank's batch."""
        return batch_size(self.learn.yb) * (1 if self._trainer is None else self._trainer.batch_split)

    def before_fit(self) -> None:
        # Not per batch: a name the learner lacks costs a few microseconds to look up (two exceptions).
        self._trainer = getattr(self.learn, "distributed_trainer", None)
        if not self.learn._nested_run:  # a validate() inside the fit: the accumulation in progress carries on
            self.count = 0

    def will_step(self) -> bool:
        """Whether the current batch completes an accumulation, so a step follows its backward pass.

        Known from ``before_batch`` until ``before_step`` counts the batch; DistributedTrainer skips
        DDP's gradient all-reduce when it is False.
        """
        return self.count + self._amount() >= self.target

    # Never in place: learn.loss may share the storage of loss_grad.
    def after_loss(self) -> None:
        if self.learn.yb:
            self.learn.loss_grad = self.learn.loss_grad / self._divisor()

    def before_step(self) -> None:
        learn = self.learn
        learn.loss_grad = learn.loss_grad * self._divisor()  # the unscaled loss again, for what follows
        self.count += self._amount()
        if self.count < self.target:
            raise CancelBatchException  # before opt.step and zero_grad: the gradients add up
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        """How much has accumulated towards the next step."""
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state.get("count", 0))


class GradientClip(Callback):
    """Clip the norm of the gradients to ``max_norm`` before each step (``torch.nn.utils.clip_grad_norm_``).

    Runs after MixedPrecision, on gradients it has unscaled (it unscales them itself if run earlier).
    ``total_norm`` holds the norm before clipping, as a tensor, so reading it is the only host sync.
    As in torch (and fastai), ``max_norm=0`` zeroes the gradients, ``math.inf`` leaves them as they are, and
    ``norm_type`` may be any number >= 0 or ``math.inf`` (with 0, torch counts the parameters whose gradient is
    not zero).
    """

    order = MixedPrecision.order + 1  # run_valid stays True, as fastai's: validation has no step to clip anyway

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        # Ints stay ints, as fastai stores what it is given; numpy and 0-dim tensor scalars become Python numbers.
        self.max_norm = to_number(max_norm, "max_norm", "GradientClip")
        self.norm_type = to_number(norm_type, "norm_type", "GradientClip")
        if self.max_norm < 0:
            raise InputError(f"GradientClip: max_norm must be >= 0 (0 zeroes the gradients), got {max_norm!r}.")
        if self.norm_type < 0:
            raise InputError(f"GradientClip: norm_type must be >= 0 (2.0, 1.0, or math.inf), got {norm_type!r}.")
        self.total_norm: torch.Tensor | None = None

    def before_step(self) -> None:
        mixed = getattr(self.learn, "mixed_precision", None)
        if isinstance(mixed, MixedPrecision):
            mixed.unscale_grads()
        params = [p for p in self.learn.model.parameters() if p.grad is not None]
        if params:
            self.total_norm = nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)


class TerminateOnNaNCallback(Callback):
    """Stop (CancelFitException in after_batch) when the loss of a batch is NaN or infinite.

    As fastai's, training and validation batches are checked: in ``fit`` the exception ends the fit
    (after_cancel_fit, after_fit); in ``validate()`` and ``get_preds()``, which have no fit phase to
    catch it, it reaches the caller, after their after_epoch and after_fit. ``learn.loss`` is read every
    batch, so on an accelerator it waits for each batch to finish. A per-item loss (``get_preds(
    with_loss=True)``) is checked item by item.
    """

    order = -9

    def after_batch(self) -> None:
        loss = self.learn.loss
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            self._stop(float(loss) if loss.numel() == 1 else None)
        if isinstance(loss, float) and not math.isfinite(loss):
            self._stop(loss)

    def _stop(self, loss: float | None) -> None:
        learn = self.learn
        if learn.training:
            where = f"training batch {learn.iter} of epoch {learn.epoch}"
        else:
            where = f"validation batch {learn.iter}"
        what = f"is {loss}" if loss is not None else "holds NaN or infinite values"
        warn_caller(
            NonFiniteLossWarning(
                f"TerminateOnNaNCallback: the loss of {where} {what}: stopping (CancelFitException).", NON_FINITE_ADVICE
            )
        )
        raise CancelFitException


class ShortEpochCallback(Callback):
    """Run only the first ``pct`` of each epoch's batches: a quick check that a fit goes through.

    As fastai's: after each batch, once ``iter / n_iter >= pct``, the training phase is cut
    (CancelTrainException) and, with ``short_valid``, the validation phase too (CancelValidException). The
    check comes after the batch, so a phase runs batches 0 to ``ceil(pct * n_iter)``: one at least, two with
    the default ``pct=0.01`` when it has up to 100. An epoch whose phases were both cut records an empty row
    (``recorder.values`` gets ``[]``) and prints only its number and time; with ``short_valid=False`` the
    validation loss is the whole validation set's.

    A share of a loader without ``__len__`` (``n_iter`` is 0, say ``validate(dl=a_generator)``) means nothing,
    so such a phase is cut after its first batch, unless ``pct=1``, which never cuts; fastai's divides by zero.

    >>> learn.fit(1, cbs=ShortEpochCallback())   # a smoke test: a couple of batches of each phase
    """

    def __init__(self, pct: float = 0.01, short_valid: bool = True) -> None:
        self.pct = to_number(pct, "pct", "ShortEpochCallback")
        if not 0 <= self.pct <= 1:
            raise InputError(f"ShortEpochCallback: pct is the share of each epoch to run, in [0, 1]; got {pct!r}.")
        self.short_valid = short_valid

    def after_batch(self) -> None:
        learn = self.learn
        n_iter = learn.n_iter
        if n_iter == 0:  # no length: only "all of it" (pct=1) and "a first batch" (the rest) make sense
            if self.pct >= 1:
                return
        elif learn.iter / n_iter < self.pct:
            return
        if learn.training:
            raise CancelTrainException
        if self.short_valid:
            raise CancelValidException


bn_types: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
"""The BatchNorm layers `set_bn_eval` and `BnFreeze` look at (fastai's)."""


def set_bn_eval(m: nn.Module, use_eval: bool = True) -> None:
    """Put every frozen BatchNorm layer below `m` (one of `bn_types` whose parameters do not require gradients) in
    eval mode, so its running statistics stay as they are; ``use_eval=False`` puts them back in train mode.

    As in fastai, `m` itself is not looked at, only its descendants, and "frozen" is read from a layer's first
    parameter. A BatchNorm without parameters (``affine=False``) is left alone.
    """
    for child in m.children():
        if isinstance(child, bn_types):
            weight = next(child.parameters(), None)
            if weight is not None and not weight.requires_grad:
                child.train(not use_eval)
        set_bn_eval(child, use_eval)


class BnFreeze(Callback):
    """Freeze the running statistics of the frozen BatchNorm layers: ``set_bn_eval(model)`` at ``before_train``.

    A BatchNorm is frozen when its parameters do not require gradients: after ``learn.freeze()`` on a
    learner made with ``train_bn=False`` (with the default ``train_bn=True`` they keep training, and BnFreeze
    leaves them in train mode). It runs after TrainEvalCallback, which puts the whole model in train mode at
    ``before_train``.

    >>> learn = Learner(dls, model, loss_func=loss, splitter=splitter, train_bn=False, cbs=BnFreeze()); learn.freeze()
    """

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        super().__init__(**hooks)  # event methods given as keywords, as any Callback's
        # core.py imports this module, so the class is looked up when a BnFreeze is made, not at import.
        from .core import TrainEvalCallback

        self.run_after = TrainEvalCallback

    def before_train(self) -> None:
        set_bn_eval(self.learn.model)
