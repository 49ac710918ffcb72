"""Metrics read from the loss: :class:`Perplexity` (``exp`` of the mean loss, :data:`perplexity`) and
:class:`LossMetric` / :func:`LossMetrics`, the means of values a loss function stores as its attributes.

Both keep the running ``total``/``count`` of :class:`~learnloop.metrics.AvgMetric`, so a distributed run sums
them over the ranks before the value is read.

>>> class TwoPartLoss(nn.Module):
...     def forward(self, pred, targ):
...         self.mse, self.l1 = F.mse_loss(pred, targ), F.l1_loss(pred, targ)
...         return self.mse + self.l1
>>> learn = Learner(dls, model, TwoPartLoss(), metrics=LossMetrics("mse,l1"))  # columns "mse" and "l1"
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .core import AvgLoss, AvgMetric, MetricLearner, find_bs


class Perplexity(AvgLoss):
    """``exp`` of the mean loss over a phase, weighted by batch size: a language model's perplexity when the
    loss is its cross-entropy; None when no batch was seen."""

    @property
    def value(self) -> Tensor | None:
        if not self.count:
            return None
        return torch.exp(torch.as_tensor(self.total) / self.count)

    @property
    def name(self) -> str:
        return "perplexity"


perplexity = Perplexity()
"""A :class:`Perplexity`, shared by the learners given it (as fastai's is)."""


class LossMetric(AvgMetric):
    """Mean over a phase, weighted by batch size, of ``learn.loss_func.<attr>`` (0 while the loss function has
    no such attribute), read after each batch's loss; named ``nm``, or ``attr`` when ``nm`` is None."""

    def __init__(self, attr: str, nm: str | None = None) -> None:
        self.attr = attr
        self.nm = nm
        self.reset()

    def accumulate(self, learn: MetricLearner) -> None:
        part = getattr(getattr(learn, "loss_func", None), self.attr, 0)
        self._add(part, find_bs(learn.yb))

    @property
    def name(self) -> str:
        return self.attr if self.nm is None else self.nm


def _names(names: str | Sequence[str]) -> list[str]:
    # Spaces around the commas ("mse, l1") would otherwise ask for an attribute " l1" that never exists.
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def LossMetrics(attrs: str | Sequence[str], nms: str | Sequence[str] | None = None) -> list[LossMetric]:
    """One :class:`LossMetric` per attribute of ``attrs`` (a list, or a string of comma-separated names), named
    after ``nms`` (the same forms) when given, else after the attributes."""
    attr_list = _names(attrs)
    name_list = attr_list if nms is None else _names(nms)
    if len(name_list) != len(attr_list):
        raise InputError(
            f"LossMetrics: {len(attr_list)} attributes {attr_list} but {len(name_list)} names {name_list}; "
            "give one name per attribute, or nms=None to name each metric after its attribute."
        )
    return [LossMetric(attr, nm) for attr, nm in zip(attr_list, name_list, strict=True)]
