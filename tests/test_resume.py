"""Exact resume: a fit resumed from any checkpoint (mid-epoch, mid-accumulation, end of epoch) ends bit-identical
to the uninterrupted run, recorder included; what is checked before a resume; what a resumed fit fires."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import learnloop.resume as resume_module
from conftest import EventLog, synth_classif_learner
from learnloop import (
    SGD,
    Callback,
    CancelFitException,
    CheckpointCallback,
    CheckpointError,
    DataLoaders,
    EarlyStoppingCallback,
    EMACallback,
    GradientAccumulation,
    Learner,
    MixedPrecision,
    MixUp,
    OptimWrapper,
    ParamScheduler,
    ReduceLROnPlateau,
    SaveModelCallback,
    accuracy,
    error_rate,
)
from learnloop.callbacks.checkpointing import checkpoint_files, latest_checkpoint
from learnloop.resume import Position
from learnloop.rng import get_rng_state, set_rng_state
from learnloop.schedules import SchedLin

N_EPOCH = 3  # 96 items in batches of 16: 6 batches per epoch, a step every 2 (n_acc=32)


def make_learner(path: Path | None = None, dls: str = "shuffle", **kwargs: Any) -> Learner:
    """A classifier with dropout, trained with MixUp, weight EMA and gradient accumulation, measured by accuracy."""
    learn = synth_classif_learner(n_train=96, n_valid=24, bs=16, shuffle=dls == "shuffle", metrics=accuracy, **kwargs)
    if dls == "seeded":  # the DataLoader's own generator draws the order
        learn.dls = DataLoaders.from_dsets(learn.dls.train_ds, learn.dls.valid_ds, bs=16, seed=7, device="cpu")
    elif dls == "lists":  # plain lists of batches: no torch DataLoader at all
        learn.dls = DataLoaders(list(learn.dls.train), list(learn.dls.valid), device="cpu")
    elif dls == "workers":  # worker processes: batches are loaded and dropped when skipped
        learn.dls = DataLoaders.from_dsets(learn.dls.train_ds, learn.dls.valid_ds, bs=16, num_workers=2, device="cpu")
    elif dls == "persistent":  # workers started once, by the first pass of each loader (drawing a seed for them)
        learn.dls = DataLoaders.from_dsets(
            learn.dls.train_ds, learn.dls.valid_ds, bs=16, num_workers=1, persistent_workers=True, device="cpu"
        )
    torch.manual_seed(1)
    learn.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    learn.add_cbs([MixUp(0.4), EMACallback(decay=0.9), GradientAccumulation(n_acc=32)])
    if path is not None:
        learn.path = path
    return learn


def one_cycle(learn: Learner, **kwargs: Any) -> None:
    learn.fit_one_cycle(N_EPOCH, 1e-2, **kwargs)


def assert_same_run(a: Learner, b: Learner) -> None:
    """Bit-identical parameters, buffers, optimizer state, EMA and recorder."""
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    sa, sb = a.opt.state_dict(), b.opt.state_dict()
    assert sa["hypers"] == sb["hypers"]
    for pa, pb in zip(sa["state"], sb["state"], strict=True):
        assert pa.keys() == pb.keys()
        for k in pa:
            assert torch.equal(pa[k], pb[k]) if isinstance(pa[k], torch.Tensor) else pa[k] == pb[k], k
    ra, rb = a.recorder, b.recorder
    assert ra.values == rb.values and ra.lrs == rb.lrs and ra.iters == rb.iters and ra.hps == rb.hps
    assert all(torch.equal(x, y) for x, y in zip(ra.losses, rb.losses, strict=True))
    assert a.train_iter == b.train_iter and a.pct_train == b.pct_train
    ema_a = getattr(a, "ema", None)
    if ema_a is not None:
        assert all(torch.equal(x, y) for x, y in zip(ema_a.averaged, b.ema.averaged, strict=True))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Learner, list[Path]]:
    """The uninterrupted run, with a checkpoint after every training batch and at every epoch end."""
    folder = tmp_path_factory.mktemp("ckpts")
    learn = make_learner()
    one_cycle(learn, cbs=CheckpointCallback(every_n_iters=1, keep_last=None, path=folder))
    return learn, checkpoint_files(folder)


def test_checkpointing_does_not_change_the_run(full_run: tuple[Learner, list[Path]]) -> None:
    plain = make_learner()
    one_cycle(plain)
    assert_same_run(full_run[0], plain)
    names = [f.name for f in full_run[1]]
    assert len(names) == N_EPOCH * 6 + N_EPOCH
    assert names[:2] == ["checkpoint_000001_epoch0_batch1.pth", "checkpoint_000002_epoch0_batch2.pth"]
    assert names[5:7] == ["checkpoint_000006_epoch0_batch6.pth", "checkpoint_000007_epoch0_end.pth"]


def _position(file: Path) -> Position:
    return Position(**torch.load(file, weights_only=True)["position"])


@pytest.mark.parametrize(
    "index",
    [0, 2, 5, 6, 9, 14, -1],
    ids=["first-batch", "mid-epoch", "last-batch-before-validation", "epoch-end", "epoch1-mid", "epoch2-first", "end"],
)
def test_resume_from_any_checkpoint_is_bit_identical(full_run: tuple[Learner, list[Path]], index: int) -> None:
    full, files = full_run
    resumed = make_learner()
    one_cycle(resumed, resume=files[index])
    assert_same_run(full, resumed)


def test_resume_in_the_middle_of_a_gradient_accumulation(full_run: tuple[Learner, list[Path]]) -> None:
    full, files = full_run
    mid_accumulation = [f for f in files if torch.load(f, weights_only=True)["grads"]]
    assert mid_accumulation and all(_position(f).batch % 2 == 1 for f in mid_accumulation)
    for file in mid_accumulation[:2]:
        resumed = make_learner()
        one_cycle(resumed, resume=file)
        assert_same_run(full, resumed)


@pytest.mark.parametrize("dls", ["seeded", "lists", "workers"])
def test_every_kind_of_data_loader_resumes_exactly(tmp_path: Path, dls: str) -> None:
    full = make_learner(dls=dls)
    one_cycle(full, cbs=CheckpointCallback(every_n_iters=4, keep_last=None, path=tmp_path))
    files = checkpoint_files(tmp_path)
    for file in files[2:3] if dls == "workers" else files[::2]:
        resumed = make_learner(dls=dls)
        one_cycle(resumed, resume=file)
        assert_same_run(full, resumed)


def test_persistent_workers_resume_exactly_after_the_epoch_that_started_them(tmp_path: Path) -> None:
    # Their first pass draws a base seed for the workers that the next passes do not: a resumed process starts them
    # before the resumed epoch, without drawing, as the saved run had them running then.
    full = make_learner(dls="persistent")
    one_cycle(full, cbs=CheckpointCallback(every_n_iters=4, keep_last=None, path=tmp_path))
    files = checkpoint_files(tmp_path)
    for name in ("epoch0_end", "epoch1_batch2"):
        resumed = make_learner(dls="persistent")
        one_cycle(resumed, resume=next(f for f in files if name in f.name))
        assert_same_run(full, resumed)


def test_an_interrupted_run_resumes_from_latest_and_keeps_checkpointing(tmp_path: Path) -> None:
    class Crash(Callback):
        def after_batch(self) -> None:
            if self.learn.train_iter == 10:
                raise CancelFitException  # the hidden world's crash: the fit stops for good

    full = make_learner()
    one_cycle(full)
    first = make_learner(path=tmp_path)
    one_cycle(first, cbs=[CheckpointCallback(every_n_iters=3), Crash()])
    folder = tmp_path / "models" / "checkpoints"
    assert latest_checkpoint(folder).name == "checkpoint_000004_epoch1_batch3.pth"  # train_iter 9
    second = make_learner(path=tmp_path)
    one_cycle(second, cbs=CheckpointCallback(every_n_iters=3), resume="latest")
    assert_same_run(full, second)
    assert [f.name for f in checkpoint_files(folder)] == [
        "checkpoint_000007_epoch2_batch3.pth",
        "checkpoint_000008_epoch2_batch6.pth",
        "checkpoint_000009_epoch2_end.pth",
    ]


def test_a_resumed_fit_fires_only_what_is_left(full_run: tuple[Learner, list[Path]]) -> None:
    files = full_run[1]
    log = EventLog()
    resumed = make_learner()
    one_cycle(resumed, resume=files[9], cbs=log)  # epoch 1 after 3 batches
    assert _position(files[9]) == Position(epoch=1, batch=3, n_epoch=3, n_iter=6, train_iter=9, data_len=6)
    events = log.events
    assert events[:4] == ["before_fit", "before_epoch", "before_train", "before_batch"]
    assert events.count("before_epoch") == 2 and events.count("after_train") == 2
    assert events.count("before_batch") == 3 + 6 + 2 * 2  # 3 + 6 training batches, 2 validation per epoch
    assert events[-1] == "after_fit"


def test_other_fit_policies_resume_exactly(tmp_path: Path) -> None:
    policies: dict[str, Callable[..., None]] = {
        "fit": lambda learn, **kw: learn.fit(2, 1e-2, **kw),
        "flat_cos": lambda learn, **kw: learn.fit_flat_cos(2, 1e-2, **kw),
        "sgdr": lambda learn, **kw: learn.fit_sgdr(2, 1, 1e-2, **kw),
    }
    for name, policy in policies.items():
        folder = tmp_path / name
        full = make_learner()
        policy(full, cbs=CheckpointCallback(every_n_iters=5, keep_last=None, path=folder))
        for file in checkpoint_files(folder)[1::2]:
            resumed = make_learner()
            policy(resumed, resume=file)
            assert_same_run(full, resumed)


def test_fine_tune_resumes_in_either_of_its_fits(tmp_path: Path) -> None:
    def two_groups(model: nn.Module) -> list[list[nn.Parameter]]:
        return [list(model[0].parameters()), list(model[3].parameters())]  # type: ignore[index]

    def tune(learn: Learner, **kw: Any) -> None:
        learn.splitter = two_groups
        learn.fine_tune(2, 1e-2, freeze_epochs=1, **kw)

    full = make_learner()
    tune(full, cbs=CheckpointCallback(every_n_iters=4, keep_last=None, path=tmp_path))
    files = checkpoint_files(tmp_path)
    stages = [_position(f).stage for f in files]
    assert stages[0] == "fine_tune:frozen" and stages[-1] == "fine_tune:unfrozen"
    for file in (files[0], files[stages.index("fine_tune:unfrozen") + 1]):
        resumed = make_learner()
        tune(resumed, resume=file)
        assert_same_run(full, resumed)
    plain = make_learner()
    one_cycle(plain, cbs=CheckpointCallback(path=tmp_path / "plain"))
    with pytest.raises(CheckpointError, match="not taken during fine_tune"):
        tune(make_learner(), resume=tmp_path / "plain")
    # the other way round, a plain fit took the checkpoint silently and trained on with its own schedule
    _unchanged_by_a_failed_resume(make_learner(splitter=two_groups), files[-2],
                                  r"taken during fine_tune \(its unfrozen fit\), not in a plain fit: resume it with")


def test_which_parameters_are_frozen_comes_back_with_the_checkpoint(tmp_path: Path) -> None:
    # A fit checkpointed after learn.freeze() and resumed on an unfrozen learner trained the frozen parameters on.
    def make(frozen: bool, path: Path | None = None) -> Learner:
        learn = make_learner(path=path, splitter=lambda m: [list(m[0].parameters()), list(m[3].parameters())])
        if frozen:
            learn.freeze()
        return learn

    for frozen in (True, False):
        full = make(frozen)
        one_cycle(full)
        run = make(frozen, tmp_path / str(frozen))
        one_cycle(run, cbs=CheckpointCallback(every_n_iters=4, keep_last=None))
        file = checkpoint_files(tmp_path / str(frozen) / "models" / "checkpoints")[1]
        resumed = make(not frozen)
        one_cycle(resumed, resume=file)
        assert [p.requires_grad for p in resumed.model.parameters()] == [not frozen] * 2 + [True] * 2
        assert resumed.opt.frozen_idx == (1 if frozen else 0)
        assert_same_run(full, resumed)


def test_fine_tune_resumed_at_the_end_of_its_frozen_fit_resets_the_trackers_in_the_unfrozen_one(tmp_path: Path) -> None:
    """The frozen fit resumed from its last checkpoint has no epoch left: the tracker state it loads is its own, and
    the unfrozen fit resets it (reset_on_fit) as in the uninterrupted run."""

    def make() -> Learner:
        learn = make_learner()
        learn.splitter = lambda m: [list(m[0].parameters()), list(m[3].parameters())]
        # Higher is better on a falling loss: a best kept from the frozen fit would stop the unfrozen one at once.
        learn.add_cb(EarlyStoppingCallback(comp=np.greater, patience=1))
        return learn

    def tune(learn: Learner, **kw: Any) -> None:
        learn.fine_tune(3, 1e-2, freeze_epochs=1, **kw)

    full = make()
    tune(full, cbs=CheckpointCallback(keep_last=None, path=tmp_path))
    end_of_frozen = checkpoint_files(tmp_path)[0]
    assert _position(end_of_frozen) == Position(1, 0, 1, 6, 6, stage="fine_tune:frozen", data_len=6)
    resumed = make()
    tune(resumed, resume=end_of_frozen)
    assert len(resumed.recorder.values) == len(full.recorder.values) == 2  # stopped by its own epochs, not the frozen's
    assert_same_run(full, resumed)
    assert resumed.early_stopping.best == full.early_stopping.best


def test_a_fit_resumed_from_its_last_checkpoint_ends_at_its_last_epoch(full_run: tuple[Learner, list[Path]]) -> None:
    seen: list[int] = []
    learn = make_learner()
    one_cycle(learn, resume=full_run[1][-1], cbs=Callback(after_fit=lambda: seen.append(learn.epoch)))
    assert seen == [full_run[0].epoch] == [N_EPOCH - 1]  # no epoch ran, but it is where the saved fit ended


class ValidateMidEpoch(Callback):
    """Calls learn.validate() after the third training batch of each epoch, which sets learn.epoch to 0 (fastai's
    before_fit resets) and ends the epoch's training (as fastai's), and notes learn.epoch after every batch and at
    the end of the fit."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def after_batch(self) -> None:
        if self.training and self.learn.iter == 2:
            self.learn.validate()
        self.seen.append(self.learn.epoch)

    def after_fit(self) -> None:
        self.seen.append(self.learn.epoch)


