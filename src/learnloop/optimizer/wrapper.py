"""``OptimWrapper``: any ``torch.optim`` optimizer behind learnloop's optimizer API.

Hyper-parameters are exposed under learnloop's names (``hp_map``, by default ``momentum`` and
``betas[0]`` -> ``mom``, ``betas[1]`` and ``alpha`` -> ``sqr_mom``, ``weight_decay`` -> ``wd``) through
live views of torch's param groups, so schedules and discriminative learning rates work unchanged.

What differs from learnloop's own ``Optimizer``: ``wrapper.state[p]`` holds only learnloop's flags
(``do_wd``, ``force_train``); torch's per-parameter state is ``wrapper.opt.state``. ``force_train`` is
honoured by ``freeze_to``; ``do_wd`` is not: torch applies a group's ``weight_decay`` to all its
parameters (pass groups with ``weight_decay=0`` and ``convert_groups=False`` to exempt some).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from .base import BaseOptimizer, OptimizerState, as_param_list, is_param_group

__all__ = ["OptimWrapper", "PYTORCH_HP_MAP", "detuplify_pg", "pytorch_hp_map", "set_item_pg"]

#: torch.optim param-group keys -> learnloop hyper-parameter names (``name__i`` is item i of a tuple).
PYTORCH_HP_MAP: dict[str, str] = {
    "momentum": "mom",
    "weight_decay": "wd",
    "alpha": "sqr_mom",
    "betas__0": "mom",
    "betas__1": "sqr_mom",
}
#: fastai's name for :data:`PYTORCH_HP_MAP` (the same dict).
pytorch_hp_map = PYTORCH_HP_MAP


def detuplify_pg(d: Mapping[str, Any]) -> dict[str, Any]:
    """A torch param group's hypers without ``'params'``, a tuple or list value split into ``name__i`` items.

    >>> detuplify_pg({"params": [], "lr": 0.01, "betas": (0.9, 0.99)})
    {'lr': 0.01, 'betas__0': 0.9, 'betas__1': 0.99}
    """
    res: dict[str, Any] = {}
    for k, v in d.items():
        if k == "params":
            continue
        if isinstance(v, (tuple, list)):
            res.update({f"{k}__{i}": x for i, x in enumerate(v)})
        else:
            res[k] = v
    return res


def set_item_pg(pg: MutableMapping[str, Any], k: str, v: Any) -> MutableMapping[str, Any]:
    """Set ``pg[k] = v``, or item ``i`` of the tuple ``pg[name]`` for ``k == 'name__i'``; returns ``pg``.

    >>> set_item_pg({"betas": (0.9, 0.99)}, "betas__1", 0.95)
    {'betas': (0.9, 0.95)}
    """
    name, sep, idx = k.rpartition("__")
    if not (sep and name and idx.isdigit()):
        pg[k] = v
        return pg
    old, i = pg[name], int(idx)
    if i >= len(old):
        # fastai leaves the group unchanged here, which hides a misspelt key.
        raise InputError(
            f"set_item_pg: {k!r} sets item {i} of {name!r}, which has {len(old)} items; use an index below "
            f"{len(old)}"
        )
    pg[name] = tuple(v if j == i else x for j, x in enumerate(old))
    return pg


def _flat_keys(group: Mapping[str, Any]) -> Iterator[str]:
    """A torch group's keys, with tuple-valued ones split into ``name__i``."""
    for k, v in group.items():
        if k == "params":
            continue
        if isinstance(v, (tuple, list)):
            yield from (f"{k}__{i}" for i in range(len(v)))
        else:
            yield k


class TorchGroupHypers(MutableMapping[str, Any]):
    """A live view of one torch param group under learnloop's hyper-parameter names."""

    def __init__(self, group: dict[str, Any], fwd: Mapping[str, str], bwd: Mapping[str, str]) -> None:
        self.group, self._fwd, self._bwd = group, fwd, bwd
        self._keys: dict[str, tuple[str, int | None]] = {}  # `_torch_key`'s answers: the Recorder reads "lr" per batch

    def _torch_key(self, k: str) -> tuple[str, int | None]:
        key = self._keys.get(k)
        if key is None:
            tk = self._bwd.get(k, k)
            # Not a name of this view (as in fastai's hypers): 'params', a torch key shown under another name
            # ('momentum', 'betas__0': 'mom'), or a tuple shown as its items ('betas', Adafactor's 'eps').
            if tk == "params" or self._fwd.get(tk, tk) != k or isinstance(self.group.get(tk), (tuple, list)):
                raise KeyError(k)
            name, sep, idx = tk.rpartition("__")
            key = self._keys[k] = (name, int(idx)) if sep and idx.isdigit() else (tk, None)
        return key

    def __getitem__(self, k: str) -> Any:
        name, idx = self._keys.get(k) or self._torch_key(k)
        return self.group[name] if idx is None else self.group[name][idx]

    def __setitem__(self, k: str, v: Any) -> None:
        name, idx = self._torch_key(k)
        if idx is None:
            self.group[name] = v
        else:
            old = self.group[name]
            self.group[name] = tuple(v if i == idx else x for i, x in enumerate(old))

    def __delitem__(self, k: str) -> None:
        raise KeyError(f"cannot delete hyper-parameter {k!r} of a torch optimizer")

    def __iter__(self) -> Iterator[str]:
        return (self._fwd.get(k, k) for k in _flat_keys(self.group))

    def __len__(self) -> int:
        return sum(1 for _ in _flat_keys(self.group))

    def __repr__(self) -> str:
        return repr(dict(self))


