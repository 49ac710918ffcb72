"""The metric protocol and the simple metrics: the :class:`Metric` base class, the batch-size-weighted means
:class:`AvgMetric` and :class:`AvgLoss`, :class:`ValueMetric`, and the helpers every metric uses (:func:`find_bs`,
:func:`flatten_check`, naming)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from ..errors import InputError
from ..explain import explain_metric_error


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


def _snake_case(name: str) -> str:
    """`F1ScoreMulti` -> `f1_score_multi`, as fastai 2.8 names metrics: a word starts at a capital that follows a
    lowercase letter or digit, or a capital followed by a lowercase letter that follows another capital (`MSELoss`
    -> `mse_loss`); an underscore already there is kept alone (`My_Metric` -> `my_metric`, not `my__metric`)."""
    name = re.sub(r"([A-Z])([A-Z][a-z]+)", r"\1_\2", name)
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


_METRIC_ERRORS = (TypeError, ValueError, RuntimeError, IndexError, AttributeError)


class AvgMetric(_WeightedMean):
    """Average of ``func(pred, *yb)`` over a phase, weighted by batch size."""

    def __init__(self, func: Callable[..., Tensor | float]) -> None:
        self.func = func
        self.reset()

    def accumulate(self, learn: MetricLearner) -> None:
        try:  # the try blocks cost nothing per batch; the notes are made only when a batch fails
            value = self.func(learn.pred, *learn.yb)
        except _METRIC_ERRORS as e:
            explain_metric_error(e, self.name, learn.pred, learn.yb)
            raise
        try:
            self._add(value, find_bs(learn.yb))
        except _METRIC_ERRORS as e:  # what it returned cannot be summed: a string, None...
            explain_metric_error(e, self.name, learn.pred, learn.yb, True, value)
            raise

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
