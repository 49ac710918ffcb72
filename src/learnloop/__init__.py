"""learnloop: a fast, typed PyTorch training loop with fastai's Learner, callbacks and optimizers."""

from .callback import Callback
from .callbacks import GatherPredsCallback, ProgressCallback, Recorder, SkipToEpoch, TrainEvalCallback
from .data import DataLoaders, default_device
from .events import (
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    Event,
)
from .learner import Learner, norm_bias_params, trainable_params
from .metrics import (
    AccumMetric,
    AvgLoss,
    AvgMetric,
    AvgSmoothLoss,
    Metric,
    ValueMetric,
    accuracy,
    error_rate,
    mae,
    mse,
    rmse,
    top_k_accuracy,
)

__version__ = "0.1.0"

__all__ = [
    "AccumMetric",
    "AvgLoss",
    "AvgMetric",
    "AvgSmoothLoss",
    "Callback",
    "CancelBackwardException",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CancelTrainException",
    "CancelValidException",
    "DataLoaders",
    "Event",
    "GatherPredsCallback",
    "Learner",
    "Metric",
    "ProgressCallback",
    "Recorder",
    "SkipToEpoch",
    "TrainEvalCallback",
    "ValueMetric",
    "accuracy",
    "default_device",
    "error_rate",
    "mae",
    "mse",
    "norm_bias_params",
    "rmse",
    "top_k_accuracy",
    "trainable_params",
]
