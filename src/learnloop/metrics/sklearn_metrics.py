"""fastai's metrics built on scikit-learn and scipy: the converter :func:`skm_to_fastai`, :func:`optim_metric`,
the single-label classification metrics (:func:`F1Score`, :func:`RocAuc`, ...) and the regression correlations
:func:`PearsonCorrCoef` and :func:`SpearmanCorrCoef`; their multi-label forms (:func:`F1ScoreMulti`, ...) are in
:mod:`.sklearn_multi`.

Each factory returns a new :class:`~learnloop.metrics.AccumMetric` named after the function it wraps
(``f1_score``, ``roc_auc_score``, ``pearsonr``), whose value is what scikit-learn or scipy returns for the whole
set (a Python or numpy number, which the Recorder logs as a Python number), their warnings on degenerate input
included. scikit-learn and scipy are an optional extra
(``pip install 'learnloop[metrics]'``): importing learnloop does not import them; creating one of these metrics
does, and says what to install when they are missing.

Single-label metrics take the argmax over ``axis`` of the predictions (their softmax, for the ROC and
average-precision ones); multi-label ones a sigmoid, then ``>= thresh``, and keep the ``(items, labels)`` shape.

Example::

    learn = Learner(dls, model, CrossEntropyLossFlat(), metrics=[F1Score(average="macro"), RocAuc()])
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from .accum import AccumMetric, ActivationType
from .core import _func_name

__all__ = [
    "APScoreBinary",
    "BalancedAccuracy",
    "BrierScore",
    "CohenKappa",
    "F1Score",
    "FBeta",
    "HammingLoss",
    "Jaccard",
    "MatthewsCorrCoef",
    "PearsonCorrCoef",
    "Precision",
    "Recall",
    "RocAuc",
    "RocAucBinary",
    "SpearmanCorrCoef",
    "optim_metric",
    "skm_to_fastai",
]

_INSTALL = "pip install 'learnloop[metrics]'"


def _import(module: str, needed_by: str) -> ModuleType:
    """`module` imported, or an ImportError naming the metric that needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = "scikit-learn" if module.startswith("sklearn") else "scipy (installed with scikit-learn)"
        raise ImportError(
            f"{needed_by} needs {package}, which could not be imported ({e}); install it with: {_INSTALL}",
            name=module,
        ) from e


def _sklearn_metric(func_name: str, needed_by: str) -> Callable[..., Any]:
    """The function ``sklearn.metrics.<func_name>``, looked up when the metric is made (as fastai does)."""
    func: Callable[..., Any] = getattr(_import("sklearn.metrics", needed_by), func_name)
    return func


def skm_to_fastai(
    func: Callable[..., Any],
    is_class: bool = True,
    thresh: float | None = None,
    axis: int = -1,
    activation: ActivationType | str | None = None,
    **kwargs: Any,
) -> AccumMetric:
    """A whole-set metric computing ``func(targets, predictions)`` on numpy arrays (a scikit-learn metric).

    For a classification metric (`is_class`) without `thresh`, the predictions' argmax over `axis`; with
    `thresh`, a sigmoid (unless `activation` says otherwise) then ``>= thresh``. Other keywords go to
    :class:`~learnloop.metrics.AccumMetric` (``flatten``, ``name``...) or, failing that, to `func`.
    """
    dim_argmax = axis if is_class and thresh is None else None
    if activation is None:
        activation = ActivationType.Sigmoid if is_class and thresh is not None else ActivationType.No
    return AccumMetric(
        func, dim_argmax=dim_argmax, activation=activation, thresh=thresh, to_np=True, invert_arg=True, **kwargs
    )


class _OptimizedMetric:
    """``f(preds, targs, **{argname: x})`` at the `x` within `bounds` that maximises it (minimises it when not
    `do_neg`), found by scipy's bounded scalar minimisation to within `tol`; with `get_x`, ``(value, x)``."""

    def __init__(
        self, f: Callable[..., Any], argname: str, bounds: tuple[float, float], tol: float, do_neg: bool, get_x: bool
    ) -> None:
        self.f, self.argname, self.bounds, self.tol, self.do_neg, self.get_x = f, argname, bounds, tol, do_neg, get_x
        self.__name__ = f"opt_{_func_name(f)}"  # the Recorder's column, as fastai names the function it returns

    def __call__(self, preds: Any, targs: Any) -> Any:
        optimize = _import("scipy.optimize", "optim_metric")

        def objective(x: float) -> Any:
            value = self.f(preds, targs, **{self.argname: x})
            return -value if self.do_neg else value

        result = optimize.minimize_scalar(objective, bounds=self.bounds, method="bounded", options={"xatol": self.tol})
        value = -result.fun if self.do_neg else result.fun
        return (value, result.x) if self.get_x else value


