"""Fuzz learnloop's exact resume: a checkpointed run, stopped anywhere and resumed, must end bit for bit as the run
that was never stopped.

Usage::

    python tools/fuzz/resume.py --seeds 0:500 [--procs N] [--out results.jsonl] [--set FIELD=JSON ...]

Each seed draws one configuration from ``random.Random(seed)`` (see ``draw`` and ``draw_more``): a small model
(Linear, Conv1d or Conv2d, BatchNorm, Dropout), synthetic data (a shuffled training loader with or without its own
generator, a RandomSampler or WeightedRandomSampler, drop_last or a partial last batch, now and then a worker process,
persistent or not, and a random augmentation drawn as items load; a validation loader in order or shuffled, with or
without its own generator), an optimizer (SGD, Adam, RMSProp, Lamb, Lookahead, ranger, OptimWrapper over torch.optim),
a fit policy (fit, fit_one_cycle, fit_flat_cos, fit_sgdr, fine_tune), callbacks (MixUp or CutMix,
GradientAccumulation, GradientClip, EMACallback, MixedPrecision in bf16 or fp16, a ParamScheduler of combined
schedules, up to three trackers: EarlyStopping, SaveModel with every_epoch/at_end, ReduceLROnPlateau, on valid_loss or
a metric; CSVLogger with or without append; metrics, a torchmetrics-style one among them; a callback calling
validate() or get_preds() at an event of every epoch) and checkpoints every epoch and/or every n batches. Then:

1. the reference: the whole run, checkpointed, without a stop (and once without checkpoints: it must be the same);
   at each checkpoint the files the callbacks wrote (CSV log, saved models) are copied aside, as a crash would have
   left them;
2. in this process, a resume from every checkpoint, each in a folder holding those files; and one from the oldest
   checkpoint among the files the whole run left (a script run again);
3. in a fresh process (a subprocess), a resume from one checkpoint, which a real SIGINT (Ctrl-C) stops further on:
   at an event (before_batch ... after_batch) of a training or validation batch, at an event of an epoch
   (before_epoch ... after_epoch: between batches, in validation, at its end), or at the end of the fit (after the
   last epoch); this process then resumes, with ``resume='latest'``, from what it left.

Each resumed run must end equal (``torch.equal``) to the reference: weights, buffers and gradients, optimizer state
and hypers, the Recorder's values/losses/lrs/iters/hps, every callback's ``state_dict()`` (trackers, EMA, gradient
accumulation, mixed precision, schedules, CSVLogger), the loop counters, the CSV file (without its time column), the
model files SaveModelCallback wrote, and every random generator's state after the fit. A difference in one of the
best-effort cases docs/checkpoints.md lists (``best_effort``, ``stale_files``) counts as documented.

One JSON line per seed (``seed``, ``status``: ok/documented/diff/error, ``resumes``, ``first_diff``, ``documented``,
``config``) goes to ``--out`` (and stdout); a summary ends the run. ``--set`` replaces fields of every configuration,
to narrow a difference down. ``--child`` is the subprocess's entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset, WeightedRandomSampler

import learnloop as ll
from learnloop.callback import noop
from learnloop.callbacks.checkpointing import checkpoint_files

Config = dict[str, Any]
SETTINGS: Config = {}  # --set: fields of every drawn configuration replaced (to narrow a difference down)
CHECKPOINTS = Path("models") / "checkpoints"


# ---------------------------------------------------------------------------------------------------- configuration
def draw(seed: int) -> Config:
    """The configuration of `seed`: plain JSON values, so that a subprocess rebuilds the same run from the seed."""
    r = random.Random(seed)
    task = r.choice(["classif", "regress"])
    bs = r.randint(4, 12)
    policy = r.choice(["fit", "fit_one_cycle", "fit_flat_cos", "fit_sgdr", "fine_tune"])
    tracker = r.choice([None, None, "early_stopping", "save_model", "reduce_lr"])
    every_epoch = r.random() < 0.6
    batchnorm = r.random() < 0.4
    n_train = r.randint(2 * bs + 1, 5 * bs)  # 2 batches or more: a checkpoint every 1 or 2 batches
    drop_last = r.random() < 0.3
    if batchnorm and not drop_last and n_train % bs == 1:
        n_train += 1  # BatchNorm cannot train on a batch of one
    c = {
        "seed": seed,
        "task": task,
        "model": r.choice(["mlp", "conv"]),
        "n_in": r.randint(3, 6),
        "hidden": r.randint(3, 8),
        "batchnorm": batchnorm,
        "dropout": r.choice([0.0, 0.0, 0.2, 0.5]),
        "n_train": n_train,
        "n_valid": r.randint(3, 20),
        "bs": bs,
        "loader": r.choice(["global", "generator", "from_dsets_seed", "random_sampler", "weighted_sampler", "ordered"]),
        "drop_last": drop_last,
        "opt": r.choice(["sgd", "sgd_mom", "adam", "rmsprop", "lamb", "lookahead", "ranger", "torch_sgd",
                         "torch_adamw", "torch_rmsprop"]),
        "implementation": r.choice(["auto", "foreach", "per_param"]),
        "wd": r.choice([None, 0.0, 0.01, 0.1]),
        "wd_bn_bias": r.random() < 0.3,
        "two_groups": policy == "fine_tune" or r.random() < 0.3,
        "policy": policy,
        "n_epoch": r.randint(1, 3),
        "lr": r.choice([1e-3, 1e-2, 3e-2]),
        "mixup": task == "classif" and r.random() < 0.3,
        "grad_acc": r.choice([None, None, 2, 3]),
        "grad_clip": r.choice([None, None, 0.5]),
        "ema": r.random() < 0.3,
        "tracker": tracker,
        "csv": r.random() < 0.4,
        "metrics": r.random() < 0.6,
        "train_metrics": r.random() < 0.2,
        "cbs_in_fit": r.random() < 0.5,  # callbacks given to fit(cbs=) rather than to the Learner
        "every_n_iters": r.choice([None, 1, 2, 3, 5]) if every_epoch else r.choice([1, 2]),
        "every_epoch": every_epoch,
        "ctrl_c_phase": r.choice(["train", "train", "valid"]),
        "ctrl_c_at": r.random(),  # where among the batches left after the subprocess's checkpoint
        "child_from": r.random(),  # which checkpoint the subprocess resumes from
        "ctrl_c_event": r.choice(["before_batch", "after_pred", "after_loss", "after_backward", "after_step",
                                  "after_batch"]),
    }
    draw_more(r, c)
    c.update(SETTINGS)
    return c


def draw_more(r: random.Random, c: Config) -> None:
    """The draws added after the first ones (so that a seed's first draws stay as they were)."""
    image = r.random() < 0.2  # images (bs, 2, 3, 3) through a Conv2d: CutMix needs them
    if image:
        c["model"] = "conv2d"
    c["cutmix"] = image and c["task"] == "classif" and r.random() < 0.5
    if c["cutmix"]:
        c["mixup"] = False
    workers = r.random() < 0.08  # a worker process (slow to start: rare)
    c.update({
        "valid_loader": r.choice(["ordered", "ordered", "shuffle", "generator"]),
        "augment": r.random() < 0.25,  # noise added to each training item as it is loaded (in the worker, if any)
        "num_workers": 1 if workers and c["loader"] != "from_dsets_seed" else 0,
        "persistent_workers": r.random() < 0.5,
        # validate() or get_preds() called by a callback at an event of every epoch of the fit
        "side_run": r.choice([None, None, None, "validate", "get_preds_valid", "get_preds_train_dl"]),
        "side_event": r.choice(["before_epoch", "after_train", "after_validate", "after_epoch"]),
        "more_trackers": r.sample(["early_stopping", "save_model", "reduce_lr"], r.choice([0, 0, 1, 2])),
        "monitor_metric": r.random() < 0.3,  # the trackers monitor the first metric rather than valid_loss
        "patience": r.choice([1, 2]),
        "reset_on_fit": r.random() < 0.7,
        "save_every_epoch": r.choice([False, False, True, 2]),
        "save_at_end": r.random() < 0.3,
        "precision": r.choice([None, None, None, "bf16", "fp16"]),
        "sched": c["policy"] == "fit" and r.random() < 0.4,  # a ParamScheduler of combined schedules
        "csv_append": r.random() < 0.5,
        "torch_metric": r.random() < 0.2,  # a torchmetrics-style metric through TorchMetric
        # where the fresh process's SIGINT comes: a batch (as drawn above), an event of an epoch, the end of the fit
        "ctrl_c_where": r.choice(["batch", "batch", "batch", "epoch", "fit"]),
        "ctrl_c_epoch_event": r.choice(["before_epoch", "before_train", "after_train", "before_validate",
                                        "after_validate", "after_epoch"]),
    })
    if c["tracker"] in c["more_trackers"]:
        c["more_trackers"].remove(c["tracker"])


class Noisy(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A random augmentation: each item, as it is loaded, gets noise from torch's generator (the worker's, if any)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.1 * torch.randn(self.x[i].shape), self.y[i]


SHAPES = {"mlp": None, "conv": (2, 6), "conv2d": (2, 3, 3)}


def make_dls(c: Config) -> ll.DataLoaders:
    g = torch.Generator().manual_seed(c["seed"])
    shape = SHAPES[c["model"]] or (c["n_in"],)
    x_train, x_valid = torch.randn(c["n_train"], *shape, generator=g), torch.randn(c["n_valid"], *shape, generator=g)
    w = torch.randn(math.prod(shape), 3, generator=g)
    if c["task"] == "classif":
        y_train, y_valid = (x_train.flatten(1) @ w).argmax(1), (x_valid.flatten(1) @ w).argmax(1)
    else:
        y_train, y_valid = x_train.flatten(1) @ w[:, :1], x_valid.flatten(1) @ w[:, :1]
    train_ds: Dataset[Any] = Noisy(x_train, y_train) if c["augment"] else TensorDataset(x_train, y_train)
    valid_ds = TensorDataset(x_valid, y_valid)
    loader, bs, drop_last = c["loader"], c["bs"], c["drop_last"]
    if loader == "from_dsets_seed":
        return ll.DataLoaders.from_dsets(train_ds, valid_ds, bs, drop_last=drop_last, seed=c["seed"], device="cpu")
    own = torch.Generator().manual_seed(c["seed"] + 1)
    kwargs: dict[str, Any] = {"batch_size": bs, "drop_last": drop_last}
    if c["num_workers"]:
        kwargs.update(num_workers=c["num_workers"], persistent_workers=c["persistent_workers"])
    if loader == "global":
        kwargs["shuffle"] = True
    elif loader == "generator":
        kwargs.update(shuffle=True, generator=own)
    elif loader == "random_sampler":
        kwargs["sampler"] = RandomSampler(train_ds, generator=own if c["seed"] % 2 else None)
    elif loader == "weighted_sampler":
        weights = (torch.rand(c["n_train"], generator=g) + 0.1).tolist()
        kwargs["sampler"] = WeightedRandomSampler(weights, c["n_train"], generator=own if c["seed"] % 2 else None)
    train = DataLoader(train_ds, **kwargs)
    valid_kwargs: dict[str, Any] = {"batch_size": bs + 1}
    if c["valid_loader"] == "shuffle":
        valid_kwargs["shuffle"] = True
    elif c["valid_loader"] == "generator":
        valid_kwargs.update(shuffle=True, generator=torch.Generator().manual_seed(c["seed"] + 2))
    return ll.DataLoaders(train, DataLoader(valid_ds, **valid_kwargs), device="cpu")


def make_model(c: Config) -> nn.Sequential:
    h = c["hidden"]
    layers: list[nn.Module]
    if c["model"] == "mlp":
        layers = [nn.Linear(c["n_in"], h)] + ([nn.BatchNorm1d(h)] if c["batchnorm"] else [])
    elif c["model"] == "conv":
        layers = [nn.Conv1d(2, h, 3, padding=1)] + ([nn.BatchNorm1d(h)] if c["batchnorm"] else []) + [nn.Flatten()]
    else:
        layers = [nn.Conv2d(2, h, 3, padding=1)] + ([nn.BatchNorm2d(h)] if c["batchnorm"] else []) + [nn.Flatten()]
    layers.append(nn.ReLU())
    if c["dropout"]:
        layers.append(nn.Dropout(c["dropout"]))
    n_feat = h * {"mlp": 1, "conv": 6, "conv2d": 9}[c["model"]]
    return nn.Sequential(nn.Sequential(*layers), nn.Linear(n_feat, 3 if c["task"] == "classif" else 1))


def two_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Two parameter groups: the body and the head (fine_tune freezes the body)."""
    body, head = model.children()
    return [list(body.parameters()), list(head.parameters())]


def make_opt_func(c: Config) -> Callable[..., Any]:
    impl = {"implementation": c["implementation"]}
    name = c["opt"]
    if name.startswith("torch_"):
        torch_opts: dict[str, Callable[..., torch.optim.Optimizer]] = {
            "torch_sgd": partial(torch.optim.SGD, momentum=0.9),
            "torch_adamw": torch.optim.AdamW,
            "torch_rmsprop": torch.optim.RMSprop,
        }
        return partial(ll.OptimWrapper, opt=torch_opts[name])
    if name == "lookahead":
        return lambda params, lr: ll.Lookahead(ll.Adam(params, lr=lr, **impl), k=3)
    if name == "ranger":
        return partial(ll.ranger, k=3, **impl)
    factories: dict[str, Callable[..., ll.Optimizer]] = {
        "sgd": ll.SGD,
        "sgd_mom": partial(ll.SGD, mom=0.9),
        "adam": ll.Adam,
        "rmsprop": ll.RMSProp,
        "lamb": ll.Lamb,
    }
    return partial(factories[name], **impl)


class Tally(ll.Callback):
    """Counts what this process runs: training and validation batches, the fit's epochs and fits (a validate() or
    get_preds() inside the fit is left out of the last two). In a subprocess, stops at `pause`, `(kind, n, event)`,
    an event of the n-th batch, epoch or fit of this process, and waits for the parent's SIGINT (it reads stdin
    until the parent, having sent the signal, writes a line)."""

    order = 500

    def __init__(self, pause: tuple[str, int, str] | None = None, paused_flag: Path | None = None) -> None:
        self.counts = {"train": 0, "valid": 0, "epoch": 0, "fit": 0}
        self.pause, self.paused_flag = pause, paused_flag

    def _at(self, event: str) -> None:
        phase = "train" if self.learn.training else "valid"
        if self.pause == (phase, self.counts[phase] + 1, event):
            self._wait()

    def _at_epoch(self, event: str) -> None:
        if not self.learn._nested_run and self.pause == ("epoch", self.counts["epoch"] + 1, event):
            self._wait()

    def _wait(self) -> None:
        if self.paused_flag is not None:
            self.paused_flag.write_text("paused")
            sys.stdin.readline()

    def before_batch(self) -> None:
        self._at("before_batch")

    def after_pred(self) -> None:
        self._at("after_pred")

    def after_loss(self) -> None:
        self._at("after_loss")

    def after_backward(self) -> None:
        self._at("after_backward")

    def after_step(self) -> None:
        self._at("after_step")

    def after_batch(self) -> None:
        self._at("after_batch")
        self.counts["train" if self.learn.training else "valid"] += 1

    def before_epoch(self) -> None:
        self._at_epoch("before_epoch")

    def before_train(self) -> None:
        self._at_epoch("before_train")

    def after_train(self) -> None:
        self._at_epoch("after_train")

    def before_validate(self) -> None:
        self._at_epoch("before_validate")

    def after_validate(self) -> None:
        self._at_epoch("after_validate")

    def after_epoch(self) -> None:
        self._at_epoch("after_epoch")
        if not self.learn._nested_run:
            self.counts["epoch"] += 1

    def after_fit(self) -> None:
        if not self.learn._nested_run:
            if self.pause == ("fit", self.counts["fit"] + 1, "after_fit"):
                self._wait()
            self.counts["fit"] += 1


class SideRun(ll.Callback):
    """Calls `validate()` or `get_preds()` from inside the fit, at `event` of every epoch: with a shuffled loader, they
    draw random numbers too. `results` keeps what they returned."""

    def __init__(self, what: str, event: str) -> None:
        self.what, self.event = what, event
        self.results: list[Any] = []
        self._busy = False

    def _maybe(self, event: str) -> None:
        if event != self.event or self._busy or self.learn._nested_run:
            return
        self._busy = True
        try:
            learn = self.learn
            if self.what == "validate":
                self.results.append(learn.validate())
            elif self.what == "get_preds_valid":
                self.results.append(learn.get_preds(dl=learn.dls.valid)[:2])
            else:
                self.results.append(learn.get_preds(dl=learn.dls.train)[:2])
        finally:
            self._busy = False

    def before_epoch(self) -> None:
        self._maybe("before_epoch")

    def after_train(self) -> None:
        self._maybe("after_train")

    def after_validate(self) -> None:
        self._maybe("after_validate")

    def after_epoch(self) -> None:
        self._maybe("after_epoch")


class SumAbsError:
    """A torchmetrics-style metric (update, compute, reset) that learnloop cannot see into: the mean absolute error
    of the first output."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count = torch.zeros(()), 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.total = self.total + (pred[:, 0] - target.reshape(len(target), -1)[:, 0].float()).abs().sum()
        self.count += len(target)

    def compute(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


class SideFiles(ll.Callback):
    """After each checkpoint is written, copies the run folder's other files (what the callbacks wrote) aside, with
    the batches run so far: a resume from that checkpoint starts from them, as after a crash there."""

    order = 1001  # after CheckpointCallback

    def __init__(self, run: Path, aside: Path, tally: Tally) -> None:
        self.run_folder, self.aside, self.tally = run, aside, tally
        self.seen: Path | None = None
        self.counts: dict[str, dict[str, int]] = {}

    def after_batch(self) -> None:
        self._copy()

    def after_epoch(self) -> None:
        self._copy()

    def _copy(self) -> None:
        saved = self.learn.checkpoint.last_saved
        if saved is None or saved == self.seen:
            return
        self.seen = saved
        shutil.copytree(self.run_folder, self.aside / saved.name, ignore=lambda d, names: ["checkpoints"])
        self.counts[saved.name] = dict(self.tally.counts)


def build(
    c: Config, folder: Path, extra: list[ll.Callback], checkpoints: bool = True
) -> tuple[ll.Learner, list[ll.Callback]]:
    """The learner of `c` in `folder`, every random generator seeded first; returns it and the fit's callbacks."""
    torch.manual_seed(c["seed"])
    np.random.seed(c["seed"])
    random.seed(c["seed"])
    cbs: list[ll.Callback] = []
    if c["precision"]:
        cbs.append(ll.MixedPrecision(amp_mode=c["precision"]))
    if c["sched"]:
        lr = c["lr"]
        cbs.append(ll.ParamScheduler({
            "lr": ll.combine_scheds([0.3, 0.7], [ll.SchedLin(lr / 10, lr), ll.SchedCos(lr, lr / 100)]),
            "wd": ll.combine_scheds([0.5, 0.5], [ll.SchedNo(0.0, 0.0), ll.SchedExp(0.01, 0.1)]),
        }))
    if c["mixup"]:
        cbs.append(ll.MixUp(0.4))
    if c["cutmix"]:
        cbs.append(ll.CutMix(1.0))
    if c["grad_acc"]:
        cbs.append(ll.GradientAccumulation(n_acc=c["bs"] * c["grad_acc"]))
    if c["grad_clip"]:
        cbs.append(ll.GradientClip(c["grad_clip"]))
    if c["ema"]:
        cbs.append(ll.EMACallback(decay=0.8))
    monitor = "valid_loss"
    if c["metrics"] and c["monitor_metric"]:
        monitor = ("valid_" if c["train_metrics"] else "") + ("accuracy" if c["task"] == "classif" else "mae")
    tracking = {"monitor": monitor, "reset_on_fit": c["reset_on_fit"]}
    for tracker in [c["tracker"], *c["more_trackers"]]:
        if tracker == "early_stopping":
            cbs.append(ll.EarlyStoppingCallback(patience=c["patience"], **tracking))
        elif tracker == "save_model":
            every_epoch, at_end = c["save_every_epoch"], c["save_at_end"] and not c["save_every_epoch"]
            cbs.append(ll.SaveModelCallback(fname="best", with_opt=c["seed"] % 2 == 0, every_epoch=every_epoch,
                                            at_end=at_end, **tracking))
        elif tracker == "reduce_lr":
            cbs.append(ll.ReduceLROnPlateau(patience=c["patience"], factor=2.0, **tracking))
    if c["csv"]:
        cbs.append(ll.CSVLogger(append=c["csv_append"]))
    if c["side_run"]:
        cbs.append(SideRun(c["side_run"], c["side_event"]))
    if checkpoints:
        cbs.append(ll.CheckpointCallback(every_n_iters=c["every_n_iters"], every_epoch=c["every_epoch"],
                                         keep_last=None))
    cbs += extra
    metrics = None
    if c["metrics"]:
        metrics = [ll.accuracy, ll.error_rate] if c["task"] == "classif" else [ll.rmse, ll.mae]
    if c["torch_metric"]:
        metrics = [*(metrics or []), ll.TorchMetric(SumAbsError())]
    learn = ll.Learner(
        make_dls(c),
        make_model(c),
        loss_func=nn.CrossEntropyLoss() if c["task"] == "classif" else nn.MSELoss(),
        opt_func=make_opt_func(c),
        lr=c["lr"],
        splitter=two_groups if c["two_groups"] else ll.trainable_params,
        cbs=None if c["cbs_in_fit"] else cbs,
        metrics=metrics,
        path=folder,
        wd=c["wd"],
        wd_bn_bias=c["wd_bn_bias"],
    )
    learn.logger = noop
    learn.remove_cb(ll.ProgressCallback)
    learn.recorder.train_metrics = c["train_metrics"]
    return learn, cbs


def fit(c: Config, learn: ll.Learner, cbs: list[ll.Callback], resume: str | Path | None = None) -> None:
    """Run the configuration's fit policy."""
    fit_cbs = cbs if c["cbs_in_fit"] else None
    n, lr, policy = c["n_epoch"], c["lr"], c["policy"]
    lr_arg: float | slice = slice(lr / 10, lr) if c["two_groups"] else lr
    if policy == "fit":
        learn.fit(n, lr_arg, cbs=fit_cbs, resume=resume)
    elif policy == "fit_one_cycle":
        learn.fit_one_cycle(n, lr_arg, cbs=fit_cbs, resume=resume)
    elif policy == "fit_flat_cos":
        learn.fit_flat_cos(n, lr_arg, cbs=fit_cbs, resume=resume)
    elif policy == "fit_sgdr":
        learn.fit_sgdr(min(n, 2), 1, lr_arg, cbs=fit_cbs, resume=resume)
    else:
        learn.fine_tune(n, lr, freeze_epochs=1, cbs=fit_cbs, resume=resume)


# ---------------------------------------------------------------------------------------------------- comparison
def snapshot(learn: ll.Learner, cbs: list[ll.Callback]) -> dict[str, Any]:
    """Everything a resumed run must end with, as plain values and tensors."""
    rec = learn.recorder
    out: dict[str, Any] = {
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in learn.model.parameters()],
        "opt": learn.opt.state_dict(),
        "recorder": {"values": rec.values, "losses": list(rec.losses), "lrs": rec.lrs, "iters": rec.iters,
                     "hps": rec.hps},
        "callbacks": {f"{i}.{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(cbs)},
        "loop": {"epoch": learn.epoch, "train_iter": learn.train_iter, "pct_train": learn.pct_train,
                 "n_epoch": learn.n_epoch},
        "rng": {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state(legacy=True)),
                "python": random.getstate()},
        "files": {},
    }
    for i, dl in enumerate(learn.dls.loaders):
        for where, owner in (("loader", dl), ("sampler", getattr(dl, "sampler", None))):
            if isinstance(g := getattr(owner, "generator", None), torch.Generator):
                out["rng"][f"{i}.{where}"] = g.get_state()
    csv = learn.path / "history.csv"
    if csv.exists():  # the time column differs from run to run
        out["files"]["history.csv"] = [line.rsplit(",", 1)[0] for line in csv.read_text().splitlines()]
    for saved in sorted((learn.path / "models").glob("*.pth")):  # SaveModelCallback's (checkpoints are below)
        out["files"][saved.name] = torch.load(saved, weights_only=True)
    return out


