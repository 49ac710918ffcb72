"""Whether a model's weights are usable: finite parameters, and buffers without NaN. Saving warns of weights that
are not (checkpoint.py), and CheckpointCallback and the command line keep them from replacing good ones."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import is_lazy

__all__ = ["all_finite", "first_non_finite"]


def _inexact(t: torch.Tensor) -> bool:
    """Whether `t` holds values that can be NaN or infinite: floating point, or complex (spectral layers' weights),
    and not a lazy module's parameter or buffer waiting for its first batch (it holds no values yet)."""
    return (t.is_floating_point() or t.is_complex()) and not is_lazy(t)


def _finite_checks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Per floating-point or complex tensor of ``model``, its description and a 0-dim bool tensor: whether it is
    usable. A parameter must be finite; a buffer must hold no NaN (it may hold infinities on purpose: an attention
    mask of -inf)."""
    checks = [(f"parameter {n!r}", torch.isfinite(p.detach()).all())
              for n, p in model.named_parameters() if _inexact(p)]
    checks += [(f"buffer {n!r}", ~torch.isnan(b).any()) for n, b in model.named_buffers() if _inexact(b)]
    return checks


def all_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite and no buffer holds NaN (see `_finite_checks`), with one
    wait for the device in all."""
    checks = [ok for _, ok in _finite_checks(model)]
    return bool(torch.stack([c.to(checks[0].device) for c in checks]).all()) if checks else True


def first_non_finite(model: nn.Module) -> str:
    """The description of the first tensor `all_finite` rejects (for the message; a wait for each tensor)."""
    return next((name for name, ok in _finite_checks(model) if not ok), "a tensor")
