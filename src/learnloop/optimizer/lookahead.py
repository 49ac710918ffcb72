"""Lookahead (Zhang et al., 2019): every ``k`` steps, pull slow weights towards the fast ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError, to_number
from .base import BaseOptimizer, OptimizerState

__all__ = ["Lookahead"]


class Lookahead(BaseOptimizer):
    """Wrap any learnloop optimizer: every ``k`` steps ``slow += alpha * (fast - slow); fast = slow``.

    Hypers, state, freezing and parameter groups are the wrapped optimizer's.
    """

    def __init__(self, opt: BaseOptimizer, k: int = 6, alpha: float = 0.5) -> None:
        # Numbers as the callbacks take them: a string or None names itself here, where fastai's fails at a step.
        every, alpha = to_number(k, "k", "Lookahead"), to_number(alpha, "alpha", "Lookahead")
        if every < 1:
            raise ValueError(f"Lookahead needs k >= 1, got k={k}")
        if not 0 < alpha <= 1:
            raise ValueError(f"Lookahead needs 0 < alpha <= 1, got alpha={alpha}")
        self.opt, self.k, self.alpha = opt, every, alpha
        self.count = 0
        self.slow_weights: list[list[Tensor]] | None = None

    # -- delegation to the wrapped optimizer --------------------------------------------------------------
    @property
    def param_lists(self) -> list[list[Tensor]]:
        """The wrapped optimizer's parameter lists."""
        return self.opt.param_lists

    @param_lists.setter
    def param_lists(self, v: list[list[Tensor]]) -> None:
        self.opt.param_lists = v

    @property
    def hypers(self) -> Sequence[MutableMapping[str, Any]]:
        """The wrapped optimizer's hyper-parameters."""
        return self.opt.hypers

    @hypers.setter
    def hypers(self, v: Sequence[MutableMapping[str, Any]]) -> None:
        self.opt.hypers = v

    @property
    def state(self) -> OptimizerState:
        """The wrapped optimizer's per-parameter state."""
        return self.opt.state

    @state.setter
    def state(self, v: OptimizerState) -> None:
        self.opt.state = v

    @property
    def frozen_idx(self) -> int:
        """The wrapped optimizer's first trainable group."""
        return self.opt.frozen_idx

    @frozen_idx.setter
    def frozen_idx(self, v: int) -> None:
        self.opt.frozen_idx = v

    @property
    def param_groups(self) -> Any:
        """The wrapped optimizer's torch-style parameter groups."""
        return getattr(self.opt, "param_groups")  # noqa: B009

    @property
    def implementation(self) -> Any:
        """The wrapped optimizer's ``implementation`` (see ``Optimizer.implementation``)."""
        return getattr(self.opt, "implementation")  # noqa: B009

    @implementation.setter
    def implementation(self, value: Any) -> None:
        setattr(self.opt, "implementation", value)  # noqa: B010

    def known_hypers(self) -> set[str]:
        """Names the wrapped optimizer's ``set_hyper`` accepts."""
        return self.opt.known_hypers()

    def set_hyper(self, k: str, v: Any) -> None:
        """Set a hyper-parameter on the wrapped optimizer."""
        self.opt.set_hyper(k, v)

    def check_hyper_name(self, k: str) -> None:
        """The wrapped optimizer's check: learnloop's ``Optimizer`` takes any name (a stepper may read it through
        ``**kwargs``), ``OptimWrapper`` only the torch optimizer's."""
        self.opt.check_hyper_name(k)

    def freeze_to(self, n: int) -> None:
        """Freeze the wrapped optimizer's groups before ``n``."""
        self.opt.freeze_to(n)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients in place (fastai's default, whatever the wrapped optimizer), or drop them."""
        self.opt.zero_grad(set_to_none)

    def __getattr__(self, name: str) -> Any:
        # Anything else (cbs, implementation, ...) is the wrapped optimizer's, like fastai's GetAttr.
        if name == "opt":
            raise AttributeError(name)
        return getattr(self.opt, name)

    # -- lookahead ---------------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of the wrapped optimizer, then a lookahead update every ``k`` steps."""
        if self.slow_weights is None:
            self._copy_weights()
        elif len(self.slow_weights) < len(self.param_lists):  # a group added since (add_param_group): its weights now
            self.slow_weights += [[p.detach().clone() for p in pg] for pg in self.param_lists[len(self.slow_weights) :]]
        loss = self.opt.step(closure)
        self.count += 1
        if self.count % self.k != 0:
            return loss
        assert self.slow_weights is not None
        with torch.no_grad():
            for slow, fast in zip(self.slow_weights, self.param_lists, strict=True):
                if slow:
                    torch._foreach_add_(slow, torch._foreach_sub(fast, slow), alpha=self.alpha)
                    torch._foreach_copy_(fast, slow)
        return loss

    def _copy_weights(self) -> None:
        self.slow_weights = [[p.detach().clone() for p in pg] for pg in self.param_lists]

    def clear_state(self) -> None:
        """Clear the wrapped optimizer's state and forget the slow weights."""
        self.opt.clear_state()
        self.count, self.slow_weights = 0, None

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus ``count`` and ``slow_weights``."""
        sd: dict[str, Any] = self.opt.state_dict()
        return {**sd, "count": self.count, "slow_weights": self.slow_weights}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Load a state dict saved by ``state_dict`` (the mapping passed in is not modified)."""
        inner = {k: v for k, v in sd.items() if k not in ("count", "slow_weights")}
        slow = sd.get("slow_weights")
        if slow is not None:
            if [len(g) for g in slow] != [len(g) for g in self.param_lists]:
                raise InputError(
                    f"the saved slow weights come in groups of {[len(g) for g in slow]} parameters but this "
                    f"optimizer has groups of {[len(g) for g in self.param_lists]}; was the state_dict saved "
                    "from another model?"
                )
            for i, (gs, gp) in enumerate(zip(slow, self.param_lists, strict=True)):
                for j, (s, p) in enumerate(zip(gs, gp, strict=True)):
                    if s.shape != p.shape:
                        raise InputError(
                            f"the saved slow weight of parameter {j} of group {i} has shape {tuple(s.shape)} but the "
                            f"parameter has shape {tuple(p.shape)}; was the state_dict saved from another model?"
                        )
            slow = [
                [s.to(device=p.device, dtype=p.dtype, copy=True) for s, p in zip(gs, gp, strict=True)]
                for gs, gp in zip(slow, self.param_lists, strict=True)
            ]
        self.opt.load_state_dict(inner)
        self.count, self.slow_weights = int(sd.get("count", 0)), slow

    def __repr__(self) -> str:
        return f"Lookahead({self.opt!r}, k={self.k}, alpha={self.alpha})"
