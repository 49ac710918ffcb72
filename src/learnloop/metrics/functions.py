"""The ready-made metrics, fastai's: per-batch functions averaged over a phase (:func:`accuracy`, :func:`mse`,
...), and the shared whole-set :class:`~learnloop.metrics.AccumMetric` objects (:data:`rmse`,
:data:`exp_rmspe`, :data:`r2_score`, :data:`explained_variance`) with the factories :func:`R2Score` and
:func:`ExplainedVariance`, whose numbers are scikit-learn's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, to_int
from .accum import AccumMetric
from .core import _at_least_float32, flatten_check


def accuracy(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """Fraction of items whose argmax over ``axis`` equals the target class."""
    pred, targ = flatten_check(inp.argmax(dim=to_int(axis, "axis", "accuracy", "the dimension of the classes")), targ)
    return (pred == targ).float().mean()


def error_rate(inp: Tensor, targ: Tensor, axis: int = -1) -> Tensor:
    """1 - accuracy."""
    return 1 - accuracy(inp, targ, axis=axis)


def top_k_accuracy(inp: Tensor, targ: Tensor, k: int = 5, axis: int = -1) -> Tensor:
    """Fraction of items whose target is among the ``k`` highest scores over ``axis``."""
    k = to_int(k, "k", "top_k_accuracy", "how many of the highest scores count")
    axis = to_int(axis, "axis", "top_k_accuracy", "the dimension of the classes") % inp.dim()
    expected = inp.shape[:axis] + inp.shape[axis + 1 :]
    if targ.shape != expected:
        raise ValueError(
            f"top_k_accuracy: target of shape {tuple(targ.shape)} does not match input of shape "
            f"{tuple(inp.shape)}; expected target shape {tuple(expected)}"
        )
    if k > inp.shape[axis]:
        raise ValueError(f"top_k_accuracy: k={k} is larger than the {inp.shape[axis]} classes")
    top = inp.topk(k=k, dim=axis).indices
    hits = top == targ.unsqueeze(axis).expand_as(top)
    return hits.sum(dim=axis).float().mean()


def accuracy_multi(inp: Tensor, targ: Tensor, thresh: float = 0.5, sigmoid: bool = True) -> Tensor:
    """Multi-label accuracy: fraction of (item, label) pairs where ``inp > thresh`` matches ``targ``."""
    inp, targ = flatten_check(inp, targ)
    if sigmoid:
        inp = inp.sigmoid()
    return ((inp > thresh) == targ.bool()).float().mean()


def mse(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean squared error."""
    return F.mse_loss(*flatten_check(inp, targ))


def mae(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean absolute error."""
    inp, targ = flatten_check(inp, targ)
    return (inp - targ).abs().mean()


def msle(inp: Tensor, targ: Tensor) -> Tensor:
    """Mean squared logarithmic error: mse of ``log(1 + x)``, computed as written (as fastai: not ``log1p``,
    which differs in the last bits, and by more for small values)."""
    inp, targ = flatten_check(inp, targ)
    return F.mse_loss(torch.log(1 + inp), torch.log(1 + targ))


def _rmse(inp: Tensor, targ: Tensor) -> Tensor:
    return torch.sqrt(F.mse_loss(_at_least_float32(inp), _at_least_float32(targ)))


def _exp_rmspe(inp: Tensor, targ: Tensor) -> Tensor:
    inp, targ = torch.exp(inp), torch.exp(targ)
    return torch.sqrt(((targ - inp) / targ).pow(2).mean())


# R² and explained variance are scikit-learn's metrics in fastai (`skm_to_fastai`): computed here with the numpy
# operations scikit-learn 1.x uses, in the same order and dtype, so the values are its float32 numbers, bit for bit.
def _regression_columns(
    targ: np.ndarray, pred: np.ndarray, sample_weight: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``targ`` and ``pred`` as (n, 1) columns of scikit-learn's dtype (the widest floating one among the inputs that
    have a dtype, so not a list of weights; float64 when none is floating; at least float32: half-precision sums
    overflow), and the weights in it."""
    given = [a for a in (targ, pred, sample_weight) if a is not None]
    arrays = [np.asarray(a) for a in given]
    # As scikit-learn, only inputs that have a dtype count: weights in a list of floats are not float64 ones.
    typed = [a for a, g in zip(arrays, given, strict=True) if hasattr(g, "dtype")]
    floating = [a.dtype for a in typed if np.issubdtype(a.dtype, np.floating)]
    dtype = np.result_type(np.float32, *floating) if floating else np.dtype(np.float64)
    y_true, y_pred = (a.astype(dtype).reshape(-1, 1) if a.ndim == 1 else a.astype(dtype) for a in arrays[:2])
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=dtype).reshape(-1)
    if weight is not None and len(weight) != len(y_true):
        raise InputError(
            f"sample_weight has {len(weight)} weights for {len(y_true)} predictions: give one weight per item of the "
            "data the metric is computed on (the validation set, in dataset order)."
        )
    return y_true, y_pred, weight


