"""Training checkpoint files: naming and pruning, atomic saves (kill -9 in the middle of one), Ctrl-C (SIGINT to a
process, and in-process), bad files (truncated, garbage, pickled code, foreign model, newer format), read-only
folders, and learn.export / load_learner (weights-only, trusted pickles, safetensors)."""

from __future__ import annotations

import argparse
import errno
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import learnloop.checkpoint as checkpoint_module
from conftest import EventLog, synth_learner
from learnloop import (
    Callback,
    CheckpointCallback,
    CheckpointError,
    EMACallback,
    GradientAccumulation,
    Learner,
    NonFiniteLossWarning,
    accuracy,
    load_learner,
)
from learnloop.callbacks.checkpointing import checkpoint_files, latest_checkpoint
from learnloop.checkpoint import FORMAT_VERSION
from learnloop.resume import Position
from test_resume import assert_same_run, make_learner, one_cycle

TESTS = Path(__file__).parent


def _position(file: Path) -> Position:
    return Position(**torch.load(file, weights_only=True)["position"])


@pytest.fixture(scope="module")
def full() -> Learner:
    learn = make_learner()
    one_cycle(learn)
    return learn


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A checkpoint taken in the middle of the first epoch."""
    learn = make_learner(path=tmp_path)
    learn.fit(1, cbs=CheckpointCallback(every_n_iters=3, every_epoch=False))
    file = latest_checkpoint(tmp_path / "models" / "checkpoints")
    assert file is not None
    return file


# ------------------------------------------------------------------------------------------ the callback
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_iters": 0}, "every_n_iters must be a whole number >= 1"),
        ({"every_n_iters": 2.5}, "every_n_iters must be a whole number"),
        ({"keep_last": 0}, "keep_last must be a whole number >= 1 or None"),
        ({"fname": "a/b"}, "file name prefix without folders"),
        # every epoch, whatever the number (SaveModelCallback's every_epoch=2 is every 2 epochs), or the string says
        ({"every_epoch": 2}, r"every_epoch is True or False .* got 2; .* every_n_iters=n \* len\(dls.train\)"),
        ({"every_epoch": "no"}, "every_epoch is True or False"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CheckpointCallback(**kwargs)


def test_fname_is_a_str_or_a_path_of_one_name(tmp_path: Path) -> None:
    # A Path or a number was refused by `"/" in fname`: "argument of type 'PosixPath' is not iterable".
    assert CheckpointCallback(fname=Path("ck")).fname == "ck"  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fname is a file name prefix, a str; got int 5"):
        CheckpointCallback(fname=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="file name prefix without folders"):
        CheckpointCallback(fname=Path("a/b"))  # type: ignore[arg-type]


def test_numpy_integers_are_whole_numbers() -> None:
    # Refused with "must be a whole number >= 1 or None, got 500".
    cb = CheckpointCallback(every_n_iters=np.int64(500), keep_last=np.int32(2))
    assert (cb.every_n_iters, cb.keep_last) == (500, 2) and type(cb.every_n_iters) is int and type(cb.keep_last) is int
    with pytest.raises(ValueError, match="keep_last must be a whole number"):
        CheckpointCallback(keep_last=np.True_)  # type: ignore[arg-type]


def test_files_are_numbered_and_pruned_and_folders_created(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path / "run", n_train=64)  # 4 batches per epoch
    cb = CheckpointCallback(every_n_iters=3, keep_last=2, path="deep/er/ck")
    learn.fit(2, cbs=cb)
    folder = tmp_path / "run" / "deep" / "er" / "ck"
    names = ["checkpoint_000003_epoch1_batch2.pth", "checkpoint_000004_epoch1_end.pth"]
    assert [f.name for f in checkpoint_files(folder)] == names
    assert cb.last_saved == folder / "checkpoint_000004_epoch1_end.pth"
    assert sorted(p.name for p in folder.iterdir()) == [f.name for f in checkpoint_files(folder)]  # no temporary file
    learn.fit(1, cbs=cb)  # the numbering carries on in the folder
    names = ["checkpoint_000005_epoch0_batch3.pth", "checkpoint_000006_epoch0_end.pth"]
    assert [f.name for f in checkpoint_files(folder)] == names
    default = synth_learner(path=tmp_path / "other")
    default.fit(1, cbs=CheckpointCallback(keep_last=None))
    assert [f.name for f in checkpoint_files(tmp_path / "other" / "models" / "checkpoints")] == [
        "checkpoint_000001_epoch0_end.pth"
    ]


def test_an_inexact_checkpoint_takes_no_place_among_the_kept_ones(tmp_path: Path) -> None:
    # keep_last counted the _inexact file of an interrupt: the resumed run's first checkpoint pushed out an exact one
    # and kept the inexact one, so only one exact checkpoint of keep_last=2 was left.
    class Interrupt(Callback):
        def before_batch(self) -> None:
            if self.learn.training and self.learn.epoch == 2 and self.learn.iter == 1:
                raise KeyboardInterrupt  # raised by code: cannot be deferred, so the last checkpoint is inexact

    class Look(Callback):
        order = CheckpointCallback.order + 1

        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        def after_batch(self) -> None:
            if self.learn.training:
                self.seen.append([f.name for f in checkpoint_files(folder)])

    folder = tmp_path / "models" / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        synth_learner(path=tmp_path, n_train=64).fit(4, cbs=[CheckpointCallback(keep_last=2), Interrupt()])
    first = ["checkpoint_000001_epoch0_end.pth", "checkpoint_000002_epoch1_end.pth"]
    inexact = "checkpoint_000003_epoch2_batch1_inexact.pth"
    assert [f.name for f in checkpoint_files(folder)] == [*first, inexact]
    look = Look()
    cbs = [CheckpointCallback(keep_last=2, every_n_iters=1), look]
    synth_learner(path=tmp_path, n_train=64).fit(4, cbs=cbs, resume="latest")
    assert look.seen[0] == [first[1], inexact, "checkpoint_000004_epoch2_batch1.pth"]
    # once older than every exact checkpoint kept, it goes
    assert look.seen[1] == ["checkpoint_000004_epoch2_batch1.pth", "checkpoint_000005_epoch2_batch2.pth"]


class PoisonWeights(Callback):
    """Fills the model's weights with NaN at the start of epoch `epoch`: a fit that has diverged."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_epoch(self) -> None:
        if self.learn.epoch == self.epoch:
            with torch.no_grad():
                for p in self.learn.model.parameters():
                    p.fill_(math.nan)


