"""learnloop's warnings point at the user's line that called into the library, whatever the path in between."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import learnloop
from conftest import synth_learner
from learnloop import Callback, CheckpointCallback, EMACallback, NonFiniteLossWarning
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


class Misspelt(Callback):
    def before_bacth(self) -> None: ...


@pytest.mark.parametrize("entry", ["fit", "validate", "get_preds"])
def test_callbacks_given_to_a_method_are_warned_of_at_its_call(entry: str) -> None:
    learn = synth_learner()
    with pytest.warns(UserWarning, match="before_bacth") as record:  # through contextlib's frames (added_cbs)
        getattr(learn, entry)(cbs=Misspelt()) if entry != "fit" else learn.fit(1, cbs=Misspelt())
    assert record[0].filename == __file__


def test_a_warning_from_validates_before_fit_points_at_validate() -> None:
    learn = synth_learner(cbs=EMACallback())
    learn.fit(1)
    learn.model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))  # the average no longer fits
    with pytest.warns(UserWarning, match="Starting the average again") as record:
        learn.validate()
    assert record[0].filename == __file__


def test_a_package_path_spelt_with_dot_or_double_slash(tmp_path: Path) -> None:
    src = Path(learnloop.__file__).parent.parent
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(f"""
        import sys, warnings
        import torch
        sys.path.insert(0, {str(src) + "/./"!r})
        import learnloop
        assert "/./" in learnloop.__file__, learnloop.__file__
        class Misspelt(learnloop.Callback):
            def before_bacth(self): ...
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learnloop.Learner(learnloop.DataLoaders([], []), torch.nn.Linear(1, 1), loss_func=abs).add_cb(Misspelt())
        print(caught[0].filename)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(script)


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
