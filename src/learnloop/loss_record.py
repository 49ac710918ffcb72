"""The loss function of an export, described so that a weights-only load can rebuild it.

A weights-only load (``load_learner(fname, model=...)``) cannot unpickle the loss function, so the export also
describes it with names, numbers and lists only. Its class name is looked up in a table, never imported: only
learnloop's losses and torch.nn's are rebuilt, by calling their constructors with the recorded settings. Any
other loss becomes `InferenceOnlyLoss`, with a warning when predictions lose its activation or decodes.
"""

from __future__ import annotations

import inspect
import json
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .losses import BaseLoss
from .warn import warn_caller

__all__ = ["InferenceOnlyLoss", "class_name", "loss_record", "rebuilt_loss"]


class InferenceOnlyLoss:
    """The loss function of a learner loaded for inference without one: predictions work, losses do not."""

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError(
            "This learner was loaded by load_learner for inference, without a loss function: pass "
            "load_learner(..., loss_func=...) to compute losses or to train."
        )

    def __repr__(self) -> str:
        return "InferenceOnlyLoss()"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def class_name(obj: Any) -> str:
    """`obj`'s class as module.qualname."""
    return _qualified(type(obj))


_SETTING_TYPES = (bool, int, float, str, type(None))
_TENSOR_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
_FLAT_SETTINGS = ("axis", "flatten", "floatify", "is_2d", "thresh")  # BaseLoss's own, set after construction
_FOLDED_PARAMETERS = {"size_average", "reduce"}  # torch's deprecated arguments, kept in `reduction`


# torch.nn's losses a description may name: a fixed list (a file could otherwise name any class torch adds), of
# losses without parameters whose settings are numbers, strings or small tensors (not AdaptiveLogSoftmaxWithLoss or
# LinearCrossEntropyLoss, whose sizes would allocate weights, nor TripletMarginWithDistanceLoss, which takes a
# function).
_TORCH_LOSSES = (
    "BCELoss", "BCEWithLogitsLoss", "CTCLoss", "CosineEmbeddingLoss", "CrossEntropyLoss", "GaussianNLLLoss",
    "HingeEmbeddingLoss", "HuberLoss", "KLDivLoss", "L1Loss", "MSELoss", "MarginRankingLoss", "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss", "MultiMarginLoss", "NLLLoss", "PoissonNLLLoss", "SmoothL1Loss", "SoftMarginLoss",
    "TripletMarginLoss",
)


def _rebuildable() -> dict[str, type]:
    """The loss classes a description may name: learnloop's, torch.nn's listed above, and the inference stand-in."""
    from . import losses

    classes: list[type] = [getattr(losses, name) for name in losses.__all__]
    classes += [c for name in _TORCH_LOSSES if isinstance(c := getattr(nn, name, None), type)]
    classes.append(InferenceOnlyLoss)
    return {_qualified(c): c for c in classes}


def loss_record(loss: Any) -> dict[str, Any]:
    """What an export says of its loss function: class name, whether it has an activation or decodes, and the
    description a `model=` load rebuilds it from (None when it cannot be rebuilt safely)."""
    functions = (types.FunctionType, types.BuiltinFunctionType)
    name = f"{loss.__module__}.{loss.__qualname__}" if isinstance(loss, functions) else class_name(loss)
    if isinstance(loss, BaseLoss):  # BaseLoss's own activation and decodes are the identity
        acts = type(loss).activation is not BaseLoss.activation or type(loss).decodes is not BaseLoss.decodes
    else:
        acts = callable(getattr(loss, "activation", None)) or callable(getattr(loss, "decodes", None))
    return {"class": name, "has_activation": bool(acts), "description": _describe_loss(loss)}


def _describe_loss(loss: Any) -> dict[str, Any] | None:
    cls = type(loss)
    if _rebuildable().get(_qualified(cls)) is not cls:  # exactly the class: a subclass may change anything
        return None
    if isinstance(loss, BaseLoss):
        func = _describe_loss(loss.func)
        flat = {k: loss.__dict__[k] for k in _FLAT_SETTINGS if k in loss.__dict__}
        if func is None or not all(isinstance(v, _SETTING_TYPES) for v in flat.values()):
            return None
        description = {"class": _qualified(cls), "settings": flat, "func": func}
    else:
        settings = _constructor_settings(loss)
        if settings is None:
            return None
        description = {"class": _qualified(cls), "settings": settings}
    try:  # what is written must load: the same classes again, from the description alone
        rebuilt = _build_loss(description, torch.device("cpu"))
    except Exception:  # noqa: BLE001 - a constructor may refuse the settings read back in many ways
        return None
    if isinstance(loss, BaseLoss) and type(rebuilt.func) is not type(loss.func):
        return None
    return description


