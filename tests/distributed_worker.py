"""The program tests/test_distributed.py runs under `torchrun --nproc_per_node=2` (and imports for reference runs).

`python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_worker.py SCENARIO OUT_DIR`
writes `OUT_DIR/<scenario>_rank<r>.json`; the learners' files go to `OUT_DIR/work`. Every file a rank
opens for writing under that folder is recorded (an audit hook), to check that only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learnloop import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    CheckpointCallback,
    CSVLogger,
    DataLoaders,
    DistributedTrainer,
    EarlyStoppingCallback,
    GradientAccumulation,
    Learner,
    NonFiniteLossWarning,
    SaveModelCallback,
    TensorBoardCallback,
    TerminateOnNaNCallback,
    mae,
    rmse,
)
from learnloop.callbacks.checkpointing import checkpoint_files
from learnloop.optimizer import SGD, Adam
from learnloop.resume import read_position

torch.set_num_threads(1)

N_TRAIN, N_VALID, GLOBAL_BS = 64, 17, 8  # 17 validation items: 9 and 8 (3 and 2 batches), nothing padded


def make_data(bs: int, shuffle: bool = False, index_feature: bool = False) -> DataLoaders:
    """A small regression problem; `index_feature` puts each item's index in its first feature."""
    g = torch.Generator().manual_seed(0)
    x_train, x_valid = torch.randn(N_TRAIN, 4, generator=g), torch.randn(N_VALID, 4, generator=g)
    if index_feature:
        x_train[:, 0] = torch.arange(N_TRAIN, dtype=torch.float32)
    w = torch.randn(4, 1, generator=g)
    return DataLoaders.from_tensors(x_train, x_train @ w, x_valid, x_valid @ w, bs=bs, shuffle=shuffle,
                                    drop_last=False, device="cpu", seed=0 if shuffle else None)


def make_learner(
    bs: int, path: Path, cbs: Any = None, metrics: Any = (mae, rmse), opt_func: Any = SGD, **kwargs: Any
) -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    lr = 0.05 if opt_func is SGD else 0.01
    return Learner(make_data(bs, **kwargs), model, loss_func=nn.MSELoss(), opt_func=opt_func, lr=lr,
                   metrics=list(metrics), cbs=cbs, path=path)


def split_batch(learn: Learner) -> Learner:
    """Under torchrun the learner has a DistributedTrainer (added by itself): the batch size is the global one."""
    trainer = getattr(learn, "distributed_trainer", None)
    if trainer is not None:
        trainer.split_batch = True
    return learn


def params(learn: Learner) -> list[float]:
    """Every parameter, flattened (an FSDP model's are gathered from the shards: call on every rank)."""
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in learn.model.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in full]).tolist()


class Record(Callback):
    """What each rank saw: the sampler's epoch, the items of each batch (index_feature data)."""

    order = 90

    def __init__(self) -> None:
        self.sampler_epochs: list[int] = []
        self.items: list[list[int]] = []

    def before_train(self) -> None:
        self.sampler_epochs.append(getattr(self.learn.dl.sampler, "epoch", -1))
        self.items.append([])

    def before_batch(self) -> None:
        if self.learn.training:
            self.items[-1] += self.learn.xb[0][:, 0].long().tolist()


class ValidateInside(Callback):
    """Calls learn.validate() from inside the fit, at the end of epoch 0."""

    order = 70

    def after_epoch(self) -> None:
        learn = self.learn
        if learn.epoch == 0 and learn.create_mbar and not hasattr(learn, "lr_finder"):
            with learn.removed_cbs(self):
                learn.nested = learn.validate()


class OnRank(Callback):
    """Runs `action(learn)` at one event of one batch, on one rank only."""

    order = -20

    def __init__(self, rank: int, event: str, epoch: int, it: int | None, action: Any, training: bool = True) -> None:
        self.rank, self.event, self.epoch, self.it, self.action = rank, event, epoch, it, action
        self.training_only = training
        setattr(self, event, self._maybe)

    def _maybe(self) -> None:
        learn = self.learn
        it = self.it is None or learn.iter == self.it  # None: any (before_train, where iter is the last phase's)
        if int(os.environ.get("RANK", 0)) == self.rank and learn.epoch == self.epoch and it:
            if learn.training == self.training_only:
                self.action(learn)