def test_a_validate_inside_the_fit_leaves_learn_epoch_as_it_set_it_after_a_resume(tmp_path: Path) -> None:
    full = make_learner()
    full.add_cb(ValidateMidEpoch())
    one_cycle(full, cbs=CheckpointCallback(every_n_iters=1, keep_last=None, path=tmp_path))
    seen = full.validate_mid_epoch.seen
    assert seen[-1] == 0 != N_EPOCH - 1  # the last epoch's validate set it to 0, as fastai's does
    files = checkpoint_files(tmp_path)
    for name in ("epoch2_end", "epoch2_batch2"):  # the end of the fit; the last epoch, after its validate
        resumed = make_learner()
        resumed.add_cb(ValidateMidEpoch())
        one_cycle(resumed, resume=next(f for f in files if name in f.name))
        tail = resumed.validate_mid_epoch.seen
        assert tail == seen[len(seen) - len(tail):], name
        assert all(torch.equal(x, y) for x, y in zip(full.model.parameters(), resumed.model.parameters(), strict=True))


class ValidateAtEpochStart(Callback):
    """Calls learn.validate() at before_epoch, before the CheckpointCallback's before_epoch: it sets learn.epoch to 0
    for the rest of the epoch (fastai's before_fit resets)."""

    def before_epoch(self) -> None:
        if not self.learn._nested_run:
            self.learn.validate()


