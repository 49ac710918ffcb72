"""Errors for bad input that fastai rejects with a bare ``assert``, and the number checks that raise them.

learnloop raises a ValueError or a TypeError that says what is wrong and how to fix it; these subclasses are
also AssertionErrors, the type fastai raises for the same input, so code ported from fastai that catches
``AssertionError`` (or a test that expects it) still works.

>>> try:
...     raise InputError("metric input and target differ in size")
... except AssertionError as e:  # fastai's type
...     isinstance(e, ValueError)
True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

__all__ = ["ArgumentError", "InputError", "to_lr", "to_number", "to_whole"]


class InputError(ValueError, AssertionError):
    """A value learnloop cannot use (fastai: a failed ``assert``); a ValueError and an AssertionError."""


class ArgumentError(TypeError, AssertionError):
    """An argument learnloop does not take (fastai: a failed ``assert``); a TypeError and an AssertionError."""


def to_number(value: Any, name: str, owner: str) -> int | float:
    """`value`, a hyper-parameter given as a number, as a Python int (an integral one) or float.

    Accepts what fastai's arithmetic accepts: ints and floats, numpy scalars (``numbers.Integral`` /
    ``numbers.Real``) and 0-dim torch tensors; an int stays an int. Booleans (Python's and numpy's), NaN and
    anything else are refused: an ArgumentError for a non-number, an InputError for NaN. `owner` and `name`
    (``"GradientClip"``, ``"max_norm"``) say in the message which argument is wrong.

    >>> to_number(np.int64(3), "n_acc", "GradientAccumulation"), to_number(torch.tensor(0.5), "pct", "Short")
    (3, 0.5)
    """
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()  # read once, when the callback is made
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(
            f"{owner}: {name} must be a number (an int or a float, a numpy scalar or a 0-dim tensor), got {value!r}."
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if math.isnan(number):
        raise InputError(f"{owner}: {name} is NaN; give a number.")
    return number


def to_lr(value: Any, name: str = "lr", owner: str = "") -> Any:
    """`value`, a learning rate as the fit methods take it (a number, a ``slice`` for discriminative learning
    rates, or one number per parameter group), with its numbers made Python ints and floats: numpy scalars and
    0-dim tensors are accepted as numbers. A value that is not a number is an ArgumentError; a negative, NaN or
    infinite one an InputError (a slice may leave out its start or stop, as in fastai). `owner`, when given,
    starts the message (``"fine_tune"``).

    >>> to_lr(slice(np.float64(1e-4), torch.tensor(0.5)))
    slice(0.0001, 0.5, None)
    """
    owner = f"{owner}: " if owner else ""
    if isinstance(value, slice):
        start, stop = (None if v is None else _lr_number(v, value, name, owner) for v in (value.start, value.stop))
        return slice(start, stop)
    if isinstance(value, (list, tuple)):
        return type(value)(_lr_number(v, value, name, owner) for v in value)
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 1:
        return [_lr_number(v, value, name, owner) for v in value]
    return _lr_number(value, value, name, owner)


def _lr_number(v: Any, given: Any, name: str, owner: str) -> int | float:
    if isinstance(v, torch.Tensor) and v.ndim == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ArgumentError(
            f"{owner}{name} must be a number, a slice or a list of numbers (one per parameter group), got {given!r}."
        )
    number = int(v) if isinstance(v, numbers.Integral) else float(v)
    if not number >= 0 or math.isinf(number):  # NaN fails every comparison
        raise InputError(f"{owner}{name} must be a finite, non-negative learning rate, got {given!r}.")
    return number


def to_whole(value: Any, name: str, owner: str, what: str) -> int:
    """`value` as a Python int >= 1: an int, a numpy integer or a 0-dim integer tensor (`what` says what it counts)."""
    number = to_number(value, name, owner)
    if not isinstance(number, int):
        raise ArgumentError(f"{owner}: {name} is {what}, a whole number >= 1; got {value!r}.")
    if number < 1:
        raise InputError(f"{owner}: {name} is {what}, a whole number >= 1; got {value!r}.")
    return number