def test_no_checkpoint_of_diverged_weights_the_good_ones_are_kept(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path, n_train=64)  # 4 batches an epoch
    cb = CheckpointCallback(every_n_iters=2, keep_last=2)
    with pytest.warns(NonFiniteLossWarning) as record:
        learn.fit(3, cbs=[cb, PoisonWeights(2)])
    folder = tmp_path / "models" / "checkpoints"
    good = ["checkpoint_000005_epoch1_batch4.pth", "checkpoint_000006_epoch1_end.pth"]
    assert [f.name for f in checkpoint_files(folder)] == good  # epoch 2's three saves neither written nor pruning
    assert cb.last_saved == folder / good[-1]
    warned = [w.message for w in record if str(w.message).startswith("CheckpointCallback")]
    assert [str(w) for w in warned] == [  # once a fit, at the first skipped save, pointing at the fit call
        "CheckpointCallback: no checkpoint after 2 batches of epoch 2, nor after any later point of this fit: the "
        "model's parameter 'weight' holds NaN or infinite values (training has diverged). The checkpoints already "
        f"written are kept, the last: {folder / good[-1]}. Lower the learning rate, check the inputs and targets for "
        "NaN or infinite values, or clip the gradients (GradientClip)."
    ]
    assert isinstance(warned[0], NonFiniteLossWarning) and not warned[0].what.endswith("(GradientClip).")
    assert all(w.filename == __file__ for w in record)
    again = synth_learner(path=tmp_path, n_train=64)
    again.fit(3, cbs=CheckpointCallback(every_n_iters=2, keep_last=2), resume="latest")  # from the end of epoch 1
    assert all(bool(torch.isfinite(p).all()) for p in again.model.parameters())


