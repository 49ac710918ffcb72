"""fastai's multi-label metrics built on scikit-learn (:func:`F1ScoreMulti`, :func:`RocAucMulti`, ...): each a
new :class:`~learnloop.metrics.AccumMetric` of the predictions' sigmoid (or the predictions, with
``sigmoid=False``), thresholded at ``thresh`` except for the ranking ones, the ``(items, labels)`` shape kept.
scikit-learn is the optional extra ``pip install 'learnloop[metrics]'`` (see :mod:`.sklearn_metrics`).

Example::

    learn = Learner(dls, model, BCEWithLogitsLossFlat(), metrics=[F1ScoreMulti(thresh=0.4), RocAucMulti()])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .accum import AccumMetric, ActivationType
from .core import MetricLearner
from .sklearn_metrics import _sklearn_metric, skm_to_fastai

__all__ = [
    "APScoreMulti",
    "BrierScoreMulti",
    "F1ScoreMulti",
    "FBetaMulti",
    "HammingLossMulti",
    "JaccardMulti",
    "MatthewsCorrCoefMulti",
    "PrecisionMulti",
    "RecallMulti",
    "RocAucMulti",
]


def _activation(sigmoid: bool) -> ActivationType:
    return ActivationType.Sigmoid if sigmoid else ActivationType.No


class _LabelScores(AccumMetric):
    """Scores kept as given, except that predictions with one dimension more than their targets (a class index per
    item) become their argmax over the last dimension, as fastai's `sigmoid=False` metrics take it."""

    def accumulate(self, learn: MetricLearner) -> None:
        pred, targ = learn.pred, learn.yb[0]
        if self.activation == ActivationType.No and pred.dim() == targ.dim() + 1:
            pred = pred.argmax(dim=-1)
        self.accum_values(self._prepare(pred), targ)


def _label_scores(func: Callable[..., Any], sigmoid: bool, **kwargs: Any) -> AccumMetric:
    """A multi-label metric of each label's score: the sigmoid of the predictions, or, with `sigmoid=False`, the
    predictions as they are (fastai's argmax over the labels then is what scikit-learn rejects for multi-label
    targets: no argmax there; for targets of one class index per item, the argmax, fastai's)."""
    if sigmoid:
        return skm_to_fastai(func, activation=ActivationType.Sigmoid, flatten=False, **kwargs)  # dim_argmax=-1
    return _LabelScores(func, activation=ActivationType.No, to_np=True, invert_arg=True, flatten=False, **kwargs)


def _thresholded(func: Callable[..., Any], thresh: float, sigmoid: bool, **kwargs: Any) -> AccumMetric:
    """A multi-label metric of the predictions' sigmoid (or the predictions, with `sigmoid=False`) ``>= thresh``,
    the (items, labels) shape kept."""
    return skm_to_fastai(func, thresh=thresh, activation=_activation(sigmoid), flatten=False, **kwargs)


# Multi-label classification: a sigmoid (unless `sigmoid=False`), `>= thresh`, the (items, labels) shape kept.


def APScoreMulti(
    sigmoid: bool = True, average: str | None = "macro", pos_label: Any = 1, sample_weight: Any = None
) -> AccumMetric:
    """Average precision of each label's probability (the predictions' sigmoid, or the predictions themselves with
    `sigmoid=False`), averaged over the labels (`average`), for multi-label classification. Against one class index
    per item, `sigmoid=False` scores the predictions' argmax over the last dimension, as fastai's does."""
    func = _sklearn_metric("average_precision_score", "APScoreMulti")
    return _label_scores(func, sigmoid, average=average, pos_label=pos_label, sample_weight=sample_weight)


def BrierScoreMulti(
    thresh: float = 0.5, sigmoid: bool = True, sample_weight: Any = None, pos_label: Any = None
) -> AccumMetric:
    """Brier score of the thresholded multi-label predictions (scikit-learn's, on the (items, labels) arrays)."""
    func = _sklearn_metric("brier_score_loss", "BrierScoreMulti")
    return _thresholded(func, thresh, sigmoid, sample_weight=sample_weight, pos_label=pos_label)


