"""Distributed training: data sharding and launch checks in-process, and real 2-process runs under torchrun.

The torchrun tests start `python -m torch.distributed.run --standalone --nproc_per_node=2` on CPU with
Gloo, running tests/distributed_worker.py, each with a hard timeout so the suite cannot hang.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

import distributed_worker as worker
import learnloop.callbacks.distributed as dist_callbacks
from conftest import synth_learner
from learnloop import (
    Callback,
    CancelBatchException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    CSVLogger,
    DataLoaders,
    GradientAccumulation,
    Learner,
    SaveModelCallback,
)
from learnloop import distributed as D
from learnloop.callback import noop
from learnloop.callbacks.distributed import DistributedTrainer
from learnloop.data import unshuffled
from learnloop.distributed import DistributedError, check_launch_env, is_rank_zero, launched_distributed
from learnloop.sharding import ShardSampler, interleave, shard_loader

HERE = Path(__file__).parent
TIMEOUT = 120  # seconds: a hung run fails the test instead of the suite
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("TORCHELASTIC")}
    env.update({"OMP_NUM_THREADS": "1", "LEARNLOOP_DIST_TIMEOUT": "30", "PYTHONUNBUFFERED": "1", **extra})
    return env


def torchrun(scenario: str, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "distributed_worker.py"), scenario, str(out)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=out)


def _ds(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


# ------------------------------------------------------------------ sharding the data
def test_training_loader_gets_a_distributed_sampler_with_equal_batches() -> None:
    dl = DataLoader(_ds(10), batch_size=4, shuffle=True)
    shards = [shard_loader(dl, r, 3, train=True, seed=7) for r in range(3)]
    assert all(isinstance(s.sampler, DistributedSampler) and s.sampler.shuffle for s in shards)
    assert {len(s) for s in shards} == {1}  # 10 items over 3 ranks: 4 each (2 repeated), one batch of 4
    items = [int(i) for s in shards for b in s for i in b[1]]
    assert set(items) == set(range(10)) and len(items) == 12
    seq = shard_loader(DataLoader(_ds(10), batch_size=2), 1, 2, train=True)
    assert not seq.sampler.shuffle and [int(i) for b in seq for i in b[1]] == [1, 3, 5, 7, 9]


def test_evaluation_loader_is_sharded_without_padding_and_interleaves_back() -> None:
    dl = DataLoader(_ds(11), batch_size=4)
    shards = [shard_loader(dl, r, 3, train=False) for r in range(3)]
    assert all(isinstance(s.sampler, ShardSampler) for s in shards)
    parts = [torch.cat([b[1] for b in s]) for s in shards]
    assert [len(p) for p in parts] == [4, 4, 3]  # 11 items, none counted twice
    assert interleave(parts).tolist() == list(range(11))
    pairs = [(p, p * 10) for p in parts]
    assert interleave(pairs)[1].tolist() == [10 * i for i in range(11)]
    assert interleave([torch.tensor([5]), None]).tolist() == [5]  # one item: the other rank had none
    assert len(ShardSampler(2, 2, 3)) == 0


@pytest.mark.parametrize(("bs", "split", "kept"), [(2, False, 10), (4, True, 8)])
def test_an_evaluation_loader_that_drops_its_last_batch_is_sharded_over_the_items_one_process_reads(
    bs: int, split: bool, kept: int
) -> None:
    # 11 items in batches of 2: one process evaluates items 0..9. Each rank dropping its own last partial batch
    # evaluated 0..8 and 10 (rank 1 dropped 9), and the shares of 6 and 4 items did not interleave (a shape error).
    dl = DataLoader(_ds(11), batch_size=bs, drop_last=True)
    shards = [shard_loader(dl, r, 2, train=False, split_batch=split) for r in range(2)]
    assert not any(s.drop_last for s in shards) and {s.batch_size for s in shards} == {2}
    parts = [torch.cat([b[1] for b in s]) for s in shards]
    assert interleave(parts).tolist() == list(range(kept))
    assert shard_loader(dl, 0, 2, train=True).drop_last  # training shares still drop it


def test_split_batch_divides_the_batch_size_or_says_why_not() -> None:
    dl = DataLoader(_ds(12), batch_size=6, shuffle=True)
    assert shard_loader(dl, 0, 2, train=True, split_batch=True).batch_size == 3
    assert shard_loader(dl, 0, 2, train=True).batch_size == 6
    with pytest.raises(DistributedError, match=r"batch size 6 cannot be split evenly over 4 processes"):
        shard_loader(dl, 0, 4, train=True, split_batch=True)


@pytest.mark.parametrize(
    "dl, match",
    [
        (DataLoader(_ds(), batch_size=2, sampler=WeightedRandomSampler([1.0] * 10, 10)),
         "WeightedRandomSampler, which does not know about the other ranks"),
        (DataLoader(_ds(), batch_sampler=[[0, 1], [2, 3]]), "custom batch sampler"),
        (DataLoader(_ds(), batch_size=2, sampler=DistributedSampler(_ds(), num_replicas=4, rank=1)),
         "for rank 1 of 4, but this is rank 0 of 2"),
        ([(torch.zeros(2, 1), torch.zeros(2))], "not a torch DataLoader"),
    ],
    ids=["weighted-sampler", "batch-sampler", "wrong-replicas", "plain-list"],
)
def test_loaders_that_cannot_be_sharded_are_refused_clearly(dl: Any, match: str) -> None:
    with pytest.raises(DistributedError, match=match):
        shard_loader(dl, 0, 2, train=True)


def test_iterable_dataset_is_refused_clearly() -> None:
    class Stream(IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(range(4))

    with pytest.raises(DistributedError, match="IterableDataset.*shard_data=False"):
        shard_loader(DataLoader(Stream(), batch_size=2), 0, 2, train=True)


# ------------------------------------------------------------------ launch environment
GOOD = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"RANK": "2"}, r"RANK=2 is outside 0..1"),
        ({"RANK": None}, "RANK is not"),
        ({"MASTER_PORT": None}, "MASTER_PORT is not"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' should be a whole number"),
        ({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=3 does not fit"),
        ({"WORLD_SIZE": None}, "not a distributed launch"),
    ],
)
def test_a_mismatched_launch_environment_is_a_clear_error(change: dict[str, str | None], match: str) -> None:
    env = {**GOOD, **{k: v for k, v in change.items() if v is not None}}
    for k, v in change.items():
        if v is None:
            env.pop(k)
    with pytest.raises(DistributedError, match=match):
        check_launch_env(env)


def test_more_processes_than_gpus_is_a_clear_error() -> None:
    with pytest.raises(DistributedError, match=r"this machine has 1 GPU\(s\)"):
        check_launch_env(GOOD, n_devices=1)
    assert check_launch_env(GOOD, n_devices=2).rank == 1


def test_single_process_runs_are_untouched(tmp_path: Path) -> None:
    assert not launched_distributed() and is_rank_zero()
    assert not launched_distributed({"WORLD_SIZE": "1"}) and launched_distributed({"WORLD_SIZE": "2"})
    learn = worker.make_learner(8, tmp_path)
    assert not hasattr(learn, "distributed_trainer")  # nothing added without torchrun
    with learn.distrib_ctx():  # a no-op in a single process
        assert not hasattr(learn, "distributed_trainer")
    explicit = worker.make_learner(8, tmp_path, cbs=DistributedTrainer(split_batch=True))
    learn.logger = explicit.logger = noop
    learn.fit(1)
    explicit.fit(1)
    assert worker.params(explicit) == worker.params(learn)
    assert explicit.recorder.values == learn.recorder.values


def test_distrib_ctx_takes_fastais_in_notebook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fastai 2.8's `distrib_ctx(sync_bn=True, in_notebook=False, **kwargs)`: in_notebook reached DDP, a TypeError
    # at the fit's start (a world of 1 standing in for a launch)
    learn = worker.make_learner(8, tmp_path)
    learn.logger = noop
    with learn.distrib_ctx(in_notebook=True):  # in a single process too, as fastai's
        pass
    assert capsys.readouterr().out == "Training Learner...\n"
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist_callbacks.D, "is_distributed", lambda: True)
        with learn.distrib_ctx(in_notebook=True):
            learn.fit(1)
        assert capsys.readouterr().out == "Training Learner...\n"
        assert len(learn.recorder.values) == 1 and not hasattr(learn, "distributed_trainer")
    finally:
        D.teardown_distrib()


def test_rank0_first_outside_a_launch_is_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.rank0_first(lambda a, b=0: a + b, 2, b=3) == 5
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("rank_zero", [True, False])
def test_rank0_first_runs_rank_zero_before_the_others(monkeypatch: pytest.MonkeyPatch, rank_zero: bool) -> None:
    calls: list[str] = []
    monkeypatch.setattr(D, "launched_distributed", lambda: True)
    monkeypatch.setattr(D, "setup", lambda: calls.append("setup") or True)
    monkeypatch.setattr(D, "teardown", lambda: calls.append("teardown"))
    monkeypatch.setattr(D, "is_rank_zero", lambda: rank_zero)
    monkeypatch.setattr(D, "barrier", lambda: calls.append("barrier"))
    assert D.rank0_first(lambda: calls.append("call") or "done") == "done"
    middle = ["call", "barrier"] if rank_zero else ["barrier", "call"]  # the others wait for rank 0's call
    assert calls == ["setup", *middle, "teardown"]


def test_setup_distrib_sets_the_device_and_teardown_distrib_leaves_any_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    devices: list[int] = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    assert D.setup_distrib() is None and devices == []
    assert D.setup_distrib("1") == 1 and devices == [1] and not torch.distributed.is_initialized()
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    D.teardown_distrib()  # a group set up elsewhere, which D.teardown() leaves alone
    assert not torch.distributed.is_initialized()
    D.teardown_distrib()  # none: nothing to do


def test_rank_comes_from_the_launcher_before_the_process_group_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LEARNLOOP_AUTO_DISTRIBUTED", "0")  # no process group: this test is one process
    assert (D.rank(), D.world_size(), D.is_rank_zero(), D.is_distributed()) == (1, 2, False, False)
    learn = worker.make_learner(8, tmp_path)
    assert not hasattr(learn, "distributed_trainer")
    assert learn.save("m") == tmp_path / "models" / "m.pth"
    assert not (tmp_path / "models" / "m.pth").exists()  # rank 1 does not write
    monkeypatch.setenv("LEARNLOOP_DIST_TIMEOUT", "soon")
    with pytest.raises(DistributedError, match="LEARNLOOP_DIST_TIMEOUT='soon' should be a number of seconds"):
        D.default_timeout()
    monkeypatch.setenv("LEARNLOOP_DIST_TIMEOUT", "2.5")
    assert D.default_timeout().total_seconds() == 2.5


# ------------------------------------------------------------------ two processes (torchrun)
def _reference(tmp: Path, epochs: int, cbs: Any) -> Learner:
    learn = worker.make_learner(worker.GLOBAL_BS, tmp, cbs=cbs)
    learn.logger = noop
    learn.fit(epochs)
    return learn


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ddp")
    start = time.monotonic()
    proc = torchrun("main", out)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"main_rank{r}.json").read_text()) for r in range(2)]
    return {"ranks": ranks, "stdout": proc.stdout, "elapsed": elapsed, "out": out}


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=tol, rtol=tol)


def test_two_processes_end_with_the_parameters_of_one_process_over_the_same_global_batch(
    ddp_run: dict[str, Any], tmp_path: Path
) -> None:
    ref = _reference(tmp_path, 3, [CSVLogger(), SaveModelCallback()])
    for rank in ddp_run["ranks"]:
        fit = rank["fit"]
        assert fit["model_type"] == "Sequential"  # the plain module again after fit
        assert _close(fit["params"], worker.params(ref))
        # the epoch table too: training loss averaged over ranks, validation summed over both halves
        assert _close([v for row in fit["values"] for v in row], [v for row in ref.recorder.values for v in row])
        assert _close(fit["losses"], [float(t) for t in ref.recorder.losses])


def test_recorder_holds_the_same_values_on_every_rank(ddp_run: dict[str, Any]) -> None:
    r0, r1 = ddp_run["ranks"]
    for key in ("fit", "early_stop", "nan_stop", "phase_cancels", "first_batch_cancel", "accumulate", "validate",
                "fsdp", "one_cycle"):
        assert r0[key] == r1[key], key


def test_get_preds_and_validate_gather_every_rank_in_dataset_order(ddp_run: dict[str, Any], tmp_path: Path) -> None:
    ref = _reference(tmp_path, 3, [CSVLogger(), SaveModelCallback()])
    preds, targs = ref.get_preds()
    for rank in ddp_run["ranks"]:
        assert len(rank["preds"]) == worker.N_VALID  # 9 + 8 items, none padded in
        assert _close(rank["preds"], preds.reshape(-1).tolist())
        assert _close(rank["targs"], targs.reshape(-1).tolist())
        assert _close(rank["validate"], ref.validate())


def test_get_preds_cancelled_on_one_rank_gathers_the_batches_before_the_cancel(
    ddp_run: dict[str, Any], tmp_path: Path
) -> None:
    ref = _reference(tmp_path, 3, [CSVLogger(), SaveModelCallback()])
    for it, n_items in ((1, 8), (2, 16)):  # one process cancelled at global batch 1 (of 8 items), or 2
        cancel = worker.OnRank(0, "before_batch", 0, it, worker._raise(CancelValidException), training=False)
        expected = [t.reshape(-1).tolist() for t in ref.get_preds(cbs=cancel, with_input=True, with_loss=True)]
        assert len(expected[1]) == n_items
        for rank in ddp_run["ranks"]:
            got = rank[f"cancelled_preds_{it}"]
            assert got[0] == expected[0] and got[2] == expected[2]  # inputs and targets, exactly, in order
            assert _close(got[1], expected[1]) and _close(got[3], expected[3])


def test_only_rank_zero_writes_files_and_every_rank_can_load_them(ddp_run: dict[str, Any]) -> None:
    r0, r1 = ddp_run["ranks"]
    # rank 1 writes nothing but its own shards of FSDP checkpoints (torch.distributed.checkpoint)
    assert [w for w in r1["written"] if ".dcp" not in w] == []
    assert all(w.endswith("__1_0.distcp") or w.startswith("os.mkdir") for w in r1["written"])
    assert "work/history.csv" in r0["written"] and any(w.startswith("work/models/.final.pth") for w in r0["written"])
    assert "fsdp/history.csv" in r0["written"]
    events = list((ddp_run["out"] / "work" / "tb").glob("events.out.tfevents.*"))
    assert events and all(f.name.endswith(f".{r0['pid']}.{f.name.split('.')[-1]}") for f in events)  # TensorBoard
    for rank in (r0, r1):
        assert rank["loaded"] == rank["fit"]["params"]
    assert ddp_run["stdout"].count("epoch     train_loss") == 28  # one table per fit, from rank 0 only


def test_early_stopping_on_one_rank_stops_every_rank(ddp_run: dict[str, Any]) -> None:
    for rank in ddp_run["ranks"]:
        assert len(rank["early_stop"]["values"]) == 2  # EarlyStopping ran on rank 1 only, patience 1, of 5 epochs


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_batch(ddp_run: dict[str, Any]) -> None:
    r0, r1 = ddp_run["ranks"]
    for rank in (r0, r1):
        nan = rank["nan_stop"]
        assert len(nan["values"]) == 1 and nan["train_iter"] == 12  # NaN at batch 3 of epoch 1 (8 per epoch)
        assert len(nan["losses"]) == 11  # as one process would record: the NaN batch is not recorded
    assert r0["nan_stop_warned"] == []  # the rank that saw the NaN says where it stopped; the other stops quietly
    assert r1["nan_stop_warned"] == [
        "TerminateOnNaNCallback: the loss of training batch 3 of epoch 1 is nan: stopping (CancelFitException). "
        "Lower the learning rate, check the inputs and targets for NaN or infinite values, or clip the gradients "
        "(GradientClip)."
    ]


def test_a_nan_epoch_loss_is_warned_of_by_rank_zero_alone(ddp_run: dict[str, Any]) -> None:
    r0, r1 = ddp_run["ranks"]
    assert all(math.isnan(rank["nan_epoch"]["values"][0][0]) for rank in (r0, r1))  # reduced over the ranks
    assert [m.split(":")[0] for m in r0["nan_epoch_warned"]] == ["The training loss of epoch 0 is nan"]
    assert r1["nan_epoch_warned"] == []


def test_a_phase_cancelled_on_one_rank_is_cancelled_on_every_rank(ddp_run: dict[str, Any]) -> None:
    for rank in ddp_run["ranks"]:
        values = rank["phase_cancels"]["values"]
        # epoch 0: training cancelled at batch 2 (no train_loss); epoch 1: validation cancelled (no valid values)
        assert [len(row) for row in values] == [3, 1, 4]
        assert rank["phase_cancels"]["train_iter"] == 2 + 8 + 8  # rank 1 cancelled before counting batch 2


def test_a_cancel_after_the_first_batch_does_not_hang(ddp_run: dict[str, Any]) -> None:
    r0, r1 = (rank["first_batch_cancel"] for rank in ddp_run["ranks"])
    assert r0 == r1
    assert [len(row) for row in r0["values"]] == [3, 4]  # epoch 0 without train_loss
    assert r0["train_iter"] == 0 + 8


def test_a_cancel_between_the_backward_pass_and_the_step_stops_every_rank_before_its_step(
    ddp_run: dict[str, Any], tmp_path: Path
) -> None:
    r0, r1 = (rank["step_cancel"] for rank in ddp_run["ranks"])
    assert r0["params"] == r1["params"]  # rank 0 did not step where rank 1 did not: the replicas stay equal
    ref = _reference(tmp_path, 2, worker.OnRank(0, "after_backward", 0, 2, worker._raise(CancelFitException)))
    assert _close(r0["params"], worker.params(ref))
    assert r0["train_iter"] == ref.train_iter == 2


@pytest.mark.parametrize(
    ("name", "exc", "it"), [("batch", CancelBatchException, 2), ("train", CancelTrainException, 3)]
)
def test_a_cancel_after_the_step_on_one_rank_carries_the_gradients_into_the_next_step_on_every_rank(
    ddp_run: dict[str, Any], tmp_path: Path, name: str, exc: type[Exception], it: int
) -> None:
    # SPEC §1: the cancel skips opt.zero_grad(). Rank 0 zeroed its gradients, rank 1 did not: the next step's
    # all-reduce averaged half of the carried gradient in, where one process adds all of it
    r0, r1 = (rank[f"carried_{name}"] for rank in ddp_run["ranks"])
    assert r0["params"] == r1["params"]
    ref = _reference(tmp_path, 2, worker.OnRank(0, "after_step", 0, it, worker._raise(exc)))
    assert _close(r0["params"], worker.params(ref)) and r0["train_iter"] == ref.train_iter


def test_the_trainer_asks_before_the_step_only_when_a_callback_may_cancel_after_the_backward() -> None:
    # The question before each step costs an all-reduce; with the default callbacks nothing runs between the one
    # before the backward pass and the step, so there is nothing to learn.
    trainer = DistributedTrainer()
    learn = synth_learner(cbs=trainer)
    assert not trainer._runs_between_backward_and_step()

    class AtStep(Callback):
        def before_step(self) -> None:
            pass

    late, early = AtStep(), AtStep()
    late.order, early.order = 60, 1
    learn.add_cb(late)  # after the trainer: it comes after the question anyway
    assert not trainer._runs_between_backward_and_step()
    for cb in (Callback(after_backward=noop), Callback(after_cancel_backward=noop), early):
        learn.add_cb(cb)
        assert trainer._runs_between_backward_and_step(), cb
        learn.remove_cb(cb)


def test_an_epoch_cancelled_on_one_rank_after_its_training_phase_is_validated_on_no_rank(
    ddp_run: dict[str, Any]
) -> None:
    r0, r1 = (rank["epoch_cancel_after_train"] for rank in ddp_run["ranks"])
    # epoch 1's only, as in one process: rank 0 has 3 batches of 9 validation items (4 a batch), rank 1 has 2 of 8
    assert (r0["validation_batches"], r1["validation_batches"]) == (3, 2)
    assert r0["values"] == r1["values"] and [len(row) for row in r0["values"]] == [1, 4]


def test_broadcast_buffers_false_leaves_each_rank_its_own_batchnorm_statistics(ddp_run: dict[str, Any]) -> None:
    # DDP's promise: no buffer is synced; rank 0's were copied to every rank after each training phase regardless
    r0, r1 = (rank["own_buffers"] for rank in ddp_run["ranks"])
    assert not _close(r0, r1)


def test_lr_find_and_a_scheduled_fit_agree_on_every_rank(ddp_run: dict[str, Any]) -> None:
    for rank in ddp_run["ranks"]:
        one_cycle = rank["one_cycle"]
        assert len(one_cycle["losses"]) == 20  # the whole sweep, though each rank reads half the batches
        assert len(one_cycle["values"]) == 2 and len(one_cycle["nested"]) == 3  # validate() inside the fit


def test_gradient_accumulation_skips_the_all_reduce_of_micro_batches(
    ddp_run: dict[str, Any], tmp_path: Path
) -> None:
    ref = _reference(tmp_path, 2, GradientAccumulation(n_steps=2))
    for rank in ddp_run["ranks"]:
        acc = rank["accumulate"]
        assert acc["allreduce_calls"] == acc["batches"] // 2  # one bucket per step, none for micro-batches
        assert _close(acc["params"], worker.params(ref))


def test_gradient_accumulation_by_samples_counts_the_global_batch(ddp_run: dict[str, Any], tmp_path: Path) -> None:
    # Each rank counted its own half of the batch: it stepped every 6 batches instead of 3, its loss scaled by 6.
    ref = _reference(tmp_path, 2, GradientAccumulation(n_acc=3 * worker.GLOBAL_BS))
    for rank in ddp_run["ranks"]:
        assert _close(rank["accumulate_samples"]["params"], worker.params(ref))
        assert _close(rank["accumulate_samples"]["losses"], [float(t) for t in ref.recorder.losses])


def test_a_fit_resumed_from_a_checkpoint_inside_an_epoch_ends_as_the_fit_it_was_saved_from(
    ddp_run: dict[str, Any], tmp_path: Path
) -> None:
    # Rank 0 saved its own smoothed losses (the ranks' are averaged at the end of the phase), and the resumed ranks
    # carried on from them: the resumed epoch's train_loss and losses were rank 0's, not the job's. Likewise the
    # running totals of the training metrics (mae, an average; rmse, of the whole set): rank 0's partial ones,
    # which every rank then added to its own.
    ref = worker.make_learner(worker.GLOBAL_BS, tmp_path)
    ref.logger, ref.recorder.train_metrics = noop, True
    ref.fit(2)
    for rank in ddp_run["ranks"]:
        done, resumed = rank["checkpointed"], rank["resumed"]
        assert "_epoch1_batch" in resumed["from"]  # inside the second epoch
        assert resumed["values"] == done["values"] and resumed["losses"] == done["losses"]
        assert resumed["params"] == done["params"]
        assert _close(done["losses"], [float(t) for t in ref.recorder.losses])
        assert len(done["values"][1]) == 6  # train_loss, train_mae, train_rmse, valid_loss, valid_mae, valid_rmse
        assert _close([v for row in done["values"] for v in row], [v for row in ref.recorder.values for v in row])


def test_a_fit_resumed_in_the_middle_of_a_gradient_accumulation_ends_as_the_fit_it_was_saved_from(
    ddp_run: dict[str, Any],
) -> None:
    # Each rank's gradients are its own until the step's all-reduce: rank 0 saved its own, both ranks resumed from
    # them, and the step averaged rank 0's twice.
    for rank in ddp_run["ranks"]:
        done, resumed = rank["accumulating"], rank["resumed_accumulating"]
        assert rank["accumulating_from"][1] % 3  # saved with 1 or 2 of the 3 micro-batches accumulated
        assert resumed["params"] == done["params"]
        assert resumed["values"] == done["values"] and resumed["losses"] == done["losses"]


def test_a_fit_whose_ranks_read_their_share_of_the_items_resumes_from_inside_an_epoch(
    ddp_run: dict[str, Any],
) -> None:
    # The checkpoint recorded a rank's batches per epoch (4) and the resume compared them with the loader as built
    # (8): a CheckpointError for every mid-epoch checkpoint of the default DistributedTrainer(split_batch=False).
    for rank in ddp_run["ranks"]:
        done, resumed = rank["shard_checkpointed"], rank["shard_resumed"]
        assert done["batches"] == 8 and "_epoch1_batch2" in resumed["from"]
        assert resumed["params"] == done["params"]
        assert resumed["values"] == done["values"] and resumed["losses"] == done["losses"]


def test_a_ranks_share_of_the_training_data_without_a_batch_is_a_clear_error(ddp_run: dict[str, Any]) -> None:
    for rank in ddp_run["ranks"]:
        assert rank["empty_share"] == (
            "DistributedError: This rank's share of the training data yields no batch: 12 items over 2 ranks are 6 per "
            "rank, fewer than batch_size=8 with drop_last=True, where one process would read 1 batch(es). Use a "
            "smaller batch size, drop_last=False or more data, or DistributedTrainer(split_batch=True) to divide "
            "each batch between the ranks."
        )


def test_shuffled_training_data_is_split_and_reshuffled_each_epoch(ddp_run: dict[str, Any]) -> None:
    r0, r1 = (r["shuffle"] for r in ddp_run["ranks"])
    assert r0["sampler_epochs"] == r1["sampler_epochs"] == [0, 1, 0]  # fit(2), then fit(1)
    for epoch in range(3):
        assert sorted(r0["items"][epoch] + r1["items"][epoch]) == list(range(worker.N_TRAIN))
    assert r0["items"][0] != r0["items"][1]
    assert r0["items"][2] != r0["items"][0]  # the second fit's first epoch is no replay of the first fit's
    for rank in ddp_run["ranks"]:  # a training phase one rank cancelled before reading: skipped on both
        assert rank["cancel_before_reading"]["train_iter"] == 8  # epoch 0's 8 batches only
    assert ddp_run["ranks"][0]["cancel_before_reading"] == ddp_run["ranks"][1]["cancel_before_reading"]


def _shuffled(seed: int) -> DataLoader[Any]:
    return DataLoader(_ds(10), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_a_shuffled_share_draws_its_order_from_the_loader_generator_each_time_it_is_read() -> None:
    # Each rank draws from its own copy of the loader's generator and keeps rank 0's draw (`agree`): the order is
    # drawn as a shuffling loader in one process draws it, so a second read (a second fit) differs, and a
    # generator put back (an exact resume) repeats it.
    agreed: list[int] = []

    def agree(seed: int) -> int:
        agreed.append(seed)
        return agreed[(len(agreed) - 1) // 2 * 2]  # rank 0's draw (the ranks draw in turn below)

    loaders = [_shuffled(0), _shuffled(0)]
    shards = [shard_loader(dl, r, 2, train=True, agree_seed=agree) for r, dl in enumerate(loaders)]

    def read() -> list[list[int]]:
        return [[int(i) for x, _ in s for i in x.reshape(-1)] for s in shards]

    state = loaders[0].generator.get_state()
    first, second = read(), read()
    assert sorted(first[0] + first[1]) == sorted(second[0] + second[1]) == list(range(10))
    assert first != second
    for dl in loaders:
        dl.generator.set_state(state)
    assert read() == first


def test_a_loader_remade_from_a_share_inside_a_fit_is_not_split_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # get_preds() inside a fit reads unshuffled(dls[i]), a new loader over this rank's copy (a batch of 3 of the
    # global 6): split_batch must not divide it again (3 over 2 processes was a DistributedError).
    monkeypatch.setattr(dist_callbacks.D, "rank", lambda: 0)
    monkeypatch.setattr(dist_callbacks.D, "world_size", lambda: 2)
    trainer = DistributedTrainer(split_batch=True)
    copy = trainer._shard(DataLoader(_ds(10), batch_size=6), train=False)
    assert copy.batch_size == 3
    remade = trainer._shard(unshuffled(copy), train=False)
    assert isinstance(remade.sampler, ShardSampler) and remade.batch_size == 3
    assert [int(i) for x, _ in remade for i in x.reshape(-1)] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("shuffle", [False, True])
def test_an_evaluation_loader_over_a_distributed_sampler_is_sharded_without_repeats(
    shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DistributedSampler pads rank 1's share of 11 items with item 0 (counted twice in the metrics, returned twice
    # by get_preds) and shuffles by default, though gather_preds interleaves the shares as items r, r + W, ...
    monkeypatch.setattr(dist_callbacks.D, "rank", lambda: 1)
    monkeypatch.setattr(dist_callbacks.D, "world_size", lambda: 2)
    dl = DataLoader(_ds(11), batch_size=2, sampler=DistributedSampler(_ds(11), 2, 1, shuffle=shuffle))
    copy = DistributedTrainer()._shard(dl, train=False)
    assert isinstance(copy.sampler, ShardSampler) and [int(i) for _, y in copy for i in y] == [1, 3, 5, 7, 9]
    assert DistributedTrainer()._shard(dl, train=True) is dl  # a training share is used as it is


def test_gathered_predictions_of_every_structure_are_merged_in_dataset_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 0 held items 0, 2, 4 and rank 1 items 1, 3. A dict of predictions, a namedtuple of targets, and inputs
    # whose widths differ between batches (rank 1's came as a list of items, rank 0's were all one width: a tensor)
    # were a TypeError or a shape error.
    from collections import namedtuple
    from types import SimpleNamespace

    from learnloop import reductions

    Targ = namedtuple("Targ", "y w")

    def share(items: list[int], ragged: bool) -> SimpleNamespace:
        y = torch.tensor(items, dtype=torch.float32)
        inputs = [torch.full((i % 3 + 1,), float(i)) for i in items] if ragged else y[:, None].repeat(1, 2)
        return SimpleNamespace(preds={"out": y[:, None]}, targets=Targ(y, -y), inputs=inputs, losses=None)

    for in_order, order in ((True, [0, 1, 2, 3, 4]), (False, [0, 2, 4, 1, 3])):
        gather, other = share([0, 2, 4], ragged=False), share([1, 3], ragged=True)
        shared = (reductions._to_cpu(other.preds), other.targets, other.inputs, None)
        monkeypatch.setattr(reductions.D, "all_gather_objects", lambda obj, other=shared: [obj, other])
        reductions.gather_preds(gather, in_order=in_order)
        assert gather.preds["out"].reshape(-1).tolist() == order
        assert type(gather.targets) is Targ and gather.targets.w.tolist() == [-i for i in order]
        assert [x.tolist() for x in gather.inputs] == [[float(i)] * (2 if i % 2 == 0 else i % 3 + 1) for i in order]
        assert gather.losses is None


def test_a_rank_that_gathered_no_loss_adds_nothing_to_the_merged_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rank without a batch keeps an empty list of losses, as fastai's GatherPredsCallback: it is no share
    # (merged with another rank's tensor it made a list of items), and stays [] when no rank gathered any.
    from types import SimpleNamespace

    from learnloop import reductions

    def share(losses: list[float]) -> SimpleNamespace:
        return SimpleNamespace(preds=None, targets=None, inputs=None, losses=torch.tensor(losses) if losses else [])

    for mine, theirs, expected in (([], [1.0, 2.0], [1.0, 2.0]), ([3.0], [], [3.0]), ([], [], [])):
        gather, other = share(mine), share(theirs)
        shared = (None, None, None, None if isinstance(other.losses, list) else other.losses)
        monkeypatch.setattr(reductions.D, "all_gather_objects", lambda obj, other=shared: [obj, other])
        reductions.gather_preds(gather, in_order=False)
        losses = gather.losses
        assert (losses == [] if expected == [] else isinstance(losses, torch.Tensor) and losses.tolist() == expected)


def test_averages_of_several_values_are_summed_with_a_rank_that_saw_no_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # A validation set smaller than the number of ranks: rank 1's AvgMetric kept its total 0.0. With a function of
    # two values, the ranks all-reduced buffers of different sizes (gloo aborted the process).
    from learnloop import reductions
    from learnloop.metrics import AvgMetric

    seen, empty = AvgMetric(lambda p, y: p), AvgMetric(lambda p, y: p)
    seen.total, seen.count = torch.tensor([2.0, 4.0]), 2
    shares = [[(torch.tensor([2.0, 4.0]), 2), (0.5, 1)], [(0.0, 0), (1.0, 1)]]  # the second metric: Python floats
    monkeypatch.setattr(reductions.D, "all_gather_objects", lambda obj: shares)
    floats = AvgMetric(lambda p, y: 0.0)
    floats.total, floats.count = 0.5, 1
    reductions.reduce_metrics([seen, floats])
    assert seen.value.tolist() == [1.0, 2.0] and floats.value == 0.75 and isinstance(floats.total, float)
    reductions.reduce_metrics([empty, AvgMetric(lambda p, y: 0.0)])  # on rank 1, which saw none
    assert isinstance(empty.total, torch.Tensor) and empty.value.tolist() == [1.0, 2.0] and empty.count == 2


def test_averages_of_your_own_metrics_are_summed_as_one_process_sums_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # A weighted average's count is a sum of weights: each rank's was cut to a whole number (1.5 + 1.5 made 2, not 3).
    # A metric whose reset() set the total to the int 0 was no average on a rank that saw no batch, so that rank
    # gathered fewer metrics than the others (and kept its own value, with a warning).
    import warnings

    from learnloop import reductions
    from learnloop.metrics import Metric

    class Weighted(Metric):
        def reset(self) -> None:
            self.total, self.count = 0, 0

        @property
        def value(self) -> Any:
            return self.total / self.count if self.count else None

    weighted, counted, empty = Weighted(), Weighted(), Weighted()
    weighted.total, weighted.count = 1.5, 1.5  # weights 0.5 and 1.0
    counted.total, counted.count = torch.tensor(3.0), torch.tensor(2)
    empty.reset()  # this rank (1) saw no batch
    rank0 = [(3.0, 1.5), (torch.tensor(6.0), 4), (torch.tensor(4.0), 2)]
    sent: list[Any] = []
    monkeypatch.setattr(reductions.D, "all_gather_objects", lambda obj: sent.append(obj) or [rank0, obj])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reductions.reduce_metrics([weighted, counted, empty])
    assert len(sent[0]) == 3
    assert weighted.count == 3.0 and weighted.value == 1.5  # (3.0 + 1.5) / (1.5 + 1.5), as one process
    assert isinstance(counted.count, torch.Tensor) and int(counted.count) == 6 and float(counted.value) == 1.5
    assert type(empty.count) is int and empty.count == 2 and float(empty.value) == 2.0


def test_an_exception_on_one_rank_ends_every_rank_with_that_error(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = torchrun("error", tmp_path)
    assert proc.returncode != 0
    assert "boom on rank 1" in proc.stderr + proc.stdout
    assert time.monotonic() - start < 30  # well within the collective timeout: no rank waits it out


def test_distrib_ctx_timeout_bounds_the_collectives_of_a_process_group_set_up_before(tmp_path: Path) -> None:
    # Under torchrun the learner sets the process group up when it is made (with a 30 s timeout here): a rank that
    # comes 10 s late to the backward pass must still end the job after distrib_ctx's 2 s.
    proc = torchrun("ctx_timeout", tmp_path)
    assert proc.returncode != 0
    assert "Timed out waiting 2000ms" in proc.stderr + proc.stdout  # Gloo's words, from rank 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_missing_process_is_a_clear_error_after_the_timeout(tmp_path: Path) -> None:
    code = "import sys; sys.path.insert(0, sys.argv[1]); import distributed_worker as w; w.make_learner(8, '.')"
    env = _env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               LEARNLOOP_DIST_TIMEOUT="2")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(HERE)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode != 0
    assert "could not join the process group of 2 processes" in proc.stderr
    assert time.monotonic() - start < 30


def test_fsdp_shards_the_model_and_trains_like_one_process(ddp_run: dict[str, Any], tmp_path: Path) -> None:
    ref = _reference(tmp_path, 3, [CSVLogger(), SaveModelCallback()])
    values = [v for row in ref.recorder.values for v in row]
    preds, _ = ref.get_preds()
    for rank in ddp_run["ranks"]:
        fsdp = rank["fsdp"]
        assert fsdp["fit"]["model_type"].startswith("FSDP")  # sharded in place, and it stays so
        assert _close(fsdp["fit"]["params"], worker.params(ref))
        assert _close([v for row in fsdp["fit"]["values"] for v in row], values)
        assert _close(fsdp["preds"], preds.reshape(-1).tolist())  # uneven shards: 3 and 2 batches, kept in step
        assert _close(fsdp["validate"], ref.validate())


def test_a_model_sharded_beforehand_is_trained_as_with_fsdp(ddp_run: dict[str, Any], tmp_path: Path) -> None:
    ref = _reference(tmp_path, 1, None)
    for rank in ddp_run["ranks"]:
        presharded = rank["fsdp"]["presharded"]
        assert presharded["model_type"].startswith("FSDP")
        assert _close(presharded["params"], worker.params(ref))
        assert _close([v for row in presharded["values"] for v in row], [v for row in ref.recorder.values for v in row])


def test_fsdp_checkpoints_round_trip_through_distributed_checkpoint(ddp_run: dict[str, Any]) -> None:
    out = ddp_run["out"]
    assert sorted(p.name for p in (out / "fsdp" / "models" / "final.dcp").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not list((out / "fsdp" / "models").glob("*.partial")) and not list((out / "fsdp" / "models").glob("*.old"))
    for rank in ddp_run["ranks"]:
        assert rank["fsdp"]["loaded"] == rank["fsdp"]["fit"]["params"]


def test_sharding_a_trained_model_carries_the_optimizer_state_over(ddp_run: dict[str, Any], tmp_path: Path) -> None:
    ref = worker.make_learner(worker.GLOBAL_BS, tmp_path, opt_func=worker.Adam)
    ref.logger = noop
    ref.fit(1)
    ref.fit(1)
    for rank in ddp_run["ranks"]:
        assert _close(rank["fsdp"]["adam"], worker.params(ref))


def _record(learn: Learner, loss: float) -> None:
    learn.training, learn.yb, learn.loss = True, (torch.zeros(1),), torch.tensor(loss)
    learn.recorder.after_batch()


@pytest.mark.parametrize("before", [0, 3])
def test_average_losses_drops_a_batch_only_this_rank_ran_from_the_running_average(
    before: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Another rank cancelled one batch earlier: this rank's extra batch (loss 100) must leave no trace.
    from learnloop import reductions

    def ranks_recorded(learn: Learner, losses: list[float]) -> None:
        learn.fit(1)
        learn.recorder.before_fit()
        for x in losses:
            _record(learn, x)

    learn = worker.make_learner(16, tmp_path / "a", metrics=())
    ref = worker.make_learner(16, tmp_path / "b", metrics=())
    learn.logger = ref.logger = noop
    ranks_recorded(learn, [1.0 + i for i in range(before)])
    mark = len(learn.recorder.losses)
    _record(learn, 100.0)
    monkeypatch.setattr(reductions.D, "all_gather_objects", lambda obj: [obj, (0, obj[1] - 1)])
    monkeypatch.setattr(reductions.D, "world_size", lambda: 2)
    monkeypatch.setattr(reductions.D, "all_reduce_sum", lambda t: t * 2)
    reductions.average_losses(learn, mark)
    _record(learn, 5.0)
    ranks_recorded(ref, [*(1.0 + i for i in range(before)), 5.0])
    assert [float(x) for x in learn.recorder.losses] == [float(x) for x in ref.recorder.losses]


def test_an_exception_leaving_validate_asks_no_collective_on_its_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() fires after_epoch and after_fit even when an exception leaves it (as fastai's); the trainer then
    asks the other processes nothing: a rank that raised alone would wait for answers until the timeout."""
    asked: list[object] = []
    monkeypatch.setattr(dist_callbacks.D, "is_distributed", lambda: True)
    monkeypatch.setattr(dist_callbacks.D, "agree_each", lambda *codes: asked.append(codes[0]) or codes)

    def boom() -> None:
        asked.append("raised")
        raise ValueError("boom")

    learn = synth_learner(cbs=DistributedTrainer())
    with pytest.raises(ValueError, match="boom"):
        learn.validate(cbs=Callback(after_pred=boom))
    assert asked[-1] == "raised"  # (without the care: two more questions, at after_epoch and after_fit)