def test_a_fit_diverged_at_an_epoch_end_is_named_so(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    learn = synth_learner(path=tmp_path)

    class PoisonAfterTraining(Callback):
        def after_train(self) -> None:
            with torch.no_grad():
                next(iter(self.learn.model.parameters())).fill_(math.inf)

    learn.fit(2, cbs=[CheckpointCallback(), PoisonAfterTraining()])
    warned = [str(w.message) for w in recwarn.list if issubclass(w.category, NonFiniteLossWarning)]
    checkpoint_warnings = [m for m in warned if m.startswith("CheckpointCallback")]
    assert len(checkpoint_warnings) == 1
    assert checkpoint_warnings[0].startswith(
        "CheckpointCallback: no checkpoint after epoch 0, nor after any later point of this fit: the model's "
        "parameter 'weight' holds NaN or infinite values (training has diverged). No checkpoint was written before."
    )
    assert not (tmp_path / "models" / "checkpoints").exists()


def test_resuming_with_another_lr_as_the_docs_say(tmp_path: Path) -> None:
    synth_learner(path=tmp_path / "base").fit(1, cbs=CheckpointCallback())

    class LowerLr(Callback):
        def before_epoch(self) -> None:
            self.learn.opt.set_hyper("lr", 1e-5)

    lrs = {}
    for name, fit, cbs in [("fit", "fit", []), ("callback", "fit", [LowerLr()]), ("one_cycle", "fit_one_cycle", [])]:
        shutil.copytree(tmp_path / "base", tmp_path / name)
        learn = synth_learner(path=tmp_path / name)  # lr 1e-2
        with pytest.warns(UserWarning, match="taken in a fit of 1 epochs and this fit has 2"):
            getattr(learn, fit)(2, 1e-5, cbs=[CheckpointCallback(), *cbs], resume="latest")
        lrs[name] = learn.recorder.lrs[2:]  # epoch 1's two batches (epoch 0's come from the checkpoint)
    assert lrs["fit"] == [1e-2, 1e-2]  # the checkpoint's lr
    assert lrs["callback"] == [1e-5, 1e-5]
    assert max(lrs["one_cycle"]) < 1e-5  # the second half of a cycle up to 1e-5


class MaskedLinear(nn.Module):
    """A linear layer with a buffer of -inf on purpose (as an attention mask has) and a running statistic."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("mask", torch.tensor([0.0, -math.inf]))
        self.register_buffer("stat", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.mask.exp().sum() - 1


def test_buffers_may_hold_infinities_but_not_nan(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    learn = synth_learner(path=tmp_path)
    learn.model = MaskedLinear()
    learn.fit(1, cbs=CheckpointCallback())
    folder = tmp_path / "models" / "checkpoints"
    assert [f.name for f in checkpoint_files(folder)] == ["checkpoint_000001_epoch0_end.pth"]
    assert not [w for w in recwarn.list if issubclass(w.category, NonFiniteLossWarning)]
    learn.model.stat.fill_(math.nan)  # a NaN in a running statistic is divergence
    with pytest.warns(NonFiniteLossWarning, match="after epoch 0, .* the model's buffer 'stat' holds NaN"):
        learn.fit(1, cbs=CheckpointCallback())
    assert len(checkpoint_files(folder)) == 1


def test_no_checkpoint_in_validate_get_preds_or_lr_find(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path, cbs=CheckpointCallback(every_n_iters=1))
    learn.validate()
    learn.get_preds()
    learn.lr_find(num_it=10, show_plot=False)
    assert not (tmp_path / "models" / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_validate_inside_the_fit_leaves_its_epoch_checkpoints_and_ctrl_c_handling(tmp_path: Path) -> None:
    handlers: list[Any] = []

    def validate_then_look() -> None:
        if learn._nested_run:  # the validate()'s own after_epoch
            return
        learn.validate()  # before CheckpointCallback's after_epoch (order 0 < 1000), and its after_fit
        handlers.append(signal.getsignal(signal.SIGINT))

    checkpoints = CheckpointCallback(every_epoch=True)
    learn = synth_learner(path=tmp_path, cbs=[checkpoints, Callback(after_epoch=validate_then_look)])
    learn.fit(2)
    names = [f.name for f in checkpoint_files(tmp_path / "models" / "checkpoints")]
    assert names == ["checkpoint_000001_epoch0_end.pth", "checkpoint_000002_epoch1_end.pth"]  # learn.epoch was 0
    assert handlers == [checkpoints._on_ctrl_c] * 2  # Ctrl-C still deferred by the fit after each validate()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and put back at the fit's end


def test_the_checkpoint_of_an_interrupt_is_named_after_the_fits_epoch_too(tmp_path: Path) -> None:
    # A callback after CheckpointCallback runs validate() at before_epoch, which sets learn.epoch to 0 (as fastai's):
    # the checkpoint written when Ctrl-C leaves epoch 1's second batch is still epoch 1's, as the periodic ones are.
    checkpoints = CheckpointCallback(every_epoch=False)

    class Nested(Callback):
        order = checkpoints.order + 1

        def before_epoch(self) -> None:
            if not self.learn._nested_run:  # not the validate()'s own before_epoch
                self.validated = self.learn.epoch == 1
                if self.validated:
                    self.learn.validate()

        def before_batch(self) -> None:
            if self.validated and self.learn.training and self.learn.iter == 1:
                checkpoints.save_on_interrupt()  # what the learner calls when Ctrl-C leaves a training batch

    synth_learner(path=tmp_path, cbs=[checkpoints, Nested()]).fit(2)
    names = [f.name for f in checkpoint_files(tmp_path / "models" / "checkpoints")]
    assert names == ["checkpoint_000001_epoch1_batch1_inexact.pth"]


def test_learn_load_reads_a_training_checkpoint(ckpt: Path) -> None:
    saved = torch.load(ckpt, weights_only=True)
    other = make_learner()
    other.path, other.model_dir = ckpt.parent, Path(".")
    other.load(ckpt.stem)
    assert all(torch.equal(a, saved["model"][k]) for k, a in other.model.state_dict().items())
    assert other.opt.state_dict()["hypers"] == saved["opt"]["hypers"]


# ------------------------------------------------------------------------------------------ bad files
def _resume(file: Path) -> None:
    one_cycle(make_learner(), resume=file)


def test_truncated_and_garbage_checkpoints(ckpt: Path) -> None:
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _resume(ckpt)
    ckpt.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _resume(ckpt)
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _resume(ckpt)


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this should never run",))


def test_load_passes_weights_only_as_fastai_does(tmp_path: Path) -> None:
    # fastai's SaveModelCallback calls learn.load(name, with_opt=..., weights_only=False), which fastai hands to
    # torch.load: learnloop's load takes it too. False reads any object (a file you trust); the default refuses.
    learn = synth_learner(path=tmp_path)
    learn.fit(1)
    learn.save("m")
    assert learn.load("m", with_opt=True, weights_only=False) is learn
    torch.save({"model": learn.model.state_dict(), "opt": {"note": argparse.Namespace(a=1)}}, tmp_path / "models" /
               "odd.pth")
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        learn.load("odd")
    with pytest.warns(UserWarning, match="Could not load the optimizer state"):
        learn.load("odd", weights_only=False)  # the model's weights are read; the odd optimizer state is not used
    # A file naming a module that is not installed (fastai's files name fastcore): said so, not "corrupt".
    (tmp_path / "gone_module.py").write_text("class Thing:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_module  # type: ignore[import-not-found]

        torch.save({"model": learn.model.state_dict(), "opt": gone_module.Thing()}, tmp_path / "models" / "gone.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_module", None)
    with pytest.raises(CheckpointError, match=r"needs code that is not installed.*No module named 'gone_module'"):
        learn.load("gone", weights_only=False)


def test_pickled_code_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.save({"format": "learnloop.checkpoint", "x": _RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused: loading it could run arbitrary code.*posix.system|refused"):
        _resume(tmp_path / "evil.pth")
    with (tmp_path / "plain.pth").open("wb") as f:
        pickle.dump(_RunsCode(), f, protocol=2)
    with pytest.raises(CheckpointError, match="refused.*GLOBAL posix.system"):
        _resume(tmp_path / "plain.pth")
    with (tmp_path / "plain4.pth").open("wb") as f:
        pickle.dump(_RunsCode(), f)  # protocol 4 frames: not even read as far as the function
    with pytest.raises(CheckpointError, match="not written by torch.save"):
        _resume(tmp_path / "plain4.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_learner(tmp_path / "evil.pth", trusted=True)  # trusted= only unpickles the export's model field
    assert "should never run" not in capfd.readouterr().out


def test_other_files_are_named_for_what_they_are(tmp_path: Path, ckpt: Path) -> None:
    learn = make_learner(path=tmp_path)
    learn.save("weights")
    with pytest.raises(CheckpointError, match="is not a learnloop.checkpoint file.*loaded with learn.load"):
        _resume(tmp_path / "models" / "weights.pth")
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "format_version": FORMAT_VERSION + 1, "learnloop_version": "9.0"}, ckpt)
    with pytest.raises(CheckpointError, match=r"written by learnloop 9.0 .*version 2.*upgrade learnloop"):
        _resume(ckpt)


def test_a_checkpoint_of_another_model_changes_nothing(ckpt: Path) -> None:
    learn = make_learner()
    learn.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 5))
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(CheckpointError, match=r"size mismatch for 3.weight: checkpoint \[3, 16\], model \[5, 16\]"):
        one_cycle(learn, resume=ckpt)
    assert all(torch.equal(p, b) for p, b in zip(learn.model.parameters(), before, strict=True))


# ------------------------------------------------------------------------------------------ failed saves
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    learn = synth_learner(path=tmp_path)
    cb = CheckpointCallback(keep_last=1)
    learn.fit(1, cbs=cb)
    first = cb.last_saved
    assert first is not None
    good = first.read_bytes()

    def disk_full(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left") as info:
        learn.fit(1, cbs=cb)
    assert any("unchanged" in note for note in getattr(info.value, "__notes__", []))
    assert checkpoint_files(first.parent) == [first] and first.read_bytes() == good
    assert sorted(first.parent.iterdir()) == [first]  # the temporary file is gone


def test_a_read_only_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    learn = synth_learner(path=tmp_path)
    learn.save("m")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint_module, "_create_temporary", refuse)
    with pytest.raises(PermissionError, match=r"Cannot save .*m\.pth: the folder .*models cannot be created"):
        learn.save("m")
    with pytest.raises(PermissionError, match="cannot be created or written"):
        learn.export()
    monkeypatch.undo()
    assert torch.load(tmp_path / "models" / "m.pth", weights_only=True)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_a_really_read_only_folder(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    file = learn.save("m")
    good = file.read_bytes()
    file.parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="cannot be created or written"):
            learn.save("m")
    finally:
        file.parent.chmod(0o755)
    assert file.read_bytes() == good


# ------------------------------------------------------------------------------------------ processes
def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            sys.path.insert(0, {str(TESTS)!r})
            import torch
            from learnloop import Callback, CheckpointCallback
            from test_resume import make_learner, one_cycle
            RUN, MARKER = Path({str(tmp_path / 'run')!r}), Path({str(tmp_path / 'marker')!r})
            """
        )
        + textwrap.dedent(body)
    )
    return script


