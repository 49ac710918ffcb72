"""The loss side of MixUp and CutMix: `MixedLoss`, the loss function they put in `learn.loss_func` while training.

When the loss is mixed rather than the targets (`stack_y`: class indices, which cannot be blended), a `MixHandler`
(mixup.py) computes the original loss once per item on the item's target and on its partner's, blends the two by
`lam`, then reduces the result as the original loss does. `unreduced` gives the loss one value per item (its
`reduction` attribute set to 'none' for a block, or a call with `reduction='none'`; a ValueError telling which losses
can be mixed when it offers neither), `reduce_loss` reduces it again, and `MixedLoss` wraps the original so that it
calls the handler's mixed loss `lf` on a mixed training batch and is exactly the original everywhere else, with the
original's `reduction`, `activation` and `decodes`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .mixup import MixHandler

__all__ = ["MixedLoss", "NoneReduce", "reduce_loss", "unreduced"]

LossFunc = Callable[..., torch.Tensor]


def reduce_loss(loss: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-item losses as `reduction` ('mean', 'sum' or 'none') says."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _reduction_of(loss_func: Any) -> str | None:
    """The loss function's reduction, or None when it has none we can find."""
    reduction = getattr(loss_func, "reduction", None)
    if isinstance(reduction, str):
        return reduction
    if isinstance(loss_func, functools.partial) and "reduction" in loss_func.keywords:
        return str(loss_func.keywords["reduction"])
    param = _reduction_param(loss_func)
    if param is not None:
        return str(param.default) if isinstance(param.default, str) else "mean"
    return None


def _reduction_param(loss_func: Any) -> inspect.Parameter | None:
    try:
        return inspect.signature(loss_func).parameters.get("reduction")
    except (TypeError, ValueError):
        return None


@contextmanager
def unreduced(loss_func: LossFunc) -> Iterator[LossFunc]:
    """`loss_func` computing one loss per item: its `reduction` attribute set to 'none' for the block,
    or a call with `reduction='none'`. A ValueError when the loss offers neither."""
    if isinstance(getattr(loss_func, "reduction", None), str):
        old = loss_func.reduction  # type: ignore[attr-defined]
        loss_func.reduction = "none"  # type: ignore[attr-defined]
        try:
            yield loss_func
        finally:
            loss_func.reduction = old  # type: ignore[attr-defined]
    elif _reduction_param(loss_func) is not None:
        yield functools.partial(loss_func, reduction="none")
    else:
        raise ValueError(_cannot_unreduce(loss_func))


_UNSET: Any = object()  # NoneReduce's old reduction before the block is entered (None is a reduction to put back)


class NoneReduce:
    """fastai's context manager (`fastai.layers.NoneReduce`): in the block, `loss_func` returns one loss per item.

    A loss with a `reduction` attribute has it set to 'none' for the block and is returned itself; any other is
    returned as `functools.partial(loss_func, reduction='none')`, which fails when called if the function takes
    no `reduction` (as fastai's). Unlike fastai's, the old reduction is put back even when it was None.

    >>> with NoneReduce(learn.loss_func) as lf:
    ...     per_item = lf(pred, target)
    """

    def __init__(self, loss_func: LossFunc) -> None:
        self.loss_func = loss_func
        self.old_red: Any = _UNSET

    def __enter__(self) -> LossFunc:
        if hasattr(self.loss_func, "reduction"):
            self.old_red = self.loss_func.reduction
            self.loss_func.reduction = "none"
            return self.loss_func
        return functools.partial(self.loss_func, reduction="none")

    def __exit__(self, *exc_info: object) -> None:
        if self.old_red is not _UNSET:
            self.loss_func.reduction = self.old_red  # type: ignore[attr-defined]
            self.old_red = _UNSET


def _cannot_unreduce(loss_func: Any) -> str:
    return (
        f"MixUp/CutMix cannot mix the loss {loss_func!r}: with integer targets (class indices) the loss of "
        "each item must be computed on both targets, which needs a loss that returns one value per item, "
        "i.e. an nn.Module with a `reduction` attribute (nn.CrossEntropyLoss(), CrossEntropyLossFlat(), "
        "LabelSmoothingCrossEntropy()) or a function taking `reduction='none'` (F.cross_entropy). "
        "Use one of those, or give float (one-hot) targets, which are mixed directly."
    )


class MixedLoss:
    """The loss function MixUp/CutMix put in `learn.loss_func` while training (fastai puts the handler's `lf`).

    On a batch the handler mixed with `stack_y`, it is the handler's `lf`: the original loss on the
    item's target and on its partner's, blended by `lam`; otherwise (validation, blended targets, or a
    batch the handler did not mix) it is exactly the original loss. `activation`, `decodes` and
    `reduction` are the original's.
    """

    def __init__(self, original: LossFunc, handler: MixHandler) -> None:
        self.original = original
        self.handler = handler

    def __call__(self, pred: Any, *yb: Any, **kwargs: Any) -> torch.Tensor:
        handler = self.handler
        # Left behind by a fit that raised, or called outside a mixed training batch: the plain loss.
        if handler.learn is None or not handler.learn.training or not handler._mixed or not handler.stack_y:
            return self.original(pred, *yb, **kwargs)
        return handler.lf(pred, *yb, **kwargs)

    @property
    def reduction(self) -> str:
        """The original loss's `reduction` attribute (an AttributeError when it has none); settable."""
        reduction = getattr(self.original, "reduction", None)
        if not isinstance(reduction, str):
            raise AttributeError(f"{self.original!r} has no `reduction` attribute")
        return reduction

    @reduction.setter
    def reduction(self, value: str) -> None:
        self.original.reduction = value  # type: ignore[attr-defined]

    @property
    def activation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The original loss's activation, if it has one."""
        return getattr(self.original, "activation", None)

    @property
    def decodes(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The original loss's decoding, if it has one."""
        return getattr(self.original, "decodes", None)

    def __repr__(self) -> str:
        return f"MixedLoss({self.original!r})"
