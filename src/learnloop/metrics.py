"""Metrics: objects the Recorder resets, feeds batch by batch and reads at the end of a phase.

A metric has ``reset()``, ``accumulate(learn)``, a ``value`` property and a ``name`` property.
Plain functions ``f(pred, *targets) -> Tensor`` become an :class:`AvgMetric` (mean over the set,
weighted by batch size); whole-set metrics such as :data:`rmse` are :class:`AccumMetric` objects, of which a
learner keeps its own copy (see :func:`mk_metric`).

Running totals stay on the predictions' device as tensors, so accumulating never waits for the
accelerator; only reading ``value`` does. They live in plain attributes (``total``/``count``,
``preds``/``targs``) so a distributed layer can all-reduce or all-gather them before ``value``.

Example::

    learn = Learner(dls, model, loss_func, metrics=[accuracy, top_k_accuracy, rmse])
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .smoothing import Debiaser, batch_means, replay_lerp, to_float32
from .warn import warn_caller


class MetricLearner(Protocol):
    """The part of the learner a metric reads during ``accumulate``."""

    @property
    def pred(self) -> Any: ...
    @property
    def xb(self) -> Any: ...
    @property
    def yb(self) -> Any: ...
    @property
    def loss(self) -> Any: ...
    @property
    def training(self) -> bool: ...


@runtime_checkable
class TorchMetricLike(Protocol):
    """A torchmetrics-style stateful metric: ``update(pred, target)``, ``compute()``, ``reset()``."""

    def update(self, *args: Any, **kwargs: Any) -> Any: ...
    def compute(self) -> Any: ...
    def reset(self) -> Any: ...


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _func_name(func: Callable[..., Any]) -> str:
    if isinstance(func, functools.partial):
        return _func_name(func.func)
    return getattr(func, "__name__", None) or _snake_case(type(func).__name__)


def _at_least_float32(t: Tensor) -> Tensor:
    # Sums of half-precision values overflow or lose digits over a whole validation set.
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.bfloat16):
        return t
    return t.float()


def find_bs(b: Any) -> int:
    """Batch size of ``b``: the first dimension of the first tensor found in a nested structure."""
    if isinstance(b, Tensor):
        return b.shape[0] if b.dim() > 0 else 1
    items = b.values() if isinstance(b, Mapping) else b if isinstance(b, (tuple, list)) else ()
    for item in items:
        try:
            return find_bs(item)
        except TypeError:
            continue
    raise TypeError(f"Cannot find a batch size: no tensor in {type(b).__name__} {b!r:.200}")


def flatten_check(inp: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten ``inp`` and ``targ``, which must have the same number of elements."""
    if inp.numel() != targ.numel():
        raise InputError(
            f"Metric input and target must have the same number of elements, got input of shape "
            f"{tuple(inp.shape)} and target of shape {tuple(targ.shape)}"
        )
    return inp.reshape(-1), targ.reshape(-1)


class Metric:
    """Base class: ``reset`` before a phase, ``accumulate(learn)`` per batch, read ``value`` after."""

    def reset(self) -> None:
        """Clear the state kept over a phase."""

    def accumulate(self, learn: MetricLearner) -> None:
        """Update the state from the current batch (``learn.pred``, ``learn.yb``, ...)."""

    @property
    def value(self) -> Any:
        """The metric over everything accumulated since ``reset``."""
        raise NotImplementedError(f"{type(self).__name__} must define a `value` property")

    @property
    def name(self) -> str:
        """Column name: the class name without a trailing "Metric", in snake_case."""
        cls_name = type(self).__name__
        return _snake_case(cls_name.removesuffix("Metric") or cls_name)


class _WeightedMean(Metric):
    """Running ``total`` (summed without syncing) and ``count`` (items seen) of a phase.

    The total is a tensor once a batch's value was one; values that are Python numbers are summed as Python
    floats (float64), as fastai's ``0.`` total sums them, so such a metric's value is a Python float.
    """

    def reset(self) -> None:
        self.total: Tensor | float = 0.0
        self.count: int = 0

    def _add(self, batch_value: Tensor | float, bs: int) -> None:
        if isinstance(batch_value, (int, float)) and not isinstance(self.total, Tensor):
            self.total = self.total + float(batch_value) * bs
        else:
            self.total = self.total + _at_least_float32(torch.as_tensor(batch_value).detach()) * bs
        self.count += bs

    @property
    def value(self) -> Tensor | float | None:
        return self.total / self.count if self.count else None


