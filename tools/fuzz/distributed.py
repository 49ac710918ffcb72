"""Fuzz learnloop's distributed training: a run on 2 CPU processes (torchrun, Gloo) must end as the same run in one
process over the same global batches.

Usage::

    python tools/fuzz/distributed.py --seeds 0:200 [--out results.jsonl] [--set FIELD=JSON ...] [--timeout S]

Each seed draws one configuration from ``random.Random(seed)`` (see ``draw``): a small MLP (with or without
BatchNorm, with or without a dropout whose masks come from a fixed seed and the training iteration, so that each
rank draws its rows of the mask one process draws for the global batch), a classification or regression task, a loss,
an optimizer (learnloop's SGD and Adam, or OptimWrapper over torch's SGD and AdamW), a fit policy (fit,
fit_one_cycle, fit_flat_cos, fine_tune), metrics (accuracy or mae by a function, an AvgMetric, an AvgLoss, a
whole-set AccumMetric such as rmse, a custom metric with ``total``/``count``, now and then one that keeps neither and
is reported per rank), training metrics or not, training data shuffled with the loader's own generator, with
torch's global one, or in order, with or without drop_last, a validation set whose size does not divide evenly by 2
x its batch size (in order or shuffled, dropping its last batch or not), trackers (SaveModelCallback,
EarlyStoppingCallback), CSVLogger, GradientAccumulation (n_steps or n_acc), a CheckpointCallback and a resume from
one of its checkpoints, and a callback that cancels a batch, the training phase, the validation phase, the epoch or
the fit at the same point on every rank. The DistributedTrainer (``split_batch=True``: the batch size is the global
one; or False: each rank's, and the reference's batches are twice as large) is the one a Learner adds by itself under
torchrun, one given in ``cbs``, or ``learn.distrib_ctx``.
After the fit: ``validate()``, ``get_preds`` (``with_input``, ``with_loss``, ``reorder``), ``learn.save``/``load``.

1. the reference: the scenario in this process (world size 1), its training loader reading the global batches the two
   ranks read together (rank 0's half, then rank 1's: the items a ``DistributedSampler`` gives each rank, shuffled
   from the seed drawn from the loader's generator each epoch, as DistributedTrainer draws it);
2. the same scenario under ``python -m torch.distributed.run --standalone --nproc_per_node=2`` (as docs/distributed.md
   tells users), each rank recording the files it opens for writing (an audit hook);
3. with probability ``fail``, a third run where rank 1 raises an error at a drawn batch event, in two processes
   launched with torchrun's environment variables but without torchrun (which would stop rank 0 itself): both must
   end within the timeout, rank 1 with its error and rank 0 with success or a DistributedError that says a rank
   was lost (never a hang, never a bare backend error).

Compared: the two ranks are identical to each other (weights, the Recorder's lists, every result); rank 0 is close
to the reference (``torch.allclose`` with rtol 1e-5 and atol 1e-6: DDP averages per-rank mean gradients of equal
halves, equal to the global mean up to float32 rounding, about 1e-7 relative per step, carried through at most a few
dozen steps; each seed records the largest difference seen in the weights, ``max_weight_diff``) in its weights, the
Recorder's values, losses, lrs and iters, the trackers' state, the training batches, steps and cancels it ran,
``validate()`` and ``get_preds`` (order, count: every item once; targets and inputs exactly), the files written
(the same names; rank 1 writes none; saved models close, CSV rows close) and the run resumed from a checkpoint.
Documented differences (docs/distributed.md): BatchNorm statistics are per rank (rank 0's are kept), a metric that
keeps neither ``total``/``count`` nor ``preds``/``targs`` is reported per rank, an evaluation loader is split in
dataset order (a shuffled one that drops its last batch evaluates the items of its first full batches, one process
a random subset), and a rank's share of the training data without a batch is a DistributedError (the reference,
which reads the ranks' batches one after the other, is then as empty: its ValueError). ``--set`` replaces fields of
every configuration, to narrow a difference down.

One JSON line per seed (``seed``, ``status``: same/documented/diff/error, ``first_diff``, ``documented``,
``max_weight_diff``, ``seconds``, ``config``) goes to ``--out`` (and stdout); a summary ends the run. One seed at a
time: each uses two processes. ``--rank`` is the torchrun worker's entry point, ``--fail-rank`` the failing run's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from resume import parse_seeds  # tools/fuzz/resume.py, beside this file
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import learnloop as ll
from learnloop import distributed as D
from learnloop.callback import noop
from learnloop.callbacks.checkpointing import checkpoint_files

Config = dict[str, Any]
SETTINGS: Config = {}  # --set: fields of every drawn configuration replaced (to narrow a difference down)
WORLD = 2
RTOL, ATOL = 1e-5, 1e-6
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------------------------------- configuration
def draw(seed: int) -> Config:
    """The configuration of `seed`: plain JSON values, so that each rank rebuilds the same run from the seed."""
    r = random.Random(seed)
    task = r.choice(["classif", "regress"])
    bs = 2 * r.randint(2, 6)  # the global batch: split between the two ranks
    valid_bs = 2 * r.randint(1, 5)
    n_valid = r.randint(3, 25)
    if n_valid % (WORLD * valid_bs) == 0:
        n_valid += 1  # a validation set that does not divide evenly by ranks x batch size
    batchnorm = r.random() < 0.25
    drop_last = r.random() < 0.3
    n_train = r.randint(bs + 1, 4 * bs)
    if batchnorm and (n_train % bs) in (1, 2):
        n_train += 2  # BatchNorm cannot train on one item per rank
    policy = r.choice(["fit", "fit", "fit_one_cycle", "fit_flat_cos", "fine_tune"])
    c: Config = {
        "seed": seed,
        "task": task,
        "loss": r.choice(["ce", "ce_flat", "label_smoothing"]) if task == "classif" else r.choice(["mse", "l1"]),
        "n_in": r.randint(3, 6),
        "hidden": r.randint(3, 8),
        "batchnorm": batchnorm,
        "dropout": r.choice([0.0, 0.0, 0.3]),
        "n_train": n_train,
        "n_valid": n_valid,
        "bs": bs,
        "valid_bs": valid_bs,
        "shuffle": r.choice([None, "generator", "generator", "global"]),
        "drop_last": drop_last,
        "valid_shuffle": r.random() < 0.2,
        "valid_drop_last": r.random() < 0.15,
        "opt": r.choice(["sgd", "sgd_mom", "adam", "torch_sgd", "torch_adamw"]),
        "wd": r.choice([None, 0.0, 0.01]),
        "policy": policy,
        "n_epoch": r.randint(1, 3),
        "lr": r.choice([1e-3, 1e-2, 3e-2]),
        "how": r.choice(["auto", "cbs", "ctx"]),  # where the DistributedTrainer comes from
        "metrics": r.sample(["basic", "avg_metric", "avg_loss", "whole_set", "total_count", "per_rank"],
                            r.choice([0, 1, 2, 3])),
        "train_metrics": r.random() < 0.25,
        "save_model": r.random() < 0.35,
        "save_every_epoch": r.random() < 0.3,
        "early_stopping": not batchnorm and r.random() < 0.25,  # its decisions would follow per-rank statistics
        "patience": r.choice([0, 1]),
        "csv": r.random() < 0.35,
        "grad_acc": r.choice([None, None, None, "n_steps", "n_acc"]),
        "acc_k": r.choice([2, 3]),
        "checkpoint": r.random() < 0.4,
        "every_n_iters": r.choice([None, None, 2]),
        "resume_at": r.random(),  # which checkpoint the resumed run starts from
        "cancel": r.choice([None, None, "batch", "train", "valid", "epoch", "fit"]),
        "cancel_event": r.choice(["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
                                  "before_step", "after_step", "after_batch"]),
        "cancel_epoch": r.randint(0, 2),
        "cancel_iter": r.randint(0, 3),
        "with_input": r.random() < 0.5,
        "with_loss": r.random() < 0.5,
        "reorder": r.random() < 0.7,
        "fail": r.random() < 0.15,
        "fail_phase": r.choice(["train", "train", "valid"]),
        "fail_event": r.choice(["before_batch", "after_pred", "after_loss", "after_backward", "after_step",
                                "after_batch"]),
        "fail_epoch": r.randint(0, 1),
        "fail_iter": r.randint(0, 2),
        # the DataLoaders' bs is the global batch (split between the ranks), or each rank's (fastai's rule)
        "split_batch": r.random() < 0.75,
    }
    if policy == "fine_tune":
        c["n_epoch"] = min(c["n_epoch"], 2)
    c.update(SETTINGS)
    return c


# ---------------------------------------------------------------------------------------------------- the scenario
class FixedDropout(nn.Module):
    """Dropout whose mask for the global batch comes from a fixed seed and the training iteration (``step``, set by
    :class:`Steps`); each rank applies its rows of it (rank 0 the first half, rank 1 the second), so two ranks drop
    what one process drops from the same global batch."""

    def __init__(self, p: float, seed: int) -> None:
        super().__init__()
        self.p, self.seed, self.step = p, seed, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        n, world = x.shape[0], D.world_size()
        keep = torch.rand((n * world, *x.shape[1:]), generator=g) >= self.p
        part = keep[D.rank() * n:(D.rank() + 1) * n]
        return x * part / (1 - self.p)


class GlobalBatches(Sampler[list[int]]):
    """The reference's training batches: each is rank 0's batch then rank 1's, of the samplers DistributedTrainer
    gives them (a DistributedSampler, shuffled with a seed drawn from `generator` each epoch when `shuffle`)."""

    def __init__(self, dataset: Any, rank_bs: int, drop_last: bool, shuffle: bool,
                 generator: torch.Generator | None) -> None:
        self.dataset, self.rank_bs, self.drop_last, self.shuffle, self.generator = (
            dataset, rank_bs, drop_last, shuffle, generator)
        self.epoch = 0  # set by Steps at before_train, as DistributedTrainer sets the samplers'

    def _per_rank(self) -> int:
        return math.ceil(len(self.dataset) / WORLD)

    def __len__(self) -> int:
        m = self._per_rank()
        return m // self.rank_bs if self.drop_last else math.ceil(m / self.rank_bs)

    def __iter__(self) -> Iterator[list[int]]:
        seed = 0
        if self.shuffle:
            seed = int(torch.randint(0, 2**31 - 1, (), generator=self.generator).item())
        shares = []
        for rank in range(WORLD):
            sampler = DistributedSampler(self.dataset, WORLD, rank, shuffle=self.shuffle, seed=seed)
            sampler.set_epoch(self.epoch)
            shares.append(list(sampler))
        for i in range(len(self)):
            yield [j for share in shares for j in share[i * self.rank_bs:(i + 1) * self.rank_bs]]


class Steps(ll.Callback):
    """Gives FixedDropout the training iteration and GlobalBatches the epoch; counts what ran (training batches,
    optimizer steps, cancels) and the events at which the scenario's cancel or failure is raised."""

    order = -20

    def __init__(self, c: Config, fail: bool = False) -> None:
        self.c, self.fail = c, fail
        self.counts = {"train_batches": 0, "steps": 0, "epochs": 0, "cancel_batch": 0, "cancel_train": 0,
                       "cancel_valid": 0, "cancel_epoch": 0, "cancel_fit": 0}
        self._valid_iter = 0

    def before_train(self) -> None:
        bs = getattr(getattr(self.learn.dl, "batch_sampler", None), "epoch", None)
        if bs is not None:
            self.learn.dl.batch_sampler.epoch = self.learn.epoch

    def before_validate(self) -> None:
        self._valid_iter = 0

    def _point(self, event: str) -> None:
        c, learn = self.c, self.learn
        if learn._nested_run:
            return
        it = learn.iter
        if self.fail:
            phase = "train" if learn.training else "valid"
            if (D.rank() == 1 and (phase, event, learn.epoch, it) ==
                    (c["fail_phase"], c["fail_event"], c["fail_epoch"], c["fail_iter"])):
                raise ValueError(f"fuzz: boom on rank 1 at {phase} {event} epoch {learn.epoch} batch {it}")
            return
        kind = c["cancel"]
        if kind is None or event != c["cancel_event"] or learn.epoch != c["cancel_epoch"] or it != c["cancel_iter"]:
            return
        if kind == "valid":
            if not learn.training and event in ("before_batch", "after_pred", "after_loss", "after_batch"):
                raise ll.CancelValidException()
            return
        if not learn.training:
            return
        exc = {"batch": ll.CancelBatchException, "train": ll.CancelTrainException, "epoch": ll.CancelEpochException,
               "fit": ll.CancelFitException}[kind]
        raise exc()

    def before_batch(self) -> None:
        if self.learn.training:
            for m in self.learn.model.modules():
                if isinstance(m, FixedDropout):
                    m.step = self.learn.train_iter
        self._point("before_batch")

    def after_pred(self) -> None:
        self._point("after_pred")

    def after_loss(self) -> None:
        self._point("after_loss")

    def before_backward(self) -> None:
        self._point("before_backward")

    def after_backward(self) -> None:
        self._point("after_backward")

    def before_step(self) -> None:
        self._point("before_step")

    def after_step(self) -> None:
        if not self.learn._nested_run:
            self.counts["steps"] += 1
        self._point("after_step")

    def after_batch(self) -> None:
        if self.learn.training and not self.learn._nested_run:
            self.counts["train_batches"] += 1
        self._point("after_batch")

    def after_epoch(self) -> None:
        if not self.learn._nested_run:
            self.counts["epochs"] += 1

    def after_cancel_batch(self) -> None:
        self.counts["cancel_batch"] += 1

    def after_cancel_train(self) -> None:
        self.counts["cancel_train"] += 1

    def after_cancel_validate(self) -> None:
        self.counts["cancel_valid"] += 1

    def after_cancel_epoch(self) -> None:
        self.counts["cancel_epoch"] += 1

    def after_cancel_fit(self) -> None:
        self.counts["cancel_fit"] += 1


