"""Walking nested batches: a function on every tensor of tuples, lists and dicts (`map_tensors`, what learnloop's
own walks use) or on every leaf of tuples, lists, sets and dicts (`apply`), conversions
(`to_half`, `to_float`, `to_np`), joining batches (`to_concat`, `concat`) and finding a batch's first leaf.

fastai's ``torch_core`` names (re-exported from :mod:`learnloop.torch_core`), on plain tensors: a result does not
keep a tensor subclass, and lists come back where fastai returns its ``L``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ArgumentError

__all__ = [
    "apply", "batch_to_samples", "concat", "find_device", "item_find", "map_tensors", "to_concat", "to_float",
    "to_half", "to_np",
]


def map_tensors(func: Callable[[Tensor], Any], b: Any) -> Any:
    """`b` with `func(t)` in place of every tensor `t` in it, through nested tuples, lists and dicts: tuples and
    lists keep their type (a namedtuple too), a dict or any other mutable mapping comes back a plain dict (as
    fastai's walks give it); anything else is kept as it is.

    >>> map_tensors(lambda t: t * 2, {"x": (torch.ones(1), "name")})
    {'x': (tensor([2.]), 'name')}
    """
    if isinstance(b, Tensor):
        return func(b)
    if isinstance(b, (tuple, list)):
        items = [map_tensors(func, o) for o in b]
        return type(b)(*items) if hasattr(b, "_fields") else type(b)(items)  # a namedtuple takes fields
    if isinstance(b, (dict, MutableMapping)):  # a UserDict too (HuggingFace's BatchEncoding), as fastai's walks
        return {k: map_tensors(func, v) for k, v in b.items()}
    return b


def apply(func: Callable[..., Any], x: Any, *args: Any, **kwargs: Any) -> Any:
    """`func(leaf, *args, **kwargs)` on every leaf of `x`, through nested lists, tuples, sets and dicts, which keep
    their type (a dict-like mapping becomes a dict)."""
    if isinstance(x, (list, tuple, set, frozenset)):
        items = [apply(func, o, *args, **kwargs) for o in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)  # a namedtuple takes fields
    if isinstance(x, (dict, MutableMapping)):
        return {k: apply(func, v, *args, **kwargs) for k, v in x.items()}
    return func(x, *args, **kwargs)


def to_half(b: Any) -> Any:
    """`b` with its floating-point tensors in float16 (other leaves unchanged)."""
    return apply(lambda x: x.half() if isinstance(x, Tensor) and x.is_floating_point() else x, b)


def to_float(b: Any) -> Any:
    """`b` with its floating-point tensors in float32 (other leaves unchanged)."""
    return apply(lambda x: x.float() if isinstance(x, Tensor) and x.is_floating_point() else x, b)


def to_np(x: Any) -> Any:
    """`x` with its tensors as numpy arrays (detached, on the CPU); other leaves unchanged."""
    return apply(lambda o: o.detach().cpu().numpy() if isinstance(o, Tensor) else o, x)


def to_concat(xs: Sequence[Any], dim: int = 0) -> Any:
    """The batches `xs` (tensors, or tuples, lists or dicts of them, nested) joined along `dim`, leaf by leaf.

    Tensors whose other dimensions differ cannot be joined: they come back as one list of their slices along
    `dim`, as in fastai (token sequences of different lengths, say).
    """
    if not xs:
        return xs
    first = xs[0]
    if isinstance(first, (list, tuple)):
        joined = [to_concat([x[i] for x in xs], dim=dim) for i in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
    if isinstance(first, dict):
        return {k: to_concat([x[k] for x in xs], dim=dim) for k in first}
    if not all(isinstance(x, Tensor) and x.ndim > 0 for x in xs):
        kinds = sorted({type(x).__name__ if not isinstance(x, Tensor) else "0-dim tensor" for x in xs})
        raise ArgumentError(
            f"to_concat joins tensors of one or more dimensions (in tuples, lists or dicts), got {', '.join(kinds)}: "
            "use torch.stack for 0-dim tensors, and keep other values out of the batches."
        )
    try:
        return torch.cat(list(xs), dim=dim)
    except RuntimeError:  # sizes that differ outside `dim`
        return [item for x in xs for item in x.unbind(dim)]


def concat(*ls: Any) -> Any:
    """Join tensors (`torch.cat`), numpy arrays (`np.concatenate`) or lists and tuples, by the type of the first.

    Lists and tuples give the first one's type; other iterables add their items, and anything else (a number, a
    string, a tensor after the first position) is added as one item: ``concat([1], (2, 3), 4) == [1, 2, 3, 4]``.
    """
    if not ls:
        return []
    first = ls[0]
    if isinstance(first, Tensor):
        return torch.cat(ls)
    if isinstance(first, np.ndarray):
        return np.concatenate(ls)
    items = [item for x in ls for item in _as_items(x)]
    return type(first)(items) if isinstance(first, (tuple, list)) and not hasattr(first, "_fields") else items


def _as_items(x: Any) -> list[Any]:
    # As fastcore's L(x): None is empty; strings, mappings and arrays (tensors, pandas objects) are one item each;
    # other iterables add their items.
    if x is None:
        return []
    if isinstance(x, (str, bytes, Mapping)) or hasattr(x, "__array__") or not isinstance(x, Iterable):
        return [x]
    return list(x)


def item_find(x: Any, idx: Any = 0) -> Any:
    """The first leaf of `x`, taking its `idx`-th element (a key, or a position, of a dict) at the top level."""
    if isinstance(x, (list, tuple)):
        return item_find(x[idx])
    if isinstance(x, dict):
        return item_find(x[list(x)[idx] if isinstance(idx, int) else idx])
    return x


def find_device(b: Any) -> torch.device:
    """The device of `b`'s first leaf (`item_find(b)`, a tensor)."""
    return item_find(b).device


def batch_to_samples(b: Any, max_n: int = 10) -> list[Any]:
    """The first `max_n` samples of the batch `b`: a tensor's (or array's) rows, or tuples of the rows of a tuple
    or list of them (nested)."""
    if isinstance(b, (Tensor, np.ndarray)):
        return list(b[:max_n])
    if isinstance(b, (list, tuple)):
        return list(zip(*[batch_to_samples(o, max_n) for o in b], strict=False))
    raise ArgumentError(
        f"batch_to_samples takes a tensor, a numpy array or a (nested) tuple or list of them, got a "
        f"{type(b).__name__}: put its items in a tensor or array."
    )