@pytest.fixture
def world_of_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A process group of one process, which the DistributedTrainer takes for a distributed run (standing in for 2)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(dist_callbacks.D, "is_distributed", lambda: True)
    try:
        yield
    finally:
        D.teardown()  # learnloop's own control group, if a fit made one; the process group is the test's
        torch.distributed.destroy_process_group()


class _FailingBackward(torch.autograd.Function):
    """The identity, whose backward raises RuntimeError(message): as DDP's gradient all-reduce does on a lost rank."""

    message = ""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(_FailingBackward.message)


@pytest.mark.parametrize(("message", "lost"), [
    ("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:925.", True),
    ("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete", True),
    ("Function MulBackward0 returned an invalid gradient at index 0", False),  # autograd's own: left as it is
])
def test_a_rank_lost_during_the_gradient_all_reduce_is_a_clear_error(
    tmp_path: Path, world_of_one: None, message: str, lost: bool
) -> None:
    # DDP's all-reduce runs inside the backward pass, past the trainer's question: a rank that raised or stalled after
    # it left the others with the backend's bare RuntimeError
    _FailingBackward.message = message
    learn = synth_learner(path=tmp_path, cbs=DistributedTrainer(),
                          loss_func=lambda pred, y: nn.functional.mse_loss(_FailingBackward.apply(pred), y))
    with pytest.raises(RuntimeError, match=message.split("[")[-1][:20]) as raised:
        learn.fit(1)
    assert isinstance(raised.value, DistributedError) == lost
    if lost:
        assert "lost the other ranks while all-reducing the gradients in the backward pass" in str(raised.value)
        assert "before_backward on one rank only" in str(raised.value) and "LEARNLOOP_DIST_TIMEOUT" in str(raised.value)