def mean_abs_pred(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """An AvgMetric's function: the mean absolute output."""
    return pred.abs().mean()


def whole_set_accuracy(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """A whole-set AccumMetric's function (predictions already argmaxed)."""
    return (pred == targ).float().mean()


class SquaredTotal(ll.Metric):
    """A custom average kept as ``total``/``count`` (learnloop sums them over ranks): the mean squared output."""

    def reset(self) -> None:
        self.total, self.count = torch.zeros(()), 0

    def accumulate(self, learn: Any) -> None:
        self.total = self.total + learn.pred.detach().float().pow(2).sum() / learn.pred.shape[-1]
        self.count += learn.pred.shape[0]

    @property
    def value(self) -> Any:
        return self.total / self.count if self.count else None


class LastBatch(ll.Metric):
    """A metric that keeps neither ``total``/``count`` nor ``preds``/``targs``: reported per rank, with a warning."""

    def reset(self) -> None:
        self.last: float | None = None

    def accumulate(self, learn: Any) -> None:
        self.last = float(learn.pred.detach().float().mean())

    @property
    def value(self) -> Any:
        return self.last


def make_metrics(c: Config) -> list[Any]:
    classif = c["task"] == "classif"
    out: list[Any] = []
    for name in c["metrics"]:
        if name == "basic":
            out.append(ll.accuracy if classif else ll.mae)
        elif name == "avg_metric":
            out.append(ll.AvgMetric(mean_abs_pred))
        elif name == "avg_loss":
            out.append(ll.AvgLoss())
        elif name == "whole_set":
            out.append(ll.AccumMetric(whole_set_accuracy, dim_argmax=-1) if classif else ll.rmse)
        elif name == "total_count":
            out.append(SquaredTotal())
        else:
            out.append(LastBatch())
    return out


def make_dls(c: Config, reference: bool) -> ll.DataLoaders:
    g = torch.Generator().manual_seed(c["seed"])
    x_train, x_valid = torch.randn(c["n_train"], c["n_in"], generator=g), torch.randn(c["n_valid"], c["n_in"],
                                                                                       generator=g)
    w = torch.randn(c["n_in"], 3, generator=g)
    if c["task"] == "classif":
        y_train, y_valid = (x_train @ w).argmax(1), (x_valid @ w).argmax(1)
    else:
        y_train, y_valid = x_train @ w[:, :1], x_valid @ w[:, :1]
    train_ds, valid_ds = TensorDataset(x_train, y_train), TensorDataset(x_valid, y_valid)
    own = torch.Generator().manual_seed(c["seed"] + 1) if c["shuffle"] == "generator" else None
    train: DataLoader[Any]
    if reference:
        rank_bs = c["bs"] // WORLD if c["split_batch"] else c["bs"]
        batches = GlobalBatches(train_ds, rank_bs, c["drop_last"], c["shuffle"] is not None, own)
        train = DataLoader(train_ds, batch_sampler=batches, generator=own)
    else:
        train = DataLoader(train_ds, batch_size=c["bs"], shuffle=c["shuffle"] is not None, generator=own,
                           drop_last=c["drop_last"])
    valid_g = torch.Generator().manual_seed(c["seed"] + 2) if c["valid_shuffle"] else None
    valid = DataLoader(valid_ds, batch_size=c["valid_bs"], shuffle=c["valid_shuffle"], generator=valid_g,
                       drop_last=c["valid_drop_last"])
    return ll.DataLoaders(train, valid, device="cpu")


def make_model(c: Config) -> nn.Sequential:
    h = c["hidden"]
    body: list[nn.Module] = [nn.Linear(c["n_in"], h)] + ([nn.BatchNorm1d(h)] if c["batchnorm"] else []) + [nn.ReLU()]
    if c["dropout"]:
        body.append(FixedDropout(c["dropout"], c["seed"]))
    return nn.Sequential(nn.Sequential(*body), nn.Linear(h, 3 if c["task"] == "classif" else 1))


def two_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    body, head = model.children()
    return [list(body.parameters()), list(head.parameters())]


def make_loss(c: Config) -> Any:
    return {"ce": nn.CrossEntropyLoss(), "ce_flat": ll.CrossEntropyLossFlat(),
            "label_smoothing": ll.LabelSmoothingCrossEntropy(), "mse": nn.MSELoss(), "l1": nn.L1Loss()}[c["loss"]]


def make_opt_func(c: Config) -> Any:
    name = c["opt"]
    if name == "torch_sgd":
        return partial(ll.OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9))
    if name == "torch_adamw":
        return partial(ll.OptimWrapper, opt=torch.optim.AdamW)
    return {"sgd": ll.SGD, "sgd_mom": partial(ll.SGD, mom=0.9), "adam": ll.Adam}[name]


def build(c: Config, folder: Path, reference: bool, fail: bool = False) -> tuple[ll.Learner, Steps]:
    """The learner of `c` in `folder` (the reference's loaders when `reference`) and its counting callback."""
    torch.manual_seed(c["seed"])
    np.random.seed(c["seed"])
    random.seed(c["seed"])
    steps = Steps(c, fail)
    cbs: list[ll.Callback] = [steps]
    if c["how"] == "cbs" and not reference:
        cbs.append(ll.DistributedTrainer(split_batch=c["split_batch"]))
    if c["grad_acc"] == "n_steps":
        cbs.append(ll.GradientAccumulation(n_steps=c["acc_k"]))
    elif c["grad_acc"] == "n_acc":  # without split_batch each rank counts its own samples: half the reference's
        per_rank = 1 if c["split_batch"] or not reference else WORLD
        cbs.append(ll.GradientAccumulation(n_acc=c["bs"] * c["acc_k"] * per_rank))
    if c["save_model"]:
        cbs.append(ll.SaveModelCallback(fname="best", every_epoch=c["save_every_epoch"], with_opt=c["seed"] % 2 == 0))
    if c["early_stopping"]:
        cbs.append(ll.EarlyStoppingCallback(patience=c["patience"]))
    if c["csv"]:
        cbs.append(ll.CSVLogger())
    if c["checkpoint"]:
        cbs.append(ll.CheckpointCallback(every_n_iters=c["every_n_iters"], keep_last=None))
    learn = ll.Learner(make_dls(c, reference), make_model(c), loss_func=make_loss(c), opt_func=make_opt_func(c),
                       lr=c["lr"], splitter=two_groups if c["policy"] == "fine_tune" else ll.trainable_params,
                       metrics=make_metrics(c), cbs=cbs, path=folder, wd=c["wd"])
    learn.logger = noop
    learn.remove_cb(ll.ProgressCallback)
    learn.recorder.train_metrics = c["train_metrics"]
    if c["how"] == "auto" and not reference:
        learn.distributed_trainer.split_batch = c["split_batch"]
    return learn, steps


def trainer_ctx(c: Config, learn: ll.Learner) -> contextlib.AbstractContextManager[Any]:
    """``learn.distrib_ctx(split_batch=...)`` when the configuration says so (a no-op in one process)."""
    return learn.distrib_ctx(split_batch=c["split_batch"]) if c["how"] == "ctx" else contextlib.nullcontext()


def fit(c: Config, learn: ll.Learner, resume: str | Path | None = None) -> None:
    n, lr, policy = c["n_epoch"], c["lr"], c["policy"]
    if policy == "fit":
        learn.fit(n, lr, resume=resume)
    elif policy == "fit_one_cycle":
        learn.fit_one_cycle(n, lr, resume=resume)
    elif policy == "fit_flat_cos":
        learn.fit_flat_cos(n, lr, resume=resume)
    else:
        learn.fine_tune(n, lr, freeze_epochs=1, resume=resume)


def snapshot(learn: ll.Learner, steps: Steps, c: Config) -> dict[str, Any]:
    """What the fit ended with, as plain values and tensors."""
    rec = learn.recorder
    out: dict[str, Any] = {
        "model": {k: v.detach().clone() for k, v in D.unwrap_model(learn.model).state_dict().items()},
        "recorder": {"metric_names": list(rec.metric_names), "values": rec.values,
                     "losses": [float(x) for x in rec.losses], "lrs": rec.lrs, "iters": rec.iters},
        "loop": {"epoch": learn.epoch, "train_iter": learn.train_iter},
        "counts": dict(steps.counts),
    }
    for cb in learn.cbs:
        if isinstance(cb, (ll.SaveModelCallback, ll.EarlyStoppingCallback)):
            out[type(cb).__name__] = {"best": float(cb.best), "wait": getattr(cb, "wait", None)}
    return out


def scenario(c: Config, folder: Path, reference: bool) -> dict[str, Any]:
    """Run `c` in `folder`: the fit, validate(), get_preds(), save/load and a resume; what each gave."""
    result: dict[str, Any] = {}
    learn, steps = build(c, folder, reference)
    try:
        with trainer_ctx(c, learn), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(c, learn)
            result["fit"] = snapshot(learn, steps, c)
            result["warnings"] = sorted({type(w.message).__name__ for w in caught})
            result["metric_names"] = [m.name for m in learn.metrics]
            result["validate"] = list(learn.validate())
            preds = learn.get_preds(with_input=c["with_input"], with_loss=c["with_loss"], reorder=c["reorder"])
            result["preds"] = list(preds)
            learn.save("final")
            learn.load("final")
            result["loaded"] = {k: v.clone() for k, v in learn.model.state_dict().items()}
        files = checkpoint_files(folder / "models" / "checkpoints")
        if files:
            file = files[min(int(c["resume_at"] * len(files)), len(files) - 1)]
            result["resume_from"] = file.name
            learn2, steps2 = build(c, folder, reference)
            with trainer_ctx(c, learn2):
                fit(c, learn2, resume=file)
                result["resumed"] = snapshot(learn2, steps2, c)
    except Exception as e:  # noqa: BLE001 - an error is compared too: both runs must raise the same
        result["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        result["traceback"] = traceback.format_exc()[-2000:]
    return result


def listing(folder: Path) -> dict[str, Any]:
    """The files under `folder`: saved models loaded, CSV rows without their time column, checkpoints by name."""
    out: dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(folder))
        if "checkpoints" in p.parts:
            out[rel] = "checkpoint"
        elif p.suffix == ".pth":
            state = torch.load(p, weights_only=True)
            out[rel] = state.get("model", state) if isinstance(state, dict) and "model" in state else state
        elif p.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(p.read_text())))
            out[rel] = [[_number(x) for x in row[:-1]] for row in rows]
        else:
            out[rel] = "file"
    return out


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