class LateOnRank(OnRank):
    """OnRank after the DistributedTrainer's events (order 4)."""

    order = 60


class CountValidationBatches(Callback):
    def __init__(self) -> None:
        self.n = 0

    def before_batch(self) -> None:
        self.n += not self.learn.training


def _set_nan(learn: Learner) -> None:
    learn.loss = torch.tensor(float("nan"))


def _non_finite(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, NonFiniteLossWarning)]


def _raise(exc: type[Exception]) -> Any:
    def action(learn: Learner) -> None:
        raise exc

    return action


def _boom(learn: Learner) -> None:
    raise ValueError("boom on rank 1")


def summary(learn: Learner) -> dict[str, Any]:
    rec = learn.recorder
    return {
        "values": rec.values,
        "losses": [float(t) for t in rec.losses],
        "lrs": rec.lrs,
        "iters": rec.iters,
        "train_iter": learn.train_iter,
        "params": params(learn),
        "model_type": type(learn.model).__name__,
    }


def run(scenario: str, out: Path) -> dict[str, Any]:
    work = out / "work"
    rank = int(os.environ.get("RANK", 0))
    per_rank_bs = GLOBAL_BS  # split_batch=True: each of the two ranks takes 4
    if scenario == "main":
        result: dict[str, Any] = {}
        record = Record()
        learn = make_learner(per_rank_bs, work, cbs=[CSVLogger(), SaveModelCallback(), record])
        split_batch(learn)
        learn.fit(3)
        result["fit"] = summary(learn)
        result["sampler_epochs"] = record.sampler_epochs
        result["validate"] = learn.validate()
        preds, targs = learn.get_preds()
        result["preds"], result["targs"] = preds.reshape(-1).tolist(), targs.reshape(-1).tolist()
        # get_preds (epoch 0 in its events) cancelled by rank 1 alone at its batch 1, then by rank 0 alone at its
        # batch 2 (of 3; rank 1 has 2): every rank keeps the batches before the cancel, the items one process
        # cancelled there gathers
        for cancel_rank, it in ((1, 1), (0, 2)):
            cancel = OnRank(cancel_rank, "before_batch", 0, it, _raise(CancelValidException), training=False)
            gathered = learn.get_preds(cbs=cancel, with_input=True, with_loss=True)
            result[f"cancelled_preds_{it}"] = [t.reshape(-1).tolist() for t in gathered]
        learn.save("final")
        result["loaded"] = params(learn.load("final"))

        # a rank-1-only early stopping: both ranks stop after epoch 1
        learn = make_learner(per_rank_bs, work, cbs=record)
        split_batch(learn)
        stop = EarlyStoppingCallback(comp=np.greater, patience=1)
        learn.fit(5, cbs=[stop] if rank == 1 else [])
        result["early_stop"] = summary(learn)

        # TerminateOnNaN sees a NaN loss on rank 1 only, in the middle of epoch 1
        learn = make_learner(per_rank_bs, work, cbs=[TerminateOnNaNCallback(), OnRank(1, "after_loss", 1, 3, _set_nan)])
        split_batch(learn)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learn.fit(3)
        result["nan_stop"], result["nan_stop_warned"] = summary(learn), _non_finite(caught)

        # without it, the NaN makes the epoch's train_loss nan on every rank: rank 0 alone warns of it
        learn = split_batch(make_learner(per_rank_bs, work, cbs=OnRank(1, "after_loss", 0, 3, _set_nan)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learn.fit(1)
        result["nan_epoch"], result["nan_epoch_warned"] = summary(learn), _non_finite(caught)

        # lr_find, then a one-cycle fit logging to TensorBoard that also calls validate() after its first epoch
        learn = split_batch(make_learner(per_rank_bs, work, cbs=[TensorBoardCallback(work / "tb"), ValidateInside()]))
        suggestion = learn.lr_find(num_it=20, show_plot=False)
        sweep = {"suggestion": list(suggestion), "losses": [float(t) for t in learn.recorder.losses]}
        learn.fit_one_cycle(2, 0.05)
        result["one_cycle"] = summary(learn) | sweep | {"nested": learn.nested, "hps": learn.recorder.hps}

        # rank 1 alone cancels the training phase of epoch 0 and the validation of epoch 1
        cbs = [OnRank(1, "after_batch", 0, 2, _raise(CancelTrainException)),
               OnRank(1, "before_batch", 1, 1, _raise(CancelValidException), training=False)]
        learn = split_batch(make_learner(per_rank_bs, work, cbs=cbs))
        learn.fit(3)
        result["phase_cancels"] = summary(learn)

        # rank 1 alone cancels training after the very first batch, while rank 0's next forward is the one in
        # which DDP rebuilds its gradient buckets (a collective of its own)
        cbs = [OnRank(1, "after_batch", 0, 0, _raise(CancelTrainException))]
        learn = split_batch(make_learner(per_rank_bs, work, cbs=cbs))
        learn.fit(2)
        result["first_batch_cancel"] = summary(learn)

        # rank 1 alone cancels the fit between the backward pass and the optimizer step of batch 2: no rank steps
        cbs = [OnRank(1, "after_backward", 0, 2, _raise(CancelFitException))]
        learn = split_batch(make_learner(per_rank_bs, work, cbs=cbs))
        learn.fit(2)
        result["step_cancel"] = summary(learn)

        # rank 1 alone cancels batch 2 after its step, then the training phase of epoch 1 after batch 3's: it skips
        # opt.zero_grad(), so the gradients carry into the next step, on every rank, as in one process
        for name, exc, epoch, it in (("batch", CancelBatchException, 0, 2), ("train", CancelTrainException, 0, 3)):
            learn = split_batch(make_learner(per_rank_bs, work, cbs=OnRank(1, "after_step", epoch, it, _raise(exc))))
            learn.fit(2)
            result[f"carried_{name}"] = summary(learn)

        # rank 1 alone cancels epoch 0 at the end of its training phase, after the trainer's after_train: no rank
        # runs a validation batch of epoch 0
        counter = CountValidationBatches()
        cbs = [LateOnRank(1, "after_train", 0, None, _raise(CancelEpochException)), counter]
        learn = split_batch(make_learner(per_rank_bs, work, cbs=cbs))
        learn.fit(2)
        result["epoch_cancel_after_train"] = summary(learn) | {"validation_batches": counter.n}

        # DDP told not to sync buffers: each rank keeps its own BatchNorm statistics after training, as under DDP
        bn_model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        learn = Learner(make_data(per_rank_bs), bn_model, loss_func=nn.MSELoss(), opt_func=SGD, lr=0.05, path=work,
                        cbs=DistributedTrainer(split_batch=True, broadcast_buffers=False))
        learn.fit(1)
        result["own_buffers"] = bn_model[1].running_mean.tolist()

        # gradient accumulation: DDP's all-reduce only on the batches that step
        calls: list[int] = []
        learn = make_learner(per_rank_bs, work, cbs=[GradientAccumulation(n_steps=2), CountAllReduce(calls)])
        split_batch(learn)
        learn.fit(2)
        result["accumulate"] = summary(learn) | {"allreduce_calls": len(calls), "batches": 2 * len(learn.dls.train)}

        # accumulation by samples: n_acc counts those of the global batch (each rank holds half of it), so both ranks
        # step where one process steps
        learn = split_batch(make_learner(per_rank_bs, work, cbs=GradientAccumulation(n_acc=3 * GLOBAL_BS)))
        learn.fit(2)
        result["accumulate_samples"] = summary(learn)

        # checkpoints inside the epochs, and a fit resumed from one in epoch 1: it ends as the fit it was saved from,
        # its smoothed losses and training metrics the job's (rank 0 saved its own, and both ranks carried on from
        # them)
        ckpt_work = work / "ckpt"
        learn = split_batch(make_learner(per_rank_bs, ckpt_work, cbs=CheckpointCallback(every_n_iters=3)))
        learn.recorder.train_metrics = True
        learn.fit(2)
        saved = [f for f in checkpoint_files(ckpt_work / "models" / "checkpoints") if "epoch1_batch" in f.name][0]
        resumed = split_batch(make_learner(per_rank_bs, ckpt_work, cbs=CheckpointCallback(every_n_iters=3)))
        resumed.recorder.train_metrics = True
        resumed.fit(2, resume=saved)
        result["checkpointed"], result["resumed"] = summary(learn), summary(resumed) | {"from": saved.name}

        # ... and with gradient accumulation: the end of epoch 0 (8 batches) falls in the middle of an accumulation of
        # 3, each rank's gradients its own until the step's all-reduce (rank 0 saved its own, which both resumed from)
        acc_work = work / "ckpt_acc"
        cbs = [CheckpointCallback(), GradientAccumulation(n_steps=3)]
        learn = split_batch(make_learner(per_rank_bs, acc_work, cbs=cbs))
        learn.fit(2)
        saved = checkpoint_files(acc_work / "models" / "checkpoints")[0]
        result["accumulating_from"] = [saved.name, read_position(saved).train_iter]
        cbs = [CheckpointCallback(), GradientAccumulation(n_steps=3)]
        resumed = split_batch(make_learner(per_rank_bs, acc_work, cbs=cbs))
        resumed.fit(2, resume=saved)
        result["accumulating"], result["resumed_accumulating"] = summary(learn), summary(resumed)

        # ... and with each rank reading its half of the items (no split_batch, the default): the checkpoint counts
        # the rank's 4 batches an epoch, the resume's check the 8 of the loader as built (it was refused)
        shard_work = work / "ckpt_shard"
        learn = make_learner(per_rank_bs, shard_work, cbs=CheckpointCallback(every_n_iters=3))
        learn.fit(2)
        saved = [f for f in checkpoint_files(shard_work / "models" / "checkpoints") if "epoch1_batch" in f.name][0]
        resumed = make_learner(per_rank_bs, shard_work, cbs=CheckpointCallback(every_n_iters=3))
        resumed.fit(2, resume=saved)
        result["shard_checkpointed"] = summary(learn) | {"batches": len(learn.dls.train)}
        result["shard_resumed"] = summary(resumed) | {"from": saved.name}

        # a rank's share of the training data with no full batch (12 items, 6 a rank, batches of 8 with drop_last;
        # one process reads one): every rank says so, where the fit trained nothing and said nothing
        x = torch.arange(48.0).reshape(12, 4)
        ds = torch.utils.data.TensorDataset(x, x[:, :1])
        loader = torch.utils.data.DataLoader(ds, batch_size=8, drop_last=True)
        learn = Learner(DataLoaders(loader, torch.utils.data.DataLoader(ds, batch_size=8), device="cpu"),
                        nn.Linear(4, 1), loss_func=nn.MSELoss(), path=work / "empty_share")
        try:
            learn.fit(1)
            result["empty_share"] = None
        except Exception as e:  # noqa: BLE001 - the test reads what it was
            result["empty_share"] = f"{type(e).__name__}: {e}"

        # shuffled training data: ranks read disjoint items, the same order on every rank, new each epoch (rank 0
        # also reads a batch of its own at the end of each epoch, which asks the other rank nothing)
        record = Record()
        peek = OnRank(0, "after_epoch", 0, None, lambda learn: next(iter(learn.dls.train)), training=False)
        learn = make_learner(per_rank_bs, work, cbs=[record, peek], shuffle=True, index_feature=True, metrics=())
        split_batch(learn)
        learn.fit(2)
        learn.fit(1)  # a second fit draws new orders, as in one process (not the first fit's again)
        result["shuffle"] = {"items": record.items, "sampler_epochs": record.sampler_epochs}

        # rank 1 alone cancels the training phase of epoch 1 before reading a batch, while rank 0 is about to
        # draw the epoch's order (a broadcast): both skip it
        cancel = OnRank(1, "before_train", 1, None, _raise(CancelTrainException))
        cancel.order = 10  # after the DistributedTrainer's before_train
        learn = make_learner(per_rank_bs, work, cbs=cancel, shuffle=True, metrics=())
        split_batch(learn)
        learn.fit(2)
        result["cancel_before_reading"] = summary(learn)

        # FSDP: the model sharded over the two ranks, checkpoints through torch.distributed.checkpoint
        fsdp_work = out / "fsdp"
        cbs = [DistributedTrainer(fsdp=True, split_batch=True), CSVLogger(), SaveModelCallback()]
        learn = make_learner(per_rank_bs, fsdp_work, cbs=cbs)
        learn.fit(3)
        fsdp: dict[str, Any] = {"fit": summary(learn), "validate": learn.validate()}
        preds, targs = learn.get_preds()
        fsdp["preds"], fsdp["targs"] = preds.reshape(-1).tolist(), targs.reshape(-1).tolist()
        learn.save("final")
        fresh = make_learner(per_rank_bs, fsdp_work, cbs=DistributedTrainer(fsdp=True, split_batch=True))
        fsdp["loaded"] = params(fresh.load("final"))
        # a DDP fit, then an FSDP one: the model is sharded and Adam's state moves onto the shards
        learn = split_batch(make_learner(per_rank_bs, fsdp_work, opt_func=Adam))
        learn.fit(1)
        with learn.distrib_ctx(fsdp=True, split_batch=True):
            learn.fit(1)
            fsdp["adam"] = params(learn)
        # a model you sharded yourself, under the DistributedTrainer the learner added by itself: trained as with
        # fsdp=True (it was wrapped in DDP, which failed on its sharded parameters)
        from learnloop.fsdp import shard_model

        learn = split_batch(make_learner(per_rank_bs, fsdp_work))
        shard_model(learn.model)
        learn.fit(1)
        fsdp["presharded"] = summary(learn)
        result["fsdp"] = fsdp
        return result
    if scenario == "error":
        learn = make_learner(per_rank_bs, work, cbs=OnRank(1, "after_batch", 0, 2, _boom))
        learn.fit(2)
        return {}
    if scenario == "ctx_timeout":
        # the learner set the process group up (LEARNLOOP_DIST_TIMEOUT=30); distrib_ctx's timeout bounds the block
        learn = make_learner(per_rank_bs, work, cbs=OnRank(1, "before_backward", 0, 1, lambda _: time.sleep(10)))
        with learn.distrib_ctx(timeout=2):
            learn.fit(1)
        return {}
    raise SystemExit(f"unknown scenario {scenario}")


class CountAllReduce(Callback):
    """Counts the gradient buckets DDP all-reduces (a comm hook around the default all-reduce)."""

    order = 5  # after DistributedTrainer has wrapped the model

    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def before_train(self) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        model = self.learn.model
        if self.learn.epoch == 0 and hasattr(model, "register_comm_hook"):
            def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects other annotations than its own
                self.calls.append(1)
                return allreduce_hook(state, bucket)

            model.register_comm_hook(None, hook)


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    written: list[str] = []
    watched = [str(out / "work") + os.sep, str(out / "fsdp") + os.sep]

    def audit(event: str, args: tuple[Any, ...]) -> None:
        path = str(args[0]) if args and isinstance(args[0], (str, os.PathLike)) else ""
        if not any(path.startswith(w) or path + os.sep == w for w in watched):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writes = isinstance(mode, str) and any(c in mode for c in "wax+")
            writes |= isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes:
                written.append(os.path.relpath(path, out))
        elif event in ("os.mkdir", "os.rename", "os.remove"):
            written.append(f"{event} {os.path.relpath(path, out)}")

    sys.addaudithook(audit)
    result = run(scenario, out)
    result["written"], result["pid"] = written, os.getpid()
    rank = int(os.environ.get("RANK", 0))
    (out / f"{scenario}_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
