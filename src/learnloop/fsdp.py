"""FSDP (torch's ``fully_shard``): each rank keeps a shard of every parameter, gradient and optimizer
state, for models that do not fit on one device; checkpoints go through ``torch.distributed.checkpoint``.

``DistributedTrainer(fsdp=True)`` (or ``learn.distrib_ctx(fsdp=True)``) shards the model in place,
once: ``learn.model`` stays the same object, its parameters become DTensors, and it stays sharded
after fit. learnloop's optimizers step DTensors as they are. ``learn.save(name)`` then writes a
sharded checkpoint, the folder ``models/name.dcp`` (every rank writes its own shard, rank 0 the
metadata), and ``learn.load(name)`` reads it back into a sharded model on any number of ranks;
``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` turns it into one ``torch.save`` file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import barrier, is_rank_zero

__all__ = ["is_fsdp", "shard_model", "sharded_path", "save_sharded", "load_sharded", "reshard_optimizer"]

ShardModules = Callable[[nn.Module], bool] | tuple[type[nn.Module], ...] | None


def is_fsdp(model: Any) -> bool:
    """Whether `model` has been sharded with ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, shard_modules: ShardModules = None, **fsdp_kwargs: Any) -> nn.Module:
    """``fully_shard`` the chosen submodules (inner ones first), then the whole model; returns `model`.

    `shard_modules`: a predicate on submodules, or a tuple of classes (a transformer's block class);
    by default every direct child that has parameters. Each sharded submodule gathers its full
    parameters only while it runs. `fsdp_kwargs` go to ``fully_shard`` (``mp_policy``,
    ``reshard_after_forward``, ``mesh``, ...).
    """
    from torch.distributed.fsdp import fully_shard

    if is_fsdp(model):
        return model
    if shard_modules is None:
        targets = [c for c in model.children() if next(c.parameters(), None) is not None]
    else:
        chosen = (lambda m: isinstance(m, shard_modules)) if isinstance(shard_modules, tuple) else shard_modules
        targets = [m for m in model.modules() if m is not model and chosen(m)]
    for module in reversed(targets):  # model.modules() lists parents first: shard the children before them
        fully_shard(module, **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def reshard_optimizer(opt: Any, new_opt: Any, old_params: list[torch.Tensor]) -> None:
    """Carry `opt`'s hyper-parameters, frozen groups and state over to `new_opt`, built on the sharded parameters.

    Full-size state tensors (momentum, squared averages) are split like their parameter.
    """
    from torch.distributed.tensor import distribute_tensor

    sd = opt.state_dict()
    new_params = [p for plist in new_opt.param_lists for p in plist]
    states = []
    for old, new, state in zip(old_params, new_params, sd["state"], strict=True):
        converted = {}
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(old.shape) and hasattr(new, "placements"):
                v = distribute_tensor(v.detach().to(new.device), new.device_mesh, new.placements)
            converted[k] = v
        states.append(converted)
    new_opt.load_state_dict({**sd, "state": states})
    if getattr(opt, "frozen_idx", 0) > 0:  # below 0 after freeze_to(-n) past the first group: none frozen
        new_opt.freeze_to(opt.frozen_idx)


def sharded_path(path: Path) -> Path:
    """Where a sharded checkpoint named like `path` (``models/name.pth``) lives: the folder ``models/name.dcp``."""
    return path.with_suffix(".dcp")


def _flat_state(opt: Any) -> tuple[dict[str, Any], str]:
    sd = opt.state_dict()
    flat = {f"optimizer.{i}.{k}": v for i, state in enumerate(sd["state"]) for k, v in state.items()}
    return flat, json.dumps({"hypers": sd["hypers"], "group_sizes": sd["group_sizes"]})


def save_sharded(path: Path, model: nn.Module, opt: Any = None, with_opt: bool = True) -> Path:
    """Save a sharded model (and optimizer) with ``torch.distributed.checkpoint``; call it on every rank.

    The ranks write into ``name.dcp.partial``, which rank 0 then renames ``name.dcp``: an interrupted
    save leaves the previous checkpoint in place (or, for the instant of the swap, at ``name.dcp.old``).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    folder = sharded_path(path)
    partial, old = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".old")
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if with_opt and opt is not None:
        flat, meta = _flat_state(opt)
        state.update(flat)
        state["optimizer_meta"] = meta
    if is_rank_zero():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    dcp.save(state, checkpoint_id=partial)
    barrier()
    if is_rank_zero():
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        partial.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return folder


def load_sharded(path: Path, model: nn.Module, opt: Any = None, with_opt: bool = True) -> None:
    """Load what :func:`save_sharded` wrote into a sharded model (and optimizer); call it on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    folder = sharded_path(path)
    if not folder.is_dir() and folder.with_name(folder.name + ".old").is_dir():
        folder = folder.with_name(folder.name + ".old")  # a save was interrupted while swapping folders
    if not folder.is_dir():
        raise FileNotFoundError(f"No sharded checkpoint at {folder} (the model is sharded with FSDP).")
    metadata = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    load_opt = with_opt and opt is not None and "optimizer_meta" in metadata
    if load_opt:
        params = [p for plist in opt.param_lists for p in plist]
        for key, item in metadata.items():
            if not key.startswith("optimizer."):
                continue
            p = params[int(key.split(".")[1])]
            if isinstance(item, TensorStorageMetadata):  # a template for DCP to fill in: shaped like the parameter
                same = tuple(item.size) == tuple(p.shape)
                state[key] = torch.zeros_like(p) if same else torch.empty(item.size, dtype=item.properties.dtype)
            else:
                state[key] = None
        state["optimizer_meta"] = ""
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    if load_opt:
        per_param: list[dict[str, Any]] = [{} for _ in params]
        for key, value in state.items():
            if key.startswith("optimizer."):
                _, i, name = key.split(".", 2)
                per_param[int(i)][name] = value
        opt.load_state_dict({"state": per_param, **json.loads(state["optimizer_meta"])})
