"""Hooks on a model's modules and the callbacks built on them (fastai's `callback.hook`; the model summary is in
:mod:`learnloop.summary`).

>>> with hook_output(model[0]) as h:
...     model(xb)
...     h.stored.shape              # the first layer's activations, detached
>>> learn.fit(1, cbs=ActivationStats(with_hist=True))
>>> learn.activation_stats.layer_stats(0)   # [means, stds, near-zero shares], one per training batch
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .callback import Callback
from .data import to_detach
from .errors import ArgumentError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


__all__ = [
    "ActivationStats", "Hook", "HookCallback", "Hooks", "dummy_eval", "flatten_model", "has_params", "hook_output",
    "hook_outputs", "model_sizes", "num_features_model",
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
        self.hooks = [Hook(m, hook_func, is_forward, detach, cpu) for m in ms]

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


def _in_channels(m: nn.Module) -> int:
    for layer in flatten_model(m):
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4:
            return weight.shape[1]
    raise ValueError(
        f"{type(m).__name__} has no layer with a 4-d weight (a Conv2d) to read its input channels from: "
        "dummy_eval, model_sizes and num_features_model are for image models."
    )


def dummy_eval(m: nn.Module, size: tuple[int, ...] = (64, 64)) -> Any:
    """`m`'s output on one random image of `size` (channels read from its first convolution), computed without
    gradients; as fastai's, it puts `m` in eval mode and draws the image from torch's global generator."""
    ch_in = _in_channels(m)
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
    _in_channels(m)
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


class HookCallback(Callback):
    """Hooks `hook(module, input, output)` on `modules` (default: every leaf module with parameters, every one
    with `include_paramless`) for the fit, or only for every `every`-th training batch; a subclass defines
    `hook`, or it is given as `hook=`. The hooks are `self.hooks`, removed after the fit when `remove_end`.

    >>> class Means(HookCallback):
    ...     def hook(self, m, i, o): return o.mean().item()
    """

    def __init__(
        self,
        modules: Iterable[nn.Module] | None = None,
        every: int | None = None,
        remove_end: bool = True,
        is_forward: bool = True,
        detach: bool = True,
        cpu: bool = True,
        include_paramless: bool = False,
        hook: HookFunc | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ArgumentError(
                f"{type(self).__name__} got unexpected argument(s) {', '.join(map(repr, kwargs))}: it takes modules, "
                "every, remove_end, is_forward, detach, cpu, include_paramless and hook."
            )
        self.modules = None if modules is None else list(modules)
        self.every, self.remove_end, self.is_forward = every, remove_end, is_forward
        self.detach, self.cpu, self.include_paramless = detach, cpu, include_paramless
        self._hooked = False  # whether the hooks are on the modules now
        if hook is not None:
            self.hook = hook  # type: ignore[method-assign, assignment]

    def hook(self, m: nn.Module, i: Any, o: Any) -> Any:
        """What to keep from `m`'s input `i` and output `o` (nothing here: subclasses define it)."""
        return None

    def before_fit(self) -> None:
        """Pick the modules (once) and, unless only every `every`-th batch is hooked, register the hooks."""
        if self.learn._nested_run:  # validate() or get_preds() inside a fit: the fit's hooks stay as they are
            return
        if self.modules is None:
            modules = [m for m in flatten_model(self.learn.model) if self.include_paramless or has_params(m)]
            object.__setattr__(self, "modules", modules)  # the callback's own: `learn.modules` is the model's method
        if self.every is None:
            self._register()

    def before_batch(self) -> None:
        if self.every is not None and self.learn.training and self.learn.train_iter % self.every == 0:
            self._register()

    def after_batch(self) -> None:
        # Whatever the order: fastai's tests `train_iter` again here, which the TrainEvalCallback (order -10) has
        # already advanced for a callback of order 0, so its hooks stayed on for the next batch too.
        if self.every is not None:
            self._remove()

    def after_fit(self) -> None:
        """Remove the hooks, when `remove_end` (a fit ended by an error other than a cancel runs no `after_fit`, as
        in fastai: its hooks stay until the next fit replaces them, or `cb.hooks.remove()`)."""
        if self.learn._nested_run:
            return
        if self.remove_end:
            self._remove()

    def _register(self) -> None:
        self._remove()  # hooks kept from a fit with remove_end=False would otherwise fire twice
        self.hooks = Hooks(self.modules or [], self.hook, self.is_forward, self.detach, self.cpu)
        self._hooked = True

    def _remove(self) -> None:
        hooks = self.__dict__.get("hooks")
        if hooks is not None:
            hooks.remove()
        self.__dict__["_hooked"] = False  # also from __del__, where the learner may be gone

    def __del__(self) -> None:
        self._remove()


