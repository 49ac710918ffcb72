"""The smoothed training loss: :class:`AvgSmoothLoss`, fastai's debiased moving average of the loss, computed
without waiting on the device per batch (the float32 replay it relies on is in :mod:`learnloop.smoothing`)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ..smoothing import Debiaser, batch_means, replay_lerp, to_float32
from .core import Metric, MetricLearner


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
        self._beta = beta
        self._debiaser = Debiaser(beta)
        self.reset()

    def __setstate__(self, state: dict[str, object]) -> None:
        if "beta" in state:  # pickled before `beta` became a property
            state["_beta"] = state.pop("beta")
        self.__dict__.update(state)

    @property
    def beta(self) -> float:
        """The smoothing factor. A new one applies from the next batch on: the losses accumulated before are folded
        with the old one first, as fastai's per-batch update did."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self.fold()
        self._beta = value

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
        loss = learn.loss
        if not isinstance(loss, Tensor):  # fastai's fails at `learn.loss.mean()`: keep no loss that is not one
            if loss is None:
                why = "after_batch fired outside a training batch (after a fit ended, which sets it to None)?"
            else:  # a callback replaced it with a number: the record needs the tensor the loop computed
                why = (f"a {type(loss).__name__}, not a tensor: a callback that replaces learn.loss must give a "
                       "tensor (torch.tensor(x)).")
            raise AttributeError(f"The smoothed loss needs the batch's loss, but learn.loss is {loss!r}: {why}")
        self.pending.append(loss)
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
        """The biased average after the last batch (fastai's ``val``, a float32 tensor); settable: the batches that
        come after carry on from the new value. Pending losses are folded first (one wait on the device)."""
        self.fold()
        return torch.tensor(self._val, dtype=torch.float32)

    @val.setter
    def val(self, value: Tensor | float) -> None:
        self.fold()  # the batches accumulated so far came before the new value
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
