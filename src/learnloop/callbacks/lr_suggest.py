"""The learning-rate suggestions read off an lr finder's sweep: the suggestion functions
(:class:`SuggestionFunction`, ``f(lrs, losses, num_it) -> (suggested lr, (lr, loss) point to mark)``) fastai has,
:func:`valley` (lr_find's default), :func:`slide`, :func:`minimum` and :func:`steep`, also by name in
:class:`SuggestionMethod`; :func:`min_points`, how many points each needs, which lr_find (lr_finder.py) checks
before the sweep; and ``_suggest``, which applies them to the Recorder's record of the sweep, plots it and returns
``SuggestedLRs(valley=..., ...)``.

>>> lr_find(learn, suggest_funcs=(minimum, steep, valley, slide))
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..distributed import is_rank_zero
from ..errors import WrongKindError
from ..warn import warn_caller

if TYPE_CHECKING:
    from ..learner import Learner
    from .recorder import Recorder

__all__ = [
    "SuggestionFunction",
    "SuggestionMethod",
    "minimum",
    "min_points",
    "slide",
    "steep",
    "valley",
]


# ------------------------------------------------------------------------------------ suggestions
class SuggestionFunction(Protocol):
    """``f(lrs, losses, num_it) -> (suggested lr, (lr, loss) point to mark on the plot)``."""

    def __call__(self, lrs: Tensor, losses: Tensor, num_it: int) -> tuple[float, tuple[float, float]]: ...


class TooFewPointsError(ValueError, IndexError):
    """A suggestion function given fewer (lr, loss) points than it needs: a ValueError, and the IndexError
    fastai's functions raise there (reading past the end of the points)."""


def _check_points(name: str, losses: Tensor, need: int, why: str = "") -> None:
    if len(losses) < need:
        raise TooFewPointsError(
            f"{name} needs at least {need} (lr, loss) point{'s' if need > 1 else ''}{why}, got {len(losses)}; "
            "lr_find checks this before its sweep (a larger num_it gives more)."
        )


def _point(lrs: Tensor, losses: Tensor, lr: float) -> tuple[float, float]:
    """``(lr, loss at the recorded lr nearest to lr)``."""
    i = int(torch.argmin((lrs - lr).abs()))
    return lr, float(losses[i])


def valley(lrs: Tensor, losses: Tensor, num_it: int) -> tuple[float, tuple[float, float]]:
    """The lr two thirds of the way down the longest valley (longest strictly decreasing run of losses)."""
    _check_points("valley", losses, 1)
    vals = [float(x) for x in losses]
    lengths = [1] * len(vals)  # longest decreasing subsequence ending at each point
    for i, v in enumerate(vals):
        for j in range(i):
            if vals[j] > v and lengths[j] >= lengths[i]:
                lengths[i] = lengths[j] + 1
    end = lengths.index(max(lengths))  # the first point ending a longest valley
    # fastai counts the valley from one point before its first (and from 0 when there is none).
    start = end - lengths[end] if lengths[end] > 1 else 0
    third = (end - start) / 3
    idx = start + int(third) + int(third / 2)
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def slide(
    lrs: Tensor, losses: Tensor, num_it: int, lr_diff: int = 15, thresh: float = 0.005, adjust_value: float = 1.0
) -> tuple[float, tuple[float, float]]:
    """The interval slide rule: slide a window of ``lr_diff`` points down from the end of the curve until the
    loss gradients at its two ends differ by at most ``thresh``; suggest the lr at its left end."""
    _check_points("slide", losses, _slide_points(lr_diff), f" (one more than lr_diff={lr_diff}, and 2 for a gradient)")
    loss_np = losses.detach().cpu().numpy()
    grads = np.gradient(loss_np)
    right, left = len(loss_np) - 1, len(loss_np) - 1 - lr_diff
    found = float(lrs[left])
    while left >= 0 and abs(grads[right] - grads[left]) > thresh:
        found = float(lrs[left])
        right, left = right - 1, left - 1
    suggestion = found * adjust_value
    log_lrs = np.log10(lrs.detach().cpu().numpy())
    return suggestion, (suggestion, float(np.interp(np.log10(suggestion), log_lrs, loss_np)))


def _slide_points(lr_diff: int) -> int:
    return max(lr_diff + 1, 2)  # its window, and np.gradient needs 2


def minimum(lrs: Tensor, losses: Tensor, num_it: int) -> tuple[float, tuple[float, float]]:
    """A tenth of the lr at the lowest loss (marks that lowest point)."""
    _check_points("minimum", losses, 1)
    lr_min = float(lrs[int(torch.argmin(losses))])
    return lr_min / 10, _point(lrs, losses, lr_min)


def steep(lrs: Tensor, losses: Tensor, num_it: int) -> tuple[float, tuple[float, float]]:
    """The lr where the loss falls fastest against log(lr)."""
    _check_points("steep", losses, 2, " (a slope between two)")
    slopes = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    lr_steep = float(lrs[int(torch.argmin(slopes))])
    return lr_steep, _point(lrs, losses, lr_steep)