class ActivationStats(HookCallback):
    """Records the mean, standard deviation and share of values <= 0.05 of each hooked module's output (and a
    40-bin histogram over [0, 10] when `with_hist`) at every training batch (every `every`-th), in `stats`.

    `stats[batch][module]` is a dict of 0-d tensors (fastai's holds floats), computed without `.item()`.
    `layer_stats(idx)` gives them as floats, fastai's values. Other arguments are `HookCallback`'s.
    """

    order = -20
    remove_on_fetch = True  # a fit's record: FetchPredsCallback and summary() take it out while they run

    def __init__(
        self,
        with_hist: bool = False,
        modules: Iterable[nn.Module] | None = None,
        every: int | None = None,
        remove_end: bool = True,
        is_forward: bool = True,
        detach: bool = True,
        cpu: bool = True,
        include_paramless: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(modules, every, remove_end, is_forward, detach, cpu, include_paramless, **kwargs)
        self.with_hist = with_hist
        self.stats: list[list[Any]] = []

    def before_fit(self) -> None:
        """Start a new record (not for a validate() inside the fit), and hook the modules."""
        super().before_fit()
        if not self.learn._nested_run:
            self.stats = []

    def hook(self, m: nn.Module | None, i: Any, o: Any) -> Any:
        """The statistics of the output `o` (a list of them for a tuple of outputs, as an RNN's)."""
        if isinstance(o, tuple):
            return self.hook_multi_output(o)
        o = o.float()
        # The share in float64 (MPS has none) is fastai's count / numel exactly.
        share_dtype = torch.float32 if o.device.type == "mps" else torch.float64
        res = {"mean": o.mean(), "std": o.std(), "near_zero": (o <= 0.05).sum().to(share_dtype) / o.numel()}
        if self.with_hist:
            res["hist"] = o.histc(40, 0, 10)
        return res

    def hook_multi_output(self, o_tuple: tuple[Any, ...]) -> list[Any]:
        """The statistics of each tensor of a (nested) tuple of outputs (fastai's `hook_multi_ouput`)."""
        return [self.hook(None, None, o) for o in _flatten_tuple(o_tuple) if isinstance(o, torch.Tensor)]

    def after_batch(self) -> None:
        """Append what the hooks stored, after a training batch that was hooked."""
        if self.learn.training and self._hooked:
            self.stats.append(self.hooks.stored)
        super().after_batch()

    def _column(self, idx: int, key: str) -> torch.Tensor:
        if not self.stats:
            raise ValueError("ActivationStats has no statistics yet: fit the learner with it first.")
        entries = [batch[idx] for batch in self.stats]
        if not all(isinstance(e, Mapping) for e in entries):
            raise ValueError(
                f"Module {idx} did not record one set of statistics per batch (it was not called, or it returned a "
                "tuple of outputs): read stats[batch][idx] directly."
            )
        if key not in entries[0]:
            raise ValueError(f"ActivationStats records {key!r} only with with_hist=True.")
        return torch.stack([e[key] for e in entries])

    def layer_stats(self, idx: int) -> list[list[float]]:
        """The means, standard deviations and near-zero shares of module `idx`'s output, one per recorded batch."""
        return [self._column(idx, key).tolist() for key in ("mean", "std", "near_zero")]

    def hist(self, idx: int) -> torch.Tensor:
        """The `log1p` of module `idx`'s histograms, one column per recorded batch (40 x batches)."""
        return self._column(idx, "hist").t().float().log1p()

    def color_dim(self, idx: int, figsize: tuple[float, float] = (10, 5), ax: Axes | None = None) -> Axes:
        """The "colorful dimension" plot of module `idx`'s histograms (`with_hist=True`) on `ax` or a new one."""
        res = self.hist(idx).cpu()
        if ax is None:
            ax = _pyplot().subplots(figsize=figsize)[1]
        ax.imshow(res.numpy(), origin="lower")
        ax.axis("off")
        return ax

    def plot_layer_stats(self, idx: int) -> Figure:
        """Plot module `idx`'s means, standard deviations and near-zero shares over the recorded batches."""
        fig, axs = _pyplot().subplots(1, 3, figsize=(12, 3))
        for values, ax, title in zip(self.layer_stats(idx), axs, ("mean", "std", "% near zero"), strict=True):
            ax.plot(values)
            ax.set_title(title)
        return fig


def _flatten_tuple(o: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(x for it in o for x in (_flatten_tuple(it) if isinstance(it, tuple) else (it,)))


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("ActivationStats' plots need matplotlib: pip install 'learnloop[plot]'") from e
    return plt
