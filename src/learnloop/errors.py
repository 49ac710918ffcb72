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

import torch

__all__ = ["ArgumentError", "InputError", "to_number", "to_whole"]


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


def to_whole(value: Any, name: str, owner: str, what: str) -> int:
    """`value` as a Python int >= 1: an int, a numpy integer or a 0-dim integer tensor (`what` says what it counts)."""
    number = to_number(value, name, owner)
    if not isinstance(number, int):
        raise ArgumentError(f"{owner}: {name} is {what}, a whole number >= 1; got {value!r}.")
    if number < 1:
        raise InputError(f"{owner}: {name} is {what}, a whole number >= 1; got {value!r}.")
    return number
