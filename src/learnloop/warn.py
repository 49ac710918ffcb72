"""Warnings attributed to the code that called into learnloop, not to the library line that noticed."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).parent)


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` pointing at the innermost caller outside learnloop: the user's ``learn.fit(...)`` line for
    a warning raised by a callback deep in the loop (and the warning filters see that module, not learnloop's)."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
