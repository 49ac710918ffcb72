"""Corpus BLEU (:class:`CorpusBLEUMetric`): the BLEU-4 score of a model's predicted token sequences against the
target ones, over the whole validation set.

For each sequence the n-grams (n = 1 to 4) of the prediction are matched against the target's, each counted at
most as often as the target holds it; a sequence with no match of some order adds 1/2, then 1/4, ... for its next
orders instead (exponential smoothing, method 3 of Chen and Cherry, 2014). The score is the geometric mean of
the four precisions times the brevity penalty ``exp(1 - target tokens / predicted tokens)`` when the
predictions are the shorter. Every position counts, padding included.

>>> learn = Learner(dls, seq2seq, CrossEntropyLossFlat(), metrics=CorpusBLEUMetric(vocab_sz=len(vocab)))
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import to_int
from .core import Metric, MetricLearner

_ORDERS = 4  # BLEU-4: unigrams to 4-grams


def _ngram_counts(tokens: Sequence[int], n: int) -> Counter[tuple[int, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


class CorpusBLEUMetric(Metric):
    """BLEU-4 over the validation set of argmax-over-``axis`` predictions ``(batch, seq, vocab)`` against
    targets ``(batch, seq)``, as a Python float; 0.0 before any batch, nothing accumulated while training.

    ``vocab_sz`` is kept for fastai's signature: n-grams are compared as whole tuples, whatever the vocabulary.
    Every precision needs a predicted n-gram of its order: if no sequence holds 4 tokens the value is a
    ZeroDivisionError (as fastai's), which says so.
    """

    def __init__(self, vocab_sz: int = 5000, axis: int = -1) -> None:
        self.vocab_sz = vocab_sz
        self.axis = to_int(axis, "axis", "CorpusBLEUMetric", "the dimension of the vocabulary")
        self.reset()

    def reset(self) -> None:
        # The corpus sums (predicted and target tokens, then per order the smoothed matches, the predicted n-grams
        # and the sequences smoothed) in one float64 CPU tensor, `total`, with `count` (sequences): the running sums
        # DistributedTrainer adds up over the ranks. They are whole numbers and halves, quarters..., exact in
        # float64 in any order.
        self.total: Tensor = torch.zeros(2 + 3 * _ORDERS, dtype=torch.float64)
        self.count: int = 0

    def get_correct_ngrams(
        self, pred: Sequence[int], targ: Sequence[int], n: int, max_n: int = 5000
    ) -> tuple[int, int]:
        """The n-grams of ``pred`` found in ``targ`` (each at most as often as there), and the n-grams of
        ``pred``. (``max_n``, fastai's hashing base, changes nothing.)"""
        pred_counts, targ_counts = _ngram_counts(list(pred), n), _ngram_counts(list(targ), n)
        matches = sum(min(c, targ_counts[gram]) for gram, c in pred_counts.items())
        return matches, max(len(pred) - n + 1, 0)

    def accumulate(self, learn: MetricLearner) -> None:
        if learn.training:
            return
        preds = learn.pred.argmax(dim=self.axis).tolist()
        targs = learn.yb[0].tolist()
        sums = [0.0] * len(self.total)
        for pred, targ in zip(preds, targs, strict=False):  # as fastai: as many as the shorter holds
            sums[0] += len(pred)
            sums[1] += len(targ)
            smoothing = 1.0
            for i in range(_ORDERS):
                matches, grams = self.get_correct_ngrams(pred, targ, i + 1, self.vocab_sz)
                if matches == 0:
                    smoothing /= 2
                    sums[2 + 2 * _ORDERS + i] += 1
                sums[2 + i] += matches or smoothing
                sums[2 + _ORDERS + i] += grams
            self.count += 1
        self.total = self.total.cpu() + torch.tensor(sums, dtype=torch.float64)

    @property
    def pred_len(self) -> int:
        """Predicted tokens so far."""
        return int(self.total[0])

    @property
    def targ_len(self) -> int:
        """Target tokens so far."""
        return int(self.total[1])

    @property
    def corrects(self) -> list[int | float]:
        """Per order (1 to 4), the n-gram matches so far, smoothed: an int until a sequence without a match of that
        order adds its fraction, a float from then on (fastai's types)."""
        sums, smoothed = self.total[2 : 2 + _ORDERS].tolist(), self.total[2 + 2 * _ORDERS :].tolist()
        return [c if s else int(c) for c, s in zip(sums, smoothed, strict=True)]

    @property
    def counts(self) -> list[int]:
        """Per order (1 to 4), the predicted n-grams so far."""
        return [int(c) for c in self.total[2 + _ORDERS : 2 + 2 * _ORDERS].tolist()]

    @property
    def value(self) -> float:
        pred_len, targ_len, *rest = self.total.tolist()
        corrects, counts = rest[:_ORDERS], rest[_ORDERS : 2 * _ORDERS]
        if max(corrects) == 0:
            return 0.0
        if min(counts) == 0:
            order = counts.index(0) + 1
            raise ZeroDivisionError(
                f"CorpusBLEUMetric: no predicted sequence holds {order} tokens, so the {order}-gram precision "
                "is 0/0 and BLEU-4 is undefined; use sequences of at least 4 tokens."
            )
        precisions = [c / t for c, t in zip(corrects, counts, strict=True)]
        brevity = math.exp(1 - targ_len / pred_len) if pred_len < targ_len else 1.0
        return brevity * (precisions[0] * precisions[1] * precisions[2] * precisions[3]) ** 0.25