def test_sync_bn_on_the_cpu_is_refused_before_the_model_is_converted(tmp_path: Path, world_of_one: None) -> None:
    # DDP refuses SyncBatchNorm on the CPU; the conversion, which is permanent, must not have happened by then (the
    # model would then fail in every later fit, sync_bn or not).
    learn = worker.make_learner(8, tmp_path, cbs=DistributedTrainer(sync_bn=True))
    learn.model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    learn.logger = noop
    with pytest.raises(DistributedError, match="sync_bn=True .* GPUs only, but the model is on cpu"):
        learn.fit(1)
    assert type(learn.model[1]) is nn.BatchNorm1d


def test_validate_after_a_fit_that_raised_puts_the_fit_state_back(tmp_path: Path, world_of_one: None) -> None:
    # A fit that raised fires no after_fit: the trainer took the next validate() for one inside that fit, and left
    # learn.model the DDP wrapper and the DataLoaders this rank's copies after it.
    learn = worker.make_learner(8, tmp_path, cbs=DistributedTrainer())
    learn.logger = noop
    model, loaders = learn.model, list(learn.dls.loaders)

    def boom() -> None:
        if learn.training and learn.iter == 1:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        learn.fit(1, cbs=Callback(after_batch=boom))
    assert learn.model is not model  # the fit's state, left behind
    learn.validate()
    assert learn.model is model and learn.dls.loaders == loaders
    nested: list[Any] = []

    def validate_inside() -> None:
        if not nested:
            nested.append(None)
            nested.append(learn.validate())
            nested.append(learn.model)

    learn.fit(1, cbs=Callback(after_train=validate_inside))
    assert nested[2] is not model  # inside the fit, a validate() keeps the fit's state
    assert learn.model is model and learn.dls.loaders == loaders