def _constructor_settings(obj: Any) -> dict[str, Any] | None:
    """`obj`'s constructor arguments, read back from its attributes of the same names (None if one is missing or
    is not a number, string, None or tensor)."""
    try:
        parameters = inspect.signature(type(obj)).parameters.values()
    except (TypeError, ValueError):
        return None
    settings: dict[str, Any] = {}
    for p in parameters:
        if p.name in _FOLDED_PARAMETERS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(obj, p.name):
            return None
        value = getattr(obj, p.name)
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            if dtype not in _TENSOR_DTYPES:
                return None
            value = {"tensor": value.detach().cpu().tolist(), "dtype": dtype}  # lists: JSON for safetensors too
        elif not isinstance(value, _SETTING_TYPES):
            return None
        settings[p.name] = value
    return settings


def _build_loss(description: dict[str, Any], device: torch.device) -> Any:
    """The loss function a description names (see `_describe_loss`); an exception (KeyError, TypeError,
    ValueError...) for one that does not describe a loss this learnloop can rebuild."""
    classes = _rebuildable()
    cls = classes[description["class"]]
    loss: Any
    if issubclass(cls, BaseLoss):
        func = description["func"]
        func_cls, func_settings = classes[func["class"]], _decode_settings(func["settings"], device)
        loss = cls(func_cls, **func_settings) if cls is BaseLoss else cls(**func_settings)
        if type(loss.func) is not func_cls:
            raise TypeError(f"{cls.__name__} wraps a {type(loss.func).__name__}, not a {func_cls.__name__}")
        for key, value in description["settings"].items():
            if key not in _FLAT_SETTINGS or not isinstance(value, _SETTING_TYPES):
                raise ValueError(f"unknown setting {key!r} of {cls.__name__}")
            setattr(loss, key, value)
    else:
        loss = cls(**_decode_settings(description["settings"], device))
    if isinstance(loss, nn.Module) and next(loss.parameters(), None) is not None:
        raise ValueError(f"{cls.__name__} has parameters: not a loss an export describes")
    return loss


def _decode_settings(settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            if value.get("dtype") not in _TENSOR_DTYPES:
                raise ValueError(f"setting {key!r}: unknown tensor type {value.get('dtype')!r}")
            value = torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]), device=device)
        elif not isinstance(value, _SETTING_TYPES):
            raise ValueError(f"setting {key!r} is a {type(value).__name__}")
        decoded[key] = value
    return decoded


def rebuilt_loss(record: Any, device: torch.device, path: Path) -> Any:
    """The exported loss function rebuilt from its description, else `InferenceOnlyLoss` (with a warning when the
    exported loss had an activation or decodes that predictions will now go without)."""
    advice = "pass load_learner(..., loss_func=...) with the loss function used in training to get them."
    if isinstance(record, str):  # a safetensors file's metadata: JSON
        try:
            record = json.loads(record)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            record = None
    if not isinstance(record, dict):  # an export written before learnloop recorded the loss function
        warn_caller(
            f"load_learner: {path} does not record its loss function (an export from an older learnloop, or an "
            "unreadable record), so "
            "predict and get_preds apply no activation or decodes (softmax, argmax, ...) it may have had: " + advice
        )
        return InferenceOnlyLoss()
    description = record.get("description")
    if isinstance(description, dict):
        try:
            return _build_loss(description, device)
        except Exception:  # noqa: BLE001 - another version's class or settings, or an edited file: warned below
            pass
    if record.get("has_activation"):
        warn_caller(
            f"load_learner: the loss function of {path}, a {record.get('class')}, cannot be rebuilt from the "
            "export without unpickling it, so predict and get_preds do not apply its activation and decodes (they "
            "return the model's raw outputs): " + advice
        )
    return InferenceOnlyLoss()
