"""``learn.export`` / ``load_learner``: a trained model saved for inference, loaded without running code from the file.

fastai pickles the whole Learner, so loading an export runs whatever code the file names. A learnloop
export is read with torch's weights-only loader and holds:

- the model's ``state_dict`` (always), the model's class name, the learnloop and torch versions and
  ``dls.n_inp``;
- unless ``pickle_model=False``, the model and the loss function pickled, stored as an opaque ``bytes``
  field: the weights-only loader reads it as bytes and never unpickles it; only
  ``load_learner(fname, trusted=True)`` does;
- the loss function's class name and, for learnloop's losses and torch.nn's, a description of it made of
  names, numbers and lists only (its class and constructor settings: ``axis``, ``thresh``, ``eps``,
  ``reduction``, the ``weight`` tensor as a list...), from which a safe load rebuilds it, so that ``predict``
  and ``get_preds`` apply its activation and decodes (softmax, argmax) as before the export.

So there are two ways to load one:

>>> learn = load_learner("export.pkl", model=Net())       # safe: the weights go into a model you build,
...                                                         # the loss function is rebuilt from its description
>>> learn = load_learner("export.pkl", trusted=True)       # fastai-style: unpickles the stored model (runs code)
>>> learn.predict(x)

A file name ending in ``.safetensors`` writes the weights in the safetensors format instead (weights and
text metadata only, readable by other tools; needs ``pip install 'learnloop[safetensors]'``); loading it
needs ``model=``.
"""

from __future__ import annotations

import io
import json
import numbers
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .callback import noop
from .callbacks.mixed_loss import MixedLoss
from .checkpoint import (
    EXPORT_FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    atomic_write,
    check_format,
    check_state_dict,
    learnloop_version,
    safe_load,
)
from .data import DataLoaders, default_device
from .distributed import barrier, is_rank_zero, unwrap_model
from .errors import as_scalar
from .fsdp import is_fsdp
from .loss_record import InferenceOnlyLoss, class_name, loss_record, rebuilt_loss
from .warn import warn_caller

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["ExportIsADirectoryError", "export_learner", "load_learner", "InferenceOnlyLoss"]


def export_learner(
    learn: Learner,
    fname: str | Path = "export.pkl",
    pickle_model: bool = True,
    pickle_module: Any = None,
    pickle_protocol: int = 2,
) -> Path:
    """Write ``learn``'s model for inference to ``learn.path / fname`` atomically (see the module docstring).

    ``pickle_module`` (default: pickle) and ``pickle_protocol`` pickle the model and loss function stored for
    ``trusted=True`` loads (the file around them stays readable by torch's weights-only loader). In a
    distributed job rank 0 writes (the module inside the DDP wrapper) and every rank waits for the file. A model
    sharded with FSDP, of which each rank holds a part, is refused: save it with ``learn.save`` instead.
    """
    pickle_protocol = _check_pickling(pickle_module, pickle_protocol)  # on every rank, before any writes or waits
    if is_fsdp(unwrap_model(learn.model)):
        raise NotImplementedError(
            "learn.export() writes the whole model to one file, but this model is sharded with FSDP: each process "
            "holds a part of every parameter, and rank 0's part alone cannot be loaded. Save it with "
            "learn.save(name) (the folder models/name.dcp, one file per process), make it one file with "
            "`python -m torch.distributed.checkpoint.format_utils dcp_to_torch models/name.dcp name.pth` (its "
            "'model' entry is the state dict), and load that into the model built in one process."
        )
    path = learn.path / fname
    if is_rank_zero():
        _write_export(learn, path, pickle_model, pickle_module, pickle_protocol)
    barrier()
    return path


def _write_export(learn: Learner, path: Path, pickle_model: bool, pickle_module: Any, pickle_protocol: int) -> None:
    model = unwrap_model(learn.model)  # the module itself: its keys without DDP's "module." prefix
    loss_func = learn.loss_func
    while isinstance(loss_func, MixedLoss):  # MixUp's, in a fit or left by one that raised: the loss it wraps
        loss_func = loss_func.original
    if path.suffix == ".safetensors":
        metadata = {
            "model_class": class_name(model),
            "n_inp": str(getattr(learn.dls, "n_inp", None) or ""),
            "loss": json.dumps(loss_record(loss_func)),  # metadata are strings: the record as JSON
        }
        save_safetensors(path, model.state_dict(), metadata)
        return
    pickled = _pickled(model, loss_func, pickle_module, pickle_protocol) if pickle_model else None
    atomic_save(
        {
            "format": EXPORT_FORMAT,
            "format_version": FORMAT_VERSION,
            "learnloop_version": learnloop_version(),
            "torch_version": str(torch.__version__),
            "model_class": class_name(model),
            "n_inp": getattr(learn.dls, "n_inp", None),
            "model": model.state_dict(),
            "loss": loss_record(loss_func),
            "pickled": pickled,
        },
        path,
    )