def compare(expected: dict[str, Any], got: dict[str, Any], label: str) -> str | None:
    """None when `got` is `expected` bit for bit, else `label` and where they first differ."""
    d = first_diff(expected, got)
    return None if d is None else f"{label}: {d}"


def first_diff(a: Any, b: Any, where: str = "") -> str | None:
    """Where `a` and `b` first differ (bit for bit; NaN equals NaN), or None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if torch.equal(a, b):
            return None
        if not a.is_floating_point():
            return f"{where}: tensors differ"
        if not torch.equal(a.isnan(), b.isnan()):
            return f"{where}: NaN in other places"
        a, b = a.masked_fill(a.isnan(), 0.0), b.masked_fill(b.isnan(), 0.0)
        return None if torch.equal(a, b) else f"{where}: tensors differ by up to {(a - b).abs().max().item():.3g}"
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return None if np.array_equal(a, b) else f"{where}: arrays differ"
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)} vs {list(b)}"
        diffs = (first_diff(a[k], b[k], f"{where}.{k}") for k in a)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        diffs = (first_diff(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    else:
        return None if type(a) is type(b) and a == b else f"{where}: {a!r} vs {b!r}"
    return next((d for d in diffs if d is not None), None)


# ---------------------------------------------------------------------------------------------------- the subprocess
def child(spec: dict[str, Any]) -> None:
    """A fresh process: resume `spec['resume']` in `spec['folder']`, stopped by SIGINT at `spec['pause']`."""
    torch.set_num_threads(1)
    # Python's own Ctrl-C handler, as in a terminal: a shell starts background jobs with SIGINT ignored, and
    # CheckpointCallback (rightly) leaves an ignored SIGINT alone.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    SETTINGS.update(spec["set"])
    c, folder = draw(spec["seed"]), Path(spec["folder"])
    tally = Tally(tuple(spec["pause"]), folder / "paused")
    learn, cbs = build(c, folder, [tally])
    try:
        fit(c, learn, cbs, resume=spec["resume"])
    except KeyboardInterrupt:
        (folder / "outcome").write_text("interrupted")
        return
    torch.save(snapshot(learn, cbs), folder / "snapshot.pt")
    (folder / "outcome").write_text("finished")


def run_child(spec: dict[str, Any], timeout: float = 300.0) -> str:
    """Run `child` in a subprocess, send it SIGINT when it pauses; its outcome ('interrupted', 'finished' when it
    never reached the pause, 'SIGINT lost')."""
    folder = Path(spec["folder"])
    with open(folder / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        start = time.monotonic()
        while proc.poll() is None and not (folder / "paused").exists():
            if time.monotonic() - start > timeout:
                proc.kill()
                raise TimeoutError("the subprocess neither paused nor ended")
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        proc.stdin.close()
        proc.wait(timeout)
    outcome = folder / "outcome"
    if proc.returncode != 0 or not outcome.exists():
        tail = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"subprocess failed (exit {proc.returncode}): {' | '.join(tail)}")
    if (folder / "paused").exists() and outcome.read_text() != "interrupted":
        return "SIGINT lost"  # sent while the fit ran, yet it ran to its end
    return outcome.read_text()


# ---------------------------------------------------------------------------------------------------- one seed
def fuzz_seed(seed: int) -> dict[str, Any]:
    """Run every check of `seed`; its result line."""
    torch.set_num_threads(1)
    c = draw(seed)
    result: dict[str, Any] = {"seed": seed, "status": "ok", "resumes": 0, "first_diff": None}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz_resume_{seed}_") as tmp:
        root = Path(tmp)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # SaveModelCallback's messages
                diff = check(c, root, result)
        except Exception as e:  # noqa: BLE001 - a crash is a finding, reported as such
            result["status"] = "error"
            result["first_diff"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            result["traceback"] = traceback.format_exc()[-2000:]
        else:
            if diff is not None:
                result["status"], result["first_diff"] = "diff", diff
                if (kind := best_effort(c, diff)) is not None:
                    result["status"], result["documented"] = "documented", kind
            elif "documented" in result:
                result["status"] = "documented"
    result["seconds"] = round(time.monotonic() - start, 2)
    result["config"] = c
    return result


def best_effort(c: Config, diff: str) -> str | None:
    """The best-effort case of docs/checkpoints.md that explains `diff`, or None."""
    if c["num_workers"] and c["persistent_workers"] and c["augment"]:
        return "persistent workers with random augmentation in them"
    # Weights, gradients and optimizer are compared first: a first difference in the table means they were equal.
    if c["torch_metric"] and c["train_metrics"] and (".recorder.values" in diff or ".files.history.csv" in diff):
        return "a TorchMetric's training value restarts at a mid-epoch resume point"
    return None


def stale_files(c: Config, diff: str) -> str | None:
    """The best-effort case of docs/checkpoints.md that explains `diff`, in a resume from the oldest checkpoint among
    the files the whole run left, or None. fine_tune's unfrozen fit rewrote them: SaveModelCallback loads its model
    file at the end of the frozen fit; CSVLogger(append=False) keeps the first lines as they are, the unfrozen fit's."""
    if c["policy"] != "fine_tune":
        return None
    trackers = [c["tracker"], *c["more_trackers"]]
    if "save_model" in trackers and not c["save_every_epoch"] and not c["save_at_end"]:
        return "SaveModelCallback loads the model file a later fit rewrote"
    if c["csv"] and not c["csv_append"] and ".files.history.csv" in diff:
        return "CSVLogger keeps the first lines of the file a later fit rewrote"
    return None