def test_a_validate_at_the_start_of_each_epoch_leaves_the_checkpoints_their_epoch(tmp_path: Path) -> None:
    full = make_learner()
    full.add_cb(ValidateAtEpochStart())
    one_cycle(full, cbs=CheckpointCallback(every_n_iters=2, every_epoch=False, keep_last=None, path=tmp_path))
    files = checkpoint_files(tmp_path)
    # Named after the fit's epoch, not the 0 the validate() left in learn.epoch.
    assert [_position(f).epoch for f in files] == [0, 0, 0, 1, 1, 1, 2, 2, 2], [f.name for f in files]
    for file in (files[3], files[7]):  # mid-epoch, in epochs 1 and 2
        resumed = make_learner()
        resumed.add_cb(ValidateAtEpochStart())
        one_cycle(resumed, resume=file)
        assert_same_run(full, resumed)


def test_mixed_precision_resumes_with_its_loss_scale(tmp_path: Path) -> None:
    def make() -> Learner:
        learn = make_learner()
        learn.remove_cb(MixUp)
        learn.add_cb(MixedPrecision(init_scale=2.0**20, growth_interval=2))  # overflows now and then: skipped steps
        return learn

    full = make()
    one_cycle(full, cbs=CheckpointCallback(every_n_iters=1, keep_last=None, path=tmp_path))
    assert full.skipped_steps > 0
    for file in checkpoint_files(tmp_path)[3::5]:
        resumed = make()
        one_cycle(resumed, resume=file)
        assert_same_run(full, resumed)
        assert resumed.mixed_precision.scaler.get_scale() == full.mixed_precision.scaler.get_scale()
        assert resumed.skipped_steps == full.skipped_steps


