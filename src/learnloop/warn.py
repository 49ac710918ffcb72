"""Warnings attributed to the code that called into learnloop, not to the library line that noticed, and the
warning a loss that is no longer a finite number raises."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

__all__ = ["NON_FINITE_ADVICE", "NonFiniteLossWarning", "warn_caller"]

# As the interpreter spells the package's files in frames (no normalising: a "./src" or "//" on sys.path stays).
_PACKAGE = os.path.dirname(__file__) + os.sep
# Frames stepped over as well: the context managers learnloop's methods enter (fit(cbs=...), validate()...).
_CONTEXTLIB = contextlib.__file__

# What to do about a NaN or infinite loss, after the fact in most NonFiniteLossWarnings.
NON_FINITE_ADVICE = (
    "Lower the learning rate, check the inputs and targets for NaN or infinite values, or clip the gradients "
    "(GradientClip)."
)


class NonFiniteLossWarning(RuntimeWarning):
    """A loss became NaN or infinite: training diverged, or the data holds NaN or infinite values.

    ``what`` is the fact alone, without the ``advice`` that follows it in the message (the `learnloop` command
    gives its own, in terms of its options).
    """

    def __init__(self, what: str, advice: str = "") -> None:
        super().__init__(f"{what} {advice}" if advice else what)
        self.what = what


def warn_caller(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` pointing at the innermost caller outside learnloop (and the standard context managers it
    enters): the user's ``learn.fit(...)`` line for a warning raised by a callback deep in the loop, and the
    warning filters see that module, not learnloop's.
    ``message`` may be a Warning instance, whose class is then the category."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_filename == _CONTEXTLIB
    ):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