@pytest.mark.parametrize(("n", "frozen"), [(1, [False, True, True]), (-5, [True, True, True])])
def test_resharding_carries_the_frozen_groups_over(n: int, frozen: list[bool]) -> None:
    from learnloop.fsdp import reshard_optimizer
    from learnloop.optimizer import SGD

    old = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    new = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    opt, new_opt = SGD([[p] for p in old], lr=0.1), SGD([[p] for p in new], lr=0.1)
    opt.freeze_to(n)  # -5 of 3 groups: none frozen (fastai's frozen_idx -2), not "all but the last 2"
    reshard_optimizer(opt, new_opt, old)
    assert [p.requires_grad for p in new] == frozen == [p.requires_grad for p in old]


def test_export_of_a_model_sharded_with_fsdp_is_refused_with_the_way_to_save_it(tmp_path: Path) -> None:
    # Rank 0 would write its own shard of every parameter (DTensors), which nothing can load as the model.
    from learnloop.fsdp import shard_model

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        learn = worker.make_learner(8, tmp_path)
        shard_model(learn.model)
        with pytest.raises(NotImplementedError, match="sharded with FSDP.*learn.save"):
            learn.export()
        assert not (tmp_path / "export.pkl").exists()
    finally:
        torch.distributed.destroy_process_group()


