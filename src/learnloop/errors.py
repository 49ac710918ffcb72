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
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ArgumentError", "InputError", "ValueTypeError", "WrongKindError", "as_scalar", "to_epochs", "to_int", "to_lr",
    "to_number", "to_path", "to_wd", "to_whole",
]


class InputError(ValueError, AssertionError):
    """A value learnloop cannot use (fastai: a failed ``assert``); a ValueError and an AssertionError."""


class ArgumentError(TypeError, AssertionError):
    """An argument learnloop does not take (fastai: a failed ``assert``); a TypeError and an AssertionError."""


class WrongKindError(ArgumentError, AttributeError):
    """An argument of the wrong kind (a torch DataLoader for DataLoaders, say) that fastai finds out only when it
    reads an attribute the object lacks: also the AttributeError fastai raises then."""


class ValueTypeError(InputError, ArgumentError):
    """A value learnloop cannot use where fastai fails with a TypeError (a fractional `n_epoch`, a batch without
    targets): a ValueError, a TypeError and an AssertionError, so either type catches it."""


def to_number(value: Any, name: str, owner: str) -> int | float:
    """`value`, a hyper-parameter given as a number, as a Python int (an integral one) or float.

    Accepts what fastai's arithmetic accepts: ints and floats, numpy scalars (``numbers.Integral`` /
    ``numbers.Real``), 0-dim numpy arrays and 0-dim torch tensors; an int stays an int. Booleans (Python's and
    numpy's), NaN and anything else are refused: a ValueTypeError for a non-number (fastai's arithmetic fails on a
    string with a ValueError, `float('x')`, or a TypeError), an InputError for NaN. `owner` and `name`
    (``"GradientClip"``, ``"max_norm"``) say in the message which argument is wrong.

    >>> to_number(np.int64(3), "n_acc", "GradientAccumulation"), to_number(torch.tensor(0.5), "pct", "Short")
    (3, 0.5)
    """
    value = as_scalar(value)  # read once, when the callback is made
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueTypeError(
            f"{owner}: {name} must be a number (an int or a float, a numpy scalar or a 0-dim tensor), got {value!r}."
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if math.isnan(number):
        raise InputError(f"{owner}: {name} is NaN; give a number.")
    return number


def as_scalar(value: Any) -> Any:
    """`value` as a Python or numpy number when it is a 0-dim tensor or numpy array (``np.array(1e-3)``, what numpy
    reductions give), which fastai's arithmetic takes as numbers; anything else as it is."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        return value.item()
    return value


def to_lr(value: Any, name: str = "lr", owner: str = "") -> Any:
    """`value`, a learning rate as the fit methods take it (a number, a ``slice`` for discriminative learning
    rates, or one number per parameter group), with its numbers made Python ints and floats: numpy scalars and
    0-dim numpy arrays and tensors are accepted as numbers. A value that is not a number is an ArgumentError; a
    negative, NaN or infinite one an InputError, and a slice without its stop a ValueTypeError (both: fastai's is a
    TypeError). `owner`, when given, starts the message (``"fine_tune"``).

    >>> to_lr(slice(np.float64(1e-4), torch.tensor(0.5)))
    slice(0.0001, 0.5, None)
    """
    if isinstance(value, slice):
        if value.stop is None:  # fastai: a TypeError (None in its arithmetic); the message is an InputError's
            raise ValueTypeError(f"{_prefix(owner)}{name}={value!r}: a slice of learning rates needs its stop (the "
                                 "last group's), as in slice(1e-5, 1e-3) or slice(1e-3).")
        start = None if value.start is None else _hyper(value.start, value, name, owner, lr=True)
        return slice(start, _hyper(value.stop, value, name, owner, lr=True))
    return _per_group(value, name, owner, lr=True)


def to_wd(value: Any, name: str = "wd", owner: str = "") -> Any:
    """`value`, a weight decay (None for the optimizer's own, a number, or one per parameter group), with its
    numbers made Python numbers, as `to_lr` does; NaN and infinite values are refused (negative ones are not:
    fastai takes them)."""
    return None if value is None else _per_group(value, name, owner, lr=False)


def _per_group(value: Any, name: str, owner: str, lr: bool) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_hyper(v, value, name, owner, lr) for v in value)
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 1:
        return [_hyper(v, value, name, owner, lr) for v in value]
    return _hyper(value, value, name, owner, lr)


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _hyper(v: Any, given: Any, name: str, owner: str, lr: bool) -> int | float:
    """One number of `given`, a learning rate (`lr`: slices too, no negative numbers) or a weight decay."""
    v = as_scalar(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        forms = "a number, a slice or a list of numbers" if lr else "a number or a list of numbers"
        raise ArgumentError(f"{_prefix(owner)}{name} must be {forms} (one per parameter group), got {given!r}.")
    number = int(v) if isinstance(v, numbers.Integral) else float(v)
    if math.isnan(number) or math.isinf(number) or (number < 0 and lr):
        kind = "a finite, non-negative learning rate" if lr else "a finite number"
        raise InputError(f"{_prefix(owner)}{name} must be {kind}, got {given!r}.")
    return number


def to_epochs(value: Any, name: str = "n_epoch", owner: str = "fit") -> int:
    """`value`, a number of epochs, as a Python int >= 0 (numpy integers and 0-dim integer arrays and tensors too,
    which fastai's ``range(n_epoch)`` takes).

    Anything else is a `ValueTypeError`: fastai's fit fails on a float or a string with a TypeError (the check is
    also the ValueError learnloop raised before), and trains nothing, without a word, for a negative number.

    >>> to_epochs(np.int64(3))
    3
    """
    number = as_scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 0:
        raise ValueTypeError(f"{owner}: {name} must be a whole number of epochs >= 0, got {value!r}.")
    return int(number)


def to_int(value: Any, name: str, owner: str, what: str = "a dimension") -> int:
    """`value`, an integer argument of any sign (a dimension, where a negative one counts from the end), as a Python
    int: an int, a numpy integer or a 0-dim integer array or tensor. Anything else (a float, a string, a bool) is an
    ArgumentError naming `owner`'s argument `name` (`what` says what it is), where torch's own TypeError would not.

    >>> to_int(np.int64(-1), "axis", "accuracy")
    -1
    """
    if type(value) is int:  # the common case, checked first: the metric functions call this every batch
        return value
    number = as_scalar(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral):
        raise ArgumentError(f"{owner}: {name} is {what}, a whole number; got {value!r}.")
    return int(number)


def to_path(value: Any, name: str, owner: str, what: str) -> Path:
    """`value`, a folder or file given as a str or an ``os.PathLike``, as a Path; anything else is an ArgumentError
    naming `owner`'s argument `name` (`what` says what it is for), where ``Path``'s TypeError names none."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{owner}: {name} is {what}: a str or a Path, got {value!r}.")
    return Path(value)


def to_whole(value: Any, name: str, owner: str, what: str) -> int:
    """`value` as a Python int >= 1: an int, a numpy integer or a 0-dim integer array or tensor (`what` says what it
    counts)."""
    number = to_number(value, name, owner)
    if not isinstance(number, int):
        raise ArgumentError(f"{owner}: {name} is {what}, a whole number >= 1; got {value!r}.")
    if number < 1:
        raise InputError(f"{owner}: {name} is {what}, a whole number >= 1; got {value!r}.")
    return number
