"""Hooks on a model's modules and the model-size helpers (fastai's `callback.hook`; the callbacks built on hooks,
`HookCallback` and `ActivationStats`, are in :mod:`learnloop.callbacks.hook` and re-exported here; the model
summary is in :mod:`learnloop.summary`).

>>> with hook_output(model[0]) as h:
...     model(xb)
...     h.stored.shape              # the first layer's activations, detached
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .data import to_detach

if TYPE_CHECKING:  # at run time, from __getattr__ at the end of this module
    from .callbacks.hook import ActivationStats, HookCallback

__all__ = [
    "ActivationStats", "Hook", "HookCallback", "Hooks", "dummy_eval", "flatten_model", "has_params", "hook_output",
    "hook_outputs", "in_channels", "model_sizes", "num_features_model",
]

HookFunc = Callable[[nn.Module, Any, Any], Any]


class Hook:
    """Calls `hook_func(module, input, output)` at each forward pass of `m` (each backward one when not
    `is_forward`) and keeps what it returns in `stored`; inputs and outputs are detached first when `detach`
    (moved to the CPU when `cpu`, gathered over the ranks of a distributed job when `gather`)."""

    def __init__(
        self,
        m: nn.Module,
        hook_func: HookFunc,
        is_forward: bool = True,
        detach: bool = True,
        cpu: bool = False,
        gather: bool = False,
    ) -> None:
        if not isinstance(m, nn.Module):
            raise TypeError(
                f"Hook needs a torch.nn.Module to hook, got {type(m).__name__}; for several modules use "
                "Hooks(modules, f)."
            )
        if not callable(hook_func):
            raise TypeError(f"hook_func must be a function f(module, input, output), got {type(hook_func).__name__}.")
        self.hook_func, self.detach, self.cpu, self.gather = hook_func, detach, cpu, gather
        # fastai's choice: the legacy backward hook. A full one (`register_full_backward_hook`) fails on a module
        # whose output is then changed in place, as by the `ReLU(inplace=True)` that follows many convolutions.
        register = m.register_forward_hook if is_forward else m.register_backward_hook
        self.hook: RemovableHandle = register(self.hook_fn)
        self.stored: Any = None
        self.removed = False

    def hook_fn(self, module: nn.Module, input: Any, output: Any) -> None:
        """Store `hook_func(module, input, output)`, on detached tensors when `detach`."""
        if self.detach:
            input, output = to_detach(input, self.cpu, self.gather), to_detach(output, self.cpu, self.gather)
        self.stored = self.hook_func(module, input, output)

    def remove(self) -> None:
        """Take the hook off the module (once)."""
        if not self.removed:
            self.hook.remove()
            self.removed = True

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _hook_inner(m: nn.Module, i: Any, o: Any) -> Any:
    return o if isinstance(o, (torch.Tensor, tuple, list)) else list(o)


def hook_output(module: nn.Module, detach: bool = True, cpu: bool = False, grad: bool = False) -> Hook:
    """A `Hook` keeping the output of `module` (the gradients of its output when `grad`) in `stored`."""
    return Hook(module, _hook_inner, detach=detach, cpu=cpu, is_forward=not grad)


class Hooks:
    """A `Hook` with `hook_func` on each module of `ms` (a list, or a container module such as nn.Sequential,
    whose direct children are hooked); indexable, iterable, and a context manager that removes them all."""

    def __init__(
        self, ms: Iterable[nn.Module] | nn.Module, hook_func: HookFunc, is_forward: bool = True, detach: bool = True,
        cpu: bool = False,
    ) -> None:
        if not isinstance(ms, Iterable):
            raise TypeError(
                f"Hooks needs an iterable of modules, got {type(ms).__name__}: pass [module], or use Hook for one."
            )
        check_not_mapping(ms, "Hooks", "ms")
        self.hooks: list[Hook] = []
        try:
            for m in ms:
                self.hooks.append(Hook(m, hook_func, is_forward, detach, cpu))
        except BaseException:  # a module that cannot be hooked: take off the hooks already put on the others
            self.remove()
            raise

    def __getitem__(self, i: int) -> Hook:
        return self.hooks[i]

    def __len__(self) -> int:
        return len(self.hooks)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self.hooks)

    @property
    def stored(self) -> list[Any]:
        """What each hook stored, in order."""
        return [h.stored for h in self.hooks]

    def remove(self) -> None:
        """Take every hook off its module."""
        for h in self.hooks:
            h.remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def check_not_mapping(ms: Iterable[Any], owner: str, name: str) -> None:
    """Refuse a dict or an nn.ModuleDict of modules: iterating it gives its keys, which Hook would refuse as "got
    str", as if the modules were not given in an iterable."""
    if isinstance(ms, (Mapping, nn.ModuleDict)):
        raise TypeError(
            f"{owner} hooks the modules that `{name}` yields, but a {type(ms).__name__} yields its keys: pass "
            f"{name}.values()."
        )


