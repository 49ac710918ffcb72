"""Loss functions with fastai's conventions: flattened inputs, `activation` and `decodes`, label smoothing.

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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BaseLoss",
    "CrossEntropyLossFlat",
    "BCEWithLogitsLossFlat",
    "BCELossFlat",
    "MSELossFlat",
    "L1LossFlat",
    "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat",
]

_SMALL_INTS = (torch.int8, torch.int16, torch.int32, torch.uint8)


class BaseLoss(nn.Module):
    """`loss_cls(*args, **kwargs)` applied to inputs and targets flattened over every axis but `axis`.

    `axis` is the class (or channel) axis of the model's output; it is moved last, then the
    output is flattened to `(n, classes)` when `is_2d`, else to `(n,)`, and the target to `(n,)`.
    `floatify` casts the target to float (for regression and BCE losses). The wrapped loss is `func`;
    its attributes read through the flattened loss too, as fastai's (`LabelSmoothingCrossEntropyFlat().eps`,
    `CrossEntropyLossFlat(ignore_index=0).ignore_index`).
    """

    y_int: bool = False  # fastai's flag: True when targets are class indices
    func: nn.Module

    def __init__(
        self,
        loss_cls: type[nn.Module],
        *args: Any,
        axis: int = -1,
        flatten: bool = True,
        floatify: bool = False,
        is_2d: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.func = loss_cls(*args, **kwargs)
        self.axis, self.flatten, self.floatify, self.is_2d = axis, flatten, floatify, is_2d

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules (`func`)
        except AttributeError:
            func = self.__dict__.get("_modules", {}).get("func")
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
            targ = targ.float()
        if targ.dtype in _SMALL_INTS:
            targ = targ.long()
        if self.flatten:
            inp = inp.reshape(-1, inp.shape[-1]) if self.is_2d else inp.reshape(-1)
            targ = targ.reshape(-1)
        return self.func(inp, targ, **kwargs)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """The identity: regression losses predict the raw output."""
        return out

    def decodes(self, out: torch.Tensor) -> torch.Tensor:
        """The identity."""
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.func!r}, axis={self.axis})"


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


class BCEWithLogitsLossFlat(BaseLoss):
    """`nn.BCEWithLogitsLoss` on flattened inputs and float targets; sigmoid activation, `> thresh` decoding.

    With `pos_weight` the inputs are not flattened (its shape must match the last axis).
    """

    def __init__(self, *args: Any, axis: int = -1, floatify: bool = True, thresh: float = 0.5, **kwargs: Any) -> None:
        flatten = kwargs.pop("flatten", None)
        if kwargs.get("pos_weight") is not None:
            if flatten is True:
                raise ValueError(
                    "BCEWithLogitsLossFlat: pos_weight needs the class axis kept, so pass flatten=False "
                    "(or leave flatten unset)."
                )
            flatten = False
        super().__init__(
            nn.BCEWithLogitsLoss, *args, axis=axis, floatify=floatify, is_2d=False,
            flatten=True if flatten is None else flatten, **kwargs,
        )
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
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
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

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"


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