class AvgMetric(_WeightedMean):
    """Average of ``func(pred, *yb)`` over a phase, weighted by batch size."""

    def __init__(self, func: Callable[..., Tensor | float]) -> None:
        self.func = func
        self.reset()

    def accumulate(self, learn: MetricLearner) -> None:
        self._add(self.func(learn.pred, *learn.yb), find_bs(learn.yb))

    @property
    def name(self) -> str:
        return _func_name(self.func)


class AvgLoss(_WeightedMean):
    """Average of ``learn.loss`` over a phase, weighted by batch size."""

    def __init__(self) -> None:
        self.reset()

    def accumulate(self, learn: MetricLearner) -> None:
        self._add(learn.loss.mean(), find_bs(learn.yb))

    @property
    def name(self) -> str:
        return "loss"


class AvgSmoothLoss(Metric):
    """Exponential moving average of ``learn.loss`` (factor ``beta``), debiased like Adam's moments.

    With ``val_n = beta * val_{n-1} + (1 - beta) * loss_n`` (``val_0 = 0``), the value after ``n`` batches is
    ``val_n / (1 - beta**n)``, bit for bit what fastai computes: ``val_n`` is ``torch.lerp(loss_n, val_{n-1},
    beta)`` on float32 numbers and the division is a float32 one. Accumulating only keeps the batch's loss,
    already detached: no tensor op and no wait on the device per batch. The losses are folded into the average
    when it is read, all at once, by replaying fastai's float32 roundings on the host (see :mod:`.smoothing`),
    so the result is the same whenever (and however often) it is read. Unread, they are folded every
    ``max_pending`` (1024) batches, one wait on the device each time, so that a long epoch does not keep a
    tensor per batch (about half a kilobyte each) until its end. Before any batch the value is ``nan``
    (fastai's ``0 / (1 - beta**0)``): the Recorder logs it as the train loss of an epoch without one.

    >>> m = AvgSmoothLoss(beta=0.9)
    >>> for loss in (4.0, 1.0): m.fold_losses([torch.tensor(loss)])  # what accumulate(learn) defers
    >>> round(float(m.value), 4)  # (0.9 * 0.4 + 0.1) / (1 - 0.81)
    2.4211
    """

    max_pending: ClassVar[int] = 1024  # pending losses are folded as soon as there are this many

    def __init__(self, beta: float = 0.98) -> None:
        self.beta = beta
        self._debiaser = Debiaser(beta)
        self.reset()

    def reset(self) -> None:
        self.count: int = 0  # batches accumulated, folded or not
        self._val: float = 0.0  # the biased average over the folded batches (a float32 number): `val`
        self.pending: list[Tensor] = []  # losses accumulated but not folded yet
        # Per fold, until `take_folded` hands them out debiased: the biased averages after each of its batches, the
        # number of its first batch and the divisors of the beta it was folded with. Debiasing them only then
        # keeps the fold that ends each epoch to the replay: the Recorder's per-batch history is rarely read.
        self.folded: list[tuple[list[float], int, Debiaser]] = []
        self.fold_at: int = self.max_pending  # the `count` at which the pending losses are folded on their own

    def accumulate(self, learn: MetricLearner) -> None:
        self.pending.append(learn.loss)
        self.count += 1
        if self.count >= self.fold_at:  # not len(pending): past 256, len() makes a new int object every batch
            self.fold()

    def fold(self) -> None:
        """Fold the pending losses into the average: one copy to the host for all of them."""
        self.fold_at = self.count + self.max_pending
        if not self.pending:
            return
        losses, self.pending = self.pending, []
        self.count -= len(losses)  # counted when accumulated; fold_losses counts them again
        self.fold_losses(losses)

    def fold_losses(self, losses: list[Tensor]) -> None:
        """Fold `losses` (one per batch; a batch's per-item losses are averaged) into the average, in order."""
        if not losses:
            return
        vals = replay_lerp(batch_means(losses), self._val, self.beta, losses[0].device)
        first, self.count = self.count + 1, self.count + len(vals)
        self._val = vals[-1]
        if self._debiaser.beta != self.beta:  # `beta` was changed: its divisors are new ones
            self._debiaser = Debiaser(self.beta)
        self.folded.append((vals, first, self._debiaser))

    def take_folded(self) -> Tensor:
        """The debiased average after each batch folded since the last call, a float32 vector (the Recorder's
        per-batch losses)."""
        self.fold()
        folded, self.folded = self.folded, []
        vectors = [debiaser.debiased(vals, first) for vals, first, debiaser in folded]
        if len(vectors) == 1:
            return vectors[0]
        return torch.cat(vectors) if vectors else torch.zeros(0)

    @property
    def n_folded(self) -> int:
        """How many batches `take_folded` would hand out now, without computing them."""
        return sum(len(vals) for vals, _, _ in self.folded)

    def set_value(self, value: float) -> None:
        """Make the (debiased) average `value` from here on: the average over every rank after a distributed
        epoch, say. Pending losses are folded first; the next batches carry on from `value`."""
        self.fold()
        if self.count:
            self._val = to_float32(to_float32(float(value)) * to_float32(1 - self.beta**self.count))

    @property
    def val(self) -> Tensor:
        """The biased average after the batches folded so far (fastai's ``val``, a float32 tensor); settable."""
        return torch.tensor(self._val, dtype=torch.float32)

    @val.setter
    def val(self, value: Tensor | float) -> None:
        self._val = to_float32(float(value))

    @property
    def value(self) -> Tensor:
        return torch.tensor(self.value_as_float(), dtype=torch.float32)

    def value_as_float(self) -> float:
        """`value` as a Python number (float32), without making a tensor."""
        self.fold()
        divisor = to_float32(1 - self.beta**self.count)
        if divisor == 0:  # before any batch, fastai's 0 / 0: nan (with a beta of 1, x / 0: inf)
            return math.nan if not self._val or math.isnan(self._val) else math.copysign(math.inf, self._val)
        # torch divides the float32 average by the divisor rounded to float32; the quotient of two float32
        # numbers computed in a double and rounded to float32 is that division's result, bit for bit.
        return to_float32(self._val / divisor)