def _check_pickling(pickle_module: Any, pickle_protocol: Any) -> int:
    """Refuse what `torch.save` could not pickle with, before the export's catch-all takes it for the model's fault;
    returns the protocol as a Python int (a numpy integer too, as torch's pickler and `learn.save` take it)."""
    if isinstance(pickle_module, bool):
        raise TypeError(
            f"learn.export(fname, {pickle_module!r}): the second argument is pickle_module, as in fastai; "
            f"pass pickle_model={pickle_module!r} by keyword."
        )
    if pickle_module is not None and not (hasattr(pickle_module, "Pickler") and hasattr(pickle_module, "dump")):
        raise TypeError(
            "learn.export: pickle_module must be a pickling module such as pickle or cloudpickle, "
            f"got {pickle_module!r}."
        )
    protocol = as_scalar(pickle_protocol)
    if isinstance(protocol, (bool, np.bool_)) or not isinstance(protocol, numbers.Integral):
        raise TypeError(f"learn.export: pickle_protocol must be an int, got {pickle_protocol!r}.")
    if not 2 <= int(protocol) <= pickle.HIGHEST_PROTOCOL:
        raise ValueError(
            f"learn.export: pickle_protocol must be from 2 (torch's default) to {pickle.HIGHEST_PROTOCOL}, "
            f"got {pickle_protocol}."
        )
    return int(protocol)


def _pickled(model: nn.Module, loss_func: Any, pickle_module: Any, pickle_protocol: int) -> bytes | None:
    buffer = io.BytesIO()
    try:
        torch.save(
            {"model": model, "loss_func": loss_func},
            buffer,
            pickle_module=pickle if pickle_module is None else pickle_module,
            pickle_protocol=pickle_protocol,
        )
    except Exception as e:  # noqa: BLE001 - anything may refuse to be pickled (lambdas, local classes, ...)
        warn_caller(
            f"learn.export: the model or loss function cannot be pickled ({type(e).__name__}: {e}); the export "
            "holds the weights only, to be loaded with load_learner(fname, model=...)."
        )
        return None
    return buffer.getvalue()