def check(c: Config, root: Path, result: dict[str, Any]) -> str | None:
    """Run the reference and every resume of `c` under `root`; the first difference found, or None."""
    plain, plain_cbs = build(c, root / "plain", [Tally()], checkpoints=False)
    fit(c, plain, plain_cbs)
    expected_plain = snapshot(plain, plain_cbs)

    tally = Tally()
    ref, ref_cbs = build(c, root / "ref", [tally])
    sides = SideFiles(root / "ref", root / "aside", tally)
    ref_cbs.append(sides)
    if not c["cbs_in_fit"]:
        ref.add_cb(sides)
    fit(c, ref, ref_cbs)
    expected = snapshot(ref, ref_cbs[:-1])
    if d := compare(expected_plain, {**expected, "callbacks": expected_plain["callbacks"]}, "checkpointing"):
        return d  # checkpoints must not change the run (the CheckpointCallback's own state left out)
    files = checkpoint_files(root / "ref" / CHECKPOINTS)
    if not files:
        return None
    total = dict(tally.counts)

    for i, file in enumerate(files):  # in this process, from every checkpoint, with the files as they were then
        folder = root / f"resume{i}"
        shutil.copytree(root / "aside" / file.name, folder)
        learn, cbs = build(c, folder, [Tally()])
        fit(c, learn, cbs, resume=file)
        result["resumes"] += 1
        if (d := compare(expected, snapshot(learn, cbs), f"resume from {file.name}")) is not None:
            return d

    # The oldest checkpoint, resumed among the files the whole run left (a script run again that resumes from it).
    shutil.copytree(root / "ref", root / "stale", ignore=lambda d, names: ["checkpoints"])
    learn, cbs = build(c, root / "stale", [Tally()])
    fit(c, learn, cbs, resume=files[0])
    result["resumes"] += 1
    if (d := compare(expected, snapshot(learn, cbs), f"resume from {files[0].name} among the last files")) is not None:
        if (kind := stale_files(c, d)) is None:
            return d
        result["documented"] = f"{kind} ({d})"

    # A fresh process resumes from one checkpoint and is stopped by SIGINT further on; this one resumes from that.
    file = files[min(int(c["child_from"] * len(files)), len(files) - 1)]
    left = {k: total[k] - sides.counts[file.name][k] for k in total}
    spec = {"seed": c["seed"], "set": SETTINGS, "folder": str(root / "child"), "resume": str(file),
            "pause": pause_point(c, left)}
    shutil.copytree(root / "aside" / file.name, root / "child")
    outcome = run_child(spec)
    result["resumes"] += 1
    result["child"] = f"from {file.name}, SIGINT at {spec['pause']}: {outcome}"
    if outcome == "SIGINT lost":
        return f"fresh process from {file.name}: SIGINT at {spec['pause']} did not stop the fit"
    if outcome == "finished":
        got = torch.load(root / "child" / "snapshot.pt", weights_only=False)
        return compare(expected, got, f"fresh process from {file.name}")
    after = checkpoint_files(root / "child" / CHECKPOINTS)
    if after and after[-1].name.endswith("_inexact.pth"):
        return f"SIGINT at {spec['pause']}: its checkpoint {after[-1].name} is inexact"
    learn, cbs = build(c, root / "child", [Tally()])
    # Stopped before its first training batch, it wrote no checkpoint: it is resumed from the one it started from.
    fit(c, learn, cbs, resume="latest" if after else file)
    result["resumes"] += 1
    last = after[-1].name if after else f"nothing (resumed from {file.name} again)"
    result["child"] += f", left {last}"
    return compare(expected, snapshot(learn, cbs), f"SIGINT at {spec['pause']} after {file.name}, then {last}")


