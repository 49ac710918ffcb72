"""What every learnloop optimizer shares: per-group hyper-parameters, freezing, per-parameter state.

``Optimizer``, ``OptimWrapper`` and ``Lookahead`` all derive from :class:`BaseOptimizer`, so the
Learner, schedules and discriminative learning rates see one API whichever is in use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from torch import Tensor, nn

from ..errors import ArgumentError, InputError
from ..warn import warn_caller

__all__ = [
    "BaseOptimizer", "OptimizerState", "ParamGroupView", "as_param_list", "even_mults", "is_param_group", "spread_hyper"
]

#: Hyper-parameter names the Learner and its schedules may set on any optimizer.
STANDARD_HYPERS = frozenset({"lr", "mom", "sqr_mom", "eps", "wd"})

ParamTuple = tuple[Tensor, list[Tensor], dict[str, Any], MutableMapping[str, Any]]


class OptimizerState(dict[Tensor, dict[str, Any]]):
    """Per-parameter state: ``state[p]`` is a mutable dict, created (and kept) on first access."""

    def __missing__(self, p: Tensor) -> dict[str, Any]:
        new: dict[str, Any] = {}
        self[p] = new
        return new


def as_param_list(params: Tensor | Iterable[Any]) -> list[Any]:
    """A list of the items of ``params``; a single tensor is one parameter (not an iterable of its rows)."""
    return [params] if isinstance(params, Tensor) else list(params)


def is_param_group(x: Any) -> bool:
    """Whether ``x``, an item of what an optimizer was given, is a group of parameters rather than one: a list, a tuple,
    a generator (``m.parameters()``), an ``nn.ParameterList`` or any other iterable of tensors (fastcore's ``L``, which
    fastai's splitters return), but not a tensor, a module, a group dict or a string."""
    if isinstance(x, nn.ParameterList):
        return True
    return isinstance(x, Iterable) and not isinstance(x, (Tensor, nn.Module, Mapping, str, bytes))


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """``n`` values spread geometrically from ``start`` to ``stop``."""
    if n == 1:
        return [stop]
    mult = (stop / start) ** (1 / (n - 1))
    return [start * mult**i for i in range(n)]


def spread_hyper(name: str, value: Any, n_groups: int) -> list[Any]:
    """One value per group from a scalar, a list/tuple or other iterable (one per group) or a slice.

    ``slice(a, b)`` spreads geometrically from ``a`` to ``b``; ``slice(b)`` gives ``b/10`` to every
    group but the last, which gets ``b``.
    """
    if isinstance(value, (float, int)):  # the common case, every batch
        return [value] * n_groups
    if isinstance(value, slice):
        if value.stop is None:
            raise ValueError(f"set_hyper({name!r}): a slice needs a stop value, got {value}")
        if value.start:
            return even_mults(value.start, value.stop, n_groups)
        return [value.stop / 10] * (n_groups - 1) + [value.stop]
    if isinstance(value, np.ndarray) and value.ndim == 0:  # np.where(...) in a schedule: torch's ops refuse it
        return [value.item()] * n_groups
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy arrays, 1-d tensors
        value = value.tolist()
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)) and not hasattr(value, "ndim"):
        value = list(value)  # a generator, a range, a map: one value per group, as fastai's L reads them
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return list(value) * n_groups
        if len(value) != n_groups:
            raise InputError(
                f"set_hyper({name!r}): got {len(value)} values but the optimizer has {n_groups} parameter "
                "groups; pass a scalar, a slice, or exactly one value per group"
            )
        return list(value)
    return [value] * n_groups


