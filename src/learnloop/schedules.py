"""Annealers: pure functions of training progress ``pct`` in [0, 1] that give a hyper-parameter value.

``start`` and ``end`` may be numbers or arrays (one value per parameter group, as ``fit_one_cycle``
passes its ``lr_max``); an annealer returns a float for numbers and a float64 numpy array for arrays.

>>> sched = combined_cos(0.25, 1.0, 10.0, 0.0)   # warm up over 25% of training, then anneal
>>> sched(0.0), sched(0.25), sched(1.0)
(1.0, 10.0, 0.0)
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np

from .errors import ArgumentError, InputError, to_number
from .smoothing import to_float32

__all__ = [
    "Annealer",
    "CombinedSchedule",
    "SchedCos",
    "SchedExp",
    "SchedLin",
    "SchedNo",
    "SchedPoly",
    "Schedule",
    "annealer",
    "combine_scheds",
    "combined_cos",
    "sched_cos",
    "sched_exp",
    "sched_lin",
    "sched_no",
]

#: Anything that maps progress in [0, 1] to a value (annealers, combined schedules, plain functions).
Schedule: TypeAlias = Callable[[float], Any]


def _as_value(x: Any, what: str = "a schedule's value") -> float | np.ndarray:
    """A float, or a float64 array for sequences and arrays (torch tensors included). A string, or anything else
    that is not numbers, is an ArgumentError (fastai's arithmetic fails on it with a TypeError when called)."""
    texts = (str, bytes)
    try:
        if isinstance(x, texts) or (isinstance(x, (list, tuple)) and any(isinstance(v, texts) for v in x)):
            raise TypeError
        if isinstance(x, (list, tuple)) or (hasattr(x, "__array__") and np.ndim(x) > 0):
            return np.asarray(x, dtype=np.float64)
        return float(x)
    except (TypeError, ValueError):
        raise ArgumentError(f"{what} must be a number (or one per parameter group), got {x!r}.") from None


def _out(x: Any) -> float | np.ndarray:
    if isinstance(x, float):  # the common case, kept cheap: schedules run before every batch
        return x
    return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------------------------ fastai's functions
def sched_lin(start: Any, end: Any, pos: float) -> Any:
    """Linear from ``start`` (``pos`` 0) to ``end`` (``pos`` 1): ``start + pos * (end - start)``."""
    return start + pos * (end - start)


def sched_cos(start: Any, end: Any, pos: float) -> Any:
    """Half a cosine from ``start`` (``pos`` 0) to ``end`` (``pos`` 1), flat at both ends."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def sched_no(start: Any, end: Any, pos: float) -> Any:
    """Constant ``start`` (``end`` and ``pos`` are ignored)."""
    return start


def sched_exp(start: Any, end: Any, pos: float) -> Any:
    """Geometric from ``start`` to ``end``: ``start * (end / start) ** pos``."""
    return start * (end / start) ** pos


class _AnnealedFunction:
    """The schedule ``pos -> f(start, end, pos)`` that ``annealer(f)(start, end)`` makes."""

    def __init__(self, f: Callable[[Any, Any, float], Any], start: Any, end: Any) -> None:
        self.f, self.start, self.end = f, start, end

    def __call__(self, pos: float) -> Any:
        return self.f(self.start, self.end, pos)

    def __repr__(self) -> str:
        return f"{getattr(self.f, '__name__', 'annealer')}({self.start!r}, {self.end!r})"


def annealer(f: Callable[[Any, Any, float], Any]) -> Callable[[Any, Any], Schedule]:
    """Decorator making ``f(start, end, pos)`` a schedule maker: ``annealer(f)(start, end)`` is the schedule
    ``pos -> f(start, end, pos)``, with ``f``, ``start`` and ``end`` as attributes (as fastai's ``annealer``).
    The values are ``f``'s as they are (no conversion to float or array, unlike ``SchedLin`` & co.).

    >>> @annealer
    ... def sched_sqrt(start, end, pos):
    ...     return start + (end - start) * pos**0.5
    >>> sched_sqrt(0.0, 4.0)(0.25)
    2.0
    """

    @functools.wraps(f)
    def make(start: Any, end: Any) -> _AnnealedFunction:
        return _AnnealedFunction(f, start, end)

    return make


# ------------------------------------------------------------------------------------ annealers
class Annealer:
    """Base class: a schedule from ``start`` to ``end``; subclasses define ``at(pct)``."""

    def __init__(self, start: Any, end: Any) -> None:
        name = type(self).__name__
        self.start, self.end = _as_value(start, f"{name}: start"), _as_value(end, f"{name}: end")

    def at(self, pct: float) -> Any:
        """The value at progress ``pct`` (before conversion to float / array)."""
        raise NotImplementedError

    def __call__(self, pct: float) -> float | np.ndarray:
        return _out(self.at(pct))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_fmt(self.start)}, {_fmt(self.end)})"


def _fmt(x: float | np.ndarray) -> str:
    return repr(x.tolist()) if isinstance(x, np.ndarray) else repr(x)


class SchedLin(Annealer):
    """Linear from ``start`` to ``end``."""

    def at(self, pct: float) -> Any:
        return self.start + pct * (self.end - self.start)


class SchedCos(Annealer):
    """Half a cosine from ``start`` to ``end`` (flat at both ends)."""

    def at(self, pct: float) -> Any:
        return self.start + (1 + math.cos(math.pi * (1 - pct))) * (self.end - self.start) / 2


class SchedNo(Annealer):
    """Constant ``start`` (``end`` is ignored)."""

    def at(self, pct: float) -> Any:
        return self.start


class SchedExp(Annealer):
    """Geometric from ``start`` to ``end``: ``start * (end/start) ** pct``; ``start`` must be non-zero and
    ``end`` of the same sign or 0 (then, as in fastai, the value is ``start`` at ``pct=0`` and 0 after)."""

    def __init__(self, start: Any, end: Any) -> None:
        super().__init__(start, end)
        start_a, end_a = np.asarray(self.start), np.asarray(self.end)
        # fastai checks nothing: a zero start divides by zero when called, and a sign change gives complex
        # numbers between the ends. Both are refused here, when the schedule is made.
        if np.any(start_a == 0) or np.any(start_a * end_a < 0):
            raise InputError(
                f"SchedExp({_fmt(self.start)}, {_fmt(self.end)}): an exponential schedule needs a non-zero "
                "start and an end of the same sign (or 0); use SchedLin or SchedCos to start at or cross zero."
            )

    def at(self, pct: float) -> Any:
        return self.start * (self.end / self.start) ** pct


class SchedPoly(Annealer):
    """Polynomial from ``start`` to ``end``: ``start + (end - start) * pct ** power``."""

    def __init__(self, start: Any, end: Any, power: float) -> None:
        super().__init__(start, end)
        self.power = to_number(power, "power", "SchedPoly")  # fastai's: a TypeError when called

    def at(self, pct: float) -> Any:
        return self.start + (self.end - self.start) * pct**self.power

    def __repr__(self) -> str:
        return f"SchedPoly({_fmt(self.start)}, {_fmt(self.end)}, power={self.power!r})"


class CombinedSchedule:
    """Run ``scheds[i]`` over a fraction ``pcts[i]`` of training, each seeing its own progress in [0, 1]
    (a float32 value, as fastai's; see ``combine_scheds``)."""

    def __init__(self, pcts: Sequence[float], scheds: Sequence[Schedule]) -> None:
        if isinstance(pcts, (str, bytes)) or any(isinstance(p, (str, bytes)) for p in pcts):
            raise ArgumentError(f"combine_scheds: pcts must be numbers (fractions of training), got {pcts!r}.")
        fractions = [float(p) for p in pcts]
        if len(fractions) != len(scheds) or not scheds:
            raise InputError(
                f"combine_scheds needs one fraction per schedule, got {len(fractions)} fractions for "
                f"{len(scheds)} schedules."
            )
        if any(not p >= 0 for p in fractions):  # `not >=` also catches NaN
            raise InputError(f"combine_scheds: every fraction must be >= 0, got {list(pcts)}.")
        if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise InputError(
                f"combine_scheds: the fractions must add up to 1, got {list(pcts)} (sum {sum(fractions)})."
            )
        # fastai keeps the segment bounds in a float32 tensor and works out the position inside a segment in
        # float32: the same here, bit for bit (which segment a pct on a boundary falls in depends on it), with
        # the float32 values held in Python floats and each result rounded to float32 (see smoothing.to_float32).
        bounds, total = [0.0], 0.0
        for p in fractions:
            total += to_float32(p)  # a cumulative sum of the float32 fractions, kept in float64, as torch.cumsum
            bounds.append(to_float32(total))
        self.pcts, self.scheds, self.bounds = fractions, list(scheds), bounds
        self._widths = [to_float32(hi - lo) for lo, hi in itertools.pairwise(bounds)]
        last = len(fractions) - 1
        while last > 0 and self._widths[last] == 0:
            last -= 1  # a trailing empty segment has no progress to give; pct past the end finishes the one before
        self._last = last

    def __call__(self, pct: float) -> Any:
        pos = to_float32(pct)
        bounds = self.bounds
        # The last schedule that has started (fastai's rule); pct == 1 stays in the last one.
        idx = bisect.bisect_right(bounds, pos) - 1
        if idx < 0:
            idx = 0
        elif idx >= self._last:
            idx = self._last
        return self.scheds[idx](to_float32(to_float32(pos - bounds[idx]) / self._widths[idx]))

    def __repr__(self) -> str:
        return f"combine_scheds({self.pcts}, {self.scheds})"


def combine_scheds(pcts: Sequence[float], scheds: Sequence[Schedule]) -> CombinedSchedule:
    """One schedule running ``scheds[i]`` over the fraction ``pcts[i]`` of training (``pcts`` sum to 1).

    As in fastai, the segment bounds are float32 and so is the position handed to ``scheds[i]``
    (``(pct - start) / length``, in float32): the values are fastai's to the bit, and a ``pct`` within a
    float32 rounding of a boundary goes to the segment fastai picks.

    >>> sched = combine_scheds([0.3, 0.7], [SchedLin(0., 1.), SchedCos(1., 0.)])
    >>> sched(0.15), sched(0.3), sched(1.0)
    (0.5, 1.0, 0.0)
    """
    return CombinedSchedule(pcts, scheds)


def combined_cos(pct: float, start: Any, middle: Any, end: Any) -> CombinedSchedule:
    """Cosine from ``start`` to ``middle`` over the first ``pct`` of training, then from ``middle`` to ``end``."""
    return combine_scheds([pct, 1 - pct], [SchedCos(start, middle), SchedCos(middle, end)])