def pause_point(c: Config, left: dict[str, int]) -> list[Any]:
    """Where the fresh process is stopped, `[kind, n, event]`, among what it has `left` to run after its checkpoint: an
    event of a training or validation batch, of an epoch (between batches, in validation, at the epoch's end), or the
    end of the fit (after the last epoch)."""
    where = c["ctrl_c_where"]
    if where == "epoch" and left["epoch"]:
        return ["epoch", 1 + int(c["ctrl_c_at"] * left["epoch"]), c["ctrl_c_epoch_event"]]
    if where != "batch" or not (left["train"] or left["valid"]):
        return ["fit", max(left["fit"], 1), "after_fit"]  # the last after_fit
    phase = c["ctrl_c_phase"] if left[c["ctrl_c_phase"]] else {"train": "valid", "valid": "train"}[c["ctrl_c_phase"]]
    event = c["ctrl_c_event"]
    if phase == "valid" and event in ("after_backward", "after_step"):  # validation has neither
        event = "after_batch"
    return [phase, 1 + int(c["ctrl_c_at"] * max(left[phase], 1)), event]


# ---------------------------------------------------------------------------------------------------- main
def parse_seeds(text: str) -> range:
    lo, _, hi = text.partition(":")
    return range(int(lo), int(hi)) if hi else range(int(lo), int(lo) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0:20", help="a range lo:hi (hi excluded), or one seed")
    parser.add_argument("--procs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", type=Path, default=None, help="a JSON-lines file for the results")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="replace fields of every drawn configuration: --set side_run=null precision='\"bf16\"'")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return 0
    seeds = parse_seeds(args.seeds)
    SETTINGS.update({field: json.loads(value) for field, _, value in (s.partition("=") for s in args.set)})
    counts = {"ok": 0, "documented": 0, "diff": 0, "error": 0}
    resumes = 0
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - written line by line as seeds finish
    # A process pool of concurrent.futures, not multiprocessing's: its workers are not daemons, so the DataLoaders
    # a configuration draws with worker processes can start them.
    with ProcessPoolExecutor(args.procs) if args.procs > 1 else _Inline() as pool:
        for result in _unordered(pool, seeds):
            counts[result["status"]] += 1
            resumes += result["resumes"]
            line = json.dumps(result)
            print(json.dumps({k: result[k] for k in ("seed", "status", "resumes", "first_diff", "seconds")}),
                  flush=True)
            if out is not None:
                out.write(line + "\n")
                out.flush()
    if out is not None:
        out.close()
    print(f"summary: {len(seeds)} seeds, {counts['ok']} bit-identical, {counts['documented']} differ in a documented "
          f"best-effort case, {counts['diff']} differ, {counts['error']} errors; {resumes} resumes", flush=True)
    return 0 if counts["diff"] == counts["error"] == 0 else 1


class _Inline:
    """The seeds run in this process (``--procs 1``)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _unordered(pool: ProcessPoolExecutor | _Inline, seeds: range) -> Iterator[dict[str, Any]]:
    """Each seed's result, as seeds finish."""
    if isinstance(pool, _Inline):
        yield from map(fuzz_seed, seeds)
        return
    for future in as_completed([pool.submit(fuzz_seed, seed) for seed in seeds]):
        yield future.result()


if __name__ == "__main__":
    sys.exit(main())