def _explained_share(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """``1 - numerator / denominator`` averaged over the outputs, with scikit-learn's convention for constant
    targets (``force_finite``): 1 for a perfect fit, else 0."""
    scores = np.ones(numerator.shape, dtype=numerator.dtype)
    valid = (denominator != 0) & (numerator != 0)
    scores[valid] = 1 - (numerator[valid] / denominator[valid])
    scores[(numerator != 0) & (denominator == 0)] = 0.0
    return float(np.average(scores))


def _r2_score(targ: np.ndarray, pred: np.ndarray, sample_weight: Any = None) -> float:
    y_true, y_pred, weight = _regression_columns(targ, pred, sample_weight)
    if len(y_true) < 2:
        return math.nan  # not defined for a single sample (scikit-learn warns and returns nan)
    w = 1.0 if weight is None else weight[:, None]
    numerator = np.sum(w * (y_true - y_pred) ** 2, axis=0)
    denominator = np.sum(w * (y_true - np.average(y_true, axis=0, weights=weight)) ** 2, axis=0)
    return _explained_share(numerator, denominator)


def _explained_variance(targ: np.ndarray, pred: np.ndarray, sample_weight: Any = None) -> float:
    y_true, y_pred, weight = _regression_columns(targ, pred, sample_weight)
    diff_avg = np.average(y_true - y_pred, weights=weight, axis=0)
    numerator = np.average((y_true - y_pred - diff_avg) ** 2, weights=weight, axis=0)
    true_avg = np.average(y_true, weights=weight, axis=0)
    denominator = np.average((y_true - true_avg) ** 2, weights=weight, axis=0)
    return _explained_share(numerator, denominator)


def R2Score(sample_weight: Any = None) -> AccumMetric:
    """A new whole-set coefficient of determination, 1 - SS_res / SS_tot, a Python float (named ``r2_score``):
    scikit-learn's ``r2_score`` on the flattened predictions, as fastai's, without needing scikit-learn.

    The same numbers as scikit-learn's, bit for bit, except that half-precision inputs are computed in float32
    and that NaN in the inputs, or no input, gives nan where scikit-learn raises a ValueError (a single item gives
    nan, without scikit-learn's UndefinedMetricWarning). ``sample_weight`` holds one weight
    per item in dataset order, so it is for a single process: in a distributed run the ranks' items are joined
    rank by rank, not in dataset order."""
    return AccumMetric(_r2_score, to_np=True, invert_arg=True, sample_weight=sample_weight, name="r2_score")


def ExplainedVariance(sample_weight: Any = None) -> AccumMetric:
    """A new whole-set 1 - Var(targ - pred) / Var(targ), a Python float (named ``explained_variance_score``):
    scikit-learn's ``explained_variance_score``, as fastai's, but NaN in the inputs gives nan where scikit-learn
    raises a ValueError."""
    return AccumMetric(
        _explained_variance, to_np=True, invert_arg=True, sample_weight=sample_weight, name="explained_variance_score"
    )


rmse = AccumMetric(_rmse)
"""Root mean squared error over the whole set (named ``_rmse``, as in fastai)."""

exp_rmspe = AccumMetric(_exp_rmspe)
"""Root mean squared percentage error of ``exp(pred)`` against ``exp(targ)`` over the whole set."""

r2_score = R2Score()
"""Coefficient of determination over the whole set (scikit-learn's ``r2_score`` on flattened data)."""

explained_variance = ExplainedVariance()
"""Explained variance over the whole set (scikit-learn's ``explained_variance_score``)."""

# Module-level metric objects anyone may also call as functions: each learner gets its own copy (mk_metric).
_SHARED_METRICS: tuple[AccumMetric, ...] = (rmse, exp_rmspe, r2_score, explained_variance)
