"""Metrics: objects the Recorder resets, feeds batch by batch and reads at the end of a phase.

A metric has ``reset()``, ``accumulate(learn)``, a ``value`` property and a ``name`` property.
Plain functions ``f(pred, *targets) -> Tensor`` become an :class:`AvgMetric` (mean over the set,
weighted by batch size); whole-set metrics such as :data:`rmse` are :class:`AccumMetric` objects, of which a
learner keeps its own copy (see :func:`mk_metric`).

Running totals stay on the predictions' device as tensors, so accumulating never waits for the
accelerator; only reading ``value`` does. They live in plain attributes (``total``/``count``,
``preds``/``targs``) so a distributed layer can all-reduce or all-gather them before ``value``.

The package's modules: :mod:`.core` (the :class:`Metric` base class, the weighted means and the helpers),
:mod:`.smooth` (:class:`AvgSmoothLoss`), :mod:`.accum` (:class:`AccumMetric`, :class:`TorchMetric`),
:mod:`.functions` (the ready-made metrics), :mod:`.loss_metrics` (:class:`Perplexity`, :class:`LossMetric`),
:mod:`.segmentation` (:class:`Dice`, :class:`DiceMulti`, ...), :mod:`.bleu` (:class:`CorpusBLEUMetric`),
:mod:`.sklearn_metrics` and :mod:`.sklearn_multi` (fastai's scikit-learn and scipy metrics, which need
``pip install 'learnloop[metrics]'``) and :mod:`.make` (:func:`mk_metric`).

Example::

    learn = Learner(dls, model, loss_func, metrics=[accuracy, top_k_accuracy, rmse])
"""

from .accum import AccumMetric, ActivationType, TorchMetric, TorchMetricLike
from .bleu import CorpusBLEUMetric
from .core import AvgLoss, AvgMetric, Metric, MetricLearner, ValueMetric, find_bs, flatten_check
from .functions import (
    ExplainedVariance,
    R2Score,
    accuracy,
    accuracy_multi,
    error_rate,
    exp_rmspe,
    explained_variance,
    mae,
    mse,
    msle,
    r2_score,
    rmse,
    top_k_accuracy,
)

# The functions the shared whole-set metrics wrap: metrics pickled when this package was one module,
# learnloop/metrics.py, name them as `learnloop.metrics._rmse` and so on.
from .functions import _exp_rmspe as _exp_rmspe
from .functions import _explained_variance as _explained_variance
from .functions import _r2_score as _r2_score
from .functions import _rmse as _rmse
from .loss_metrics import LossMetric, LossMetrics, Perplexity, perplexity
from .make import mk_metric
from .segmentation import Dice, DiceMulti, JaccardCoeff, JaccardCoeffMulti, foreground_acc
from .sklearn_metrics import (
    APScoreBinary,
    BalancedAccuracy,
    BrierScore,
    CohenKappa,
    F1Score,
    FBeta,
    HammingLoss,
    Jaccard,
    MatthewsCorrCoef,
    PearsonCorrCoef,
    Precision,
    Recall,
    RocAuc,
    RocAucBinary,
    SpearmanCorrCoef,
    optim_metric,
    skm_to_fastai,
)
from .sklearn_multi import (
    APScoreMulti,
    BrierScoreMulti,
    F1ScoreMulti,
    FBetaMulti,
    HammingLossMulti,
    JaccardMulti,
    MatthewsCorrCoefMulti,
    PrecisionMulti,
    RecallMulti,
    RocAucMulti,
)
from .smooth import AvgSmoothLoss

__all__ = [
    "APScoreBinary",
    "APScoreMulti",
    "AccumMetric",
    "ActivationType",
    "AvgLoss",
    "AvgMetric",
    "AvgSmoothLoss",
    "BalancedAccuracy",
    "BrierScore",
    "BrierScoreMulti",
    "CohenKappa",
    "CorpusBLEUMetric",
    "Dice",
    "DiceMulti",
    "ExplainedVariance",
    "F1Score",
    "F1ScoreMulti",
    "FBeta",
    "FBetaMulti",
    "HammingLoss",
    "HammingLossMulti",
    "Jaccard",
    "JaccardCoeff",
    "JaccardCoeffMulti",
    "JaccardMulti",
    "LossMetric",
    "LossMetrics",
    "MatthewsCorrCoef",
    "MatthewsCorrCoefMulti",
    "Metric",
    "MetricLearner",
    "PearsonCorrCoef",
    "Perplexity",
    "Precision",
    "PrecisionMulti",
    "R2Score",
    "Recall",
    "RecallMulti",
    "RocAuc",
    "RocAucBinary",
    "RocAucMulti",
    "SpearmanCorrCoef",
    "TorchMetric",
    "TorchMetricLike",
    "ValueMetric",
    "accuracy",
    "accuracy_multi",
    "error_rate",
    "exp_rmspe",
    "explained_variance",
    "find_bs",
    "flatten_check",
    "foreground_acc",
    "mae",
    "mk_metric",
    "mse",
    "msle",
    "optim_metric",
    "perplexity",
    "r2_score",
    "rmse",
    "skm_to_fastai",
    "top_k_accuracy",
]
