"""Errors for bad input that fastai rejects with a bare ``assert``.

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

__all__ = ["ArgumentError", "InputError"]


class InputError(ValueError, AssertionError):
    """A value learnloop cannot use (fastai: a failed ``assert``); a ValueError and an AssertionError."""


class ArgumentError(TypeError, AssertionError):
    """An argument learnloop does not take (fastai: a failed ``assert``); a TypeError and an AssertionError."""