def test_trackers_resume_with_their_counters(tmp_path: Path) -> None:
    def make() -> Learner:
        learn = make_learner(path=tmp_path)
        learn.add_cbs([SaveModelCallback(monitor="accuracy"), ReduceLROnPlateau("accuracy", patience=1, factor=2)])
        learn.add_cb(EarlyStoppingCallback(monitor="accuracy", patience=2))
        return learn

    def fit(learn: Learner, **kw: Any) -> None:
        learn.fit(8, 0.3, **kw)

    full = make()
    fit(full, cbs=CheckpointCallback(every_n_iters=4, keep_last=None, path=tmp_path / "ck"))
    n_epochs = len(full.recorder.values)
    assert n_epochs < 8 and full.opt.hypers[0]["lr"] < 0.3  # stopped early, after reducing the lr
    for file in checkpoint_files(tmp_path / "ck")[3::5]:
        resumed = make()
        fit(resumed, resume=file)
        assert len(resumed.recorder.values) == n_epochs
        assert_same_run(full, resumed)
        assert resumed.early_stopping.wait == full.early_stopping.wait
        assert resumed.save_model.best == full.save_model.best


def test_tracker_state_loaded_mid_epoch_does_not_leak_into_the_next_fit(tmp_path: Path) -> None:
    def make() -> Learner:
        learn = make_learner()
        learn.add_cb(EarlyStoppingCallback(patience=100))
        return learn

    one_cycle(make(), cbs=CheckpointCallback(every_n_iters=1, keep_last=None, path=tmp_path))
    resumed = make()
    one_cycle(resumed, resume=checkpoint_files(tmp_path)[-3])  # in the middle of the last epoch
    es = resumed.early_stopping
    assert es.best is not None and es._restored is False  # the next fit starts afresh, as reset_on_fit says


# ------------------------------------------------------------------------------------------ no cost
def test_no_random_state_is_read_without_checkpointing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = resume_module.get_rng_state
    monkeypatch.setattr(resume_module, "get_rng_state", lambda *a: calls.append(1) or real(*a))
    learn = make_learner()
    seen: list[Any] = []
    learn.add_cb(Callback(after_batch=lambda: seen.append(learn._data_order)))
    one_cycle(learn)
    assert calls == [] and set(seen) == {None}
    one_cycle(learn, cbs=CheckpointCallback(every_epoch=False, path=learn.path / "unused"))
    assert len(calls) == N_EPOCH  # one per training epoch, where its order is drawn
    assert learn._data_order is None and learn._resume is None