class ParamGroupView(MutableMapping[str, Any]):
    """A live, torch-style view of one group: ``'params'`` plus its hyper-parameters."""

    def __init__(self, opt: BaseOptimizer, index: int) -> None:
        self._opt, self._index = opt, index

    def __getitem__(self, key: str) -> Any:
        if key == "params":
            return self._opt.param_lists[self._index]
        return self._opt.hypers[self._index][key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "params":
            self._opt.param_lists[self._index] = as_param_list(value)
        else:
            self._opt.hypers[self._index][key] = value

    def __delitem__(self, key: str) -> None:
        if key == "params":
            raise KeyError("a parameter group's 'params' cannot be deleted")
        del self._opt.hypers[self._index][key]

    def __iter__(self) -> Iterator[str]:
        yield "params"
        yield from self._opt.hypers[self._index]

    def __len__(self) -> int:
        return 1 + len(self._opt.hypers[self._index])

    def __repr__(self) -> str:
        return repr(dict(self))


def _negative_lr(v: Any) -> ValueError:
    return ValueError(f"learning rate must be non-negative, got lr={v}")


class BaseOptimizer:
    """Hyper-parameter, freezing and state helpers shared by every learnloop optimizer.

    Subclasses provide ``param_lists`` (a list of lists of parameters), ``hypers`` (one mutable
    mapping per group), ``state`` (an :class:`OptimizerState`) and ``frozen_idx``.
    """

    param_lists: list[list[Tensor]]
    hypers: Sequence[MutableMapping[str, Any]]
    state: OptimizerState
    frozen_idx: int

    # -- hyper-parameters -------------------------------------------------------------------------
    def known_hypers(self) -> set[str]:
        """Names ``set_hyper`` accepts: current hypers plus the standard lr/mom/sqr_mom/eps/wd."""
        names = set(STANDARD_HYPERS)
        for h in self.hypers:
            names.update(h)
        return names

    def set_hypers(self, **kwargs: Any) -> None:
        """Set each hyper-parameter from a scalar, a list (one per group) or a slice."""
        for k, v in kwargs.items():
            self.set_hyper(k, v)

    def set_hyper(self, k: str, v: Any) -> None:
        """Set hyper-parameter ``k`` on every group from a scalar, a list or a slice."""
        hypers = self.hypers
        if type(v) is float and hypers and k in hypers[0]:
            # What a schedule sets before every batch: the same result as the general path below, in short.
            if k == "lr" and v < 0:
                raise _negative_lr(v)
            for h in hypers:
                h[k] = v
            return
        if not (hypers and k in hypers[0]):
            self.check_hyper_name(k)
        self._set_hyper_values(k, self._spread_checked(k, v))

    def check_hyper_name(self, k: str) -> None:
        """Raise a KeyError, listing the valid names, when this optimizer cannot hold a hyper-parameter ``k``."""
        known = self.known_hypers()
        if k not in known:
            raise KeyError(f"unknown hyper-parameter {k!r}; valid names: {sorted(known)}")

    def _spread_checked(self, k: str, v: Any) -> list[Any]:
        values = spread_hyper(k, v, len(self.param_lists))
        if any(isinstance(x, (str, bytes)) for x in values):  # numpy reads them as numbers; a step fails on them
            raise ArgumentError(
                f"{k}={v!r}: a hyper-parameter is a number (or a list with one per parameter group), not a string."
            )
        if k == "lr":
            if any(x is None for x in values):
                # fastai fails here too (an AssertionError: "0 values"); a None lr would only fail at the step.
                raise InputError(
                    f"set_hyper('lr', {v!r}): the learning rate cannot be None; pass a number, a list with one "
                    "number per parameter group, or a slice"
                )
            if any(x < 0 for x in values if isinstance(x, Real) or (isinstance(x, Tensor) and x.ndim == 0)):
                raise _negative_lr(v)
        return values

    def _set_hyper_values(self, k: str, values: list[Any]) -> None:
        for h, x in zip(self.hypers, values, strict=True):
            h[k] = x

    # -- parameters and freezing -----------------------------------------------------------------
    def all_params(self, n: slice | int = slice(None), with_grad: bool = False) -> list[ParamTuple]:
        """``(p, group, state, hypers)`` for every parameter of the groups selected by ``n``."""
        if isinstance(n, int):
            n = slice(n, n + 1 if n != -1 else None)
        res = [
            (p, pg, self.state[p], hyper)
            for pg, hyper in zip(self.param_lists[n], self.hypers[n], strict=True)
            for p in pg
        ]
        if with_grad:
            return [o for o in res if o[0].grad is not None]
        return res

    def freeze_to(self, n: int) -> None:
        """Freeze the groups before ``n`` (negative: from the end); ``force_train`` params stay trainable."""
        n_groups = len(self.param_lists)
        self.frozen_idx = n if n >= 0 else n_groups + n  # as fastai's: below 0 when -n > n_groups (none frozen)
        if self.frozen_idx >= n_groups:
            warn_caller(
                f"Freezing {self.frozen_idx} groups; model has {n_groups}; whole model is frozen."
            )
        for p, *_ in self.all_params(slice(n, None)):
            p.requires_grad_(True)
        for p, _, state, _ in self.all_params(slice(None, n)):
            p.requires_grad_(bool(state.get("force_train", False)))

    def freeze(self) -> None:
        """Freeze every group but the last."""
        if len(self.param_lists) < 2:
            raise InputError(
                "freeze() needs at least two parameter groups (it trains only the last one); "
                "build the optimizer from a list of parameter lists, e.g. from a splitter"
            )
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Make every group trainable."""
        self.freeze_to(0)

    # -- what each optimizer implements ------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the parameters from their gradients."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients in place, or drop them (``set_to_none=True``).

        ``Optimizer`` and ``Lookahead`` zero in place by default, as fastai does; ``OptimWrapper`` keeps
        torch's default (``set_to_none=True``), as fastai's forwards to torch.
        """
        raise NotImplementedError

    def clear_state(self) -> None:
        """Forget the optimizer state (but not the ``do_wd`` / ``force_train`` flags)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume stepping exactly."""
        raise NotImplementedError

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        raise NotImplementedError
