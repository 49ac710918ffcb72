"""The standard callbacks, a module per family."""

from ..warn import NonFiniteLossWarning
from .checkpointing import CheckpointCallback
from .core import (
    CastToTensor,
    CollectDataCallback,
    FetchPredsCallback,
    GatherPredsCallback,
    SkipToEpoch,
    TrainEvalCallback,
)
from .distributed import DistributedTrainer
from .ema import EMACallback
from .fp16 import AMPMode, MixedPrecision
from .graph import ShowGraphCallback
from .hook import ActivationStats, HookCallback
from .loggers import CSVLogger, TensorBoardCallback, TensorBoardProjectorCallback
from .lr_finder import LRFinder
from .mixed_loss import NoneReduce, reduce_loss
from .mixup import CutMix, MixHandler, MixUp
from .perf import ChannelsLast, CompileModel, ProfilerCallback
from .preds import MCDropoutCallback
from .progress import ProgressCallback
from .recorder import Recorder
from .rnn import ModelResetter, RNNCallback, RNNRegularizer, rnn_cbs
from .save_model import SaveModelCallback
from .schedule import ParamScheduler
from .tracker import EarlyStoppingCallback, ReduceLROnPlateau, TrackerCallback
from .training import (
    BnFreeze,
    GradientAccumulation,
    GradientClip,
    ShortEpochCallback,
    TerminateOnNaNCallback,
    bn_types,
    set_bn_eval,
)

__all__ = [
    "AMPMode",
    "ActivationStats",
    "BnFreeze",
    "CSVLogger",
    "CastToTensor",
    "ChannelsLast",
    "CheckpointCallback",
    "CollectDataCallback",
    "CompileModel",
    "CutMix",
    "DistributedTrainer",
    "EMACallback",
    "EarlyStoppingCallback",
    "FetchPredsCallback",
    "GatherPredsCallback",
    "GradientAccumulation",
    "GradientClip",
    "HookCallback",
    "LRFinder",
    "MCDropoutCallback",
    "MixHandler",
    "MixUp",
    "MixedPrecision",
    "ModelResetter",
    "NonFiniteLossWarning",
    "NoneReduce",
    "ParamScheduler",
    "ProfilerCallback",
    "ProgressCallback",
    "RNNCallback",
    "RNNRegularizer",
    "Recorder",
    "ReduceLROnPlateau",
    "SaveModelCallback",
    "ShortEpochCallback",
    "ShowGraphCallback",
    "SkipToEpoch",
    "TensorBoardCallback",
    "TensorBoardProjectorCallback",
    "TerminateOnNaNCallback",
    "TrackerCallback",
    "TrainEvalCallback",
    "bn_types",
    "reduce_loss",
    "rnn_cbs",
    "set_bn_eval",
]