# ------------------------------------------------------------------------------------------ checks
def test_resume_latest_without_a_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    full = make_learner()
    one_cycle(full)
    learn = make_learner(path=tmp_path)
    with pytest.warns(UserWarning, match="no checkpoint in .*training starts from scratch"):
        one_cycle(learn, resume="latest")
    assert_same_run(full, learn)


def test_resume_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or folder"):
        one_cycle(make_learner(), resume=tmp_path / "nothing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint_"):
        one_cycle(make_learner(), resume=tmp_path / "empty")
    with pytest.raises(ValueError, match="resume= or start_epoch="):
        make_learner().fit(2, resume="latest", start_epoch=1)
    with pytest.raises(TypeError, match="resume must be a checkpoint file, its folder, or 'latest'; got True"):
        make_learner().fit(2, resume=True)  # type: ignore[arg-type]
    # A pickle (a whole model, fastai's export) was told to load with learn.load(..., weights_only=False)
    torch.save(nn.Linear(2, 1), tmp_path / "model.pkl")
    with pytest.raises(CheckpointError, match=r"refused: loading it could run arbitrary code\. A CheckpointCallback's "
                                              r"checkpoints hold tensors .* pass resume= a file a CheckpointCallback"):
        one_cycle(make_learner(), resume=tmp_path / "model.pkl")


def test_a_position_this_learnloop_cannot_read_is_a_checkpoint_error(
    full_run: tuple[Learner, list[Path]], tmp_path: Path
) -> None:
    # A field a newer learnloop adds to the position (as data_len was, in the same format version) was a TypeError
    # from Position(), and a traceback from `learnloop train --resume`.
    ckpt = torch.load(full_run[1][3], weights_only=True)
    newer, broken = tmp_path / "newer.pth", tmp_path / "broken.pth"
    torch.save({**ckpt, "learnloop_version": "9.0", "position": {**ckpt["position"], "sampler_epoch": 1}}, newer)
    torch.save({**ckpt, "position": {"epoch": 1}}, broken)
    _unchanged_by_a_failed_resume(make_learner(), newer, r"written by learnloop 9\.0, whose checkpoints record where "
                                  r"they were taken with fields this learnloop .* does not know \(sampler_epoch\): "
                                  "upgrade learnloop")
    with pytest.raises(CheckpointError, match="does not know"):
        resume_module.read_position(newer)
    _unchanged_by_a_failed_resume(make_learner(), broken, r"holds no valid position \(\{'epoch': 1\}\)")


def test_resume_from_a_folder_takes_its_latest(full_run: tuple[Learner, list[Path]]) -> None:
    log = EventLog()
    learn = make_learner()
    one_cycle(learn, resume=full_run[1][0].parent, cbs=log)  # the end of the run: nothing left to train
    assert log.events == ["before_fit", "after_fit"]
    assert_same_run(full_run[0], learn)


def test_a_mid_epoch_checkpoint_needs_the_same_batches_per_epoch(full_run: tuple[Learner, list[Path]]) -> None:
    files = full_run[1]
    other = synth_classif_learner(n_train=80, bs=16, shuffle=True, metrics=accuracy)
    other.model = make_learner().model
    other.add_cbs([MixUp(0.4), EMACallback(decay=0.9), GradientAccumulation(n_acc=32)])
    before = [p.detach().clone() for p in other.model.parameters()]
    with pytest.raises(CheckpointError, match="6 training batches per epoch.*now has 5.*middle of epoch 0"):
        one_cycle(other, resume=files[2])
    assert all(torch.equal(p, b) for p, b in zip(other.model.parameters(), before, strict=True))
    with pytest.warns(UserWarning, match="now has 5; training carries on from epoch 1"):
        one_cycle(other, resume=files[6])


def test_a_different_number_of_epochs_warns(full_run: tuple[Learner, list[Path]]) -> None:
    with pytest.warns(UserWarning, match="fit of 3 epochs and this fit has 4"):
        make_learner().fit_one_cycle(4, 1e-2, resume=full_run[1][6])
    # A mid-epoch checkpoint past the end of the fit: the loop never reached its epoch, so only the weights and the
    # optimizer came back, under a warning that said training carried on.
    file = full_run[1][15]
    assert _position(file).epoch == 2 and _position(file).mid_epoch
    learn = make_learner()
    log = EventLog()
    learn.add_cb(log)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(CheckpointError, match="taken in epoch 2 of a fit of 3 epochs, but this fit has 2: it ends"):
        learn.fit_one_cycle(2, 1e-2, resume=file)
    assert log.events == [] and all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), weights, strict=True))


def test_callbacks_must_match(full_run: tuple[Learner, list[Path]]) -> None:
    files = full_run[1]
    learn = make_learner()
    learn.remove_cb(EMACallback)
    with pytest.warns(UserWarning, match=r"callbacks this learner does not have.*ema \(EMACallback\)"):
        one_cycle(learn, resume=files[3])

    class NotTheRecorder(Callback):
        def state_dict(self) -> dict[str, Any]:
            return {}

    impostor = make_learner()
    impostor.remove_cb(EMACallback)
    odd = NotTheRecorder()
    odd._name = "ema"
    impostor.add_cb(odd)
    with pytest.raises(CheckpointError, match="state of a EMACallback under 'ema'.*NotTheRecorder"):
        one_cycle(impostor, resume=files[3])


