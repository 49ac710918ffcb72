"""The order callbacks run in: by `order`, constrained by `run_before` / `run_after`, ties by insertion."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .callback import Callback

__all__ = ["sort_callbacks"]


def _classes(spec: type | Iterable[type] | None) -> tuple[type, ...]:
    if spec is None:
        return ()
    if isinstance(spec, type):
        return (spec,)
    return tuple(spec)


def sort_callbacks(cbs: Sequence[Callback]) -> list[Callback]:
    """Callbacks sorted by (`order`, insertion), moved where `run_before` / `run_after` demand it (two callbacks
    of one class that each must run before the other are not constrained).

    Raises ValueError, naming the callbacks involved, when the constraints form a cycle.
    """
    n = len(cbs)
    after: list[set[int]] = [set() for _ in range(n)]  # after[i]: callbacks that must run after i
    for i, cb in enumerate(cbs):
        for j, other in enumerate(cbs):
            if i != j and (isinstance(other, _classes(cb.run_before)) or isinstance(cb, _classes(other.run_after))):
                after[i].add(j)
    for i, cb in enumerate(cbs):
        for j in list(after[i]):
            if i in after[j] and type(cb) is type(cbs[j]):
                # Two of one class, by a constraint naming a class both belong to (a SaveModelCallback subclass that
                # runs after TrackerCallback): it cannot put either first, so they keep `order`, then insertion. A
                # constraint one way only (an instance's `run_before`) still orders them.
                after[i].discard(j)
                after[j].discard(i)
    n_before = [0] * n
    for targets in after:
        for j in targets:
            n_before[j] += 1
    ready = [(cbs[i].order, i) for i in range(n) if n_before[i] == 0]
    heapq.heapify(ready)
    result: list[Callback] = []
    while ready:
        _, i = heapq.heappop(ready)
        result.append(cbs[i])
        for j in after[i]:
            n_before[j] -= 1
            if n_before[j] == 0:
                heapq.heappush(ready, (cbs[j].order, j))
    if len(result) < n:
        # Callbacks left waiting are those on a cycle and those behind one; name only the first kind.
        stuck = ", ".join(type(cbs[i]).__name__ for i in range(n) if n_before[i] > 0 and _on_cycle(after, i))
        raise ValueError(
            f"Cannot order the callbacks: their run_before / run_after constraints form a cycle among {stuck}. "
            "Remove one of the constraints."
        )
    return result


def _on_cycle(after: list[set[int]], start: int) -> bool:
    """Whether `start` can be reached again from itself along the `after` edges."""
    seen: set[int] = set()
    todo = list(after[start])
    while todo:
        i = todo.pop()
        if i == start:
            return True
        if i not in seen:
            seen.add(i)
            todo.extend(after[i])
    return False