def optim_metric(
    f: Callable[..., Any],
    argname: str,
    bounds: tuple[float, float],
    tol: float = 0.01,
    do_neg: bool = True,
    get_x: bool = False,
) -> Callable[..., Any]:
    """``f(preds, targs)`` at its best value over the keyword `argname` within `bounds` (its maximum, or its
    minimum when not `do_neg`), found to within `tol`; named ``opt_<f's name>``; with `get_x`, ``(value, x)``.

    >>> opt_acc = optim_metric(accuracy_multi, "thresh", (0.1, 0.9))  # accuracy at the best threshold
    """
    _import("scipy.optimize", "optim_metric")
    return _OptimizedMetric(f, argname, bounds, tol, do_neg, get_x)


# Single-label classification: argmax over `axis`, or the softmax probabilities for the ranking metrics.


def APScoreBinary(
    axis: int = -1, average: str | None = "macro", pos_label: Any = 1, sample_weight: Any = None
) -> AccumMetric:
    """Average precision of the last class's softmax probability, for binary single-label classification."""
    func = _sklearn_metric("average_precision_score", "APScoreBinary")
    return skm_to_fastai(
        func,
        axis=axis,
        activation=ActivationType.BinarySoftmax,
        average=average,
        pos_label=pos_label,
        sample_weight=sample_weight,
    )


def BalancedAccuracy(axis: int = -1, sample_weight: Any = None, adjusted: bool = False) -> AccumMetric:
    """Balanced accuracy (the mean of the per-class recalls) of the predicted classes."""
    func = _sklearn_metric("balanced_accuracy_score", "BalancedAccuracy")
    return skm_to_fastai(func, axis=axis, sample_weight=sample_weight, adjusted=adjusted)


def BrierScore(axis: int = -1, sample_weight: Any = None, pos_label: Any = None) -> AccumMetric:
    """Brier score (mean squared difference) of the predicted classes (the argmax, as fastai's) and the targets."""
    func = _sklearn_metric("brier_score_loss", "BrierScore")
    return skm_to_fastai(func, axis=axis, sample_weight=sample_weight, pos_label=pos_label)


def CohenKappa(
    axis: int = -1, labels: Any = None, weights: str | None = None, sample_weight: Any = None
) -> AccumMetric:
    """Cohen's kappa (agreement beyond chance) of the predicted classes and the targets."""
    func = _sklearn_metric("cohen_kappa_score", "CohenKappa")
    return skm_to_fastai(func, axis=axis, labels=labels, weights=weights, sample_weight=sample_weight)