def test_a_recorder_with_other_columns_is_refused_before_anything_changes(
    full_run: tuple[Learner, list[Path]],
) -> None:
    # Its rows would mix with the saved ones (2 values next to 3, under the new names).
    learn = make_learner()
    learn.metrics = [accuracy, error_rate]
    before = [p.clone() for p in learn.model.parameters()]
    log = EventLog()
    learn.add_cb(log)
    with pytest.raises(CheckpointError, match=r"into this learner's 'recorder': its table has the columns \['epoch', "
                       r"'train_loss', 'valid_loss', 'accuracy', 'time'\], this learner's has .*'error_rate'.*same "
                       r"metrics"):
        one_cycle(learn, resume=full_run[1][3])
    assert log.events == [] and all(torch.equal(p, b) for p, b in zip(learn.model.parameters(), before, strict=True))
    learn = make_learner()
    learn.recorder.add_time = False
    with pytest.raises(CheckpointError, match="Recorder options"):
        one_cycle(learn, resume=full_run[1][3])


def test_a_checkpoint_of_another_model_lists_the_differences(full_run: tuple[Learner, list[Path]]) -> None:
    learn = make_learner()
    learn.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3), nn.Linear(3, 3))
    log = EventLog()
    learn.add_cb(log)
    with pytest.raises(CheckpointError) as info:
        one_cycle(learn, resume=full_run[1][3])
    message = str(info.value)
    assert "different model" in message and "unexpected" not in message
    assert "missing keys (in the model, not in the checkpoint): 4.weight, 4.bias" in message
    assert "size mismatch for 0.weight: checkpoint [16, 4], model [8, 4]" in message
    assert log.events == []  # nothing fired, nothing changed


def _unchanged_by_a_failed_resume(learn: Learner, resume: Path, match: str) -> None:
    """Resuming `learn` from `resume` fails with `match` before any event fires, and changes neither its weights nor
    the global random generators."""
    log = EventLog()
    learn.add_cb(log)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    with pytest.raises(CheckpointError, match=match):
        one_cycle(learn, resume=resume)
    assert log.events == []
    assert all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), weights, strict=True))
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state


@pytest.mark.parametrize("saved, resumed", [("seeded", "shuffle"), ("shuffle", "seeded")])
def test_data_loader_generators_must_match_before_anything_changes(tmp_path: Path, saved: str, resumed: str) -> None:
    # Found only when the generators were set back, after before_fit and the weights, and the global ones with them.
    one_cycle(make_learner(path=tmp_path, dls=saved), cbs=CheckpointCallback(every_epoch=True))
    file = latest_checkpoint(tmp_path / "models" / "checkpoints")
    assert file is not None
    counts = (1, 0) if saved == "seeded" else (0, 1)
    _unchanged_by_a_failed_resume(
        make_learner(path=tmp_path, dls=resumed), file,
        rf"random states of {counts[0]} data loader generator\(s\) but this learner's data loaders have {counts[1]}",
    )


def test_set_rng_state_refuses_other_generators_before_changing_any() -> None:
    state = get_rng_state([torch.Generator().manual_seed(0)])
    torch.manual_seed(5)
    random.seed(5)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    with pytest.raises(ValueError, match=r"holds 1 data loader generator\(s\) but the data loaders now have 0"):
        set_rng_state(state, [])
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state


def test_the_optimizer_must_be_of_the_same_kind_and_groups_before_anything_changes(tmp_path: Path) -> None:
    # A learnloop Optimizer's state into an OptimWrapper failed at restore (a KeyError), after before_fit and the
    # weights; so did an OptimWrapper's into an OptimWrapper of other parameter groups.
    wrapped = partial(OptimWrapper, opt=torch.optim.Adam)
    one_cycle(make_learner(path=tmp_path / "a"), cbs=CheckpointCallback())
    one_cycle(make_learner(path=tmp_path / "b", opt_func=wrapped), cbs=CheckpointCallback())
    native, torch_opt = (latest_checkpoint(tmp_path / run / "models" / "checkpoints") for run in "ab")
    assert native is not None and torch_opt is not None
    _unchanged_by_a_failed_resume(
        make_learner(opt_func=wrapped), native,
        "holds the state of a learnloop Optimizer, but this learner's optimizer is a torch.optim optimizer",
    )
    _unchanged_by_a_failed_resume(
        make_learner(), torch_opt, "holds the state of a torch.optim optimizer .* is a learnloop Optimizer"
    )
    split = make_learner(opt_func=wrapped, splitter=lambda m: [list(m[0].parameters()), list(m[3].parameters())])
    _unchanged_by_a_failed_resume(split, torch_opt, r"groups of \[4\] parameters, but .* has \[2, 2\]")
    # Another torch optimizer's state (Adam's into an SGD) was taken, and torch's SGD lacked its hypers at the step
    _unchanged_by_a_failed_resume(
        make_learner(opt_func=partial(OptimWrapper, opt=torch.optim.SGD)), torch_opt,
        r"made of torch.optim.adam.Adam, but this learner's OptimWrapper is made of torch.optim.sgd.SGD",
    )
    resumed = make_learner(opt_func=wrapped)  # the same kind and groups: resumes
    one_cycle(resumed, resume=torch_opt)
    assert resumed.train_iter == N_EPOCH * 6