# ---------------------------------------------------------------------------------------------------- the workers
def rank_main(spec: Config) -> None:
    """A torchrun worker: run the scenario, record the files this rank opened for writing, save what it gave."""
    torch.set_num_threads(1)
    SETTINGS.update(spec["set"])
    c, folder, out = draw(spec["seed"]), Path(spec["folder"]), Path(spec["out"])
    written: list[str] = []
    watched = str(folder) + os.sep

    def audit(event: str, args: tuple[Any, ...]) -> None:
        path = str(args[0]) if args and isinstance(args[0], (str, os.PathLike)) else ""
        if not (path + os.sep).startswith(watched):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writes = isinstance(mode, str) and any(ch in mode for ch in "wax+")
            writes |= isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes:
                written.append(os.path.relpath(path, folder))
        elif event in ("os.mkdir", "os.rename", "os.remove"):
            written.append(f"{event} {os.path.relpath(path, folder)}")

    sys.addaudithook(audit)
    with contextlib.redirect_stdout(io.StringIO()):
        result = scenario(c, folder, reference=False)
    result["written"] = written
    torch.save(result, out / f"rank{D.rank()}.pt")


def fail_main(spec: Config) -> None:
    """A worker of the failing run: rank 1 raises at the drawn point."""
    torch.set_num_threads(1)
    SETTINGS.update(spec["set"])
    c, folder = draw(spec["seed"]), Path(spec["folder"])
    learn, _ = build(c, folder, reference=False, fail=True)
    with contextlib.redirect_stdout(io.StringIO()), trainer_ctx(c, learn):
        fit(c, learn)
        learn.validate()
        learn.get_preds()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("TORCHELASTIC")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_torchrun(spec: Config, root: Path, timeout: float) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", __file__,
           "--rank", json.dumps(spec)]
    proc = subprocess.run(cmd, env=_env(LEARNLOOP_DIST_TIMEOUT=str(int(timeout / 2))), capture_output=True,
                          text=True, timeout=timeout, cwd=root)
    return proc.returncode, proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_failing(spec: Config, root: Path, timeout: float) -> str | None:
    """Two processes launched with torchrun's variables, rank 1 failing: None when both end as they should."""
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        env = _env(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, LEARNLOOP_DIST_TIMEOUT=str(int(timeout / 3)))
        err = open(root / f"fail_rank{rank}.txt", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen([sys.executable, __file__, "--fail-rank", json.dumps(spec)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=err, cwd=root), err))
    start = time.monotonic()
    try:
        for proc, _ in procs:
            proc.wait(max(1.0, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        for proc, _ in procs:
            proc.kill()
        return f"hang: a rank was still running {timeout:.0f} s after rank 1 failed"
    finally:
        for proc, err in procs:
            proc.wait()
            err.close()
    logs = [(root / f"fail_rank{r}.txt").read_text(errors="replace") for r in range(WORLD)]
    codes = [proc.returncode for proc, _ in procs]
    if "fuzz: boom on rank 1" not in logs[1]:
        if codes[1] == 0:
            return None  # the drawn point was never reached (a cancel, a short fit): nothing failed
        return f"rank 1 ended (exit {codes[1]}) without its error: {_tail(logs[1])}"
    if codes[1] == 0:
        return "rank 1 raised but exited 0"
    if codes[0] != 0 and "DistributedError" not in logs[0]:
        return f"rank 0 ended (exit {codes[0]}) without a DistributedError: {_tail(logs[0])}"
    return None


def _tail(log: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return " | ".join(lines[-2:])[:400]


# ---------------------------------------------------------------------------------------------------- comparison
def close_diff(a: Any, b: Any, where: str = "", exact: bool = False) -> str | None:
    """Where `a` (the reference) and `b` first differ, numbers within RTOL/ATOL unless `exact`; or None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if not a.is_floating_point() or exact:
            return None if torch.equal(a, b) else f"{where}: tensors differ"
        if torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL, equal_nan=True):
            return None
        return f"{where}: tensors differ by up to {(a.double() - b.double()).abs().nan_to_num(math.inf).max():.3g}"
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)} vs {list(b)}"
        return next((d for k in a if (d := close_diff(a[k], b[k], f"{where}.{k}", exact)) is not None), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        pairs = enumerate(zip(a, b, strict=True))
        return next((d for i, (x, y) in pairs if (d := close_diff(x, y, f"{where}[{i}]", exact)) is not None), None)
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b) or a == b or not exact and math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL):
            return None
        return f"{where}: {a!r} vs {b!r}"
    return None if type(a) is type(b) and a == b else f"{where}: {a!r} vs {b!r}"


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    diffs = [float((a[k].double() - b[k].double()).abs().max()) for k in a
             if k in b and a[k].is_floating_point() and a[k].shape == b[k].shape and a[k].numel()]
    return max(diffs, default=0.0)


def structure(x: Any) -> Any:
    """`x` with every float and floating tensor replaced by its type and shape: what a run whose numbers differ by
    design (BatchNorm's statistics per rank) must still share with the reference."""
    if isinstance(x, torch.Tensor):
        return f"tensor{list(x.shape)}" if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: structure(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [structure(v) for v in x]
    return "float" if isinstance(x, float) else x


def mask_per_rank(result: dict[str, Any], files: dict[str, Any]) -> None:
    """Blank, in place, the columns of the metrics reported per rank (LastBatch) in the Recorder's values and the CSV
    log: docs/distributed.md says such a metric is not combined over ranks."""
    for key in ("fit", "resumed"):
        rec = result.get(key, {}).get("recorder")
        if rec is None:
            continue
        cols = [i - 1 for i, name in enumerate(rec["metric_names"]) if name.endswith("last_batch")]
        rec["values"] = [[None if j in cols else v for j, v in enumerate(row)] for row in rec["values"]]
    if "validate" in result:  # [valid_loss, *metrics]
        cols = [i + 1 for i, name in enumerate(result["metric_names"]) if name.endswith("last_batch")]
        result["validate"] = [None if j in cols else v for j, v in enumerate(result["validate"])]
    for name, rows in files.items():
        if name.endswith(".csv") and rows:
            cols = [i for i, col in enumerate(rows[0]) if isinstance(col, str) and col.endswith("last_batch")]
            files[name] = [[None if j in cols else v for j, v in enumerate(row)] for row in rows]


def compare(c: Config, ref: dict[str, Any], ranks: list[dict[str, Any]], ref_files: dict[str, Any],
            dist_files: dict[str, Any]) -> tuple[str | None, str | None]:
    """The first difference between the two ranks, or between rank 0 and the reference, or None; and the documented
    difference that explains it (None when none does)."""
    diff = _compare(ref, ranks, ref_files, dist_files)
    if diff is None:
        return None, None
    errors = [str(r.get("error") or "") for r in (ref, *ranks)]
    if errors[0].startswith("ValueError: The training DataLoader is empty") and all(
        e.startswith("DistributedError: This rank's share of the training data yields no batch") for e in errors[1:]
    ):  # the reference reads the ranks' batches one after the other, so its loader is as empty as a share
        return diff, "a rank's share of the training data without a batch is refused on every rank"
    if "per_rank" in c["metrics"]:  # reported per rank: each rank's own value (rank 0's in the files)
        for result, files in ((ref, ref_files), *((r, {}) for r in ranks), ({}, dist_files)):
            mask_per_rank(result, files)
        if (d := _compare(ref, ranks, ref_files, dist_files)) is None:
            return diff, "a metric with neither total/count nor preds/targs is reported per rank"
        diff = d
    if c["valid_shuffle"] and c["valid_drop_last"] and not diff.startswith("rank 0 vs rank 1"):
        return diff, "a shuffled evaluation loader is split in dataset order: with drop_last, other items are evaluated"
    if c["batchnorm"] and not diff.startswith("rank 0 vs rank 1"):  # the ranks agree on rank 0's statistics
        shaped = _compare(structure(ref), [structure(r) for r in ranks], structure(ref_files),
                          structure(dist_files))
        if shaped is None:
            return diff, "BatchNorm statistics are per rank"
        return shaped, None
    return diff, None


def _compare(ref: dict[str, Any], ranks: list[dict[str, Any]], ref_files: dict[str, Any],
             dist_files: dict[str, Any]) -> str | None:
    r0, r1 = ranks
    if r1["written"]:
        return f"rank 1 wrote files: {r1['written'][:3]}"
    keys = ("error", "fit", "validate", "preds", "loaded", "resume_from", "resumed")
    for key in keys:
        if (d := close_diff(r0.get(key), r1.get(key), f"rank 0 vs rank 1: {key}", exact=True)) is not None:
            return d
    for key in keys:
        if (d := close_diff(ref.get(key), r0.get(key), key)) is not None:
            return d
    if (d := close_diff(sorted(ref_files), sorted(dist_files), "file names")) is not None:
        return d
    return close_diff(ref_files, dist_files, "files")


# ---------------------------------------------------------------------------------------------------- one seed
def fuzz_seed(seed: int, timeout: float) -> dict[str, Any]:
    """Run every check of `seed`; its result line."""
    torch.set_num_threads(1)
    c = draw(seed)
    result: dict[str, Any] = {"seed": seed, "status": "same", "first_diff": None}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz_dist_{seed}_") as tmp:
        root = Path(tmp)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                diff = check(c, root, result, timeout)
        except Exception as e:  # noqa: BLE001 - a crash is a finding, reported as such
            result["status"] = "error"
            result["first_diff"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            result["traceback"] = traceback.format_exc()[-2000:]
        else:
            if diff is not None:
                result["status"], result["first_diff"] = "diff", diff
                if (kind := result.pop("documented_kind", None)) is not None:
                    result["status"], result["documented"] = "documented", kind
    result["seconds"] = round(time.monotonic() - start, 2)
    result["config"] = c
    return result


def check(c: Config, root: Path, result: dict[str, Any], timeout: float) -> str | None:
    (root / "ref").mkdir()
    ref = scenario(c, root / "ref", reference=True)
    ref_files = listing(root / "ref")
    out = root / "out"
    out.mkdir()
    (root / "dist").mkdir()
    spec = {"seed": c["seed"], "set": SETTINGS, "folder": str(root / "dist"), "out": str(out)}
    try:
        code, log = run_torchrun(spec, root, timeout)
    except subprocess.TimeoutExpired:
        return f"hang: torchrun still running after {timeout:.0f} s"
    if code != 0 or not all((out / f"rank{r}.pt").exists() for r in range(WORLD)):
        raise RuntimeError(f"torchrun failed (exit {code}): {_tail(log)}")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    if "fit" in ref and "fit" in ranks[0]:
        result["max_weight_diff"] = max_weight_diff(ref["fit"]["model"], ranks[0]["fit"]["model"])
    if "error" in ref:
        result["ref_error"] = ref["error"]
    diff, kind = compare(c, ref, ranks, ref_files, listing(root / "dist"))
    if kind is not None:
        result["documented_kind"] = kind
    if diff is None and c["fail"]:
        (root / "fail").mkdir()
        fail_spec = {"seed": c["seed"], "set": SETTINGS, "folder": str(root / "fail")}
        diff = run_failing(fail_spec, root, timeout)
        result["fail_checked"] = True
    return diff


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0:20", help="a range lo:hi (hi excluded), or one seed")
    parser.add_argument("--out", type=Path, default=None, help="a JSON-lines file for the results")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="replace fields of every drawn configuration: --set batchnorm=false cancel='\"epoch\"'")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a 2-process run may take")
    parser.add_argument("--rank", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fail-rank", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(json.loads(args.rank))
        return 0
    if args.fail_rank is not None:
        fail_main(json.loads(args.fail_rank))
        return 0
    SETTINGS.update({field: json.loads(value) for field, _, value in (s.partition("=") for s in args.set)})
    seeds = parse_seeds(args.seeds)
    counts = {"same": 0, "documented": 0, "diff": 0, "error": 0}
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - written line by line as seeds finish
    for seed in seeds:
        result = fuzz_seed(seed, args.timeout)
        counts[result["status"]] += 1
        print(json.dumps({k: result.get(k) for k in ("seed", "status", "first_diff", "documented", "seconds")}),
              flush=True)
        if out is not None:
            out.write(json.dumps(result) + "\n")
            out.flush()
    if out is not None:
        out.close()
    print(f"summary: {len(seeds)} seeds, {counts['same']} same, {counts['documented']} documented differences, "
          f"{counts['diff']} differ, {counts['error']} errors", flush=True)
    return 0 if counts["diff"] == counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
