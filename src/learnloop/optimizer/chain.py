"""Compiling a stepper chain: which path it can take, and what it needs that nobody provides.

Done once when the optimizer is built (and again if ``opt.cbs`` is edited), never per step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .foreach import BuiltinSpec, resolve_builtin
from .fused import FusedPlan, find_fused_plan

__all__ = ["CompiledChain", "compile_chain", "stepper_name"]

Signature = tuple[frozenset[str], frozenset[str]]  # (required names, all names) after ``p``


def stepper_name(cb: Callable[..., Any]) -> str:
    """A readable name for a stepper, ``partial(name)`` for a partial."""
    inner = getattr(cb, "func", None)
    if inner is not None and getattr(cb, "keywords", None) is not None:
        return f"partial({stepper_name(inner)})"
    return getattr(cb, "__qualname__", None) or repr(cb)


def signature_names(cb: Callable[..., Any]) -> Signature | None:
    """(required names, all names) a stepper takes after ``p``, or None if its signature is opaque."""
    try:
        params = list(inspect.signature(cb).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        return None
    named = [q for q in params[1:] if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
    return frozenset(q.name for q in named if q.default is q.empty), frozenset(q.name for q in named)


@dataclass(frozen=True)
class CompiledChain:
    """A chain of steppers as the optimizer runs it."""

    cbs: tuple[Callable[..., Any], ...]
    #: Each stepper's built-in spec and bound options (None for a user stepper).
    resolved: tuple[tuple[BuiltinSpec, dict[str, Any]] | None, ...]
    #: The foreach chain when every stepper is a built-in one, else None (per-parameter path).
    vectorised: tuple[tuple[BuiltinSpec, dict[str, Any]], ...] | None
    #: A single fused kernel running the whole chain, when there is one.
    fused: FusedPlan | None
    signatures: tuple[Signature | None, ...]

    def argument_names(self) -> set[str]:
        """Every name some stepper takes as an argument."""
        return {name for sig in self.signatures if sig is not None for name in sig[1]}

    def missing(self, available: Iterable[str]) -> tuple[Callable[..., Any], set[str]] | None:
        """The first stepper needing names that neither ``available`` nor an earlier built-in provides.

        Stops at the first user stepper: what state it adds is unknown until it runs.
        """
        known = set(available)
        for cb, r, sig in zip(self.cbs, self.resolved, self.signatures, strict=True):
            if sig is None:
                return None
            if sig[0] - known:
                return cb, set(sig[0] - known)
            if r is None:
                return None
            known.update(r[0].produces)
        return None

    def missing_at_call(self, cb: Callable[..., Any], given: Mapping[str, Any]) -> set[str]:
        """The required names of ``cb`` that a failed call did not get."""
        sig = signature_names(cb)
        return set(sig[0] - given.keys()) if sig is not None else set()


def compile_chain(cbs: Sequence[Callable[..., Any]]) -> CompiledChain:
    """Resolve each stepper to its built-in form (if any) and read its signature."""
    resolved = tuple(resolve_builtin(cb) for cb in cbs)
    vectorised = None if any(r is None for r in resolved) else tuple(r for r in resolved if r is not None)
    return CompiledChain(
        cbs=tuple(cbs),
        resolved=resolved,
        vectorised=vectorised,
        fused=find_fused_plan(cbs) if vectorised is not None else None,
        signatures=tuple(signature_names(cb) for cb in cbs),
    )


def missing_message(cb: Callable[..., Any], missing: set[str], defined: Iterable[str]) -> str:
    """How to fix a stepper that needs names nobody defines."""
    name, first = stepper_name(cb), sorted(missing)[0]
    return (
        f"stepper {name} needs {sorted(missing)}, which no stepper default, Optimizer keyword or earlier "
        f"stepper's state provides; pass e.g. Optimizer(..., {first}=...) or give {name} a default "
        f"(hyper-parameters defined: {sorted(defined)})"
    )