@pytest.mark.filterwarnings("ignore:ParamScheduler schedules 'foo'")  # on purpose: a hyper nothing reads
def test_another_learnloop_optimizer_is_refused_before_anything_changes_either_way(tmp_path: Path) -> None:
    # SGD's state into an Adam only warned in Adam's load_state_dict, after before_fit and the weights, and the fit
    # trained on with SGD's hypers (no sqr_mom, no eps).
    one_cycle(make_learner(path=tmp_path, opt_func=SGD), cbs=CheckpointCallback())
    sgd = latest_checkpoint(tmp_path / "models" / "checkpoints")
    assert sgd is not None
    _unchanged_by_a_failed_resume(make_learner(), sgd, r"made of weight_decay, sgd_step, but this learner's Optimizer "
                                  r"is made of weight_decay, partial\(average_grad\), .*adam_step: use the same")
    # A checkpoint from before the steppers were recorded: told by the hyper-parameters Adam has and SGD has not
    old_sgd = tmp_path / "old_sgd.pth"
    torch.save({k: v for k, v in torch.load(sgd, weights_only=True).items() if k != "opt_kind"}, old_sgd)
    _unchanged_by_a_failed_resume(make_learner(), old_sgd, r"hyper-parameters wd, lr, mom, but .* has wd, mom, "
                                  r"sqr_mom, lr, eps: use the same opt_func")
    # A hyper-parameter a schedule set (and so added) is in the checkpoint only: it resumes
    scheduled = [ParamScheduler({"foo": SchedLin(1.0, 2.0)})]
    run = make_learner(path=tmp_path / "b", opt_func=SGD)
    one_cycle(run, cbs=[*scheduled, CheckpointCallback(every_n_iters=4, keep_last=None)])
    resumed = make_learner(path=tmp_path / "b", opt_func=SGD)
    first = checkpoint_files(tmp_path / "b" / "models" / "checkpoints")[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one_cycle(resumed, cbs=scheduled, resume=first)
    assert_same_run(run, resumed)
    # ... without the optimizer's "was it saved from another optimizer?"
    assert not [w for w in caught if "another optimizer" in str(w.message)]
    # Adam's state into an SGD, whose hyper-parameters are all among Adam's, only warned (in the optimizer's
    # load_state_dict, after before_fit) and trained on: refused before anything changes, as SGD's into an Adam.
    one_cycle(make_learner(path=tmp_path / "c"), cbs=CheckpointCallback())
    adam = latest_checkpoint(tmp_path / "c" / "models" / "checkpoints")
    assert adam is not None
    _unchanged_by_a_failed_resume(make_learner(opt_func=SGD), adam, r"made of weight_decay, partial\(average_grad\), "
                                  r".*adam_step, but this learner's Optimizer is made of weight_decay, sgd_step")
    # ... which a checkpoint from before the steppers were recorded still gets, as a warning
    old_adam = tmp_path / "old_adam.pth"
    torch.save({k: v for k, v in torch.load(adam, weights_only=True).items() if k != "opt_kind"}, old_adam)
    with pytest.warns(UserWarning, match=r"hyper-parameters \(.*sqr_mom.*\) are not this optimizer's .* another"):
        one_cycle(make_learner(opt_func=SGD), resume=old_adam)


def test_latest_skips_newer_checkpoints_that_cannot_be_read(tmp_path: Path) -> None:
    # A truncated newest checkpoint made resume='latest' a CheckpointError, though the one before it was good.
    full = make_learner(path=tmp_path)
    one_cycle(full, cbs=CheckpointCallback(every_n_iters=4, keep_last=None))
    folder = tmp_path / "models" / "checkpoints"
    files = checkpoint_files(folder)
    newest = files[-1].read_bytes()
    files[-1].write_bytes(newest[: len(newest) // 2])
    for resume in ("latest", folder):
        resumed = make_learner(path=tmp_path)
        with pytest.warns(UserWarning, match=rf"skipping {files[-1].name}, which cannot be read: .* is corrupt or "
                                             rf"truncated .* Resuming from .*{files[-2].name}, the newest"):
            one_cycle(resumed, resume=resume)
        assert_same_run(full, resumed)
    assert checkpoint_files(folder) == files and files[-1].stat().st_size == len(newest) // 2  # nothing deleted
    for file in files:
        file.write_bytes(b"garbage")
    learn = make_learner(path=tmp_path)
    with pytest.raises(CheckpointError, match=rf"no checkpoint in {folder} can be read \({files[-1].name}, .*\): "):
        one_cycle(learn, resume="latest")
    with pytest.raises(CheckpointError, match="is corrupt or truncated"):  # a file named is taken as it is
        one_cycle(learn, resume=files[-2])


def test_an_uncertain_final_checkpoint_is_marked_and_latest_skips_it(tmp_path: Path) -> None:
    class Stop(Callback):
        def after_batch(self) -> None:
            if self.learn.train_iter == 8:
                raise KeyboardInterrupt  # raised by code: cannot be deferred to the end of the batch

    full = make_learner()
    one_cycle(full)
    learn = make_learner(path=tmp_path)
    log = EventLog()
    with pytest.raises(KeyboardInterrupt):
        one_cycle(learn, cbs=[CheckpointCallback(every_n_iters=3, keep_last=1), Stop(), log])
    assert log.events[-1] == "after_fit" and "after_epoch" not in log.events[-3:]
    folder = tmp_path / "models" / "checkpoints"
    names = [f.name for f in checkpoint_files(folder)]
    assert names == ["checkpoint_000003_epoch0_end.pth", "checkpoint_000004_epoch1_batch2_inexact.pth"]
    inexact = folder / names[1]
    assert _position(inexact) == Position(1, 2, 3, 6, 8, exact=False, data_len=6)
    assert latest_checkpoint(folder) == folder / names[0]  # 'latest' is the newest exact checkpoint
    resumed = make_learner(path=tmp_path)
    one_cycle(resumed, resume="latest")
    assert_same_run(full, resumed)
    from_inexact = make_learner(path=tmp_path)
    one_cycle(from_inexact, resume=inexact)
    # The batch counted by TrainEvalCallback is in the weights, but the Recorder (order 50) never saw it.
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), from_inexact.model.parameters(), strict=True))
    assert len(from_inexact.recorder.losses) == len(full.recorder.losses) - 1
    assert math.isclose(from_inexact.recorder.values[-1][1], full.recorder.values[-1][1])


