"""Callbacks built on hooks (fastai's `HookCallback` and `ActivationStats`, from its `callback.hook`): a
`HookCallback` hooks a function on the model's leaf modules for a fit (or every n-th training batch) and removes
the hooks afterwards; `ActivationStats` is the one that records each layer's activation statistics. The hooks
themselves, and the model helpers they use, are in :mod:`learnloop.hooks`, which also re-exports these two.

>>> stats = ActivationStats(with_hist=True)
>>> learn.fit(1, cbs=stats)                 # a callback given to fit leaves the learner after it: keep a reference
>>> stats.layer_stats(0)                    # [means, stds, near-zero shares], one per training batch
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..callback import Callback
from ..errors import ArgumentError, InputError, ValueTypeError, to_number
from ..hooks import HookFunc, Hooks, check_not_mapping, flatten_model, has_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ActivationStats", "HookCallback"]


class HookCallback(Callback):
    """Hooks `hook(module, input, output)` on `modules` (default: every leaf module with parameters, every one
    with `include_paramless`, of the model of each fit) for the fit, or only for every `every`-th training batch; a
    subclass defines `hook`, or it is given as `hook=`. The hooks are `self.hooks`, removed after the fit when
    `remove_end`.

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
        if modules is not None:
            check_not_mapping(modules, type(self).__name__, "modules")
        self.modules = None if modules is None else list(modules)
        self.every, self.remove_end, self.is_forward = _check_every(every, type(self).__name__), remove_end, is_forward
        self.detach, self.cpu, self.include_paramless = detach, cpu, include_paramless
        self._hooked = False  # whether the hooks are on the modules now
        self._picked: list[nn.Module] | None = None  # the default modules, as picked from the model of the last fit
        if hook is not None:
            self.hook = hook  # type: ignore[method-assign, assignment]

    def hook(self, m: nn.Module, i: Any, o: Any) -> Any:
        """What to keep from `m`'s input `i` and output `o` (nothing here: subclasses define it)."""
        return None

    def before_fit(self) -> None:
        """Pick the modules (the default ones from the model of this fit) and, unless only every `every`-th batch
        is hooked, register the hooks."""
        if self.learn._nested_run:  # validate() or get_preds() inside a fit: the fit's hooks stay as they are
            return
        if self.modules is None or self.modules is self.__dict__.get("_picked"):
            # Picked again at each fit: the learner's model may have been replaced, or the callback given to another
            # learner, since the last one; hooks on the old model's layers would never fire.
            self._picked = [m for m in flatten_model(self.learn.model) if self.include_paramless or has_params(m)]
            object.__setattr__(self, "modules", self._picked)  # the callback's own: `learn.modules` is the model's
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
        in fastai: its hooks stay until the next fit replaces them, or `cb.hooks.remove()`; those of a callback that
        has left the learner since, as one of `fit(cbs=...)` does, come off at the next forward pass)."""
        if self.learn._nested_run:
            return
        if self.remove_end:
            self._remove()

    def _register(self) -> None:
        self._remove()  # hooks kept from a fit with remove_end=False would otherwise fire twice
        self.hooks = Hooks(self.modules or [], _HookOf(self), self.is_forward, self.detach, self.cpu)
        self._hooked = True

    def _remove(self) -> None:
        hooks = self.__dict__.get("hooks")
        if hooks is not None:
            hooks.remove()
        self.__dict__["_hooked"] = False  # also from __del__, where the learner may be gone

    def __del__(self) -> None:
        self._remove()


def _check_every(every: Any, owner: str) -> int | None:
    """`every` as None or an int >= 1: a whole number, 2 or 2.0 (numpy and 0-dim tensor numbers too), as fastai's
    `train_iter % every == 0` takes it."""
    if every is None:
        return None
    try:
        n: float = to_number(every, "every", owner)
    except (ArgumentError, InputError):  # a bool, a string, NaN: the message below
        n = math.nan
    if not (math.isfinite(n) and float(n).is_integer() and n >= 1):
        raise InputError(  # fastai's fails in the first training batch (every=0) or hooks every batch (every=-1)
            f"{owner}: every must be None (hook every batch) or a whole number >= 1 (hook every n-th training batch), "
            f"got {every!r}."
        )
    return int(n)


class _HookOf:
    """`cb.hook`, as the modules call it. A fit that raises runs no after_fit, so its hooks stay on the model; once
    the callback is off the learner (one of `fit(cbs=...)` is taken off however the fit ends) they would fire at every
    forward pass for good. So, unless kept on purpose (`remove_end=False`), a callback off the learner is not called,
    and its hooks come off at the next forward pass outside its fit (a pass of the fit's validation, as a
    FetchPredsCallback's, which takes it out for the while, leaves them; so does `learn.summary()`'s pass, which pauses
    them, even from a fit's before_fit). Both are held weakly: the model does not
    keep a callback nobody else holds alive (its `__del__` unhooks). A model pickled with the hooks on (an export)
    carries them as no-ops, not the callback and its learner."""

    def __init__(self, cb: HookCallback) -> None:
        self.cb: Callable[[], HookCallback | None] = weakref.ref(cb)
        self.learn: Callable[[], Any] = weakref.ref(cb.learn)

    def __call__(self, m: nn.Module, i: Any, o: Any) -> Any:
        cb = self.cb()
        if cb is None or cb.__dict__.get("_paused"):  # gone, or taken out for a summary's pass (see summary.py)
            return None
        if cb.remove_end and cb.__dict__.get("learn") is None:
            learn = self.learn()
            if learn is None or not learn._in_fit or learn.training:  # its fit is over: another pass, or fit
                cb._remove()
            return None
        return cb.hook(m, i, o)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cb = self.learn = _gone


def _gone() -> None:
    return None


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
        # Detached even with detach=False: the statistics are kept as tensors, which would otherwise hold each
        # recorded batch's autograd graph, and its activations, for as long as the record.
        o = o.detach().float()
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
            raise ValueError(
                "ActivationStats has no statistics: fit the learner with it first (a validate() or get_preds() "
                "starts a new, empty record, as in fastai)."
            )
        entries = [batch[idx] for batch in self.stats]
        if not all(isinstance(e, Mapping) for e in entries):  # fastai's fails with a TypeError: either catches it
            raise ValueTypeError(
                f"Module {idx} did not record one set of statistics per batch (it was not called, or it returned a "
                "tuple of outputs): read stats[batch][idx] directly."
            )
        if key not in entries[0]:
            raise ValueError(f"ActivationStats records {key!r} only with with_hist=True.")
        return torch.stack([e[key] for e in entries])

    def layer_stats(self, idx: int) -> list[list[float]]:
        """The means, standard deviations and near-zero shares of module `idx`'s output, one per recorded batch
        (three empty lists when no batch was recorded, after a `validate()` say, as fastai's)."""
        if not self.stats:
            return [[], [], []]
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