def hook_outputs(
    modules: Iterable[nn.Module] | nn.Module, detach: bool = True, cpu: bool = False, grad: bool = False
) -> Hooks:
    """`Hooks` keeping the outputs of `modules` (their output gradients when `grad`) in `stored`."""
    return Hooks(modules, _hook_inner, detach=detach, cpu=cpu, is_forward=not grad)


class _ParameterModule(nn.Module):
    """A parameter held directly by a module that has children, standing for it in `_flatten_model`."""

    def __init__(self, p: nn.Parameter) -> None:
        super().__init__()
        self.val = p

    def forward(self, x: Any) -> Any:
        return x


def flatten_model(m: nn.Module) -> list[nn.Module]:
    """The leaf modules of `m` in order, with a module's own parameters (beside its children's) after its children,
    as fastai's `flatten_model` lists them."""
    children = list(m.children())
    if not children:
        return [m]
    in_children = {id(p) for c in children for p in c.parameters()}
    own = [_ParameterModule(p) for p in m.parameters() if id(p) not in in_children]
    return [leaf for c in [*children, *own] for leaf in flatten_model(c)]


def in_channels(m: nn.Module) -> int:
    """The input channels of `m`'s first layer with a 4-d weight (its first convolution), as fastai's
    `layers.in_channels`: what `dummy_eval` builds its image with.

    >>> in_channels(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    3
    """
    for layer in flatten_model(m):
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4:
            # A convolution knows its input channels: its weight's dimension 1 (fastai's reading) is that divided by
            # its groups, and a transposed one's is its output channels divided by them.
            return layer.in_channels if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) else weight.shape[1]
    raise ValueError(
        f"{type(m).__name__} has no layer with a 4-d weight (a Conv2d) to read its input channels from: "
        "dummy_eval, model_sizes and num_features_model are for image models."
    )


def dummy_eval(m: nn.Module, size: tuple[int, ...] = (64, 64)) -> Any:
    """`m`'s output on one random image of `size` (channels read from its first convolution), computed without
    gradients; as fastai's, it puts `m` in eval mode and draws the image from torch's global generator."""
    ch_in = in_channels(m)
    x = next(m.parameters()).new_empty(1, ch_in, *size).uniform_(-1.0, 1.0)
    with torch.no_grad():
        return m.eval()(x)


def model_sizes(m: nn.Module, size: tuple[int, ...] = (64, 64)) -> list[torch.Size]:
    """The output shapes of the direct children of `m` on a dummy image of `size` (see `dummy_eval`)."""
    with hook_outputs(m) as hooks:
        dummy_eval(m, size=size)
        return [h.stored.shape for h in hooks]


def num_features_model(m: nn.Module) -> int:
    """The number of channels `m` outputs, trying ever larger dummy images (32 to 2048 pixels) until one fits."""
    in_channels(m)
    sz = 32
    while True:
        try:
            return model_sizes(m, (sz, sz))[-1][1]
        except Exception:
            sz *= 2
            if sz > 2048:
                raise


def has_params(m: nn.Module) -> bool:
    """Whether `m` has at least one parameter."""
    return next(m.parameters(), None) is not None


def __getattr__(name: str) -> Any:
    # HookCallback and ActivationStats lived here: this path keeps importing them (and pickles of learners naming
    # them by this path keep loading). Imported on first use, since callbacks/hook.py imports from this module.
    if name in _MOVED:
        from .callbacks import hook

        return getattr(hook, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MOVED = ("ActivationStats", "HookCallback")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MOVED])