def _wait_for(marker: Path, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the script ended early:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the script never got there")
        time.sleep(0.01)


def test_kill_9_during_a_save_leaves_the_last_checkpoint_intact(tmp_path: Path, full: Learner) -> None:
    script = _script(
        tmp_path,
        """
        learn = make_learner(path=RUN)
        save = torch.save

        def hang_in_the_middle(obj, f):
            if learn.train_iter >= 3:  # the third save starts writing, then hangs there until killed
                f.write(b"the first bytes of a checkpoint")
                f.flush()
                MARKER.touch()
                time.sleep(60)
            save(obj, f)

        torch.save = hang_in_the_middle
        one_cycle(learn, cbs=CheckpointCallback(every_n_iters=1, keep_last=2))
        """,
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "marker", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    folder = tmp_path / "run" / "models" / "checkpoints"
    files = checkpoint_files(folder)
    assert [f.name for f in files] == ["checkpoint_000001_epoch0_batch1.pth", "checkpoint_000002_epoch0_batch2.pth"]
    leftovers = [p.name for p in folder.iterdir() if p not in files]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint_000003_") and leftovers[0].endswith(".tmp")
    resumed = make_learner(path=tmp_path / "run")
    one_cycle(resumed, resume="latest")
    assert_same_run(full, resumed)


def test_kill_9_while_overwriting_a_saved_model_keeps_the_old_file(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        learn = make_learner(path=RUN)
        learn.fit(1)
        learn.save("model")
        MARKER.with_suffix(".saved").touch()
        save = torch.save

        def hang(obj, f):
            f.write(b"half")
            f.flush()
            MARKER.touch()
            time.sleep(60)

        torch.save = hang
        learn.fit(1)
        learn.save("model")
        """,
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "marker.saved", proc)
        good = (tmp_path / "run" / "models" / "model.pth").read_bytes()
        _wait_for(tmp_path / "marker", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert (tmp_path / "run" / "models" / "model.pth").read_bytes() == good
    make_learner(path=tmp_path / "run").load("model")


def test_sigint_finishes_the_batch_writes_a_checkpoint_and_stops(tmp_path: Path, full: Learner) -> None:
    script = _script(
        tmp_path,
        """
        class WaitForCtrlC(Callback):
            def after_batch(self):
                if self.learn.train_iter == 4:
                    MARKER.touch()
                    deadline = time.monotonic() + 30
                    while not checkpoints._interrupted and time.monotonic() < deadline:
                        time.sleep(0.01)  # the batch goes on when SIGINT has arrived

        learn = make_learner(path=RUN)
        checkpoints = CheckpointCallback()
        try:
            one_cycle(learn, cbs=[checkpoints, WaitForCtrlC()])
        except KeyboardInterrupt:
            print("interrupted; after_fit ran:", learn.dl is None and learn.loss_func.__class__.__name__)
            raise
        print("finished")
        """,
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "marker", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err and "finished" not in out
    assert "interrupted; after_fit ran: CrossEntropyLoss" in out  # MixUp's loss wrapper taken off by after_fit
    assert "finishing the current batch to write a checkpoint" in err
    last = latest_checkpoint(tmp_path / "run" / "models" / "checkpoints")
    assert last is not None
    position = _position(last)
    expected = Position(epoch=0, batch=4, n_epoch=3, n_iter=6, train_iter=4, data_len=6)
    assert position == expected  # exact, where Ctrl-C came
    resumed = make_learner(path=tmp_path / "run")
    one_cycle(resumed, resume="latest")
    assert_same_run(full, resumed)  # a different process, bit for bit


# ------------------------------------------------------------------------------------------ Ctrl-C in process
class CtrlC(Callback):
    """Presses Ctrl-C (SIGINT to this process) in a training batch, `times` times."""

    def __init__(self, at: int, times: int = 1) -> None:
        self.at, self.times = at, times

    def after_batch(self) -> None:
        if self.learn.training and self.learn.train_iter == self.at:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)


def test_ctrl_c_in_process_is_deferred_to_the_end_of_the_batch(tmp_path: Path, full: Learner) -> None:
    learn = make_learner(path=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        one_cycle(learn, cbs=[CheckpointCallback(every_epoch=False), CtrlC(at=8)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    files = checkpoint_files(tmp_path / "models" / "checkpoints")
    assert [f.name for f in files] == ["checkpoint_000001_epoch1_batch2.pth"]
    assert _position(files[0]) == Position(epoch=1, batch=2, n_epoch=3, n_iter=6, train_iter=8, data_len=6)
    assert learn.dl is None and type(learn.loss_func).__name__ == "CrossEntropyLoss"  # after_fit's cleanup ran
    resumed = make_learner(path=tmp_path)
    one_cycle(resumed, resume="latest")
    assert_same_run(full, resumed)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    learn = make_learner(path=tmp_path)
    log: list[str] = []
    learn.add_cb(Callback(after_fit=lambda: log.append("after_fit")))
    with pytest.raises(KeyboardInterrupt):
        one_cycle(learn, cbs=[CheckpointCallback(every_epoch=False), CtrlC(at=8, times=2)])
    assert not checkpoint_files(tmp_path / "models" / "checkpoints")
    assert log == ["after_fit"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_validation_waits_for_the_end_of_the_epoch(tmp_path: Path) -> None:
    learn = make_learner(path=tmp_path)
    press = Callback(before_validate=lambda: signal.raise_signal(signal.SIGINT) if learn.epoch == 1 else None)
    with pytest.raises(KeyboardInterrupt):
        one_cycle(learn, cbs=[CheckpointCallback(every_epoch=False), press])
    files = checkpoint_files(tmp_path / "models" / "checkpoints")
    assert [f.name for f in files] == ["checkpoint_000001_epoch1_end.pth"] and len(learn.recorder.values) == 2


def test_ctrl_c_without_a_checkpoint_callback_still_cleans_up() -> None:
    learn = make_learner()
    events: list[str] = []
    learn.add_cb(Callback(after_fit=lambda: events.append("after_fit")))
    with pytest.raises(KeyboardInterrupt):
        one_cycle(learn, cbs=CtrlC(at=3))
    assert events == ["after_fit"] and type(learn.loss_func).__name__ == "CrossEntropyLoss"


def test_the_handler_of_a_fit_that_failed_is_put_back(tmp_path: Path) -> None:
    learn = make_learner(path=tmp_path)
    boom = Callback(after_batch=lambda: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        one_cycle(learn, cbs=[CheckpointCallback(), boom])  # no after_fit: the handler stays installed
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # but no fit runs: Ctrl-C acts at once, and puts Python's handler back
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------------------------------ export
def trained(path: Path) -> Learner:
    learn = make_learner(path=path)
    learn.remove_cb(EMACallback)  # which would validate and predict with the average, not the model's weights
    learn.fit(1)
    return learn


def test_export_and_load_safely_into_a_model(tmp_path: Path) -> None:
    learn = trained(tmp_path)
    file = learn.export()
    assert file == tmp_path / "export.pkl"
    x = torch.randn(4)
    expected = learn.predict(x)
    inference = load_learner(file, model=make_learner().model)
    decoded, _, probs = inference.predict(x)
    assert torch.equal(decoded, expected[0]) and torch.equal(probs, expected[2])
    assert isinstance(inference.loss_func, nn.CrossEntropyLoss)  # rebuilt from the export's description of it
    torch.testing.assert_close(inference.loss_func(probs[None], torch.tensor([0])), -probs.log_softmax(0)[0])
    built = load_learner(file, model=lambda: make_learner().model, loss_func=nn.CrossEntropyLoss())
    assert torch.equal(built.predict(x)[2], expected[2])
    learn.loss_func = nn.functional.cross_entropy  # a function: not rebuilt, and no activation to warn of
    inference = load_learner(learn.export(), model=make_learner().model)
    with pytest.raises(RuntimeError, match="loaded by load_learner for inference, without a loss function"):
        inference.loss_func(probs, torch.tensor(0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_load_learner_warns_when_the_weights_are_cast_to_the_models_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    learn = trained(tmp_path)
    learn.model.to(dtype)
    file = learn.export()
    name = str(dtype).removeprefix("torch.")
    with pytest.warns(UserWarning, match=rf"holds {name} weights and the model given has float32 ones: they are cast "
                      rf"to float32.*model=Net\(\)\.to\(torch\.{name}\)"):
        inference = load_learner(file, model=make_learner().model)
    assert next(inference.model.parameters()).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dtype the export has: no warning
        inference = load_learner(file, model=make_learner().model.to(dtype))
    assert torch.equal(next(inference.model.parameters()), next(learn.model.parameters()))


def test_load_learner_into_a_data_parallel_model_loads_the_module_inside(tmp_path: Path) -> None:
    learn = trained(tmp_path)
    file = learn.export()
    x = torch.randn(4)
    inference = load_learner(file, model=nn.DataParallel(make_learner().model))  # as learn.load takes one
    assert isinstance(inference.model, nn.DataParallel)
    assert torch.equal(inference.predict(x)[2], learn.predict(x)[2])
    prefixed = {"format": "learnloop.export", "format_version": 1, "n_inp": 1,
                "model": {f"module.{k}": v for k, v in learn.model.state_dict().items()}}  # a wrapper's keys
    torch.save(prefixed, tmp_path / "prefixed.pkl")
    for model in (make_learner().model, nn.DataParallel(make_learner().model)):
        loaded = load_learner(tmp_path / "prefixed.pkl", model=model, loss_func=learn.loss_func).model
        saved = learn.model.state_dict().values()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), saved, strict=True))


def test_load_learner_given_a_model_class_that_needs_arguments_says_how_it_is_called(tmp_path: Path) -> None:
    file = trained(tmp_path).export()
    with pytest.raises(TypeError, match="missing 2 required positional arguments") as info:  # Python's error, kept
        load_learner(file, model=nn.Linear)
    assert "load_learner(model=Linear) calls it with no arguments to build the model" in " ".join(info.value.__notes__)


def test_a_loaded_learner_has_no_metrics_nor_added_callbacks_until_given_them(tmp_path: Path) -> None:
    learn = trained(tmp_path)  # with accuracy as its metric, and GradientAccumulation added
    full = learn.validate()
    assert len(full) == 2
    inference = load_learner(learn.export(), model=make_learner().model)
    assert inference.metrics == [] and not any(isinstance(cb, GradientAccumulation) for cb in inference.cbs)
    assert inference.validate(dl=learn.dls.valid) == full[:1]  # the loss alone, as the porting guide says
    inference.metrics = [accuracy]
    assert inference.validate(dl=learn.dls.valid) == full


def test_export_under_ddp_writes_the_module_on_rank_zero_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    learn = make_learner(path=tmp_path)
    plain = learn.model
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        learn.model = DistributedDataParallel(plain)
        file = learn.export()
    finally:
        learn.model = plain
        dist.destroy_process_group()
    info = torch.load(file, weights_only=True)
    assert info["model"].keys() == plain.state_dict().keys()  # no "module." prefix: loads into the bare model
    assert info["model_class"] == "torch.nn.modules.container.Sequential"
    load_learner(file, model=make_learner().model)
    monkeypatch.setenv("RANK", "1")  # a launched rank other than 0, before its process group is up
    assert learn.export("other.pkl") == tmp_path / "other.pkl" and not (tmp_path / "other.pkl").exists()


def test_load_learner_unpickles_only_when_trusted(tmp_path: Path) -> None:
    learn = trained(tmp_path)
    learn.export("m.pkl")
    with pytest.raises(CheckpointError, match=r"(?s)holds the weights of a torch.nn.*Sequential.*model=.*trusted=True"):
        load_learner(tmp_path / "m.pkl")
    trusted = load_learner(tmp_path / "m.pkl", trusted=True)
    assert isinstance(trusted.loss_func, nn.CrossEntropyLoss)
    x = torch.randn(4)
    assert torch.equal(trusted.predict(x)[2], learn.predict(x)[2])
    learn.export("weights_only.pkl", pickle_model=False)
    with pytest.raises(CheckpointError, match="holds the weights only"):
        load_learner(tmp_path / "weights_only.pkl", trusted=True)


def test_load_learner_of_a_model_whose_class_is_gone_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fastai's says to declare or import the exported classes before loading; learnloop's gave the unpickler's bare
    # error ("No module named 'netdef'", "Can't get attribute 'Net'").
    (tmp_path / "netdef.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import netdef  # type: ignore[import-not-found]

    learn = synth_learner(path=tmp_path)
    learn.model = netdef.Net(2, 1)
    learn.export("net.pkl")
    for gone in ("module", "class"):
        if gone == "module":
            monkeypatch.delitem(sys.modules, "netdef")
            (tmp_path / "netdef.py").unlink()
            expected: type[Exception] = ModuleNotFoundError
        else:
            (tmp_path / "netdef.py").write_text("")
            monkeypatch.setitem(sys.modules, "netdef", type(sys)("netdef"))
            expected = AttributeError
        with pytest.raises(expected) as info:
            load_learner(tmp_path / "net.pkl", trusted=True)
        note = " ".join(getattr(info.value, "__notes__", []))
        assert "define or import it" in note and "load_learner(" in note and "model=...)" in note
    assert isinstance(load_learner(tmp_path / "net.pkl", model=nn.Linear(2, 1)).model, nn.Linear)


def test_export_and_load_learner_take_fastais_arguments(tmp_path: Path) -> None:
    learn = trained(tmp_path)
    x = torch.randn(4)
    # fastai's export(fname, pickle_module, pickle_protocol): the module pickles the stored model
    calls: list[str] = []

    class RecordingPickler(pickle.Pickler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append(f"protocol {kwargs.get('protocol', args[1] if len(args) > 1 else None)}")
            super().__init__(*args, **kwargs)

    class PickleModule:
        Pickler, Unpickler, load, dump = RecordingPickler, pickle.Unpickler, pickle.load, pickle.dump
        HIGHEST_PROTOCOL, DEFAULT_PROTOCOL = pickle.HIGHEST_PROTOCOL, pickle.DEFAULT_PROTOCOL

    learn.export("m.pkl", PickleModule, 4)
    assert "protocol 4" in calls
    # fastai's load_learner(fname, cpu, pickle_module): the module unpickles the stored model

    class RecordingUnpickler(pickle.Unpickler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append("unpickled")
            super().__init__(*args, **kwargs)

    class UnpickleModule(PickleModule):
        Unpickler = RecordingUnpickler

    loaded = load_learner(tmp_path / "m.pkl", True, UnpickleModule, trusted=True)
    assert calls[-1] == "unpickled"
    assert torch.equal(loaded.predict(x)[2], learn.predict(x)[2])
    with pytest.raises(TypeError, match="positional"):
        load_learner(tmp_path / "m.pkl", True, pickle, learn.model)  # type: ignore[misc]
    # Calls in learnloop's old positional order are refused, not misread
    with pytest.raises(TypeError, match=r"cpu must be True or False, got Sequential; pass the model by keyword"):
        load_learner(tmp_path / "m.pkl", learn.model, trusted=True)  # type: ignore[arg-type]
    # fastai tests cpu for truth: numpy's bools, 0 and 1 are taken (np.True_ was refused as "got bool"); anything
    # else is refused without the model hint, which was about none of them
    for cpu in (np.True_, 1, 0):
        assert load_learner(tmp_path / "m.pkl", cpu, trusted=True).dls.device == torch.device("cpu")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cpu must be True or False, got str 'cpu'\.$"):
        load_learner(tmp_path / "m.pkl", "cpu", trusted=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the second argument is pickle_module, as in fastai; pass pickle_model=False"):
        learn.export("old.pkl", False)
    with pytest.raises(TypeError, match="pickle_module must be a pickling module"):
        learn.export("old.pkl", "cloudpickle")
    with pytest.raises(ValueError, match="pickle_protocol must be from 2"):
        learn.export("old.pkl", None, 99)
    learn.export("numpy.pkl", pickle_protocol=np.int64(2))  # as learn.save takes it (and torch's pickler)
    assert not (tmp_path / "old.pkl").exists()
    # learn.save(file, with_opt, pickle_protocol), as fastai's save_model; only protocols load() can read
    file = learn.save("kept", pickle_protocol=2)
    with zipfile.ZipFile(file) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert data[:2] == b"\x80\x02"  # a protocol-2 pickle inside torch's zip file
    for protocol in (3, 4):
        with pytest.raises(ValueError, match=f"pickle_protocol={protocol} would write a file that torch's weights"):
            learn.save("kept", pickle_protocol=protocol)
    with pytest.raises(TypeError, match=r"pickle_protocol must be an int, 2 \(what learn.load reads\), got '2'"):
        learn.save("kept", pickle_protocol="2")  # was a ValueError saying protocol '2' would not load cleanly
    learn.load("kept")  # the refused saves left the file as it was


def test_load_learner_errors(tmp_path: Path) -> None:
    learn = make_learner(path=tmp_path)
    learn.export()
    with pytest.raises(CheckpointError, match=r"(?s)different model.*size mismatch for 0.weight"):
        narrower = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Identity(), nn.Linear(16, 3))
        load_learner(tmp_path / "export.pkl", model=narrower)
    learn.save("weights")
    with pytest.raises(CheckpointError, match="not a learnloop.export file"):
        load_learner(tmp_path / "models" / "weights.pth", model=learn.model)
    with pytest.raises(FileNotFoundError):
        load_learner(tmp_path / "nothing.pkl", model=learn.model)


@pytest.mark.parametrize("trusted", [False, True])
def test_load_learner_of_a_pickled_model_or_learner_says_it_is_no_export(tmp_path: Path, trusted: bool) -> None:
    # fastai's export.pkl (a pickled Learner) or torch.save(model) was refused with safe_load's advice to load it
    # "with learn.load(name, weights_only=False)", which reads no export; trusted=True did not help either.
    torch.save(nn.Linear(2, 1), tmp_path / "export.pkl")
    kwargs: dict[str, Any] = {"trusted": True} if trusted else {"model": nn.Linear(2, 1)}
    with pytest.raises(CheckpointError, match=r"not a learnloop export .* fastai's \(a pickled Learner\)") as e:
        load_learner(tmp_path / "export.pkl", **kwargs)
    assert "weights_only=False" not in str(e.value) and "learn.load(name)" in str(e.value)
    assert "torch.nn.modules.linear.Linear" in str(e.value)


def test_load_learner_of_a_directory_or_a_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    learn = make_learner(path=tmp_path)
    (tmp_path / "run").mkdir()
    # a directory: fastai's IsADirectoryError, and a FileNotFoundError as learnloop's was
    with pytest.raises(IsADirectoryError, match=r"run is a directory.*holds no \.pkl, \.pth or \.safetensors") as e:
        load_learner(tmp_path / "run", model=learn.model)
    assert isinstance(e.value, FileNotFoundError)
    learn.export("run/best.pkl")
    learn.export("run/last.pkl")
    with pytest.raises(FileNotFoundError, match=r"run is a directory.*give one of its files: best\.pkl, last\.pkl\."):
        load_learner(tmp_path / "run", model=learn.model)
    learn.export()
    with pytest.raises(IsADirectoryError, match=r"the file learn.export wrote there: load_learner\('.*export.pkl'"):
        load_learner(tmp_path, model=learn.model)
    # a missing file: no advice about the learner's path/model_dir (load_learner has no learner)
    with pytest.raises(FileNotFoundError, match=r"no file at .*exprot.pkl\. Did you mean .*export.pkl\?$"):
        load_learner(tmp_path / "exprot.pkl", model=learn.model)
    with pytest.raises(FileNotFoundError, match=r"no file at .*nothing\.pkl\. Check the name") as missing:
        load_learner(tmp_path / "nothing.pkl", model=learn.model)
    assert not isinstance(missing.value, IsADirectoryError) and "model_dir" not in str(missing.value)
    with pytest.raises(FileNotFoundError, match=r"the directory .*nowhere does not exist"):
        load_learner(tmp_path / "nowhere" / "export.pkl", model=learn.model)


def test_safetensors_export(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    learn = trained(tmp_path)
    learn.model = nn.Sequential(learn.model, nn.Linear(3, 3))
    file = learn.export("model.safetensors")
    inference = load_learner(file, model=nn.Sequential(make_learner().model, nn.Linear(3, 3)))
    loaded, saved = inference.model.state_dict().values(), learn.model.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(loaded, saved, strict=True))
    with pytest.raises(CheckpointError, match="model="):
        load_learner(file, trusted=True)
    file.write_bytes(file.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_learner(file, model=learn.model)


def test_safetensors_tied_weights(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    learn = Learner(synth_learner().dls, tied, loss_func=nn.MSELoss(), path=tmp_path)
    file = learn.export("tied.safetensors")
    other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    other[1].weight = other[0].weight
    load_learner(file, model=other)
    assert torch.equal(other[0].weight, tied[0].weight)


def test_safetensors_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install 'learnloop\[safetensors\]'"):
        make_learner(path=tmp_path).export("m.safetensors")


@pytest.mark.parametrize(
    "event", ["before_fit", "before_epoch", "before_train", "before_batch", "after_loss", "after_step", "after_batch",
              "before_validate", "after_epoch"],
)
def test_keyboard_interrupt_anywhere_in_fit_runs_after_fit_once(event: str) -> None:
    learn = synth_learner()
    log = EventLog()

    def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, cbs=[Callback(**{event: stop}), log])
    assert log.events.count("after_fit") == 1 and log.events[-1] == "after_fit"
    assert "after_cancel_fit" not in log.events
    assert learn.dl is None and learn.xb == (None,) and learn.loss is None  # the end-of-fit cleanup too
    assert learn.cbs == [learn.train_eval, learn.recorder, learn.progress]  # fit's callbacks removed


def test_keyboard_interrupt_in_after_fit_does_not_run_it_again() -> None:
    learn = synth_learner()
    calls: list[str] = []

    def stop() -> None:
        calls.append("after_fit")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, cbs=Callback(after_fit=stop))
    assert calls == ["after_fit"] and learn.dl is None
