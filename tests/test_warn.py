"""learnloop's warnings point at the user's line that called into the library, whatever the path in between."""

from __future__ import annotations

import inspect
import shutil
import warnings
from pathlib import Path

import pytest

from conftest import synth_learner
from learnloop import Callback, CheckpointCallback, NonFiniteLossWarning
from learnloop.warn import warn_caller


def _line_of(marker: str) -> int:
    source, start = inspect.getsourcelines(test_resume_warnings_point_at_the_fit_call_of_every_fit_method)
    return start + next(i for i, line in enumerate(source) if marker in line)


def test_resume_warnings_point_at_the_fit_call_of_every_fit_method(tmp_path: Path) -> None:
    synth_learner(path=tmp_path / "base").fit(1, cbs=CheckpointCallback())
    shutil.copytree(tmp_path / "base", tmp_path / "a")
    with pytest.warns(UserWarning, match="taken in a fit of 1 epochs") as record:
        synth_learner(path=tmp_path / "a").fit(2, cbs=CheckpointCallback(), resume="latest")  # MARK-fit
    assert (record[0].filename, record[0].lineno) == (__file__, _line_of("MARK-fit"))
    with pytest.warns(UserWarning, match="no checkpoint in") as record:
        synth_learner(path=tmp_path / "b").fit_one_cycle(1, cbs=CheckpointCallback(), resume="latest")  # MARK-cycle
    assert (record[0].filename, record[0].lineno) == (__file__, _line_of("MARK-cycle"))


def test_callback_warnings_point_at_the_users_code() -> None:
    class Misspelt(Callback):
        def before_bacth(self) -> None: ...

    learn = synth_learner()
    with pytest.warns(UserWarning, match="before_bacth") as record:
        learn.add_cb(Misspelt())
    assert record[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="'begin_fit' is deprecated") as record:
        learn("begin_fit")
    assert record[0].filename == __file__


def test_a_warning_instance_keeps_its_class_and_its_fact() -> None:
    with pytest.warns(NonFiniteLossWarning) as record:
        warn_caller(NonFiniteLossWarning("The loss is nan.", "Lower the learning rate."))
    warning = record[0].message
    assert isinstance(warning, NonFiniteLossWarning)
    assert str(warning) == "The loss is nan. Lower the learning rate." and warning.what == "The loss is nan."
    assert record[0].filename == __file__
    with warnings.catch_warnings(record=True) as caught:  # from warnings.warn(text, category): no advice added
        warnings.simplefilter("always")
        warnings.warn("plain", NonFiniteLossWarning, stacklevel=1)
    assert str(caught[0].message) == "plain" and caught[0].message.what == "plain"  # type: ignore[union-attr]