class SuggestionMethod:
    """The suggestion functions by name, for tab completion: ``suggest_funcs=(SuggestionMethod.Valley,)``."""

    Valley = staticmethod(valley)
    Slide = staticmethod(slide)
    Minimum = staticmethod(minimum)
    Steep = staticmethod(steep)


def _base(func: Callable[..., Any]) -> Callable[..., Any]:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _keywords(func: Callable[..., Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    while isinstance(func, functools.partial):
        kw = {**func.keywords, **kw}
        func = func.func
    return kw


def min_points(func: Callable[..., Any]) -> int:
    """How many (lr, loss) points a suggestion function needs: 2 for ``steep``, ``lr_diff + 1`` (2 at least) for
    ``slide``, 1 for the others (user functions included)."""
    base = _base(func)
    if base is steep:
        return 2
    if base is slide:
        return _slide_points(int(_keywords(func).get("lr_diff", 15)))
    return 1


def _suggestion_names(funcs: Sequence[Callable[..., Any]]) -> list[str]:
    names: list[str] = []
    for func in funcs:
        name = getattr(_base(func), "__name__", type(func).__name__)
        if not name.isidentifier() or name.startswith("_"):
            name = f"suggestion_{len(names)}"
        unique, k = name, 2
        while unique in names:
            unique, k = f"{name}_{k}", k + 1
        names.append(unique)
    return names


# ------------------------------------------------------------------------------------ reading them off a sweep
def _as_funcs(suggest_funcs: Any) -> list[Callable[..., Any]] | None:
    """The suggestion functions as a list, or None for none at all (no result); an empty list asks for an empty
    result (fastai returns ``SuggestedLRs()`` for ``suggest_funcs=()``)."""
    if suggest_funcs is None:
        return None
    iterable = not callable(suggest_funcs) and not isinstance(suggest_funcs, str) and hasattr(suggest_funcs, "__iter__")
    funcs = list(suggest_funcs) if iterable else [suggest_funcs]
    for f in funcs:
        if not callable(f):  # fastai reads f.__name__: an AttributeError
            raise WrongKindError(f"lr_find: suggest_funcs must be functions like valley or steep, got {f!r}.")
    return funcs


def _suggest(
    learn: Learner, funcs: list[Callable[..., Any]] | None, num_it: int, sweep: int, show_plot: bool, diverged: bool
) -> tuple[float, ...] | None:
    recorder = learn.recorder
    if funcs is None:
        if show_plot:
            _plot(recorder)
        return None
    window = slice(num_it // 10, -5)
    if recorder.losses and math.isnan(float(recorder.losses[-1])):
        # The finder stopped at a NaN smoothed loss where fastai's runs on (all `sweep` batches, NaN from there
        # on): fastai drops the last 5 of those, then everything from the NaN, so the points before it are kept.
        window = slice(num_it // 10, min(len(recorder.lrs), sweep - 5))
    # float32 as in fastai (a tensor of Python floats), so that ties in steep/valley break the same way.
    lrs = torch.tensor([float(x) for x in recorder.lrs[window]], dtype=torch.float32)
    losses = torch.tensor([float(x) for x in recorder.losses[window]], dtype=torch.float32)
    nans = torch.nonzero(torch.isnan(losses)).flatten()
    if len(nans):
        lrs, losses = lrs[: int(nans[0])], losses[: int(nans[0])]
    names = _suggestion_names(funcs)
    values: list[float] = []
    points: list[tuple[float, float]] = []
    for func, name in zip(funcs, names, strict=True):
        if len(lrs) < min_points(func):
            warn_caller(
                f"lr_find: the sweep stopped after {len(recorder.lrs)} of {num_it} iterations ("
                + ("the loss diverged" if diverged else "a callback stopped the fit, or batches had no target")
                + f"), leaving {len(lrs)} usable points; {name} needs {min_points(func)}, so it suggests nan."
                + (" Try a smaller end_lr, or stop_div=False." if diverged else "")
            )
            values.append(math.nan)
            continue
        lr, point = func(lrs, losses, num_it)
        values.append(float(lr))
        points.append((float(point[0]), float(point[1])))
    if show_plot:
        shown = [n for n, v in zip(names, values, strict=True) if not math.isnan(v)]
        _plot(recorder, suggestions=points, nms=shown)
    suggested_lrs = collections.namedtuple("SuggestedLRs", names)  # type: ignore[misc]
    return suggested_lrs._make(values)


def _plot(recorder: Recorder, **kwargs: Any) -> None:
    if not is_rank_zero():  # in a distributed job, rank 0 plots
        return
    try:
        recorder.plot_lr_find(**kwargs)
    except ImportError as e:
        warn_caller(f"lr_find: no plot ({e}); pass show_plot=False to silence this.")
