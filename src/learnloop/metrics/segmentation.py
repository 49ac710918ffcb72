"""Segmentation metrics: :func:`foreground_acc`, the binary :class:`Dice` and :class:`JaccardCoeff`, and their
per-class means :class:`DiceMulti` and :class:`JaccardCoeffMulti` (the macro F1 and the mIoU).

Predictions are per-class scores, ``(batch, classes, ...)`` with ``axis=1``; the predicted class is their argmax.
The counts stay on the predictions' device while accumulating (nothing waits for the accelerator) and are
summed over the whole set in float64 (float32 on MPS, which has no float64), as fastai's Python floats: the
values are fastai's (the counts of a batch of more than 2**24 pixels are exact, where fastai's float32 sums round).

>>> learn = Learner(dls, unet, CrossEntropyLossFlat(axis=1), metrics=[foreground_acc, DiceMulti()])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, to_int, to_number
from .core import Metric, MetricLearner, find_bs, flatten_check


def _count_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def foreground_acc(inp: Tensor, targ: Tensor, bkg_idx: int = 0, axis: int = 1) -> Tensor:
    """Accuracy over the pixels whose target is not the background class ``bkg_idx`` (nan when there are none):
    the predicted class is the argmax over ``axis``; targets may have a channel dimension of size 1 (dimension 1)."""
    axis = to_int(axis, "axis", "foreground_acc", "the dimension of the classes")
    # a float compares as well, as in fastai
    background = bkg_idx if type(bkg_idx) is int else to_number(bkg_idx, "bkg_idx", "foreground_acc")
    pred = inp.argmax(dim=axis)
    if targ.ndim == pred.ndim + 1 and targ.shape[1] == 1:
        targ = targ.squeeze(1)  # only then: fastai squeezes any dimension 1 of size 1, a height of 1 too, and fails
    if pred.shape != targ.shape:
        raise InputError(
            f"foreground_acc: predictions of shape {tuple(inp.shape)} give classes of shape {tuple(pred.shape)} "
            f"(argmax over axis {axis}), but the target has shape {tuple(targ.shape)}; they must be the same."
        )
    foreground = targ != background
    # Counting with a mask rather than indexing by it: boolean indexing waits for the device to size its result.
    hits = ((pred == targ) & foreground).sum()
    # A float64 quotient rounded to float32 is the correctly rounded float32 one: fastai's float32 mean.
    dtype = _count_dtype(hits.device)
    return (hits.to(dtype) / foreground.sum().to(dtype)).float()


def _sum(t: Tensor) -> Tensor:
    """The sum of ``t``: exact for integer counts (fastai's float32 sum rounds past 2**24 per batch), fastai's
    float32 sum for floating-point targets."""
    return t.float().sum() if t.is_floating_point() else t.sum()


class Dice(Metric):
    """Dice coefficient of a binary segmentation over the whole set: ``2 |P ∩ T| / (|P| + |T|)``, the predicted
    class the argmax over ``axis``; None when both the predictions and the targets are all 0."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = to_int(axis, "axis", type(self).__name__, "the dimension of the classes")
        self.reset()

    def reset(self) -> None:
        # `total` (intersection, union) and `count` (items) are the running sums DistributedTrainer adds up over
        # the ranks; always two numbers, so that a rank that saw no batch takes part in the sum too.
        self.total: Tensor = torch.zeros(2, dtype=torch.float64)
        self.count: int = 0

    def accumulate(self, learn: MetricLearner) -> None:
        pred, targ = flatten_check(learn.pred.argmax(dim=self.axis), learn.yb[0])
        batch = torch.stack([_sum(pred * targ), _sum(pred + targ)])
        total = self.total.to(device=batch.device, dtype=_count_dtype(batch.device))
        self.total = total + batch.to(total.dtype)  # a batch's sums, rounded once, as fastai's .item()
        self.count += find_bs(learn.yb)

    @property
    def inter(self) -> float:
        """The summed intersection ``|P ∩ T|`` (reading it waits for the device)."""
        return float(self.total[0])

    @property
    def union(self) -> float:
        """The summed ``|P| + |T|`` (reading it waits for the device)."""
        return float(self.total[1])

    @property
    def value(self) -> float | None:
        inter, union = self.total.tolist()
        return 2.0 * inter / union if union > 0 else None


class JaccardCoeff(Dice):
    """Jaccard coefficient (IoU) of a binary segmentation over the whole set: ``|P ∩ T| / |P ∪ T|``; None when
    both the predictions and the targets are all 0."""

    @property
    def value(self) -> float | None:
        inter, union = self.total.tolist()
        return inter / (union - inter) if union > 0 else None


class DiceMulti(Metric):
    """Mean over the classes of each class's Dice coefficient over the whole set (the macro F1), the predicted
    class the argmax over ``axis``. A class neither predicted nor in the targets anywhere has no coefficient and
    is left out of the mean; with none left the value is nan, with numpy's "Mean of empty slice" warning.
    Targets outside ``0 .. classes - 1`` (an ignored index such as 255) count for no class."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = to_int(axis, "axis", type(self).__name__, "the dimension of the classes")
        self.reset()

    def reset(self) -> None:
        # Per-class counts as lists the DistributedTrainer joins over the ranks, as AccumMetric's: a rank that saw
        # no batch does not know the number of classes, so fixed-size sums could not be added up. Each list holds
        # at most one running sum: `preds` a (1, 2, classes) tensor (predicted pixels, correctly predicted ones),
        # `targs` a (1, classes) one (target pixels).
        self.preds: list[Tensor] = []
        self.targs: list[Tensor] = []

    def accumulate(self, learn: MetricLearner) -> None:
        n_classes = learn.pred.shape[self.axis]
        pred, targ = flatten_check(learn.pred.argmax(dim=self.axis), learn.yb[0])
        dtype = _count_dtype(pred.device)
        zeros = torch.zeros(n_classes, dtype=dtype, device=pred.device)
        predicted = zeros.index_add(0, pred, torch.ones_like(pred, dtype=dtype))
        correct = zeros.index_add(0, pred, (pred == targ).to(dtype))
        # index_add needs every index in range: targets of no class are counted, with weight 0, as class 0.
        targ_class = targ.long()
        in_range = (targ_class == targ) & (targ_class >= 0) & (targ_class < n_classes)
        target = zeros.index_add(0, torch.where(in_range, targ_class, 0), in_range.to(dtype))
        self.preds = [_add_padded(self.preds, torch.stack([predicted, correct])[None])]
        self.targs = [_add_padded(self.targs, target[None])]

    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-class intersections and unions (``|P| + |T|``) over everything accumulated, as float64."""
        if not self.preds:
            return np.zeros(0), np.zeros(0)
        preds = torch.cat(self.preds).sum(0).double().cpu().numpy()  # several after a distributed gather
        targs = torch.cat(self.targs).sum(0).double().cpu().numpy()
        return preds[1], preds[0] + targs

    @property
    def value(self) -> np.float64:
        inter, union = self._counts()
        scores = np.full(len(inter), np.nan)
        present = union > 0
        scores[present] = 2.0 * inter[present] / union[present]
        return np.float64(np.nanmean(scores))


class JaccardCoeffMulti(DiceMulti):
    """Mean over the classes of each class's Jaccard coefficient (IoU) over the whole set: the mIoU, with the
    classes of :class:`DiceMulti` left out."""

    @property
    def value(self) -> np.float64:
        inter, union = self._counts()
        scores = np.full(len(inter), np.nan)
        present = union > 0
        scores[present] = inter[present] / (union[present] - inter[present])
        return np.float64(np.nanmean(scores))


def _add_padded(sums: list[Tensor], batch: Tensor) -> Tensor:
    """``batch`` added to the running sum in ``sums`` (if any), the narrower one padded with zero counts along the
    last (class) dimension: a batch with more classes than the ones before adds classes."""
    if not sums:
        return batch
    total = torch.cat(sums).sum(0, keepdim=True)  # one row, unless it was joined over the ranks
    width = max(total.shape[-1], batch.shape[-1])
    total = torch.nn.functional.pad(total, (0, width - total.shape[-1]))
    return total.to(batch.device) + torch.nn.functional.pad(batch, (0, width - batch.shape[-1]))
