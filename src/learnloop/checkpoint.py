"""Saving and loading weights safely: atomic writes, and loads through torch's weights-only unpickler."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CheckpointError", "atomic_save", "safe_load", "save_model", "load_model", "to_plain"]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, corrupt, foreign or unsafe."""


def to_plain(obj: Any) -> Any:
    """`obj` with numpy scalars and arrays turned into Python numbers and lists, for the weights-only loader."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync, then rename: `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(to_plain(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)`, with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: check the name and the learner's path/model_dir.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it is refused: loading it could "
            f"run arbitrary code. Only load files you trust, with torch.load(weights_only=False). ({e})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read ({e}).") from e


def save_model(path: str | Path, model: nn.Module, opt: Any = None, with_opt: bool = True) -> Path:
    """Save the model's state (and the optimizer's, when `with_opt`) to `path`, atomically."""
    state = model.state_dict()
    if with_opt and opt is not None:
        return atomic_save({"model": state, "opt": opt.state_dict()}, path)
    return atomic_save(state, path)


def load_model(
    path: str | Path,
    model: nn.Module,
    opt: Any = None,
    with_opt: bool = True,
    device: Any = None,
    strict: bool = True,
) -> None:
    """Load what `save_model` wrote into `model` (and `opt`), with clear errors for a foreign file."""
    state = safe_load(path, map_location=device)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    has_opt = set(state) == {"model", "opt"}
    model_state = state["model"] if has_opt else state
    try:
        model.load_state_dict(model_state, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path} was saved from a different model: {e}") from e
    if with_opt and opt is not None:
        if not has_opt:
            warnings.warn(f"{path} holds no optimizer state; only the model was loaded.", stacklevel=3)
            return
        try:
            opt.load_state_dict(state["opt"])
        except (KeyError, ValueError, RuntimeError, IndexError) as e:
            warnings.warn(f"Could not load the optimizer state from {path} ({e}); it was left as it was.",
                          stacklevel=3)