class ValueMetric(Metric):
    """A metric whose value is ``func()``, computed elsewhere (by a callback, say)."""

    def __init__(self, func: Callable[[], Any], metric_name: str | None = None) -> None:
        self.func = func
        self.metric_name = metric_name

    @property
    def value(self) -> Any:
        return self.func()

    @property
    def name(self) -> str:
        return self.metric_name or _func_name(self.func)


class ActivationType(StrEnum):
    """Activation :class:`AccumMetric` applies to predictions before storing them."""

    No = "no"
    Sigmoid = "sigmoid"
    Softmax = "softmax"
    BinarySoftmax = "binarysoftmax"


def _softmax_dim(pred: Tensor) -> int:
    """The dimension fastai's ``F.softmax(pred, dim=None)`` uses: torch's deprecated implicit choice."""
    if pred.ndim in (0, 1, 3):
        warn_caller(
            f"AccumMetric: softmax over dim 0 of {pred.ndim}-D predictions (fastai's implicit choice, likely "
            "the batch dimension); pass dim_argmax to choose the class dimension."
        )
        return 0
    return 1


class AccumMetric(Metric):
    """``func(preds, targs)`` over the whole set, from every batch's stored predictions and targets.

    Before storing a batch's predictions: a softmax over ``dim_argmax`` or a sigmoid when `activation` says so,
    else an argmax over ``dim_argmax`` when it is set and not 0; then ``preds >= thresh`` when `thresh` is set
    and not 0 (fastai tests both for truth). ``invert_arg`` calls ``func(targs, preds)`` (kept in the attribute
    ``invert_args``, as fastai's); ``to_np`` hands ``func`` numpy arrays; extra keywords go to ``func``.

    With ``dim_argmax=None`` the softmax runs over the dimension fastai's does (torch's old implicit choice):
    dim 1 for 2-D and 4-D or larger predictions, dim 0 for 1-D and 3-D ones, with a warning then, since dim 0
    is usually the batch: pass ``dim_argmax`` to say which dimension holds the classes.

    >>> m = AccumMetric(lambda p, t: (p == t).float().mean(), dim_argmax=-1, name="acc")
    >>> m(torch.tensor([1, 0]), torch.tensor([1, 1])).item()  # one batch, already decoded
    0.5
    """

    def __init__(
        self,
        func: Callable[..., Any],
        dim_argmax: int | None = None,
        activation: ActivationType | str = ActivationType.No,
        thresh: float | None = None,
        to_np: bool = False,
        invert_arg: bool = False,
        flatten: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.func = func
        self.dim_argmax = dim_argmax
        self.activation = ActivationType(activation)
        self.thresh = thresh
        self.to_np = to_np
        self.invert_args = invert_arg
        self.flatten = flatten
        self.kwargs = kwargs
        self._name = _func_name(func) if name is None else name
        self.reset()

    def reset(self) -> None:
        self.preds: list[Tensor] = []
        self.targs: list[Tensor] = []

    def _prepare(self, pred: Tensor) -> Tensor:
        if self.activation in (ActivationType.Softmax, ActivationType.BinarySoftmax):
            pred = F.softmax(pred, dim=_softmax_dim(pred) if self.dim_argmax is None else self.dim_argmax)
            if self.activation == ActivationType.BinarySoftmax:
                pred = pred[:, -1]
        elif self.activation == ActivationType.Sigmoid:
            pred = torch.sigmoid(pred)
        elif self.dim_argmax:
            pred = pred.argmax(dim=self.dim_argmax)
        if self.thresh:
            pred = pred >= self.thresh
        return pred

    def accum_values(self, preds: Tensor, targs: Tensor) -> None:
        """Store one batch of (already activated) predictions and targets."""
        preds, targs = preds.detach(), targs.detach()
        if self.flatten:
            preds, targs = flatten_check(preds, targs)
        self.preds.append(preds)
        self.targs.append(targs)

    def accumulate(self, learn: MetricLearner) -> None:
        self.accum_values(self._prepare(learn.pred), learn.yb[0])

    def __call__(self, preds: Tensor, targs: Tensor) -> Any:
        """``func`` on one batch of (already activated) predictions: the batch replaces the accumulated state,
        as in fastai, and stays stored until the next ``reset``."""
        self.reset()
        self.accum_values(preds, targs)
        return self.value

    @property
    def value(self) -> Any:
        if not self.preds:
            return None
        preds: Any = torch.cat(self.preds)
        targs: Any = torch.cat(self.targs)
        if self.to_np:  # numpy has no bfloat16: such tensors go over as float32
            preds, targs = (t.float() if t.dtype == torch.bfloat16 else t for t in (preds, targs))
            preds, targs = preds.cpu().numpy(), targs.cpu().numpy()
        if self.invert_args:
            return self.func(targs, preds, **self.kwargs)
        return self.func(preds, targs, **self.kwargs)

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value


class TorchMetric(Metric):
    """Adapter running a torchmetrics-style metric (``update``/``compute``/``reset``) unchanged."""

    def __init__(self, metric: TorchMetricLike, name: str | None = None) -> None:
        self.metric = metric
        self._name = name or _snake_case(type(metric).__name__)
        self._device: torch.device | None = None

    def reset(self) -> None:
        self.metric.reset()

    def accumulate(self, learn: MetricLearner) -> None:
        pred = learn.pred
        move = getattr(self.metric, "to", None)
        if isinstance(pred, Tensor) and pred.device != self._device and callable(move):
            self.metric = move(pred.device) or self.metric
            self._device = pred.device
        self.metric.update(pred, *learn.yb)

    @property
    def value(self) -> Any:
        return self.metric.compute()

    @property
    def name(self) -> str:
        return self._name


def mk_metric(m: Any) -> Metric:
    """Turn ``m`` (Metric, torchmetrics-style object, or function) into a :class:`Metric`.

    The module's shared metric objects (``rmse``, ``exp_rmspe``, ``r2_score``, ``explained_variance``) are copied
    (with no batch stored), unlike fastai's: they are also called as functions (``rmse(pred, targ)``), which
    replaces the batches they store, so a learner keeps its own. Other metrics, your own ``AccumMetric`` objects
    included, are used as they are (``learn.metrics[0] is m``, as in fastai).
    """
    if isinstance(m, type) and (issubclass(m, Metric) or isinstance(m, TorchMetricLike)):
        m = m()
    elif any(m is shared for shared in _SHARED_METRICS):
        m = copy.copy(m)
        m.kwargs = dict(m.kwargs)
        m.reset()  # new lists: the original's stay its own
    if isinstance(m, Metric):
        return m
    if isinstance(m, TorchMetricLike):
        return TorchMetric(m)
    if callable(m) and not isinstance(m, type):
        return AvgMetric(m)
    raise TypeError(
        f"Cannot use {m!r:.100} (of type {type(m).__name__}) as a metric: expected a learnloop Metric, "
        "an object with update/compute/reset methods (such as a torchmetrics metric), "
        "or a function f(pred, *targets) returning a tensor"
    )


def accuracy(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """Fraction of items whose argmax over ``axis`` equals the target class."""
    pred, targ = flatten_check(inp.argmax(dim=axis), targ)
    return (pred == targ).float().mean()


def error_rate(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """1 - accuracy."""
    return 1 - accuracy(inp, targ, axis=axis)


def top_k_accuracy(inp: Tensor, targ: Tensor, k: int = 5, axis: int = -1) -> Tensor:
    """Fraction of items whose target is among the ``k`` highest scores over ``axis``."""
    axis = axis % inp.dim()
    expected = inp.shape[:axis] + inp.shape[axis + 1 :]
    if targ.shape != expected:
        raise ValueError(
            f"top_k_accuracy: target of shape {tuple(targ.shape)} does not match input of shape "
            f"{tuple(inp.shape)}; expected target shape {tuple(expected)}"
        )
    if k > inp.shape[axis]:
        raise ValueError(f"top_k_accuracy: k={k} is larger than the {inp.shape[axis]} classes")
    top = inp.topk(k=k, dim=axis).indices
    hits = top == targ.unsqueeze(axis).expand_as(top)
    return hits.sum(dim=axis).float().mean()


def accuracy_multi(inp: Tensor, targ: Tensor, thresh: float = 0.5, sigmoid: bool = True) -> Tensor:
    """Multi-label accuracy: fraction of (item, label) pairs where ``inp > thresh`` matches ``targ``."""
    inp, targ = flatten_check(inp, targ)
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).float().mean()


def mse(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean squared error."""
    return F.mse_loss(*flatten_check(inp, targ))


def mae(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean absolute error."""
    inp, targ = flatten_check(inp, targ)
    return (inp - targ).abs().mean()


def msle(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean squared logarithmic error: mse of ``log(1 + x)``, computed as written (as fastai: not ``log1p``,
    which differs in the last bits, and by more for small values)."""
    inp, targ = flatten_check(inp, targ)
    return F.mse_loss(torch.log(1 + inp), torch.log(1 + targ))


def _rmse(inp: Tensor, targ: Tensor) -> Tensor:
    return torch.sqrt(F.mse_loss(_at_least_float32(inp), _at_least_float32(targ)))


def _exp_rmspe(inp: Tensor, targ: Tensor) -> Tensor:
    inp, targ = torch.exp(inp), torch.exp(targ)
    return torch.sqrt(((targ - inp) / targ).pow(2).mean())


# R² and explained variance are scikit-learn's metrics in fastai (`skm_to_fastai`): computed here with the numpy
# operations scikit-learn 1.x uses, in the same order and dtype, so the values are its float32 numbers, bit for bit.
def _regression_columns(
    targ: np.ndarray, pred: np.ndarray, sample_weight: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``targ`` and ``pred`` as (n, 1) columns of scikit-learn's dtype (the widest floating one among the inputs,
    float64 when none is floating; at least float32: half-precision sums overflow), and the weights in it."""
    arrays = [np.asarray(a) for a in (targ, pred, sample_weight) if a is not None]
    floating = [a.dtype for a in arrays if np.issubdtype(a.dtype, np.floating)]
    dtype = np.result_type(np.float32, *floating) if floating else np.dtype(np.float64)
    y_true, y_pred = (a.astype(dtype).reshape(-1, 1) if a.ndim == 1 else a.astype(dtype) for a in arrays[:2])
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=dtype).reshape(-1)
    if weight is not None and len(weight) != len(y_true):
        raise InputError(
            f"sample_weight has {len(weight)} weights for {len(y_true)} predictions: give one weight per item of the "
            "data the metric is computed on (the validation set, in dataset order)."
        )
    return y_true, y_pred, weight


def _explained_share(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """``1 - numerator / denominator`` averaged over the outputs, with scikit-learn's convention for constant
    targets (``force_finite``): 1 for a perfect fit, else 0."""
    scores = np.ones(numerator.shape, dtype=numerator.dtype)
    valid = (denominator != 0) & (numerator != 0)
    scores[valid] = 1 - (numerator[valid] / denominator[valid])
    scores[(numerator != 0) & (denominator == 0)] = 0.0
    return float(np.average(scores))


def _r2_score(targ: np.ndarray, pred: np.ndarray, sample_weight: Any = None) -> float:
    y_true, y_pred, weight = _regression_columns(targ, pred, sample_weight)
    if len(y_true) < 2:
        return math.nan  # not defined for a single sample (scikit-learn warns and returns nan)
    w = 1.0 if weight is None else weight[:, None]
    numerator = np.sum(w * (y_true - y_pred) ** 2, axis=0)
    denominator = np.sum(w * (y_true - np.average(y_true, axis=0, weights=weight)) ** 2, axis=0)
    return _explained_share(numerator, denominator)


def _explained_variance(targ: np.ndarray, pred: np.ndarray, sample_weight: Any = None) -> float:
    y_true, y_pred, weight = _regression_columns(targ, pred, sample_weight)
    diff_avg = np.average(y_true - y_pred, weights=weight, axis=0)
    numerator = np.average((y_true - y_pred - diff_avg) ** 2, weights=weight, axis=0)
    true_avg = np.average(y_true, weights=weight, axis=0)
    denominator = np.average((y_true - true_avg) ** 2, weights=weight, axis=0)
    return _explained_share(numerator, denominator)


def R2Score(sample_weight: Any = None) -> AccumMetric:
    """A new whole-set coefficient of determination, 1 - SS_res / SS_tot, a Python float (named ``r2_score``):
    scikit-learn's ``r2_score`` on the flattened predictions, as fastai's, without needing scikit-learn.

    The same numbers as scikit-learn's, bit for bit, except that half-precision inputs are computed in float32
    and that no input (or a single item) gives nan where scikit-learn raises. ``sample_weight`` holds one weight
    per item in dataset order, so it is for a single process: in a distributed run the ranks' items are joined
    rank by rank, not in dataset order."""
    return AccumMetric(_r2_score, to_np=True, invert_arg=True, sample_weight=sample_weight, name="r2_score")


def ExplainedVariance(sample_weight: Any = None) -> AccumMetric:
    """A new whole-set 1 - Var(targ - pred) / Var(targ), a Python float (named ``explained_variance_score``):
    scikit-learn's ``explained_variance_score``, as fastai's."""
    return AccumMetric(
        _explained_variance, to_np=True, invert_arg=True, sample_weight=sample_weight, name="explained_variance_score"
    )


rmse = AccumMetric(_rmse)
"""Root mean squared error over the whole set (named ``_rmse``, as in fastai)."""

exp_rmspe = AccumMetric(_exp_rmspe)
"""Root mean squared percentage error of ``exp(pred)`` against ``exp(targ)`` over the whole set."""

r2_score = R2Score()
"""Coefficient of determination over the whole set (scikit-learn's ``r2_score`` on flattened data)."""

explained_variance = ExplainedVariance()
"""Explained variance over the whole set (scikit-learn's ``explained_variance_score``)."""

# Module-level metric objects anyone may also call as functions: each learner gets its own copy (mk_metric).
_SHARED_METRICS: tuple[AccumMetric, ...] = (rmse, exp_rmspe, r2_score, explained_variance)