def load_learner(
    fname: str | Path,
    cpu: bool = True,
    pickle_module: Any = None,
    *,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    loss_func: Callable[..., torch.Tensor] | None = None,
    trusted: bool = False,
) -> Learner:
    """A Learner for inference from a file written by ``learn.export`` (on the CPU unless ``cpu=False``).

    ``model`` (a module, or a function building one; in an ``nn.DataParallel`` wrapper or not: the module inside gets
    them) receives the weights: the safe way (weights of another floating-point dtype than its own are cast to its,
    with a warning naming both). Without it, ``trusted=True`` unpickles the model stored in the file (with
    ``pickle_module``, default pickle), which runs code from it: only for files you trust (as in fastai, the classes
    and functions it names must be importable: the unpickler's error says to define or import them first).
    ``loss_func`` defaults to the exported one: unpickled, or, with ``model=``, rebuilt from the description the
    export holds of learnloop's losses and torch.nn's (``CrossEntropyLossFlat(axis=1)``, ``nn.MSELoss()``...), so
    ``predict`` and ``get_preds`` apply its activation and decodes. Any other loss cannot be rebuilt without running
    code: the learner gets a stand-in that refuses to compute losses (``predict``, and ``get_preds`` of inputs without
    targets, work without one; ``get_preds`` or ``validate`` of a loader with targets raises, where fastai's loaded
    learner computes its loss), and, when the exported loss had an activation or decodes, a warning says they are not
    applied: pass ``loss_func=`` to get them.
    The positional arguments are fastai's (``fname, cpu, pickle_module``).
    """
    from .learner import Learner

    if isinstance(cpu, (np.bool_, int)) and cpu in (0, 1):  # fastai tests it for truth: numpy's bools, 0 and 1 too
        cpu = bool(cpu)
    if not isinstance(cpu, bool):
        # A model passed where it used to go, before fastai's order was taken, is the likely mistake.
        got = (
            f"{type(cpu).__name__}; pass the model by keyword: load_learner(fname, model=...)"
            if isinstance(cpu, nn.Module) or callable(cpu) else f"{type(cpu).__name__} {_short_repr(cpu)}"
        )
        raise TypeError(f"load_learner(fname, cpu, pickle_module): cpu must be True or False, got {got}.")
    path = Path(fname)
    _check_export_file(path)
    device = torch.device("cpu") if cpu else default_device()
    if path.suffix == ".safetensors":
        weights, info = load_safetensors(path, device)
        pickled = None
    else:
        info = safe_load(path, map_location=device, refused_advice=_NOT_AN_EXPORT)
        check_format(info, path, EXPORT_FORMAT, " Weights saved by learn.save are loaded with learn.load.")
        weights, pickled = info["model"], info.get("pickled")
    if model is not None:
        if not isinstance(model, nn.Module):
            build = model
            try:
                model = build()
            except TypeError as e:  # a class that needs arguments (model=nn.Linear): say how load_learner calls it
                name = getattr(build, "__name__", repr(build))
                e.add_note(f"learnloop: load_learner(model={name}) calls it with no arguments to build the model; "
                           f"pass the model built as in training instead: model={name}(...).")
                raise
        if not isinstance(model, nn.Module):
            raise TypeError(f"load_learner: model must be an nn.Module or build one, got {type(model).__name__}.")
        inner = unwrap_model(model)  # an nn.DataParallel (or DDP) wrapper: the module inside gets the weights
        weights = _without_wrapper_prefix(weights, inner)
        check_state_dict(inner, weights, path)
        _warn_dtype_cast(inner, weights, path)
        inner.load_state_dict(weights)
        if loss_func is None:
            loss_func = rebuilt_loss(info.get("loss"), device, path)
    elif trusted:
        if pickled is None:
            raise CheckpointError(
                f"{path} holds the weights only (no pickled model): pass load_learner({str(fname)!r}, model=...) "
                f"with a {info.get('model_class', 'model')} built as in training."
            )
        try:
            stored = torch.load(
                io.BytesIO(pickled),
                map_location=device,
                weights_only=False,
                pickle_module=pickle if pickle_module is None else pickle_module,
            )
        except (AttributeError, ImportError) as e:  # fastai's says the same of its AttributeError
            e.add_note(
                f"learnloop: the model or loss function stored in {path} needs a class or function that is not "
                f"available here ({e}): define or import it as in the script that exported it before "
                f"load_learner(..., trusted=True), or load the weights into a model you build: "
                f"load_learner({str(fname)!r}, model=...)."
            )
            raise
        model = stored["model"]
        loss_func = loss_func if loss_func is not None else stored.get("loss_func")
    else:
        raise CheckpointError(
            f"{path} holds the weights of a {info.get('model_class', 'model')}. Load them safely into a model "
            f"built as in training: load_learner({str(fname)!r}, model=<the model>); or, only if you trust the "
            "file, unpickle the model stored with it: load_learner(..., trusted=True)."
        )
    assert isinstance(model, nn.Module)
    n_inp = info.get("n_inp") or None
    dls = DataLoaders([], None, device=device, n_inp=int(n_inp) if n_inp else None)
    learn = Learner(dls, model.to(device).eval(), loss_func=InferenceOnlyLoss() if loss_func is None else loss_func,
                    path=path.parent)
    learn.logger = noop
    return learn


def _without_wrapper_prefix(weights: Any, model: nn.Module) -> Any:
    """`weights` without the "module." prefix of a (Distributed)DataParallel wrapper's state dict, when every key has
    it and the model's keys do not (learn.export writes the module's keys; a file made by hand may not)."""
    prefix = "module."
    if not isinstance(weights, dict) or not weights or not all(k.startswith(prefix) for k in weights):
        return weights
    if any(k.startswith(prefix) for k in model.state_dict()):
        return weights
    return type(weights)((k[len(prefix):], v) for k, v in weights.items())