def F1Score(
    axis: int = -1, labels: Any = None, pos_label: Any = 1, average: str | None = "binary", sample_weight: Any = None
) -> AccumMetric:
    """F1 score (harmonic mean of precision and recall) of the predicted classes."""
    func = _sklearn_metric("f1_score", "F1Score")
    return skm_to_fastai(
        func, axis=axis, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def FBeta(
    beta: float,
    axis: int = -1,
    labels: Any = None,
    pos_label: Any = 1,
    average: str | None = "binary",
    sample_weight: Any = None,
) -> AccumMetric:
    """F-beta score (recall weighted `beta` times as much as precision) of the predicted classes."""
    func = _sklearn_metric("fbeta_score", "FBeta")
    return skm_to_fastai(
        func, axis=axis, beta=beta, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def HammingLoss(axis: int = -1, sample_weight: Any = None) -> AccumMetric:
    """Hamming loss (the fraction of wrong predictions) of the predicted classes."""
    func = _sklearn_metric("hamming_loss", "HammingLoss")
    return skm_to_fastai(func, axis=axis, sample_weight=sample_weight)


def Jaccard(
    axis: int = -1, labels: Any = None, pos_label: Any = 1, average: str | None = "binary", sample_weight: Any = None
) -> AccumMetric:
    """Jaccard index (intersection over union) of the predicted classes and the targets."""
    func = _sklearn_metric("jaccard_score", "Jaccard")
    return skm_to_fastai(
        func, axis=axis, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def Precision(
    axis: int = -1, labels: Any = None, pos_label: Any = 1, average: str | None = "binary", sample_weight: Any = None
) -> AccumMetric:
    """Precision of the predicted classes."""
    func = _sklearn_metric("precision_score", "Precision")
    return skm_to_fastai(
        func, axis=axis, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def Recall(
    axis: int = -1, labels: Any = None, pos_label: Any = 1, average: str | None = "binary", sample_weight: Any = None
) -> AccumMetric:
    """Recall of the predicted classes."""
    func = _sklearn_metric("recall_score", "Recall")
    return skm_to_fastai(
        func, axis=axis, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
    )


def RocAuc(
    axis: int = -1,
    average: str | None = "macro",
    sample_weight: Any = None,
    max_fpr: float | None = None,
    multi_class: str = "ovr",
) -> AccumMetric:
    """Area under the ROC curve of the softmax probabilities over `axis`, for multi-class single-label
    classification: one class against the rest (``multi_class="ovr"``) or against each other (``"ovo"``)."""
    if multi_class not in ("ovr", "ovo"):
        raise InputError(
            f"RocAuc: multi_class must be 'ovr' (one class against the rest) or 'ovo' (one against one), got "
            f"{multi_class!r}; for two classes use RocAucBinary."
        )
    func = _sklearn_metric("roc_auc_score", "RocAuc")
    return skm_to_fastai(
        func,
        axis=axis,
        activation=ActivationType.Softmax,
        flatten=False,
        average=average,
        sample_weight=sample_weight,
        max_fpr=max_fpr,
        multi_class=multi_class,
    )


def RocAucBinary(
    axis: int = -1,
    average: str | None = "macro",
    sample_weight: Any = None,
    max_fpr: float | None = None,
    multi_class: str = "raise",
) -> AccumMetric:
    """Area under the ROC curve of the last class's softmax probability, for binary single-label classification."""
    func = _sklearn_metric("roc_auc_score", "RocAucBinary")
    return skm_to_fastai(
        func,
        axis=axis,
        activation=ActivationType.BinarySoftmax,
        average=average,
        sample_weight=sample_weight,
        max_fpr=max_fpr,
        multi_class=multi_class,
    )


def MatthewsCorrCoef(sample_weight: Any = None, **kwargs: Any) -> AccumMetric:
    """Matthews correlation coefficient of the predicted classes and the targets (keywords go to
    :func:`skm_to_fastai`: ``axis``, ``thresh``...)."""
    func = _sklearn_metric("matthews_corrcoef", "MatthewsCorrCoef")
    return skm_to_fastai(func, sample_weight=sample_weight, **kwargs)


# Regression: scipy's correlation coefficients of the (flattened) predictions and targets.


def _as_numpy(x: Any) -> Any:
    """A tensor as a CPU numpy array (bfloat16, which numpy lacks, as float32); anything else unchanged."""
    if isinstance(x, Tensor):
        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
    return x


def pearsonr(x: Any, y: Any) -> Any:
    """Pearson's correlation coefficient of `x` and `y` (``scipy.stats.pearsonr``'s statistic)."""
    stats = _import("scipy.stats", "PearsonCorrCoef")
    return stats.pearsonr(_as_numpy(x), _as_numpy(y))[0]


def spearmanr(a: Any, b: Any = None, **kwargs: Any) -> Any:
    """Spearman's rank correlation coefficient of `a` and `b` (``scipy.stats.spearmanr``'s statistic)."""
    stats = _import("scipy.stats", "SpearmanCorrCoef")
    return stats.spearmanr(_as_numpy(a), _as_numpy(b), **kwargs)[0]


def PearsonCorrCoef(dim_argmax: int | None = None, **kwargs: Any) -> AccumMetric:
    """Pearson's correlation coefficient of the predictions and targets over the whole set, named ``pearsonr``
    (other keywords go to :class:`~learnloop.metrics.AccumMetric`)."""
    _import("scipy.stats", "PearsonCorrCoef")
    return AccumMetric(pearsonr, invert_arg=False, dim_argmax=dim_argmax, **kwargs)


def SpearmanCorrCoef(
    dim_argmax: int | None = None, axis: int | None = 0, nan_policy: str = "propagate", **kwargs: Any
) -> AccumMetric:
    """Spearman's rank correlation coefficient of the predictions and targets over the whole set, named
    ``spearmanr``; `axis` and `nan_policy` go to scipy (other keywords to :class:`~learnloop.metrics.AccumMetric`)."""
    _import("scipy.stats", "SpearmanCorrCoef")
    func = functools.partial(spearmanr, axis=axis, nan_policy=nan_policy)
    return AccumMetric(func, invert_arg=False, dim_argmax=dim_argmax, **kwargs)