class OptimWrapper(BaseOptimizer):
    """Run a ``torch.optim`` optimizer under learnloop's API.

    ``opt`` is a torch optimizer class, built over ``params`` (a list of parameters, or a list of groups: with
    ``convert_groups`` each list becomes a torch group dict) with ``kwargs`` under torch's own names (``lr=1e-3,
    betas=(0.9, 0.99)``), or an optimizer already built (then ``params`` is None). ``hp_map`` renames torch's
    group keys to the names ``hypers``, ``set_hyper`` and the schedules use (default ``PYTORCH_HP_MAP``:
    ``momentum`` and ``betas[0]`` are ``mom``, ``betas[1]`` and ``alpha`` ``sqr_mom``, ``weight_decay`` ``wd``).

    >>> opt_func = functools.partial(OptimWrapper, opt=torch.optim.AdamW)  # doctest: +SKIP
    >>> opt = opt_func(param_lists, lr=1e-3)  # doctest: +SKIP
    """

    def __init__(
        self,
        params: Tensor | Iterable[Any] | None = None,
        opt: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer | None = None,
        hp_map: Mapping[str, str] | None = None,
        convert_groups: bool = True,
        **kwargs: Any,
    ) -> None:
        if params is None and opt is None:
            raise ValueError(
                "OptimWrapper needs params and a torch.optim class, or an already built optimizer"
            )
        if isinstance(opt, torch.optim.Optimizer):
            if params is not None:
                raise ValueError("Tried using both `params` and a built optimizer; just pass in `opt`.")
            self.opt = opt
        elif callable(opt):
            if params is None:
                raise ValueError(f"OptimWrapper needs params to build {opt!r}")
            items = as_param_list(params)
            if convert_groups and items and is_param_group(items[0]):
                # A torch-style group dict among the lists keeps its own hypers, as in fastai.
                items = [g if isinstance(g, Mapping) else {"params": as_param_list(g)} for g in items]
            self.opt = opt(items, **kwargs)
        else:
            raise TypeError(f"opt must be a torch.optim.Optimizer class or instance, got {opt!r}")
        hp_map = PYTORCH_HP_MAP if hp_map is None else hp_map
        self.fwd_map = {k: hp_map.get(k, k) for k in _flat_keys(self.opt.param_groups[0])}
        self.bwd_map = {v: k for k, v in self.fwd_map.items()}
        self.state = OptimizerState()
        self.frozen_idx = 0
        self._views: list[TorchGroupHypers] = []
        self._view_groups: list[dict[str, Any]] = []  # the torch param groups `_views` were made for

    @property
    def hypers(self) -> Sequence[MutableMapping[str, Any]]:
        """One live view per torch param group, under learnloop's names."""
        groups = self.opt.param_groups
        views = self._views
        # Read once per batch by the Recorder: the check that the groups are still the same runs in C.
        if len(views) != len(groups) or not all(map(operator.is_, self._view_groups, groups)):
            views = self._views = [TorchGroupHypers(g, self.fwd_map, self.bwd_map) for g in groups]
            self._view_groups = list(groups)
        return views

    @hypers.setter
    def hypers(self, values: Sequence[Mapping[str, Any]]) -> None:
        for view, new in zip(self.hypers, values, strict=True):
            view.update(new)

    @property
    def param_lists(self) -> list[list[Tensor]]:
        """The torch param groups' ``params`` lists."""
        return [g["params"] for g in self.opt.param_groups]

    @param_lists.setter
    def param_lists(self, v: list[list[Tensor]]) -> None:
        for g, ps in zip(self.opt.param_groups, v, strict=True):
            g["params"] = list(ps)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's own (torch-named) param groups."""
        return self.opt.param_groups

    def known_hypers(self) -> set[str]:
        """The learnloop names of the wrapped optimizer's hyper-parameters."""
        return set(self.bwd_map)

    # `step` and `zero_grad` are the torch optimizer's own bound methods, looked up at each use (so a patch of
    # `opt.step`, such as the one a torch LR scheduler makes, is honoured), by a property implemented in C: the
    # loop calls both every batch, and a wrapper method would add a Python frame to each call. Same signatures and
    # defaults as torch's: `step(closure=None)`, `zero_grad(set_to_none=True)` (torch's default and fastai's).
    step = property(  # type: ignore[assignment]
        operator.attrgetter("opt.step"), doc="The torch optimizer's ``step``: ``wrapper.step(closure=None)``."
    )
    zero_grad = property(  # type: ignore[assignment]
        operator.attrgetter("opt.zero_grad"),
        doc="The torch optimizer's ``zero_grad``: drops the gradients by default (torch's and fastai's wrapper's).",
    )

    def clear_state(self) -> None:
        """Forget torch's optimizer state (learnloop's ``do_wd`` / ``force_train`` flags are kept)."""
        self.opt.state = defaultdict(dict)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict."""
        return self.opt.state_dict()

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Load a torch state dict."""
        self.opt.load_state_dict(dict(sd))

    def __repr__(self) -> str:
        return f"OptimWrapper({self.opt!r})"