def test_the_csv_log_carries_on_from_the_checkpoint(tmp_path: Path) -> None:
    from learnloop import CSVLogger

    def make(path: Path) -> Learner:
        learn = make_learner(path=path)
        learn.add_cb(CSVLogger())
        return learn

    full = make(tmp_path / "full")
    one_cycle(full)
    expected = (tmp_path / "full" / "history.csv").read_text().splitlines()
    run = tmp_path / "run"
    one_cycle(make(run), cbs=CheckpointCallback(every_n_iters=1, keep_last=None))
    files = checkpoint_files(run / "models" / "checkpoints")
    for file in (files[3], files[6], files[13], files[17]):  # mid-epoch 0, ends of epochs 0 and 1, mid-epoch 2
        one_cycle(make(run), resume=file)
        lines = (run / "history.csv").read_text().splitlines()
        assert len(lines) == len(expected) == N_EPOCH + 1
        assert [line.rsplit(",", 1)[0] for line in lines] == [line.rsplit(",", 1)[0] for line in expected]  # no time


def test_a_fit_resumed_mid_epoch_and_stopped_before_the_epoch_ends_adds_no_row(tmp_path: Path) -> None:
    # The Recorder's history comes back from the checkpoint after the epoch began: no row of this epoch was logged.
    from learnloop import CSVLogger

    run = tmp_path / "run"
    learn = make_learner(path=run)
    learn.add_cb(CSVLogger())
    one_cycle(learn, cbs=CheckpointCallback(every_n_iters=1, keep_last=None))
    mid_epoch_1 = checkpoint_files(run / "models" / "checkpoints")[8]
    lines = (run / "history.csv").read_text().splitlines()[:2]  # the header and epoch 0, as the checkpoint saw them

    def stop() -> None:
        raise CancelFitException

    resumed = make_learner(path=run)
    resumed.add_cb(CSVLogger())
    one_cycle(resumed, cbs=Callback(after_batch=stop), resume=mid_epoch_1)
    assert (run / "history.csv").read_text().splitlines() == lines


def test_a_frozen_parameter_with_a_zeroed_gradient_resumes_stepped_as_in_the_uninterrupted_run(tmp_path: Path) -> None:
    """zero_grad zeroes in place (fastai's), so a parameter frozen after training keeps a zero gradient and is still
    stepped (Adam's weight decay moves it): a checkpoint brings that zero gradient back, not None."""

    def frozen_learner() -> Learner:
        torch.manual_seed(0)
        learn = synth_classif_learner(n_train=64, n_valid=16, bs=16, splitter=lambda m: [[m.weight], [m.bias]])
        learn.fit(1)  # every parameter gets a gradient, zeroed after each step
        learn.freeze()  # the weight's group is frozen: no new gradient, still weight-decayed
        return learn

    full = frozen_learner()
    frozen_before = full.model.weight.detach().clone()
    full.fit(2, wd=0.1, cbs=CheckpointCallback(every_n_iters=1, keep_last=None, path=tmp_path))
    assert not torch.equal(full.model.weight, frozen_before)  # stepped on its zero gradient
    file = checkpoint_files(tmp_path)[5]  # epoch 1, mid-epoch
    ckpt = torch.load(file, weights_only=True)
    assert ckpt["zero_grads"] == ["weight", "bias"] and ckpt["grads"] == {}
    resumed = frozen_learner()
    resumed.fit(2, wd=0.1, resume=file)
    assert torch.equal(resumed.model.weight, full.model.weight) and torch.equal(resumed.model.bias, full.model.bias)