def _warn_dtype_cast(model: nn.Module, weights: Any, path: Path) -> None:
    """Warn when the export's floating-point weights are of another dtype than the model's: load_state_dict casts them
    to the model's without a word, and a float64 export loses precision in a float32 model."""
    current = model.state_dict()
    pairs = {
        (v.dtype, current[k].dtype)
        for k, v in weights.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and current[k].is_floating_point()
        and v.dtype != current[k].dtype
    }
    if not pairs:
        return
    saved = ", ".join(sorted({str(s).removeprefix("torch.") for s, _ in pairs}))
    given = ", ".join(sorted({str(g).removeprefix("torch.") for _, g in pairs}))
    first = next(iter(pairs))[0]
    warn_caller(
        f"load_learner: {path} holds {saved} weights and the model given has {given} ones: they are cast to "
        f"{given}, so predictions may differ from the exported model's. To keep them as exported, build the model "
        f"in their dtype: load_learner(fname, model=Net().to({first})); if {given} is what you want, they are loaded "
        "as such and this warning can be ignored."
    )


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


# What load_learner says of a file of pickled objects: learn.load(name, weights_only=False), safe_load's advice,
# reads no export, and trusted=True unpickles only the model a learnloop export holds.
_NOT_AN_EXPORT = (
    "It is not a learnloop export (learn.export writes one that this loader reads) but, say, fastai's (a pickled "
    "Learner) or torch.save(model)'s, which load_learner does not read, trusted=True or not. Save the weights instead "
    "(fastai: learn.save(name, with_opt=False); torch: torch.save(model.state_dict(), file)) and load them into a "
    "Learner built with the model: learn.load(name)."
)


# ------------------------------------------------------------------------------------ safetensors
def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as e:
        raise ImportError(
            "Reading or writing .safetensors files needs the safetensors package: "
            "pip install 'learnloop[safetensors]' (or pip install safetensors)."
        ) from e
    return safetensors


def save_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``state_dict`` as a safetensors file, atomically, with learnloop's format fields in its metadata."""
    st = _safetensors()
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:  # safetensors refuses tensors sharing memory: tied weights are stored as copies
            t = t.clone()
        seen.add(ptr)
        tensors[key] = t
    meta = {
        "format": EXPORT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "learnloop_version": learnloop_version(),
        **metadata,
    }
    data = st.torch.save(tensors, metadata=meta)

    def write(f: IO[bytes]) -> None:
        f.write(data)

    return atomic_write(path, write)


class ExportIsADirectoryError(IsADirectoryError, FileNotFoundError):
    """``load_learner`` given a directory: fastai's IsADirectoryError, and the FileNotFoundError learnloop raised
    before it said so."""


_EXPORT_SUFFIXES = (".pkl", ".pth", ".pt", ".safetensors")


def _check_export_file(path: Path) -> None:
    """Say what to pass when `path` is a directory (a run's, say) or does not exist."""
    if path.is_dir():
        if (path / "export.pkl").is_file():
            hint = f"give the file learn.export wrote there: load_learner({str(path / 'export.pkl')!r}, ...)."
        else:
            found = sorted(p.name for p in path.iterdir() if p.suffix in _EXPORT_SUFFIXES and p.is_file())
            hint = (
                f"give one of its files: {', '.join(found[:10])}{', ...' if len(found) > 10 else ''}."
                if found
                else "it holds no .pkl, .pth or .safetensors file; learn.export(fname) writes one into learn.path."
            )
        raise ExportIsADirectoryError(
            f"load_learner: {path} is a directory, not a file written by learn.export; {hint}"
        )
    if not path.exists():
        import difflib

        parent = path.parent
        if not parent.is_dir():
            raise FileNotFoundError(f"load_learner: no file at {path}: the directory {parent} does not exist.")
        siblings = [p.name for p in parent.iterdir() if p.suffix in _EXPORT_SUFFIXES]
        close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
        hint = f"Did you mean {parent / close[0]}?" if close else "Check the name (learn.export writes in learn.path)."
        raise FileNotFoundError(f"load_learner: no file at {path}. {hint}")


def load_safetensors(path: str | Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the (checked) learnloop metadata of a safetensors file written by ``save_safetensors``."""
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}.")
    try:
        with st.safe_open(str(path), framework="pt", device=str(device)) as f:
            meta: dict[str, Any] = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    except Exception as e:  # noqa: BLE001 - safetensors reports a bad file with its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: corrupt or truncated ({e}).") from e
    version = meta.get("format_version", "")
    meta["format_version"] = int(version) if version.isdigit() else None
    check_format(meta, path, EXPORT_FORMAT)
    return tensors, meta