class TaggedLoader(DataLoader):  # type: ignore[type-arg]
    """A DataLoader subclass with an __iter__ of its own: it counts its batches in `read` and adds the scale."""

    def __init__(self, dataset: Any, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.scale, self.read = scale, [0]

    def __iter__(self) -> Iterator[Any]:
        for x, y in super().__iter__():
            self.read[0] += 1
            yield x, y * self.scale


def test_a_data_loader_subclass_keeps_its_own_iter_once_sharded(tmp_path: Path, world_of_one: None) -> None:
    # Each rank's copy was a plain torch DataLoader: the subclass's __iter__ (here: the targets scaled) was lost.
    learn = worker.make_learner(8, tmp_path, cbs=DistributedTrainer())
    learn.logger = noop
    train, valid = (TaggedLoader(dl.dataset, scale=0.0, batch_size=8, shuffle=i == 0)
                    for i, dl in enumerate(learn.dls.loaders))
    learn.dls = DataLoaders(train, valid, device="cpu")
    seen: list[torch.Tensor] = []
    learn.fit(1, cbs=Callback(before_batch=lambda: seen.append(learn.yb[0])))
    assert seen and all(not y.any() for y in seen)  # every target scaled to 0, training and validation batches
    assert train.read[0] == len(train) and valid.read[0] == len(valid)  # the copies counted in the originals' list

    class Required(TaggedLoader):
        def __init__(self, dataset: Any, scale: float, **kwargs: Any) -> None:
            super().__init__(dataset, scale, **kwargs)

    # A subclass whose own arguments have no default cannot be made again: refused, saying what to do
    with pytest.raises(DistributedError, match=r"training DataLoader is a .*Required, whose __init__ does not take "
                                               r"DataLoader's arguments \(missing a required argument: 'scale'\)"):
        shard_loader(Required(train.dataset, 2.0, batch_size=8), 0, 1, train=True)
