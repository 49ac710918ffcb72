"""Metrics: objects the Recorder resets, feeds batch by batch and reads at the end of a phase.

A metric has ``reset()``, ``accumulate(learn)``, a ``value`` property and a ``name`` property.
Plain functions ``f(pred, *targets) -> Tensor`` become an :class:`AvgMetric` (mean over the set,
weighted by batch size); whole-set metrics such as :data:`rmse` are :class:`AccumMetric` objects.

Running totals stay on the predictions' device as tensors, so accumulating never waits for the
accelerator; only reading ``value`` does. They live in plain attributes (``total``/``count``,
``preds``/``targs``) so a distributed layer can all-reduce or all-gather them before ``value``.

Example::

    learn = Learner(dls, model, loss_func, metrics=[accuracy, top_k_accuracy, rmse])
"""

from __future__ import annotations

import functools
import math
import re
from array import array
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor


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
        raise ValueError(
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
    """Running ``total`` (a tensor, summed without syncing) and ``count`` (items seen) of a phase."""

    def reset(self) -> None:
        self.total: Tensor = torch.zeros(())
        self.count: int = 0

    def _add(self, batch_value: Tensor | float, bs: int) -> None:
        self.total = self.total + _at_least_float32(torch.as_tensor(batch_value).detach()) * bs
        self.count += bs

    @property
    def value(self) -> Tensor | None:
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
    when it is read, all at once, by replaying fastai's float32 roundings on the host (see :func:`_replay_lerp`),
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
        self._debias: tuple[float, Tensor] = (beta, torch.zeros(0))  # (beta, 1 - beta**n in float32 for n = 1...)
        self.reset()

    def reset(self) -> None:
        self.count: int = 0  # batches accumulated, folded or not
        self._val: float = 0.0  # the biased average over the folded batches (a float32 number): `val`
        self.pending: list[Tensor] = []  # losses accumulated but not folded yet
        self.folded: list[Tensor] = []  # the debiased average after each folded batch (a vector per fold), until
        # `take_folded` hands them out
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
        vals = _replay_lerp(_loss_means(losses), self._val, self.beta, losses[0].device)
        first, self.count = self.count + 1, self.count + len(vals)
        self._val = vals[-1]
        biased = torch.frombuffer(array("f", vals), dtype=torch.float32)  # exact: float32 numbers already
        self.folded.append(biased / self._divisors(first, self.count))

    def _divisors(self, first: int, last: int) -> Tensor:
        """``1 - beta**n`` for ``n`` from `first` to `last`, rounded to float32 as torch rounds the Python number
        fastai divides its float32 average by. Computed once per ``beta`` (with Python's pow, as fastai's)."""
        beta, divisors = self._debias
        if beta != self.beta or len(divisors) < last:
            size = max(last, 2 * len(divisors) if beta == self.beta else 0, 1024)
            divisors = torch.tensor([1 - self.beta**n for n in range(1, size + 1)], dtype=torch.float32)
            self._debias = (self.beta, divisors)
        return divisors[first - 1 : last]

    def take_folded(self) -> Tensor:
        """The debiased average after each batch folded since the last call, a float32 vector (the Recorder's
        per-batch losses)."""
        self.fold()
        folded, self.folded = self.folded, []
        if len(folded) == 1:
            return folded[0]
        return torch.cat(folded) if folded else torch.zeros(0)

    def set_value(self, value: float) -> None:
        """Make the (debiased) average `value` from here on: the average over every rank after a distributed
        epoch, say. Pending losses are folded first; the next batches carry on from `value`."""
        self.fold()
        if self.count:
            self._val = _to_float32(_to_float32(float(value)) * _to_float32(1 - self.beta**self.count))

    @property
    def val(self) -> Tensor:
        """The biased average after the batches folded so far (fastai's ``val``, a float32 tensor); settable."""
        return torch.tensor(self._val, dtype=torch.float32)

    @val.setter
    def val(self, value: Tensor | float) -> None:
        self._val = _to_float32(float(value))

    @property
    def value(self) -> Tensor:
        self.fold()
        return self.val / (1 - self.beta**self.count)  # nan before any batch


def _to_float32(x: float) -> float:
    """`x` rounded to the nearest float32 number (ties to even; inf past float32's range)."""
    return array("f", (x,))[0]


def _loss_means(losses: list[Tensor]) -> list[float]:
    """Each batch's loss as fastai smooths it, ``loss.mean()`` in float32, as numbers: one wait on the device."""
    first = losses[0]
    try:
        stacked = torch.stack(losses)
    except RuntimeError:  # losses of different shapes, or on different devices
        stacked = torch.stack([_mean(t).to(first.device) for t in losses])
    if stacked.ndim > 1:  # per-item losses: each batch's mean, as fastai's `loss.mean()` computes it
        stacked = torch.stack([_mean(t) for t in losses])
    return stacked.float().tolist()


def _mean(loss: Tensor) -> Tensor:
    return loss.detach().mean() if loss.dtype == torch.float32 else loss.detach().double().mean().float()


# fastai's smoothed loss, replayed bit for bit on the host.
#
# `torch.lerp(x, val, beta)` on float32 numbers rounds `beta` to float32 (`w`), then computes
#   `x + w * (val - x)`        if w < 0.5,
#   `val - (val - x) * (1 - w)` otherwise,
# each operation rounded to float32, except that the multiply-add is rounded once where the kernel was
# compiled with fused multiply-adds (x86 CPUs with AVX2, CUDA). Which of the two torch does is probed once
# per device type (`_lerp_fuses`). The replay computes in doubles and rounds each result to float32 with
# Veltkamp's split: for a double `a`, `t = a * (2**29 + 1); t - (t - a)` is `a` rounded to 24 significant
# bits, to nearest with ties to even, as long as `a` lies in float32's normal range. That holds when the
# losses are of one sign (or zero) and every average stays between 2**-60 and 2**60 (`_replay_lerp` checks);
# anything else (losses of both signs, non-finite ones) is replayed with torch.lerp itself, one call per batch.
# A double holds the product of two float32 numbers exactly, so a fused multiply-add is the exact sum
# rounded once; summing in doubles rounds it twice, which matters only when the double sum falls exactly
# halfway between two float32 numbers (`_break_tie`). It cannot when `_replay_fused` applies: there the sum
# is exact in a double. Summing two float32 numbers in a double and rounding to float32 is always exact.

_TO_24_BITS = 2.0**29 + 1  # Veltkamp's constant for float32's 24-bit significand
_TO_25_BITS = 2.0**28 + 1  # the same for 25 bits: the float32 numbers and the points halfway between them
_LERP_PROBES = {  # (x, val) where the fused and the unfused formulas differ, for a weight of each branch
    0.98: ((5.0, 38 / 3), (218 / 7, 221 / 3)),
    0.3: ((3 / 7, 2.0), (19 / 7, 22 / 3)),
}
_lerp_fused: dict[str, bool | None] = {}  # device type -> whether torch.lerp fuses its multiply-add there


def _replay_lerp(xs: list[float], val: float, beta: float, device: torch.device) -> list[float]:
    """fastai's ``val = torch.lerp(x, val, beta)`` on float32 numbers for each ``x`` of `xs`: every ``val``."""
    w, fused = _to_float32(beta), _lerp_fuses(device)
    bounds = _magnitudes(xs, val)
    if fused is None or bounds is None or not 2.0**-40 <= w <= 1:
        return _replay_with_torch(xs, val, beta, device)
    small, big = bounds
    # A lower bound on every |val| of the replay: each is between the last one and `x`, or `w` times the last
    # one for a zero loss, and the first from 0 is (1 - w) * x.
    least = small * (1 if val else 1 - w) * w ** xs.count(0.0)
    if not (2.0**-60 <= least and big <= 2.0**60):  # keeps every rounding within float32's normal range
        return _replay_with_torch(xs, val, beta, device)
    if fused and w >= 0.5 and big < 2.0**28 * least:
        return _replay_fused(xs, val, 1 - w)
    return _replay_checked(xs, val, w, fused)


def _magnitudes(xs: list[float], val: float) -> tuple[float, float] | None:
    """The least and the greatest magnitude of the non-zero numbers among `xs` and `val`, if they are all finite
    and of one sign (None otherwise); (1, 1) if they are all zero."""
    if not math.isfinite(sum(xs)):  # min and max may skip a nan
        return None
    lo, hi = min(xs), max(xs)
    if val:
        lo, hi = min(lo, val), max(hi, val)
    if lo < 0 < hi:
        return None
    if lo == 0 or hi == 0:  # some losses are zero
        nonzero = [abs(x) for x in xs if x] + ([abs(val)] if val else [])
        return (min(nonzero), max(nonzero)) if nonzero else (1.0, 1.0)
    return (lo, hi) if lo > 0 else (-hi, -lo)


def _replay_fused(xs: list[float], val: float, c: float) -> list[float]:
    """The fused ``val - d * c`` (``d = float32(val - x)``, ``c = 1 - w``, ``w >= 0.5``) for losses of one sign
    at most 2**28 times every ``val``: the double ``val - d * c`` is then exact, and rounding it once is right.
    (``c`` is a multiple of 2**-24 up to 0.5, and ``d`` a multiple of the last bit of the smaller of ``val`` and
    ``x`` when they are within a factor 2 of each other (``val - x`` is then exact), or at least half the larger
    one otherwise: ``val - d * c`` then spans at most 53 bits while ``x`` is at most 2**29 times ``val``.)"""
    vals: list[float] = []
    append = vals.append
    for x in xs:
        a = val - x
        t = a * _TO_24_BITS
        s = val - (t - (t - a)) * c
        t = s * _TO_24_BITS
        val = t - (t - s)
        append(val)
    return vals


def _replay_checked(xs: list[float], val: float, w: float, fused: bool) -> list[float]:
    """Either branch of torch.lerp, fused or not, for losses of one sign between 2**-60 and 2**60."""
    small = w < 0.5
    k = w if small else w - 1  # exact: -(1 - w)
    vals: list[float] = []
    for x in xs:
        a = val - x
        t = a * _TO_24_BITS
        d = t - (t - a)
        base = x if small else val
        p = d * k  # exact
        if not fused:
            t = p * _TO_24_BITS
            p = t - (t - p)
        s = base + p
        t = s * _TO_24_BITS
        val = t - (t - s)
        if fused and val != s:
            t = s * _TO_25_BITS
            if t - (t - s) == s:  # halfway between two float32 numbers: `base + p` itself may not be
                val = _break_tie(base, p, s, val)
        vals.append(val)
    return vals


def _break_tie(a: float, b: float, s: float, r: float) -> float:
    """``a + b`` rounded once to float32, where ``s``, ``a + b`` rounded to a double, is halfway between the
    float32 numbers ``r`` (what ``s`` rounds to) and ``2 * s - r``."""
    bb = s - a
    err = (a - (s - bb)) + (b - bb)  # a + b - s, exactly (Knuth's two-sum)
    return s + s - r if err and (err > 0) == (s > r) else r


def _replay_with_torch(xs: list[float], val: float, beta: float, device: torch.device) -> list[float]:
    """The replay with torch.lerp itself, one call per batch as fastai: exact whatever the numbers, slower."""
    v = torch.tensor(val, dtype=torch.float32, device=device)
    vals = []
    for x in torch.tensor(xs, dtype=torch.float32, device=device).unbind():
        v = torch.lerp(x, v, beta)
        vals.append(v)
    return torch.stack(vals).tolist()


def _lerp_fuses(device: torch.device) -> bool | None:
    """Whether torch.lerp on `device` rounds its multiply-add once (True) or twice (False), or does neither
    (None: the replay then calls torch.lerp), found out once per device type from a few float32 numbers."""
    if device.type not in _lerp_fused:
        matches = {True: True, False: True}
        for beta, pairs in _LERP_PROBES.items():
            w = _to_float32(beta)
            for x, val in pairs:
                x, val = _to_float32(x), _to_float32(val)
                start, end = torch.tensor([x, val], dtype=torch.float32, device=device).unbind()
                got = torch.lerp(start, end, beta).item()
                for fused in matches:
                    matches[fused] &= got == _replay_checked([x], val, w, fused)[0]
        _lerp_fused[device.type] = True if matches[True] else False if matches[False] else None
    return _lerp_fused[device.type]


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


class AccumMetric(Metric):
    """``func(preds, targs)`` over the whole set, from every batch's stored predictions and targets.

    Before storing a batch's predictions: a softmax over ``dim_argmax`` (the last dimension when None) or a
    sigmoid when `activation` says so, else an argmax over ``dim_argmax`` when it is set and not 0; then
    ``preds >= thresh`` when `thresh` is set and not 0 (fastai tests both for truth). ``invert_arg`` calls
    ``func(targs, preds)`` (kept in the attribute ``invert_args``, as fastai's); ``to_np`` hands ``func`` numpy
    arrays; extra keywords go to ``func``.

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
            pred = F.softmax(pred, dim=-1 if self.dim_argmax is None else self.dim_argmax)
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
        if self.to_np:
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
    """Turn ``m`` (Metric, torchmetrics-style object, or function) into a :class:`Metric`."""
    if isinstance(m, type) and (issubclass(m, Metric) or isinstance(m, TorchMetricLike)):
        m = m()
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


def _finite_score(num: Tensor, den: Tensor) -> Tensor:
    # scikit-learn's convention when the targets are constant: 1 for a perfect fit, else 0.
    return torch.where(den == 0, (num == 0).to(num.dtype), 1 - num / den)


def _r2_score(inp: Tensor, targ: Tensor) -> Tensor:
    inp, targ = _at_least_float32(inp), _at_least_float32(targ)
    return _finite_score((targ - inp).pow(2).sum(), (targ - targ.mean()).pow(2).sum())


def _explained_variance(inp: Tensor, targ: Tensor) -> Tensor:
    inp, targ = _at_least_float32(inp), _at_least_float32(targ)
    diff = targ - inp
    return _finite_score((diff - diff.mean()).pow(2).mean(), (targ - targ.mean()).pow(2).mean())


def R2Score() -> AccumMetric:
    """A new whole-set coefficient of determination, 1 - SS_res / SS_tot (named ``r2_score``)."""
    return AccumMetric(_r2_score, name="r2_score")


def ExplainedVariance() -> AccumMetric:
    """A new whole-set 1 - Var(targ - pred) / Var(targ) (named ``explained_variance_score``)."""
    return AccumMetric(_explained_variance, name="explained_variance_score")


rmse = AccumMetric(_rmse)
"""Root mean squared error over the whole set (named ``_rmse``, as in fastai)."""

exp_rmspe = AccumMetric(_exp_rmspe)
"""Root mean squared percentage error of ``exp(pred)`` against ``exp(targ)`` over the whole set."""

r2_score = R2Score()
"""Coefficient of determination over the whole set (scikit-learn's ``r2_score`` on flattened data)."""

explained_variance = ExplainedVariance()
"""Explained variance over the whole set (scikit-learn's ``explained_variance_score``)."""
