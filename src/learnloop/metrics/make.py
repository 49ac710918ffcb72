""":func:`mk_metric`: what ``Learner(metrics=...)`` is given (a Metric, a torchmetrics-style object or a function)
as a :class:`~learnloop.metrics.Metric`, each learner getting its own copy of the shared whole-set metrics."""

from __future__ import annotations

import copy
from typing import Any

from .accum import TorchMetric, TorchMetricLike
from .core import AvgMetric, Metric
from .functions import _SHARED_METRICS


def mk_metric(m: Any) -> Metric:
    """Turn ``m`` (Metric, torchmetrics-style object, or function; a class is instantiated first, as in fastai) into
    a :class:`Metric`.

    The shared metric objects of :mod:`learnloop.metrics` (``rmse``, ``exp_rmspe``, ``r2_score``,
    ``explained_variance``) are copied (with no batch stored), unlike fastai's: they are also called as functions
    (``rmse(pred, targ)``), which replaces the batches they store, so a learner keeps its own. Other metrics, your
    own ``AccumMetric`` objects included, are used as they are (``learn.metrics[0] is m``, as in fastai).
    """
    if isinstance(m, type):  # a class is instantiated, as in fastai: a Metric, or a callable class (a functor)
        m = m()
    elif any(m is shared for shared in _SHARED_METRICS):
        m = copy.copy(m)
        m.kwargs = dict(m.kwargs)
        m.reset()  # new lists: the original's stay its own
    if isinstance(m, Metric):
        return m
    if isinstance(m, TorchMetricLike):
        return TorchMetric(m)
    if callable(m) and not isinstance(m, type):
        return AvgMetric(m)
    raise TypeError(
        f"Cannot use {m!r:.100} (of type {type(m).__name__}) as a metric: expected a learnloop Metric, "
        "an object with update/compute/reset methods (such as a torchmetrics metric), "
        "or a function f(pred, *targets) returning a tensor"
    )