def F1ScoreMulti(
    thresh: float = 0.5,
    sigmoid: bool = True,
    labels: Any = None,
    pos_label: Any = 1,
    average: str | None = "macro",
    sample_weight: Any = None,
) -> AccumMetric:
    """F1 score of the thresholded multi-label predictions, averaged over the labels (`average`)."""
    func = _sklearn_metric("f1_score", "F1ScoreMulti")
    return _thresholded(
        func, thresh, sigmoid, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def FBetaMulti(
    beta: float,
    thresh: float = 0.5,
    sigmoid: bool = True,
    labels: Any = None,
    pos_label: Any = 1,
    average: str | None = "macro",
    sample_weight: Any = None,
) -> AccumMetric:
    """F-beta score of the thresholded multi-label predictions, averaged over the labels (`average`)."""
    func = _sklearn_metric("fbeta_score", "FBetaMulti")
    return _thresholded(
        func, thresh, sigmoid, beta=beta, labels=labels, pos_label=pos_label, average=average,
        sample_weight=sample_weight,
    )  # fmt: skip


def HammingLossMulti(
    thresh: float = 0.5, sigmoid: bool = True, labels: Any = None, sample_weight: Any = None
) -> AccumMetric:
    """Fraction of the (item, label) pairs the thresholded predictions get wrong. `labels` is accepted and unused,
    as in fastai (scikit-learn's ``hamming_loss`` takes none)."""
    func = _sklearn_metric("hamming_loss", "HammingLossMulti")
    return _thresholded(func, thresh, sigmoid, sample_weight=sample_weight)


def JaccardMulti(
    thresh: float = 0.5,
    sigmoid: bool = True,
    labels: Any = None,
    pos_label: Any = 1,
    average: str | None = "macro",
    sample_weight: Any = None,
) -> AccumMetric:
    """Jaccard index of the thresholded multi-label predictions, averaged over the labels (`average`)."""
    func = _sklearn_metric("jaccard_score", "JaccardMulti")
    return _thresholded(
        func, thresh, sigmoid, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def MatthewsCorrCoefMulti(thresh: float = 0.5, sigmoid: bool = True, sample_weight: Any = None) -> AccumMetric:
    """Matthews correlation coefficient of the thresholded multi-label predictions (scikit-learn's, on the
    (items, labels) arrays)."""
    func = _sklearn_metric("matthews_corrcoef", "MatthewsCorrCoefMulti")
    return _thresholded(func, thresh, sigmoid, sample_weight=sample_weight)


def PrecisionMulti(
    thresh: float = 0.5,
    sigmoid: bool = True,
    labels: Any = None,
    pos_label: Any = 1,
    average: str | None = "macro",
    sample_weight: Any = None,
) -> AccumMetric:
    """Precision of the thresholded multi-label predictions, averaged over the labels (`average`)."""
    func = _sklearn_metric("precision_score", "PrecisionMulti")
    return _thresholded(
        func, thresh, sigmoid, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def RecallMulti(
    thresh: float = 0.5,
    sigmoid: bool = True,
    labels: Any = None,
    pos_label: Any = 1,
    average: str | None = "macro",
    sample_weight: Any = None,
) -> AccumMetric:
    """Recall of the thresholded multi-label predictions, averaged over the labels (`average`)."""
    func = _sklearn_metric("recall_score", "RecallMulti")
    return _thresholded(
        func, thresh, sigmoid, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def RocAucMulti(
    sigmoid: bool = True, average: str | None = "macro", sample_weight: Any = None, max_fpr: float | None = None
) -> AccumMetric:
    """Area under the ROC curve of each label's probability (the predictions' sigmoid, or the predictions themselves
    with `sigmoid=False`), averaged over the labels (`average`), for multi-label classification. Against one class
    index per item, `sigmoid=False` scores the predictions' argmax over the last dimension, as fastai's does."""
    func = _sklearn_metric("roc_auc_score", "RocAucMulti")
    return _label_scores(func, sigmoid, average=average, sample_weight=sample_weight, max_fpr=max_fpr)
