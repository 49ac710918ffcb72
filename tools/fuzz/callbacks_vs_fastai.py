"""Differential fuzzer: fastai 2.8's callbacks, schedules, optimizers and metrics against learnloop's.

What: each seed draws one configuration from ``random.Random(seed)``: a task (classification, regression, 1-d
segmentation, tiny images), a small model with BatchNorm, a loss, an optimizer (SGD, RMSProp, Adam, RAdam, QHAdam,
Larc/LARS, Lamb, ranger, Lookahead over them, OptimWrapper over torch's AdamW/SGD) with its hyper-parameters, a
splitter, discriminative lrs and freezing, a fit policy (fit, fit_one_cycle, fit_flat_cos, fit_sgdr, fine_tune, a
ParamScheduler of combined schedules, lr_find), perhaps a second fit, callbacks (GradientAccumulation,
GradientClip, MixUp, CutMix, the trackers, CSVLogger, BnFreeze, ShortEpochCallback, CollectDataCallback,
TerminateOnNaNCallback, MixedPrecision) and metrics (fastai.metrics' torch and scikit-learn ones). It trains the
configuration under fastai and under learnloop from the same initial weights, the same batches (shuffle off) and
the same torch random state (MixUp's and CutMix's draws and dropout's masks line up), and compares what both
leave: final weights and optimizer state (``allclose`` with rtol 1e-5 / atol 1e-7, and exact equality), hypers,
``recorder.values``, ``losses``, ``lrs``, ``hps`` (the scheduled hypers per batch), the loop's counters, the
trackers' decisions (their messages: which epoch saved, when it stopped, lr reductions; the epochs recorded), the
files written (CSVLogger's table without its time column, SaveModelCallback's weights), ``lr_find``'s
suggestions, the data a CollectDataCallback gathered, ``validate()`` and ``get_preds(with_loss=True)`` after
training, and the exception types when a side refuses the configuration. ``pct_train`` is not compared
(learnloop's ends at exactly 1.0, documented).

How to run (fastai and learnloop in one process, so under the reference environment)::

    PYTHONPATH=$PWD/src nice -n 10 /tmp/benchenv/bin/python tools/fuzz/callbacks_vs_fastai.py 0 2000 \
        --out /tmp/fuzz.jsonl
    PYTHONPATH=$PWD/src /tmp/benchenv/bin/python tools/fuzz/callbacks_vs_fastai.py 0 1 --show 17

``START STOP`` is the range of seeds; ``--procs N`` runs N worker processes; ``--show SEED`` prints that seed's
configuration and every difference found. One JSON line per seed goes to ``--out`` (and to stdout without it):
``{"seed", "status": "same"|"close"|"diff"|"skipped", "kind", "first_diff"}``; a summary table ends the run.

``status``: ``same`` when everything compared is equal, ``close`` when all of it is within tolerance,
``diff`` otherwise; ``skipped`` when the configuration cannot be compared (``first_diff`` says why).
``kind`` names the first difference that no documented difference explains; when every difference is explained,
``documented:<name>(<kind>)`` names the deliberate difference (docs/porting-from-fastai.md, or where said the
docstring of the callback) and the first difference, and the summary counts these apart. The documented kinds:

- ``documented:fused_rounding``: ``Adam`` and momentum ``SGD`` use fused kernels by default, which agree with
  fastai's to rounding (``implementation="foreach"`` is drawn too, and is fastai's bit for bit);
- ``documented:lamb_larc_rounding``: ``Lamb`` and ``Larc`` round differently in the last bit, which can grow
  over a fit;
- ``documented:rmsprop_eps``: fastai's ``RMSProp`` steps with eps 1e-8 whatever ``eps`` says;
- ``documented:fp16_cpu``: fastai's ``MixedPrecision`` autocasts on CUDA only, learnloop's on the CPU too;
- ``documented:one_cycle_mom``: ``fit_one_cycle`` schedules ``mom`` only on an optimizer that has it;
- ``documented:lr_find_leaves_opt``: after ``lr_find`` learnloop's optimizer is as it was (none if there was
  none), fastai's has the sweep's hyper-parameters;
- ``documented:error_type``: both refuse the configuration, with different exception types;
- ``documented:reduce_lr_wrapper``: ``ReduceLROnPlateau`` lowers the lr of an ``OptimWrapper`` (fastai's changes
  a copy);
- ``documented:csv_lr_find``: learnloop's ``CSVLogger`` writes nothing during ``lr_find`` (its docstring says
  so; fastai's writes the sweep's rows);
- ``documented:cancelled_phase``: ``ShortEpochCallback`` cancels a phase (or ``Recorder.valid_metrics`` is
  off); learnloop's ``CSVLogger`` leaves the missing cells empty (fastai's shifts the values left) and its
  trackers skip an epoch whose row lacks the monitored value (fastai's read another column, or fail with an
  IndexError); a ``validate()`` or ``get_preds()`` whose phase it cuts short gives what was gathered (fastai's
  raises an IndexError);
- ``documented:fit_never_trains``: ``SaveModelCallback`` in a fit of no epochs (``fine_tune(freeze_epochs=0)``)
  loads nothing when no epoch improved (fastai's raises FileNotFoundError);
- ``documented:start_epoch_skipped``: the epochs ``fit(start_epoch=k)`` skips get no CSV row and are not judged
  by the trackers (fastai's write the short row, and its trackers fail with an IndexError);
- ``documented:tracker_in_validate``: trackers on the learner do nothing in ``validate()`` (fastai's judge its
  short row, and fail with an IndexError on ``valid_loss``);
- ``documented:lr_find_short_sweep``: a sweep that ``stop_div`` ends after too few points for the suggestions
  gives nan suggestions with a warning (the porting guide says so of a sweep a callback cuts short; fastai's
  raise an IndexError or numpy's ValueError);
- ``documented:r2_nan``: ``R2Score`` and ``ExplainedVariance`` give nan for NaN predictions (a diverged fit; their
  docstrings), where fastai's scikit-learn call raises "Input contains NaN" in the Recorder and ends the fit;
- ``documented:nan_per_item``: ``TerminateOnNaNCallback`` checks a per-item loss (``get_preds(with_loss=True)``)
  item by item (its docstring; fastai's fails: "Boolean value of Tensor with more than one value is
  ambiguous");
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import random
import re
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

RTOL, ATOL = 1e-5, 1e-7


# ------------------------------------------------------------------ the two libraries under common names
_OPTIMIZERS = ("SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "Lookahead", "ranger", "OptimWrapper")


def _fastai() -> SimpleNamespace:
    import fastai.callback.all as fcb
    import fastai.losses as floss
    import fastai.metrics as fm
    import fastai.optimizer as fo
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner

    def make_dls(train: list[tuple[Any, ...]], valid: list[tuple[Any, ...]], bs: int) -> Any:
        return DataLoaders(DataLoader(train, bs=bs, shuffle=False), DataLoader(valid, bs=bs, shuffle=False))

    ns = SimpleNamespace(name="fastai", Learner=Learner, make_dls=make_dls, losses=floss,
                         progress_cb=fcb.ProgressCallback)
    for n in _OPTIMIZERS:
        setattr(ns, n, getattr(fo, n))
    _callbacks(ns, fcb)
    _metrics(ns, fm)
    return ns


def _learnloop() -> SimpleNamespace:
    import learnloop as ll
    import learnloop.callbacks as lcb
    import learnloop.metrics as lm
    import learnloop.optimizer as lo

    def make_dls(train: list[tuple[Any, ...]], valid: list[tuple[Any, ...]], bs: int) -> Any:
        def dl(items: list[tuple[Any, ...]]) -> torch.utils.data.DataLoader[Any]:
            return torch.utils.data.DataLoader(items, batch_size=bs, shuffle=False)  # type: ignore[arg-type]
        return ll.DataLoaders(dl(train), dl(valid), device="cpu")

    import learnloop.losses as lloss

    ns = SimpleNamespace(name="learnloop", Learner=ll.Learner, make_dls=make_dls, losses=lloss,
                         progress_cb=ll.ProgressCallback)
    for n in _OPTIMIZERS:
        setattr(ns, n, getattr(lo, n))
    _callbacks(ns, lcb)
    _metrics(ns, lm)
    return ns


def _callbacks(ns: SimpleNamespace, mod: Any) -> None:
    for n in ("ParamScheduler", "SchedLin", "SchedCos", "SchedExp", "SchedPoly", "SchedNo", "combine_scheds",
              "GradientAccumulation", "GradientClip", "MixUp", "CutMix", "EarlyStoppingCallback",
              "SaveModelCallback", "ReduceLROnPlateau", "CSVLogger", "BnFreeze", "MixedPrecision",
              "ShortEpochCallback", "CollectDataCallback", "TerminateOnNaNCallback",
              "valley", "minimum", "steep", "slide"):
        setattr(ns, n, getattr(mod, n) if hasattr(mod, n) else _from_root(ns, n))


def _from_root(ns: SimpleNamespace, n: str) -> Any:
    if ns.name == "fastai":
        import fastai.callback.schedule as fs
        return getattr(fs, n)
    import learnloop as ll
    return getattr(ll, n)


def _metrics(ns: SimpleNamespace, mod: Any) -> None:
    for n in ("accuracy", "error_rate", "top_k_accuracy", "rmse", "mae", "R2Score", "ExplainedVariance",
              "Perplexity", "Dice", "DiceMulti", "JaccardCoeff", "foreground_acc", "F1Score", "Precision", "Recall",
              "BalancedAccuracy", "MatthewsCorrCoef", "CohenKappa", "PearsonCorrCoef", "SpearmanCorrCoef",
              "RocAucBinary", "APScoreBinary", "BrierScore", "HammingLoss", "Jaccard", "FBeta"):
        setattr(ns, n, getattr(mod, n, None))


# ------------------------------------------------------------------ a configuration
@dataclass
class Config:
    """Everything one seed trains: drawn by `draw`, built the same way for both libraries by `run`."""

    seed: int
    task: str = "classif"
    n_train: int = 48
    n_valid: int = 24
    bs: int = 16
    n_classes: int = 3
    dropout: bool = False
    loss: str = "CrossEntropyLossFlat"
    split: bool = False
    freeze: str = "none"  # none | freeze | freeze_to | unfreeze
    wd_bn_bias: bool = False
    train_bn: bool = True
    learner_wd: float | None = None
    moms: tuple[float, float, float] | None = None
    opt: str = "Adam"
    opt_kw: dict[str, Any] = field(default_factory=dict)
    implementation: str = "auto"
    lookahead: dict[str, Any] | None = None
    lr: Any = 1e-2  # a float, ("slice", lo, hi) / ("slice", hi), or None for the Learner's
    learner_lr: float = 1e-3
    policy: str = "fit"
    policy_kw: dict[str, Any] = field(default_factory=dict)
    cbs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cbs_on_learner: bool = False  # Learner(cbs=...) rather than fit(cbs=...): they stay for the second fit
    second: tuple[str, dict[str, Any]] | None = None  # a second fit on the same learner (optimizer kept)
    metrics: list[str] = field(default_factory=list)
    recorder: dict[str, bool] = field(default_factory=dict)  # Recorder's train_metrics, valid_metrics, add_time
    documented: list[str] = field(default_factory=list)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return float(10 ** rng.uniform(math.log10(lo), math.log10(hi)))


def draw(seed: int) -> Config:
    """The configuration of one seed."""
    rng = random.Random(seed)
    c = Config(seed=seed)
    c.task = rng.choices(["classif", "regress", "seg", "image"], [5, 2, 2, 1])[0]
    c.bs = rng.choice([8, 16])
    c.n_train = rng.choice([32, 48, 40])
    c.n_valid = rng.choice([16, 24])
    c.n_classes = 2 if c.task == "seg" else rng.choice([2, 3])
    c.dropout = rng.random() < 0.2
    if c.task == "regress":
        c.loss = rng.choice(["MSELossFlat", "MSELossFlat", "L1LossFlat"])
    elif c.task != "seg":
        c.loss = rng.choice(["CrossEntropyLossFlat"] * 3 + ["LabelSmoothingCrossEntropyFlat", "FocalLossFlat"])
    c.split = rng.random() < 0.5
    if c.split:
        c.freeze = rng.choice(["none", "none", "freeze", "freeze_to", "unfreeze"])
    c.wd_bn_bias = rng.random() < 0.3
    c.train_bn = rng.random() < 0.7
    c.learner_wd = rng.choice([None, None, 0.0, 1e-2, 0.1])
    if rng.random() < 0.15:
        c.moms = rng.choice([(0.9, 0.8, 0.9), (0.95, 0.9, 0.95)])
    _draw_opt(rng, c)
    lr = _log_uniform(rng, 1e-3, 3e-2) if rng.random() < 0.9 else _log_uniform(rng, 0.1, 3.0)
    if c.split and rng.random() < 0.5:
        c.lr = ("slice", lr / 10, lr) if rng.random() < 0.6 else ("slice", lr)
    elif c.split and rng.random() < 0.2:
        c.lr = ("list", lr / 3, lr, "array") if rng.random() < 0.5 else ("list", lr / 3, lr)
    elif rng.random() < 0.15:
        c.lr = None  # the Learner's lr (learner_lr)
    else:
        c.lr = lr
    c.learner_lr = rng.choice([1e-3, 1e-2])
    _draw_policy(rng, c)
    _draw_callbacks(rng, c)
    _draw_metrics(rng, c)
    if rng.random() < 0.15:
        c.recorder = {rng.choice(["train_metrics", "valid_metrics", "add_time"]): rng.choice([True, False])}
        if c.recorder.get("valid_metrics") is False and any(n in (*_TRACKERS, "CSVLogger") for n, _ in c.cbs):
            c.documented.append("cancelled_phase")
    c.cbs_on_learner = rng.random() < 0.3
    if c.cbs_on_learner and any(n == "ShortEpochCallback" for n, _ in c.cbs):
        c.documented.append("cancelled_phase")
    if c.cbs_on_learner and any(n in _TRACKERS for n, _ in c.cbs):
        c.documented.append("tracker_in_validate")
    if rng.random() < 0.3:
        c.second = rng.choice([("fit", {"n_epoch": 1}), ("fit_one_cycle", {"n_epoch": rng.choice([1, 2])}),
                               ("fit", {"n_epoch": 1, "reset_opt": True}), ("fit_flat_cos", {"n_epoch": 1})])
    if c.policy in ("fit", "fit_one_cycle") and rng.random() < 0.1 and c.policy_kw["n_epoch"] > 1:
        c.policy_kw["start_epoch"] = 1
        if any(n in _TRACKERS or n == "CSVLogger" for n, _ in c.cbs):
            c.documented.append("start_epoch_skipped")
    if c.policy in ("fit", "fit_one_cycle", "fit_flat_cos", "fit_sgdr") and rng.random() < 0.15:
        c.policy_kw["wd"] = rng.choice([0.0, 1e-2, 0.1])
    if c.policy in ("fit", "fit_one_cycle", "fit_flat_cos", "fit_sgdr") and c.freeze != "none" and rng.random() < 0.2:
        c.policy_kw["reset_opt"] = True
    if c.policy == "fine_tune" and c.policy_kw["freeze_epochs"] == 0 and any(n == "SaveModelCallback"
                                                                             for n, _ in c.cbs):
        c.documented.append("fit_never_trains")
    return c


_TRACKERS = ("EarlyStoppingCallback", "SaveModelCallback", "ReduceLROnPlateau")


def _draw_opt(rng: random.Random, c: Config) -> None:
    c.opt = rng.choice(["SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "ranger", "OptimWrapper"])
    kw: dict[str, Any] = {}
    if c.opt != "OptimWrapper":
        if rng.random() < 0.5:
            kw["wd"] = rng.choice([0.0, 1e-3, 1e-2, 0.1])
        if c.opt != "ranger" and rng.random() < 0.4:
            kw["decouple_wd"] = rng.random() < 0.5
    if c.opt in ("SGD", "RMSProp", "Larc"):
        if rng.random() < 0.6:
            kw["mom"] = rng.choice([0.0, 0.5, 0.9])
    elif c.opt in ("Adam", "RAdam", "QHAdam", "Lamb", "ranger") and rng.random() < 0.5:
        kw["mom"] = rng.choice([0.8, 0.9, 0.95])
    if c.opt in ("RMSProp", "Adam", "RAdam", "QHAdam", "Lamb", "ranger") and rng.random() < 0.4:
        kw["sqr_mom"] = rng.choice([0.9, 0.99, 0.999])
    if c.opt != "SGD" and c.opt != "OptimWrapper" and rng.random() < 0.3:
        kw["eps"] = rng.choice([1e-8, 1e-6, 1e-3])
    if c.opt == "RAdam" and rng.random() < 0.3:
        kw["beta"] = rng.choice([0.0, 0.5])
    if c.opt == "Larc" and rng.random() < 0.4:
        kw["clip"] = rng.random() < 0.5
    if c.opt == "OptimWrapper":
        kw["torch_opt"] = rng.choice(["AdamW", "SGD"])
        if kw["torch_opt"] == "SGD":
            kw["momentum"] = rng.choice([0.0, 0.9])
        kw["weight_decay"] = rng.choice([0.0, 1e-2])
    c.opt_kw = kw
    if c.opt in ("SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "ranger") and rng.random() < 0.5:
        c.implementation = "foreach"
    if c.opt != "OptimWrapper" and c.opt != "ranger" and rng.random() < 0.2:
        c.lookahead = {"k": rng.choice([2, 3, 6]), "alpha": rng.choice([0.5, 0.8])}
    if c.opt == "RMSProp" and kw.get("eps", 1e-8) != 1e-8:
        c.documented.append("rmsprop_eps")
    if c.implementation == "auto" and (c.opt == "Adam" or (c.opt == "SGD" and kw.get("mom", 0.0) != 0)):
        c.documented.append("fused_rounding")
    if c.opt in ("Lamb", "Larc"):
        c.documented.append("lamb_larc_rounding")


def _draw_policy(rng: random.Random, c: Config) -> None:
    c.policy = rng.choices(["fit", "fit_one_cycle", "fit_flat_cos", "fit_sgdr", "fine_tune", "sched", "lr_find"],
                           [2, 3, 2, 1, 1, 2, 1])[0]
    n = rng.choice([1, 2, 3])
    kw: dict[str, Any] = {}
    if c.policy == "fit_one_cycle":
        kw = {"n_epoch": n}
        if rng.random() < 0.5:
            kw["pct_start"] = rng.choice([0.1, 0.25, 0.5, 0.9])
        if rng.random() < 0.4:
            kw["div"] = rng.choice([5.0, 25.0, 100.0])
        if rng.random() < 0.4:
            kw["div_final"] = rng.choice([10.0, 1e4, 1e5])
        if rng.random() < 0.4:
            kw["moms"] = rng.choice([(0.95, 0.85, 0.95), (0.9, 0.8, 0.9), (0.99, 0.9, 0.99)])
    elif c.policy == "fit_flat_cos":
        kw = {"n_epoch": n}
        if rng.random() < 0.5:
            kw["pct_start"] = rng.choice([0.5, 0.75, 0.9])
        if rng.random() < 0.4:
            kw["div_final"] = rng.choice([10.0, 1e5])
    elif c.policy == "fit_sgdr":
        kw = {"n_cycles": rng.choice([1, 2]), "cycle_len": 1, "cycle_mult": rng.choice([2, 2, 3])}
    elif c.policy == "fine_tune":
        kw = {"epochs": rng.choice([1, 2]), "freeze_epochs": rng.choice([0, 1])}
        if rng.random() < 0.4:
            kw["lr_mult"] = rng.choice([10, 100])
        if rng.random() < 0.3:
            kw["pct_start"] = rng.choice([0.2, 0.3])
        if rng.random() < 0.3:
            kw["div"] = rng.choice([2.0, 5.0])
    elif c.policy == "sched":
        kw = {"n_epoch": n, "lr": _draw_sched(rng)}
        if rng.random() < 0.4:
            kw["mom"] = _draw_sched(rng, lo=0.8, hi=0.95)
        if rng.random() < 0.3:
            kw["sqr_mom"] = _draw_sched(rng, lo=0.9, hi=0.999)
        if rng.random() < 0.3:
            kw["wd"] = _draw_sched(rng, lo=1e-4, hi=0.1)
        if rng.random() < 0.2:
            kw["eps"] = _draw_sched(rng, lo=1e-8, hi=1e-3)
    elif c.policy == "lr_find":
        kw = {"start_lr": rng.choice([1e-7, 1e-5]), "end_lr": rng.choice([1.0, 10.0]),
              "num_it": rng.choice([5, 30, 60, 100]), "stop_div": rng.random() < 0.7,
              "suggest_funcs": rng.sample(["valley", "minimum", "steep", "slide"], rng.choice([1, 2, 4]))}
    else:
        kw = {"n_epoch": n}
    c.policy_kw = kw
    if c.policy == "fit_one_cycle" and "moms" not in kw and c.opt_kw.get("torch_opt") == "SGD":
        c.documented.append("one_cycle_mom")
    if c.policy == "lr_find":
        c.documented += ["lr_find_leaves_opt", "lr_find_short_sweep"]


def _draw_sched(rng: random.Random, lo: float = 1e-4, hi: float = 1e-2) -> list[Any]:
    """A schedule as data: ('lin'|'cos'|'exp'|'poly'|'no', start, end[, power]) or ('combine', pcts, parts)."""
    def one() -> tuple[Any, ...]:
        k = rng.choice(["lin", "cos", "exp", "poly", "no"])
        a, b = _log_uniform(rng, lo, hi), _log_uniform(rng, lo, hi)
        return (k, a, b, rng.choice([0.5, 2.0])) if k == "poly" else (k, a, b)
    if rng.random() < 0.5:
        return [one()]
    n = rng.choice([2, 3])
    cuts = sorted(rng.sample([0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75], n - 1))
    pcts = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
    return [("combine", pcts, [one() for _ in range(n)])]


def _draw_callbacks(rng: random.Random, c: Config) -> None:
    cbs: list[tuple[str, dict[str, Any]]] = []
    if rng.random() < 0.15:
        cbs.append(("GradientAccumulation", {"n_acc": rng.choice([c.bs * 2, c.bs * 3, 20, 32])}))
    if rng.random() < 0.2:
        cbs.append(("GradientClip", {"max_norm": rng.choice([0.1, 1.0]), "norm_type": rng.choice([1.0, 2.0])}))
    if c.task in ("classif", "image") and rng.random() < 0.12:
        cbs.append(("MixUp", {"alpha": rng.choice([0.4, 1.0])}))
    elif c.task == "image" and rng.random() < 0.3:
        cbs.append(("CutMix", {"alpha": 1.0}))
    monitors = ["valid_loss", "train_loss"]
    comps = [None, None, "less", "greater"]
    if rng.random() < 0.2:
        cbs.append(("EarlyStoppingCallback", {"monitor": rng.choice(monitors), "comp": rng.choice(comps),
                                              "min_delta": rng.choice([0.0, 0.0, 1e-3, 0.1]),
                                              "patience": rng.choice([0, 1, 2]),
                                              "reset_on_fit": rng.random() < 0.7}))
    if rng.random() < 0.2:
        cbs.append(("SaveModelCallback", {"monitor": rng.choice(monitors), "comp": rng.choice(comps),
                                          "min_delta": rng.choice([0.0, 1e-3]),
                                          "every_epoch": rng.choice([False, False, True, 2]),
                                          "with_opt": rng.random() < 0.5, "reset_on_fit": rng.random() < 0.7}))
        if not cbs[-1][1]["every_epoch"] and rng.random() < 0.3:
            cbs[-1][1]["at_end"] = True
    if rng.random() < 0.15:
        cbs.append(("ReduceLROnPlateau", {"monitor": rng.choice(monitors), "comp": rng.choice(comps),
                                          "min_delta": rng.choice([0.0, 1e-3]), "patience": rng.choice([0, 1]),
                                          "factor": rng.choice([2.0, 10.0]), "min_lr": rng.choice([0.0, 1e-4])}))
        if c.opt == "OptimWrapper":
            c.documented.append("reduce_lr_wrapper")
    if rng.random() < 0.2:
        cbs.append(("CSVLogger", {"append": rng.random() < 0.3}))
        if c.policy == "lr_find":
            c.documented.append("csv_lr_find")
    if c.freeze in ("freeze", "freeze_to") and rng.random() < 0.4:
        cbs.append(("BnFreeze", {}))
    if rng.random() < 0.1:
        cbs.append(("ShortEpochCallback", {"pct": rng.choice([0.3, 0.5]), "short_valid": rng.random() < 0.5}))
    names = {n for n, _ in cbs}
    if "ShortEpochCallback" in names and names & {"CSVLogger", *_TRACKERS}:
        c.documented.append("cancelled_phase")
    if rng.random() < 0.1:
        cbs.append(("CollectDataCallback", {}))
    if rng.random() < 0.1:
        cbs.append(("TerminateOnNaNCallback", {}))
        c.documented.append("nan_per_item")
    if rng.random() < 0.04:
        cbs.append(("MixedPrecision", {}))
        c.documented.append("fp16_cpu")
    c.cbs = cbs


def _draw_metrics(rng: random.Random, c: Config) -> None:
    pool = {"classif": ["accuracy", "error_rate", "Perplexity", "F1Score", "Precision", "Recall", "BalancedAccuracy",
                        "MatthewsCorrCoef", "CohenKappa", "top_k_accuracy", "HammingLoss", "Jaccard", "FBeta"]
            + (["RocAucBinary", "APScoreBinary", "BrierScore"] if c.n_classes == 2 else []),
            "image": ["accuracy", "error_rate", "F1Score"],
            "regress": ["rmse", "mae", "R2Score", "ExplainedVariance", "PearsonCorrCoef", "SpearmanCorrCoef"],
            "seg": ["foreground_acc", "Dice", "DiceMulti", "JaccardCoeff"]}[c.task]
    c.metrics = rng.sample(pool, rng.choice([0, 1, 2, 3]))
    if {"R2Score", "ExplainedVariance"} & set(c.metrics):
        c.documented.append("r2_nan")


# ------------------------------------------------------------------ building and running one side
def _data(c: Config) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    g = torch.Generator().manual_seed(c.seed)
    n = c.n_train + c.n_valid
    if c.task == "image":
        x = torch.randn(n, 2, 6, 6, generator=g)
        w = torch.randn(2, c.n_classes, generator=g)
        y: torch.Tensor = (x.mean((2, 3)) @ w + 0.3 * torch.randn(n, c.n_classes, generator=g)).argmax(1)
    elif c.task == "seg":
        x = torch.randn(n, 4, 6, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
    else:
        x = torch.randn(n, 4, generator=g)
        w = torch.randn(4, c.n_classes, generator=g)
        out = x @ w + 0.3 * torch.randn(n, c.n_classes, generator=g)
        y = out.argmax(1) if c.task == "classif" else out[:, :1]
    items = [(x[i], y[i]) for i in range(n)]
    return items[: c.n_train], items[c.n_train:]


def _model(c: Config) -> nn.Module:
    torch.manual_seed(c.seed)
    drop: list[nn.Module] = [nn.Dropout(0.2)] if c.dropout else []
    if c.task == "image":
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *drop, nn.Linear(4, c.n_classes)))
    if c.task == "seg":
        return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                             nn.Sequential(*drop, nn.Conv1d(8, c.n_classes, 1)))
    n_out = c.n_classes if c.task == "classif" else 1
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Sequential(*drop, nn.Linear(8, n_out)))


def _splitter(m: nn.Sequential) -> list[list[nn.Parameter]]:
    return [list(m[0].parameters()) + list(m[1].parameters()), list(m[3].parameters())]


def _opt_func(ns: SimpleNamespace, c: Config) -> Any:
    kw = dict(c.opt_kw)
    if c.opt == "OptimWrapper":
        topt = {"AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}[kw.pop("torch_opt")]
        return partial(ns.OptimWrapper, opt=partial(topt, **kw))
    factory = getattr(ns, c.opt)
    if ns.name == "learnloop":
        kw["implementation"] = c.implementation
    func = partial(factory, **kw)
    if c.lookahead is None:
        return func
    look, la_kw = ns.Lookahead, c.lookahead
    return lambda params, lr, **k: look(func(params, lr, **k), **la_kw)


def _sched(ns: SimpleNamespace, spec: tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind == "combine":
        return ns.combine_scheds(spec[1], [_sched(ns, s) for s in spec[2]])
    if kind == "poly":
        return ns.SchedPoly(spec[1], spec[2], spec[3])
    if kind == "no":
        return ns.SchedNo(spec[1], spec[2])
    return {"lin": ns.SchedLin, "cos": ns.SchedCos, "exp": ns.SchedExp}[kind](spec[1], spec[2])


def _callback(ns: SimpleNamespace, name: str, kw: dict[str, Any]) -> Any:
    kw = dict(kw)
    if "comp" in kw:
        kw["comp"] = {None: None, "less": np.less, "greater": np.greater}[kw["comp"]]
    if name == "CSVLogger":
        kw["fname"] = "history.csv"
    return getattr(ns, name)(**kw)


def _metric(ns: SimpleNamespace, name: str) -> Any:
    m = getattr(ns, name)
    if m is None:
        raise SkipConfig(f"{ns.name} has no {name}")
    if name in ("F1Score", "Precision", "Recall", "Jaccard"):
        return m(average="macro")
    if name == "FBeta":
        return m(beta=0.5, average="macro")
    if name[0].isupper():  # a class: the metric is an instance
        return m()
    if name == "top_k_accuracy":
        return partial(m, k=2)
    return m


class SkipConfig(Exception):
    """A configuration this fuzzer cannot compare (the message says why)."""


def _lr(c: Config) -> Any:
    if isinstance(c.lr, tuple | list) and c.lr[0] == "list":
        return list(c.lr[1:]) if c.lr[-1] != "array" else np.array(c.lr[1:-1])
    if isinstance(c.lr, tuple | list):
        return slice(*c.lr[1:]) if len(c.lr) == 3 else slice(c.lr[1])
    return c.lr


def run(ns: SimpleNamespace, c: Config, tmp: Path) -> dict[str, Any]:
    """Train configuration `c` with library `ns` in directory `tmp`; what it leaves behind, or the error."""
    random.seed(c.seed)
    np.random.seed(c.seed % 2**32)
    train, valid = _data(c)
    dls = ns.make_dls(train, valid, c.bs)
    loss = getattr(ns.losses, c.loss)(axis=1) if c.task == "seg" else getattr(ns.losses, c.loss)()
    metrics = [_metric(ns, m) for m in c.metrics]
    cbs = [_callback(ns, n, kw) for n, kw in c.cbs]
    out: dict[str, Any] = {"stdout": "", "error": None}
    buf = io.StringIO()
    learn = None
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = ns.Learner(dls, _model(c), loss_func=loss, opt_func=_opt_func(ns, c), lr=c.learner_lr,
                               cbs=cbs if c.cbs_on_learner else None,
                               splitter=_splitter if c.split else _trainable, metrics=metrics, path=tmp,
                               wd=c.learner_wd, moms=c.moms or (0.95, 0.85, 0.95), wd_bn_bias=c.wd_bn_bias,
                               train_bn=c.train_bn)
            learn.remove_cb(ns.progress_cb)
            learn.logger = _noop
            for flag, value in c.recorder.items():
                setattr(learn.recorder, flag, value)
            if c.freeze == "freeze":
                learn.freeze()
            elif c.freeze == "freeze_to":
                learn.freeze_to(1)
            elif c.freeze == "unfreeze":
                learn.freeze()
                learn.unfreeze()
            torch.manual_seed(c.seed)
            fit_cbs = [] if c.cbs_on_learner else cbs
            out["result"] = _fit(ns, c, c.policy, c.policy_kw, learn, fit_cbs)
            if c.second is not None:
                _fit(ns, c, c.second[0], c.second[1], learn, fit_cbs)
    except SkipConfig:
        raise
    except Exception as e:  # noqa: BLE001 -- a refused configuration is a result to compare
        out["error"] = type(e).__name__
        out["error_mro"] = [k.__name__ for k in type(e).__mro__]
        out["error_msg"] = f"{e}"[:300]
        out["traceback"] = traceback.format_exc()[-2000:]
    out["stdout"] = buf.getvalue()
    if learn is not None:
        out.update(_collect(learn, tmp))
        collected = [cb.__dict__.get("data") for cb in cbs if type(cb).__name__ == "CollectDataCallback"]
        if collected and collected[0] is not None:
            out["collected"] = [_num(list(_flat(d))) for d in collected[0]]
        if out["error"] is None:
            out.update(_inference(learn))
    return out


def _trainable(m: nn.Module) -> list[nn.Parameter]:
    return [p for p in m.parameters() if p.requires_grad]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _fit(ns: SimpleNamespace, c: Config, policy: str, policy_kw: dict[str, Any], learn: Any, cbs: list[Any]) -> Any:
    kw = dict(policy_kw)
    lr = _lr(c)
    if policy == "fit":
        return learn.fit(kw.pop("n_epoch"), lr, cbs=cbs, **kw)
    if policy == "fit_one_cycle":
        return learn.fit_one_cycle(kw.pop("n_epoch"), lr, cbs=cbs, **kw)
    if policy == "fit_flat_cos":
        return learn.fit_flat_cos(kw.pop("n_epoch"), lr, cbs=cbs, **kw)
    if policy == "fit_sgdr":
        return learn.fit_sgdr(kw.pop("n_cycles"), kw.pop("cycle_len"), lr, cbs=cbs, **kw)
    if policy == "fine_tune":
        base_lr = lr if isinstance(lr, float) else 2e-3  # fine_tune's base_lr is a number
        return learn.fine_tune(kw.pop("epochs"), base_lr, cbs=cbs, **kw) if lr is not None else \
            learn.fine_tune(kw.pop("epochs"), cbs=cbs, **kw)
    if policy == "sched":
        scheds = {k: _sched(ns, v[0]) for k, v in kw.items() if k != "n_epoch"}
        return learn.fit(kw["n_epoch"], cbs=[ns.ParamScheduler(scheds), *cbs])
    if policy == "lr_find":
        funcs = tuple(getattr(ns, f) for f in kw.pop("suggest_funcs"))
        with learn.added_cbs(cbs):
            res = learn.lr_find(**kw, show_plot=False, suggest_funcs=funcs)
        return [float(x) for x in res]
    raise AssertionError(policy)


def _num(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().tolist()
    if isinstance(x, np.ndarray | np.generic):
        return np.asarray(x, dtype=float).tolist()
    if isinstance(x, bool | int | float) or x is None:
        return x
    if isinstance(x, list | tuple):
        return [_num(v) for v in x]
    return repr(x)


def _collect(learn: Any, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    model = learn.model
    out["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out["requires_grad"] = [p.requires_grad for p in model.parameters()]
    out["training"] = model.training
    # pct_train is left out: learnloop's ends at exactly 1.0 (documented), fastai's sum a rounding away.
    loop_attrs = ("epoch", "n_epoch", "iter", "n_iter", "train_iter", "training")
    out["loop"] = {k: _num(getattr(learn, k, None)) for k in loop_attrs}
    opt = getattr(learn, "opt", None)
    out["has_opt"] = opt is not None
    if opt is not None:
        out["hypers"] = [{k: _num(v) for k, v in h.items()} for h in _hypers(opt)]
        out["opt_state"] = _opt_state(opt, model)
    rec = getattr(learn, "recorder", None)
    if rec is not None:
        out["values"] = [_num(list(v)) for v in getattr(rec, "values", [])]
        out["losses"] = [_num(v) for v in getattr(rec, "losses", [])]
        out["lrs"] = [_num(v) for v in getattr(rec, "lrs", [])]
        hps = getattr(rec, "hps", None) or {}
        out["hps"] = {k: [_num(v) for v in vs] for k, vs in hps.items()}
        out["metric_names"] = list(getattr(rec, "metric_names", []))
    files: dict[str, Any] = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            rel = str(f.relative_to(tmp))
            if f.suffix == ".csv":
                files[rel] = _csv_without_time(f.read_text())
            elif f.suffix == ".pth":
                files[rel] = _pth(f)
            else:
                files[rel] = f.stat().st_size
    out["files"] = files
    return out


def _inference(learn: Any) -> dict[str, Any]:
    """`validate()` and `get_preds(with_loss=True)` after training (their output is not compared)."""
    out: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["validate"] = _num(list(learn.validate()))
            preds, targs, losses = learn.get_preds(with_loss=True)
            out["get_preds"] = {"preds": preds.detach().clone(), "targs": targs.detach().clone(),
                                "losses": losses.detach().clone()}
        except Exception as e:  # noqa: BLE001 -- compared as a result
            out["validate"] = f"raised {type(e).__name__}: {e}"[:200]
    return out


def _hypers(opt: Any) -> list[dict[str, Any]]:
    hyp = getattr(opt, "hypers", None)
    if hyp is None and hasattr(opt, "opt"):
        hyp = getattr(opt.opt, "hypers", None)
    return list(hyp or [])


def _opt_state(opt: Any, model: nn.Module) -> list[dict[str, Any]]:
    inner = opt
    while not hasattr(inner, "state") and hasattr(inner, "opt"):
        inner = inner.opt
    state = getattr(inner, "state", {})
    res = []
    for p in model.parameters():
        try:
            st = state[p]
        except (KeyError, TypeError):
            st = {}
        res.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else _num(v)) for k, v in st.items()
                    if k not in ("do_wd", "force_train")})
    slow = getattr(opt, "slow_weights", None)
    if slow is not None:
        res.append({"slow_weights": [[s.detach().clone() for s in pg] for pg in slow],
                    "count": getattr(opt, "count", None)})
    return res


def _flat(x: Any) -> list[Any]:
    if isinstance(x, list | tuple):
        return [y for v in x for y in _flat(v)]
    return [x]


def _csv_without_time(text: str) -> list[list[str]]:
    rows = [r.split(",") for r in text.strip().splitlines()]
    if not rows:
        return []
    header = rows[0]
    keep = [i for i, h in enumerate(header) if h != "time"]
    return [[r[i] if i < len(r) else "<missing>" for i in keep] for r in rows]


def _pth(f: Path) -> Any:
    obj = torch.load(f, weights_only=False, map_location="cpu")
    if isinstance(obj, dict) and "model" in obj:
        return {"model": {k: v for k, v in obj["model"].items()}, "has_opt": "opt" in obj}
    return obj


# ------------------------------------------------------------------ comparing the two sides
@dataclass
class Verdict:
    """The first difference found (exact, within tolerance, or beyond it) and every difference as text."""

    worst: str = "same"  # same | close | diff
    first: str | None = None
    kind: str | None = None
    notes: list[str] = field(default_factory=list)

    found: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, level: str, kind: str, text: str) -> None:
        self.notes.append(f"[{level}] {kind}: {text}")
        self.found.append((level, kind, text))
        rank = {"same": 0, "close": 1, "diff": 2}
        if rank[level] > rank[self.worst]:
            self.worst, self.first, self.kind = level, text, kind

    def classify(self, c: Config) -> None:
        """Name the first difference no documented difference drawn in `c` explains; else the first one."""
        worst = [(k, t) for lvl, k, t in self.found if lvl == self.worst]
        for k, t in worst:
            if _documented(c, k, t) == k:
                self.kind, self.first = k, t
                return
        if worst:
            self.kind, self.first = _documented(c, worst[0][0], worst[0][1]), worst[0][1]


def _close(a: Any, b: Any, path: str, v: Verdict, kind: str) -> None:
    """Compare nested values; record an inexact but close pair as 'close', anything else as 'diff'."""
    if isinstance(a, torch.Tensor) and a.ndim == 0 and isinstance(b, float | int):
        a = a.item()
    if isinstance(b, torch.Tensor) and b.ndim == 0 and isinstance(a, float | int):
        b = b.item()
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            v.add("diff", kind, f"{path}: {type(a).__name__} vs {type(b).__name__}")
            return
        if a.shape != b.shape:
            v.add("diff", kind, f"{path}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            return
        if a.dtype != b.dtype and not (a.is_floating_point() and b.is_floating_point()):
            v.add("diff", kind, f"{path}: dtype {a.dtype} vs {b.dtype}")
            return
        if torch.equal(a, b):
            return
        af, bf = a.double(), b.double()
        if torch.allclose(af, bf, rtol=RTOL, atol=ATOL, equal_nan=True):
            if not torch.equal(af.nan_to_num(1e300), bf.nan_to_num(1e300)):
                v.add("close", kind, f"{path}: max abs diff {(af - bf).abs().max().item():.3g}")
            return
        v.add("diff", kind, f"{path}: max abs diff {(af - bf).abs().nan_to_num(float('inf')).max().item():.3g}")
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            only_a, only_b = sorted(map(str, set(a) - set(b))), sorted(map(str, set(b) - set(a)))
            v.add("diff", kind, f"{path}: keys {only_a} vs {only_b}")
        for k in sorted(set(a) & set(b), key=str):
            _close(a[k], b[k], f"{path}.{k}", v, kind)
        return
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            v.add("diff", kind, f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _close(x, y, f"{path}[{i}]", v, kind)
            if v.worst == "diff" and len(v.notes) > 40:
                return
        return
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        fa, fb = float(a), float(b)
        if fa == fb or (math.isnan(fa) and math.isnan(fb)):
            return
        if math.isclose(fa, fb, rel_tol=RTOL, abs_tol=ATOL):
            v.add("close", kind, f"{path}: {fa!r} vs {fb!r}")
        else:
            v.add("diff", kind, f"{path}: {fa!r} vs {fb!r}")
        return
    if isinstance(a, str) and isinstance(b, str):
        if a != b:
            na, nb = _maybe_float(a), _maybe_float(b)
            if na is not None and nb is not None:
                _close(na, nb, path, v, kind)
            else:
                v.add("diff", kind, f"{path}: {a!r} vs {b!r}")
        return
    if a != b:
        v.add("diff", kind, f"{path}: {a!r} vs {b!r}")


def _maybe_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


_TRACKER = re.compile(r"(Better model found|No improvement since|reducing lr|Epoch \d+: reducing)")


def compare(c: Config, fa: dict[str, Any], ll: dict[str, Any]) -> Verdict:
    """Every difference between the fastai run `fa` and the learnloop run `ll`."""
    v = Verdict()
    if fa["error"] or ll["error"]:
        if fa["error"] and ll["error"]:
            if fa["error"] not in ll["error_mro"]:
                v.add("diff", "error_type", f"fastai {fa['error']} vs learnloop {ll['error']}: {ll['error_msg']}")
            return v
        side = "fastai" if fa["error"] else "learnloop"
        msg = fa.get("error_msg") if fa["error"] else ll.get("error_msg")
        v.add("diff", f"refused_by_{side}", f"{fa['error'] or ll['error']}: {msg}")
        return v
    _close(fa.get("result"), ll.get("result"), "lr_find suggestions", v, "lr_find_suggestions")
    tr_fa = [ln for ln in fa["stdout"].splitlines() if _TRACKER.search(ln)]
    tr_ll = [ln for ln in ll["stdout"].splitlines() if _TRACKER.search(ln)]
    _close(tr_fa, tr_ll, "tracker messages", v, "tracker")
    other_fa = [ln for ln in fa["stdout"].splitlines() if not _TRACKER.search(ln)]
    other_ll = [ln for ln in ll["stdout"].splitlines() if not _TRACKER.search(ln)]
    _close(other_fa, other_ll, "other output", v, "stdout")
    _close(fa.get("metric_names"), ll.get("metric_names"), "metric_names", v, "metric_names")
    _close(fa.get("values"), ll.get("values"), "recorder.values", v, "values")
    _close(fa.get("lrs"), ll.get("lrs"), "recorder.lrs", v, "lrs")
    _close(fa.get("hps"), ll.get("hps"), "recorder.hps", v, "hps")
    _close(fa.get("losses"), ll.get("losses"), "recorder.losses", v, "losses")
    _close(fa["weights"], ll["weights"], "weights", v, "weights")
    _close(fa["requires_grad"], ll["requires_grad"], "requires_grad", v, "freezing")
    _close(fa["training"], ll["training"], "model.training", v, "model_mode")
    _close(fa["loop"], ll["loop"], "learner", v, "loop_state")
    if c.policy != "lr_find":
        _close(fa["has_opt"], ll["has_opt"], "has_opt", v, "opt")
        _close(fa.get("hypers"), ll.get("hypers"), "opt.hypers", v, "hypers")
        _close(fa.get("opt_state"), ll.get("opt_state"), "opt.state", v, "opt_state")
    _close(fa["files"], ll["files"], "files", v, "files")
    _close(fa.get("collected"), ll.get("collected"), "CollectDataCallback.data", v, "collect_data")
    _close(fa.get("validate"), ll.get("validate"), "validate()", v, "validate")
    _close(fa.get("get_preds"), ll.get("get_preds"), "get_preds()", v, "get_preds")
    return v


# ------------------------------------------------------------------ driver
_LIBS: dict[str, SimpleNamespace] = {}


def _libs() -> tuple[SimpleNamespace, SimpleNamespace]:
    if not _LIBS:
        torch.set_num_threads(1)
        _LIBS["fastai"], _LIBS["learnloop"] = _fastai(), _learnloop()
    return _LIBS["fastai"], _LIBS["learnloop"]


def fuzz_one(seed: int, show: bool = False) -> dict[str, Any]:
    """Draw, run under both libraries, compare: one JSON-able line."""
    fa_ns, ll_ns = _libs()
    c = draw(seed)
    try:
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            fa = run(fa_ns, c, Path(d1))
            ll = run(ll_ns, c, Path(d2))
    except SkipConfig as e:
        return {"seed": seed, "status": "skipped", "kind": "skipped", "first_diff": str(e)}
    v = compare(c, fa, ll)
    v.classify(c)
    kind = v.kind if v.worst != "same" else None
    if show:
        print(json.dumps(c.__dict__, indent=1, default=str))
        for side, r in (("fastai", fa), ("learnloop", ll)):
            if r["error"]:
                print(f"--- {side} raised:\n{r['traceback']}")
            print(f"--- {side} values: {r.get('values')}")
        print("\n".join(v.notes) or "no difference")
    return {"seed": seed, "status": v.worst, "kind": kind, "first_diff": v.first}


_NUMERIC = {"values", "losses", "weights", "opt_state", "lr_find_suggestions", "files", "collect_data", "tracker",
            "lrs", "hps", "hypers", "validate", "get_preds"}
# Which documented difference can explain a difference of each kind.
_ROUNDING = _NUMERIC - {"lrs", "hps", "hypers", "tracker"}
_ROUNDING_NAMES = {"fused_rounding", "lamb_larc_rounding", "rmsprop_eps", "fp16_cpu"}
_EXPLAINS = {"fused_rounding": _ROUNDING, "lamb_larc_rounding": _ROUNDING, "rmsprop_eps": _ROUNDING | {"hypers"},
             "fp16_cpu": _NUMERIC, "one_cycle_mom": {"hps", "hypers", "opt_state"},
             "lr_find_leaves_opt": {"has_opt", "hypers", "model_mode"}, "reduce_lr_wrapper": _NUMERIC,
             "csv_lr_find": {"files"}, "fit_never_trains": {"refused_by_fastai"},
             "start_epoch_skipped": _NUMERIC | {"refused_by_fastai"},
             "cancelled_phase": _NUMERIC | {"refused_by_fastai", "has_opt"},
             "tracker_in_validate": {"validate", "get_preds"}, "lr_find_short_sweep": {"refused_by_fastai"},
             "nan_per_item": {"validate", "get_preds"}, "r2_nan": {"refused_by_fastai", "validate", "get_preds"}}


# What fastai's error says when a documented difference makes fastai's side fail.
_ERROR_SAYS = {"r2_nan": ("Input contains NaN",), "fit_never_trains": ("No such file",),
               "lr_find_short_sweep": ("numerical gradient", "out of range", "out of bounds", "numel() == 0"),
               "cancelled_phase": ("out of range", "out of bounds"), "start_epoch_skipped": ("out of range",)}

# The documented difference named when several explain a difference: the specific ones before those of rounding,
# the one with the larger effect first.
_PRIORITY = ["cancelled_phase", "start_epoch_skipped", "tracker_in_validate", "nan_per_item", "csv_lr_find",
             "lr_find_leaves_opt", "lr_find_short_sweep", "fit_never_trains", "r2_nan", "reduce_lr_wrapper",
             "one_cycle_mom", "fp16_cpu", "rmsprop_eps", "lamb_larc_rounding", "fused_rounding"]


def _documented(c: Config, kind: str | None, text: str = "") -> str | None:
    """`kind`, or `documented:<name>(kind)` when a deliberate difference drawn in `c` explains it (and, for an
    error, the error's message says so)."""
    if kind == "error_type":
        return "documented:error_type"
    trackers = any(n in _TRACKERS for n, _ in c.cbs)
    for name in sorted(c.documented, key=lambda n: _PRIORITY.index(n) if n in _PRIORITY else len(_PRIORITY)):
        explains = set(_EXPLAINS.get(name, ()))
        if (trackers or c.policy == "lr_find") and name in _ROUNDING_NAMES:
            # a rounding difference can flip a tracker's decision, or end lr_find's sweep at another batch
            explains |= {"tracker", "lrs", "hypers", "loop_state"}
        says = _ERROR_SAYS.get(name, ("",))
        if kind in explains and (kind != "refused_by_fastai" or any(w in text for w in says)):
            return f"documented:{name}({kind})"
    return kind


def _safe(seed: int) -> dict[str, Any]:
    try:
        return fuzz_one(seed)
    except Exception as e:  # noqa: BLE001 -- a crash of the harness is reported, not fatal
        return {"seed": seed, "status": "diff", "kind": "harness_error", "first_diff": f"{type(e).__name__}: {e}"}


def _summary(rows: list[dict[str, Any]]) -> str:
    by_status = Counter(r["status"] for r in rows)
    by_kind = Counter((r["status"], _base_kind(r["kind"])) for r in rows if r["status"] != "same")
    lines = [f"{len(rows)} seeds: " + ", ".join(f"{s} {by_status[s]}" for s in ("same", "close", "diff", "skipped"))]
    lines.append(f"{'status':8} {'kind':50} count")
    for (status, kind), n in sorted(by_kind.items(), key=lambda kv: (kv[0][0], -kv[1])):
        lines.append(f"{status:8} {kind:50} {n}")
    return "\n".join(lines)


def _base_kind(kind: str | None) -> str:
    return re.sub(r"\(.*\)$", "", kind or "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("start", type=int)
    ap.add_argument("stop", type=int)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--show", type=int, default=None, help="print one seed's configuration and differences")
    args = ap.parse_args(argv)
    if args.show is not None:
        print(json.dumps(fuzz_one(args.show, show=True)))
        return 0
    seeds = range(args.start, args.stop)
    rows: list[dict[str, Any]] = []
    sink = args.out.open("w") if args.out else sys.stdout
    try:
        if args.procs > 1:
            with multiprocessing.get_context("spawn").Pool(args.procs) as pool:
                results = pool.imap(_safe, seeds)
                for row in results:
                    rows.append(row)
                    print(json.dumps(row), file=sink, flush=True)
        else:
            for seed in seeds:
                row = _safe(seed)
                rows.append(row)
                print(json.dumps(row), file=sink, flush=True)
    finally:
        if args.out:
            sink.close()
    print(_summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
