"""Whole-set metrics: :class:`AccumMetric`, which stores every batch's predictions and targets and computes its
function over all of them when read (with the activation :class:`ActivationType` names), and :class:`TorchMetric`,
the adapter for torchmetrics-style stateful metrics (:class:`TorchMetricLike`)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import is_distributed
from ..errors import InputError, to_int
from ..warn import warn_caller
from .core import Metric, MetricLearner, _func_name, _snake_case, flatten_check


@runtime_checkable
class TorchMetricLike(Protocol):
    """A torchmetrics-style stateful metric: ``update(pred, target)``, ``compute()``, ``reset()``."""

    def update(self, *args: Any, **kwargs: Any) -> Any: ...
    def compute(self) -> Any: ...
    def reset(self) -> Any: ...


class ActivationType(StrEnum):
    """Activation :class:`AccumMetric` applies to predictions before storing them."""

    No = "no"
    Sigmoid = "sigmoid"
    Softmax = "softmax"
    BinarySoftmax = "binarysoftmax"


def _activation_type(activation: ActivationType | str | None) -> ActivationType:
    """`activation` as an :class:`ActivationType`; None is no activation, as in fastai."""
    if activation is None:
        return ActivationType.No
    try:
        return ActivationType(activation)
    except ValueError:
        names = ", ".join(repr(a.value) for a in ActivationType)
        raise InputError(
            f"AccumMetric: activation={activation!r} is not an activation; use one of {names} (the values of "
            "ActivationType), or None for none."
        ) from None


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
        activation: ActivationType | str | None = ActivationType.No,
        thresh: float | None = None,
        to_np: bool = False,
        invert_arg: bool = False,
        flatten: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.func = func
        what = "the dimension of the classes (None for fastai's implicit one)"
        self.dim_argmax = None if dim_argmax is None else to_int(dim_argmax, "dim_argmax", "AccumMetric", what)
        self.activation = _activation_type(activation)
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
        if self.to_np and not self.thresh and pred.dtype == torch.bfloat16:
            # numpy has no bfloat16, so such predictions reach `func` as float32: convert them before the activation,
            # whose bfloat16 probabilities do not sum to 1 closely enough for scikit-learn (RocAuc refuses them).
            # Thresholded ones go over as booleans, fastai's (its bfloat16 activation compared with `thresh`).
            pred = pred.float()
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

    def accum_values(self, preds: Tensor, targs: Tensor, learn: MetricLearner | None = None) -> None:
        """Store one batch of (already activated) predictions and targets, detached and on the CPU, as fastai's
        does (an accelerator's memory does not grow with the validation set). ``learn`` is taken for fastai's
        signature (a subclass's ``accumulate`` may pass it) and not used."""
        preds, targs = preds.detach().cpu(), targs.detach().cpu()
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
    """Adapter running a torchmetrics-style metric (``update``/``compute``/``reset``) unchanged.

    Its value is None when no batch was seen since ``reset`` (an empty validation set), as every other metric's,
    rather than what ``compute()`` makes of no data (torchmetrics' 0 with a warning, or an error); in a
    distributed run ``compute()`` is always called, since it syncs with the other ranks.
    """

    def __init__(self, metric: TorchMetricLike, name: str | None = None) -> None:
        self.metric = metric
        self._name = name or _snake_case(type(metric).__name__)
        self._device: torch.device | None = None
        self._updates = 0

    def reset(self) -> None:
        self.metric.reset()
        self._updates = 0

    def accumulate(self, learn: MetricLearner) -> None:
        pred = learn.pred
        move = getattr(self.metric, "to", None)
        if isinstance(pred, Tensor) and pred.device != self._device and callable(move):
            self.metric = move(pred.device) or self.metric
            self._device = pred.device
        self.metric.update(pred, *learn.yb)
        self._updates += 1

    @property
    def value(self) -> Any:
        if not getattr(self, "_updates", 1) and not is_distributed():  # (a TorchMetric pickled before it was kept)
            return None
        return self.metric.compute()

    @property
    def name(self) -> str:
        return self._name
