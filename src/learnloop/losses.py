"""Loss functions with fastai's conventions: flattened inputs, `activation` and `decodes`; label smoothing, focal and
Dice losses.

Every loss here is an `nn.Module` whose `reduction` can be read and set (MixUp and
`get_preds(with_loss=True)` set it to 'none' for a while), and which carries

- `activation(out)`: what turns the model's raw output into predictions (softmax, sigmoid, ...);
  `Learner.get_preds` applies it;
- `decodes(preds)`: what turns predictions into decoded labels (argmax, threshold, ...);
  `get_preds(with_decoded=True)` and `predict` apply it.

>>> learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
>>> probs, targets, labels = learn.get_preds(with_decoded=True)   # softmax, then argmax
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks.mixed_loss import NoneReduce
from .errors import InputError, to_int

__all__ = [
    "BaseLoss",
    "CrossEntropyLossFlat",
    "FocalLoss",
    "FocalLossFlat",
    "BCEWithLogitsLossFlat",
    "BCELossFlat",
    "MSELossFlat",
    "L1LossFlat",
    "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat",
    "DiceLoss",
    "NoneReduce",
]

_SMALL_INTS = (torch.int8, torch.int16, torch.int32, torch.uint8)
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(loss: str, reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{loss}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _reduce(loss: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    """`loss` (one value per item) reduced as `reduction` says; checked again here, as it may be set at any time."""
    _check_reduction(name, reduction)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class BaseLoss(nn.Module):
    """`loss_cls(*args, **kwargs)` applied to inputs and targets flattened over every axis but `axis`.

    `axis` is the class (or channel) axis of the model's output; it is moved last, then the
    output is flattened to `(n, classes)` when `is_2d`, else to `(n,)`, and the target to `(n,)`;
    a falsy `flatten` (False, None) leaves both shapes as they are. `floatify` casts the target to float
    (for regression and BCE losses): float32, or float64 when the output is float64. The wrapped loss is `func`,
    an `nn.Module` or any callable object (a plain class); its attributes read through the flattened loss too, as
    fastai's (`LabelSmoothingCrossEntropyFlat().eps`, `CrossEntropyLossFlat(ignore_index=0).ignore_index`, `.scale` of a
    plain class of yours), and are read when asked, so a change to `func`'s shows.
    """

    y_int: bool = False  # fastai's flag: True when targets are class indices
    func: Any

    def __init__(
        self,
        loss_cls: Callable[..., Any],
        *args: Any,
        axis: int = -1,
        flatten: bool | None = True,
        floatify: bool = False,
        is_2d: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        axis = to_int(axis, "axis", type(self).__name__, "the dimension of the classes (or channels)")
        self.func = loss_cls(*args, **kwargs)
        self.axis, self.flatten, self.floatify, self.is_2d = axis, flatten, floatify, is_2d

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules (`func` when it is a module)
        except AttributeError:
            # `func` is a submodule when it is an nn.Module, else a plain attribute (in __dict__, not here).
            state = self.__dict__
            func = state.get("_modules", {}).get("func", state.get("func"))
            if func is None or name.startswith("__") or not hasattr(func, name):
                raise
            return getattr(func, name)

    @property
    def reduction(self) -> str:
        """The wrapped loss's reduction ('mean', 'sum' or 'none'); settable."""
        return str(self.func.reduction)

    @reduction.setter
    def reduction(self, value: str) -> None:
        setattr(self.func, "reduction", value)  # noqa: B010 - nn.Module.__setattr__ is typed for tensors

    def _axis_last(self, x: Any) -> Any:
        return x.transpose(self.axis, -1).contiguous() if isinstance(x, torch.Tensor) and x.ndim > 1 else x

    def forward(self, inp: torch.Tensor, targ: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        inp, targ = self._axis_last(inp), self._axis_last(targ)
        if self.floatify and targ.dtype != torch.float16:
            # float32, as fastai's; float64 for float64 predictions, which nn.BCELoss refuses to meet with float32.
            targ = targ.to(torch.float64 if inp.dtype == torch.float64 else torch.float32)
        if targ.dtype in _SMALL_INTS:
            targ = targ.long()
        if self.flatten:
            inp = inp.reshape(-1, inp.shape[-1]) if self.is_2d else inp.reshape(-1)
            targ = targ.reshape(-1)
        if inp.dtype == torch.float64 and isinstance(self.func, nn.Module):
            return self._call_in_float64(inp, targ, **kwargs)
        return self.func(inp, targ, **kwargs)

    def _call_in_float64(self, inp: torch.Tensor, targ: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """`func` on float64 outputs, its floating-point buffers (a class `weight`, usually float32) in float64 for
        this call: torch refuses a float32 `weight` with float64 outputs, where fastai's float32 copy of the
        output meets it."""
        cast = {
            name: buf.to(torch.float64)
            for name, buf in self.func.named_buffers()
            if buf.is_floating_point() and buf.dtype != torch.float64
        }
        if not cast:
            return self.func(inp, targ, **kwargs)
        return torch.func.functional_call(self.func, cast, (inp, targ), kwargs)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """The identity: regression losses predict the raw output."""
        return out

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The identity."""
        return out

    def __repr__(self) -> str:
        return f"FlattenedLoss of {self.func}"  # fastai's words, for every flattened loss


class CrossEntropyLossFlat(BaseLoss):
    """`nn.CrossEntropyLoss` on flattened inputs and targets; softmax activation, argmax decoding.

    Keywords go to `nn.CrossEntropyLoss` (`weight`, `ignore_index`, `reduction`, `label_smoothing`).
    """

    y_int = True

    def __init__(self, *args: Any, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(nn.CrossEntropyLoss, *args, axis=axis, **kwargs)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over `axis`."""
        return F.softmax(out, dim=self.axis)

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The most likely class along `axis`."""
        return out.argmax(dim=self.axis)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., https://arxiv.org/abs/1708.02002): cross-entropy scaled by `(1 - p_t) ** gamma`.

    `p_t` is the probability given to the right class, so well-classified items weigh less the larger `gamma`
    is; `gamma=0` is cross-entropy. `weight` (one per class, the paper's alpha) goes to the cross-entropy;
    `reduction` ('mean', 'sum' or 'none') then reduces the items' losses (with `weight`, 'mean' divides by
    the number of items, not by the sum of their weights as `nn.CrossEntropyLoss` does). The class axis is 1.
    """

    y_int = True

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction("FocalLoss", reduction)
        self.gamma, self.reduction = gamma, reduction
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)  # moves with .to(), as nn.CrossEntropyLoss's weight

    def forward(self, inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(inp, targ, weight=self.weight, reduction="none")
        p_t = torch.exp(-ce)  # the target class's probability (to the power of its `weight` with one), as fastai's
        return _reduce((1 - p_t) ** self.gamma * ce, self.reduction, "FocalLoss")


class FocalLossFlat(BaseLoss):
    """`FocalLoss` on flattened inputs and targets; softmax activation, argmax decoding (over `axis`).

    `gamma=0` gives `CrossEntropyLossFlat`'s values (without `weight`); keywords go to `FocalLoss` (`weight`,
    `reduction`).
    """

    y_int = True

    def __init__(self, *args: Any, gamma: float = 2.0, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(FocalLoss, *args, gamma=gamma, axis=axis, **kwargs)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over `axis`."""
        return F.softmax(out, dim=self.axis)

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The most likely class along `axis`."""
        return out.argmax(dim=self.axis)


class BCEWithLogitsLossFlat(BaseLoss):
    """`nn.BCEWithLogitsLoss` on flattened inputs and float targets; sigmoid activation, `> thresh` decoding.

    With `pos_weight` the inputs are not flattened (its shape must match the last axis).
    """

    def __init__(self, *args: Any, axis: int = -1, floatify: bool = True, thresh: float = 0.5, **kwargs: Any) -> None:
        if kwargs.get("pos_weight") is not None:
            if kwargs.get("flatten") is True:
                raise ValueError(
                    "BCEWithLogitsLossFlat: pos_weight needs the class axis kept, so pass flatten=False "
                    "(or leave flatten unset)."
                )
            kwargs["flatten"] = False
        # A flatten given (None included: falsy, so no flattening, as in fastai) goes to BaseLoss as it is.
        super().__init__(nn.BCEWithLogitsLoss, *args, axis=axis, floatify=floatify, is_2d=False, **kwargs)
        self.thresh = thresh

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Independent probabilities per label: sigmoid."""
        return torch.sigmoid(out)

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """Labels whose probability passes `thresh`."""
        return out > self.thresh


class BCELossFlat(BaseLoss):
    """`nn.BCELoss` on flattened inputs (already probabilities) and float targets."""

    def __init__(self, *args: Any, axis: int = -1, floatify: bool = True, **kwargs: Any) -> None:
        super().__init__(nn.BCELoss, *args, axis=axis, floatify=floatify, is_2d=False, **kwargs)


class MSELossFlat(BaseLoss):
    """`nn.MSELoss` on flattened inputs and float targets (so `(n, 1)` outputs meet `(n,)` targets)."""

    def __init__(self, *args: Any, axis: int = -1, floatify: bool = True, **kwargs: Any) -> None:
        super().__init__(nn.MSELoss, *args, axis=axis, floatify=floatify, is_2d=False, **kwargs)


class L1LossFlat(BaseLoss):
    """`nn.L1Loss` on flattened inputs and float targets."""

    def __init__(self, *args: Any, axis: int = -1, floatify: bool = True, **kwargs: Any) -> None:
        super().__init__(nn.L1Loss, *args, axis=axis, floatify=floatify, is_2d=False, **kwargs)


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against targets smoothed towards uniform: `(1-eps) * nll + eps * mean over classes of -log p`.

    The class axis is 1 (as for `nn.CrossEntropyLoss`); `weight` applies to the nll part only.
    `reduction` is 'mean', 'sum' or 'none' (one loss per item).
    """

    y_int = True

    def __init__(self, eps: float = 0.1, weight: torch.Tensor | None = None, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction("LabelSmoothingCrossEntropy", reduction)
        self.eps, self.reduction = eps, reduction
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_classes = output.shape[1]
        log_probs = F.log_softmax(output, dim=1)
        # The uniform part: the sum over classes of -log p, scaled by eps / n_classes below.
        if self.reduction == "sum":
            smooth = -log_probs.sum()
        else:
            smooth = -log_probs.sum(dim=1)
            if self.reduction == "mean":
                smooth = smooth.mean()
        nll = F.nll_loss(log_probs, target.long(), weight=self.weight, reduction=self.reduction)
        return smooth * self.eps / n_classes + (1 - self.eps) * nll  # in fastai's order: its roundings, bit for bit

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the last axis."""
        return F.softmax(out, dim=-1)

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The most likely class."""
        return out.argmax(dim=-1)


class LabelSmoothingCrossEntropyFlat(BaseLoss):
    """`LabelSmoothingCrossEntropy` on flattened inputs and targets (sequences, segmentation maps).

    Unlike `CrossEntropyLossFlat`, its `activation` and `decodes` work over the last axis whatever `axis` is,
    as fastai's do.
    """

    y_int = True

    def __init__(self, *args: Any, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(LabelSmoothingCrossEntropy, *args, axis=axis, **kwargs)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the last axis."""
        return F.softmax(out, dim=-1)

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The most likely class along the last axis."""
        return out.argmax(dim=-1)


class DiceLoss(nn.Module):
    """Dice loss for segmentation: `1 - dice` per item and class, between the softmax of the output and the
    one-hot target.

    The output has its classes along `axis` (1: `(bs, classes, h, w)`); the target holds class indices, with
    the output's shape but for `axis` (`(bs, h, w)`). Per item and class, `dice = (2 * intersection + smooth) /
    (union + smooth)`, summing over the other axes, where `union` sums predictions and target (the squared
    predictions with `square_in_union`, for steeper gradients). `reduction` ('sum', the default, 'mean' or
    'none') reduces the `(bs, classes)` losses.

    >>> DiceLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))   # a scalar, between 0 and 6
    """

    def __init__(self, axis: int = 1, smooth: float = 1e-6, reduction: str = "sum",
                 square_in_union: bool = False) -> None:
        super().__init__()
        _check_reduction("DiceLoss", reduction)
        self.axis, self.smooth, self.reduction, self.square_in_union = axis, smooth, reduction, square_in_union

    def forward(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        n_classes = pred.shape[self.axis]
        one_hot = self._one_hot(targ, n_classes, self.axis)
        if one_hot.shape != pred.shape:
            raise InputError(
                f"DiceLoss: the output's shape {tuple(pred.shape)} does not match the target's {tuple(targ.shape)} "
                f"with {n_classes} classes added at axis {self.axis}: the target must hold class indices (not "
                "one-hot masks), shaped as the output without its class axis."
            )
        probs = self.activation(pred)
        sum_dims = [d for d in range(1, probs.ndim) if d != self.axis % probs.ndim]  # all but the items and classes
        inter = torch.sum(probs * one_hot, dim=sum_dims)
        union = torch.sum((probs**2 if self.square_in_union else probs) + one_hot, dim=sum_dims)
        dice = (2.0 * inter + self.smooth) / (union + self.smooth)
        return _reduce(1 - dice, self.reduction, "DiceLoss")

    @staticmethod
    def _one_hot(x: torch.Tensor, classes: int, axis: int = 1) -> torch.Tensor:
        """Class indices `x` as 0/1 masks (int64), one per class, stacked along `axis` (indices out of range: 0s)."""
        shape = [1] * (x.ndim + 1)
        shape[axis] = classes
        return (x.unsqueeze(axis) == torch.arange(classes, device=x.device).view(shape)).long()

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over `axis`."""
        return F.softmax(out, dim=self.axis)

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The most likely class along `axis`."""
        return out.argmax(dim=self.axis)
