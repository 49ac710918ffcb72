"""The standard callbacks, a module per family."""

from .core import GatherPredsCallback, SkipToEpoch, TrainEvalCallback
from .progress import ProgressCallback
from .recorder import Recorder

__all__ = ["GatherPredsCallback", "ProgressCallback", "Recorder", "SkipToEpoch", "TrainEvalCallback"]
