"""Differential fuzzer: learnloop's training loop against fastai 2.8's, scenario by scenario.

Each seed builds one random scenario from ``random.Random(seed)``: synthetic classification or regression tensors
(a last partial batch, sometimes an empty validation set), a small ``nn.Sequential``, a loss, metrics, an optimizer
(fastai's ``Adam``/``SGD`` or ``OptimWrapper`` over ``torch.optim.SGD``/``AdamW``), 1-4 user callbacks (random
``order``, ``run_before``/``run_after``, ``run_train``/``run_valid``, given to the Learner, added with ``add_cb`` or
passed as ``cbs=`` to each call) that log every event they see and, at chosen events, raise one of the seven cancel
exceptions or a plain error, change ``loss_grad``/``pred``/``xb``/``yb``, call ``validate()``/``get_preds()``, remove
or add callbacks or set ``self.run = False``; sometimes trackers (``SaveModelCallback``, ``EarlyStoppingCallback``,
``ReduceLROnPlateau``, on the Learner or in each call's ``cbs=``); then 1-3 calls (``fit``, ``fit_one_cycle``,
``fit_flat_cos``, ``fit_sgdr``, ``fine_tune`` with its options, ``lr_find``, ``validate``, ``get_preds``,
``predict``, ``learn(event)``).

The data come one of two ways. Either each library's own loaders, unshuffled (fastai's ``DataLoader`` and a torch
one); or the same torch ``DataLoader``s in both (fastai's ``DataLoaders`` wraps them), the training one mostly
shuffled, from torch's global generator or from a ``generator=`` of its own, the validation one sometimes, with a
``Dropout`` in the model, and on learnloop's side only, sometimes, a ``CheckpointCallback`` (docs/checkpoints.md:
it draws no random number). Both runs start from the same torch random state, so they must draw the same batch
orders and dropout masks: any extra or missing draw shows. Over torch loaders fastai's ``get_preds(ds_idx)`` (its
``dl.new``) and ``predict`` (its ``test_dl``) need fastai's own loaders, so there it is given the torch
``DataLoader`` over the dataset in order that learnloop's reads, and the fastai ``DataLoader`` of the item that its
``test_dl`` makes; each draws once from torch's generator, as any DataLoader's iteration.

The scenario runs once under each library, from the same initial weights and batches, and the two runs are
compared: the callbacks' event logs (event, training, epoch, iter, train_iter, pct_train, n_iter, and at the
inner-loop events the batch (the sum of ``xb[0]``) and ``loss``), each call's result or error (type: learnloop's may
subclass fastai's; the callback and event fastai's message names must be in learnloop's message or notes), the
Recorder's values, losses, lrs, iters, metric_names and final_record, the learner's ``epoch``, ``train_iter``,
``n_epoch``, ``pct_train``, ``iter``, ``n_iter``, ``training``, ``smooth_loss``, the model's mode, the optimizer's
hyper-parameters, the trackers' ``best`` and ``wait`` and (over torch loaders) the state of torch's generator and
of the loader's after each call, and the final weights (``allclose``, rtol 1e-5).

Run it with the benchmark environment, which has both libraries::

    PYTHONPATH=$PWD/src nice -n 10 /tmp/benchenv/bin/python tools/fuzz/loop_vs_fastai.py 0 3000 --out fuzz.jsonl
    PYTHONPATH=$PWD/src /tmp/benchenv/bin/python tools/fuzz/loop_vs_fastai.py 0 0 --show 17

``START STOP`` is the range of seeds; ``--procs N`` runs N worker processes; ``--out`` writes one JSON line per seed
(``seed``, ``status``: same/diff/skipped, ``kind``, ``first_diff``); a summary table ends the run. ``--show SEED``
prints the scenario and both runs side by side.

A scenario fastai cannot run itself (it raises an error no callback injected, and learnloop does not raise the same
type) is ``skipped``, with fastai's error (and the callback and event it names) as the kind: fastai's bugs mostly,
but also learnloop's silent ones, so the skipped kinds are worth a look too. A difference that
docs/porting-from-fastai.md lists as deliberate is counted apart, under a ``documented: ...`` kind:

- ``documented: run_before/run_after honoured``: the scenario's ``run_before``/``run_after`` constraints change the
  order fastai's sort by ``order`` gives, and learnloop honours them (fastai ignores them);
- ``documented: removed callback keeps run_train/run_valid``: a callback removed during an inner-loop event is
  still called at that event; fastai's (its learner gone) ignores ``run_train``/``run_valid`` then;
- ``documented: get_preds where fastai fails``: what ``get_preds``/``predict`` return when a callback cancels the
  validation phase or a batch during them (fastai raises, or gathers the previous batch again, or returns ``[]``);
- ``documented: fit_flat_cos skips start_epoch``: fastai's ``fit_flat_cos`` passes ``start_epoch=0`` on;
- ``documented: a new Recorder has its lists``: ``recorder.values`` and the others are ``[]`` before a first
  ``before_fit`` reached the Recorder, where fastai's do not exist yet;
- ``documented: fused optimizer rounds differently``: numbers (weights, recorded losses, results) apart in the last
  digits under learnloop's default ``Adam`` and momentum ``SGD``, which use fused kernels (the ``adam_foreach`` and
  plain ``sgd`` scenarios must agree to rtol 1e-5);
- ``documented: lr_find leaves the optimizer, the model's mode and the trackers as they were``: fastai's leaves the
  sweep's hyper-parameters (and an optimizer it made), the model in training mode and the trackers reset, which
  the calls after it that set no hyper-parameter show too;
- ``documented: lr_find puts the weights back however the sweep ends``: fastai's keeps the sweep's weights when an
  error escapes it or a callback ran ``validate()`` during it;
- ``documented: trackers do nothing outside fit``: in ``validate()``/``get_preds()``/``predict`` fastai's judge the
  short row (and ``SaveModelCallback`` loads a model, making an optimizer);
- ``documented: trackers leave the epoch of a validate() inside a fit unjudged``: fastai's judge the validate()'s
  row, which changes what they do after;
- ``documented: trackers skip what a cancelled phase left out of its row``: fastai's read another column of the
  short row (or fail: a skip);
- ``documented: ReduceLROnPlateau lowers an OptimWrapper's lr``: fastai's lowers a copy of its hyper-parameters;
- ``documented: a new tracker has its wait``: ``wait`` is 0 before the first fit, where fastai's does not exist yet.

A run still going after 20 s is stopped: fastai's (a ``validate()`` after a fit in which a callback called
``get_preds()`` during a training batch waits on fastai's lock for good) makes the scenario ``skipped``, learnloop's
a ``learnloop hangs`` diff. Callbacks call ``validate()``/``get_preds()`` only from a fit's events and not from
within each other: fastai's lock makes a nested one hang.

The skipped kinds seen so far are fastai's failures, where learnloop does better (the porting guide lists all but the
ProgressCallback's): its trackers
read a row a cancelled phase left short (IndexError, or a TypeError on its None) or load a ``model.pth`` no epoch
saved (FileNotFoundError), also from a ``validate()`` a callback called (the kind then names that callback and
event), ``fit_sgdr(cycle_mult=1)`` divides by zero, ``lr_find``'s valley has too few points after a sweep cut short
(IndexError), its Recorder fails at a hand-fired ``after_epoch`` before any fit (no ``values`` yet), its
ProgressCallback at a ``before_train`` fired by hand (no ``dl``), at an ``after_train`` whose ``before_train`` a
callback cancelled or a nested ``get_preds`` closed the bar of (no ``pbar``) and at a ``before_epoch`` after a nested
``validate()`` (fastprogress's ``start_t``), and a nested ``get_preds`` gathers past its batches (IndexError) or hangs
on fastai's lock (above).

The fused-rounding, new-Recorder, new-tracker and lr_find kinds are differences of one value: the comparison goes on
past them, and the scenario counts under them only when nothing else differs."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import random
import re
import signal
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EVENTS = (
    "after_create before_fit before_epoch before_train before_batch after_pred after_loss before_backward "
    "after_cancel_backward after_backward before_step after_cancel_step after_step after_cancel_batch after_batch "
    "after_cancel_train after_train before_validate after_cancel_validate after_validate after_cancel_epoch "
    "after_epoch after_cancel_fit after_fit"
).split()
INNER = set("before_batch after_pred after_loss before_backward after_cancel_backward after_backward before_step "
            "after_step after_cancel_batch after_batch".split())
CANCELS = ("Fit", "Epoch", "Train", "Valid", "Batch", "Backward", "Step")
# Events at which an action is drawn, weighted towards those where the cancel rules are subtle.
ACTION_EVENTS = EVENTS[1:] + ["before_batch", "after_loss", "before_backward", "before_step", "after_batch"] * 2
ACTIONS = (["cancel"] * 6 + ["error", "loss_grad", "pred", "xb", "yb", "validate", "get_preds", "remove_self",
           "remove_other", "add_cb", "run_false"])
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT = 20  # seconds per library and scenario (a run takes well under 2)


# ----------------------------------------------------------------------------------------------- the two libraries
@dataclass
class Lib:
    """What a scenario needs from one library."""

    name: str
    Learner: Any
    Callback: type
    cancel: dict[str, type]
    losses: dict[str, Callable[[], Any]]
    metrics: dict[str, Callable[[], Any]]
    opts: dict[str, Any]
    make_dls: Callable[[TensorDataset, TensorDataset, dict[str, Any]], Any]
    trackers: dict[str, type]


def _sq_err(inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """A metric for AvgMetric: the mean squared difference."""
    return ((inp.float().view(-1) - targ.float().view(-1)) ** 2).mean()


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _torch_loaders(train: TensorDataset, valid: TensorDataset, sc: dict[str, Any]) -> tuple[DataLoader, DataLoader]:
    """The torch DataLoaders of a `data: torch` scenario: the training one shuffled (from torch's global generator or
    one of its own), the validation one sometimes; both libraries get these."""
    gen = torch.Generator().manual_seed(sc["seed"] + 1) if sc["gen"] else None
    return (DataLoader(train, batch_size=sc["bs"], shuffle=sc["shuffle"], generator=gen),
            DataLoader(valid, batch_size=sc["bs"], shuffle=sc["valid_shuffle"]))


def _fastai_lib() -> Lib:
    import fastai.callback.core as fc
    import fastai.callback.schedule  # noqa: F401 - adds fit_one_cycle, fit_sgdr, lr_find... to Learner
    import fastai.callback.tracker as ft
    import fastai.learner as fl
    import fastai.losses as flo
    import fastai.metrics as fm
    import fastai.optimizer as fo
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FastaiDL

    def make_dls(train: TensorDataset, valid: TensorDataset, sc: dict[str, Any]) -> Any:
        if sc["data"] == "torch":  # fastai's DataLoaders over torch's loaders (no device: the CPU)
            return DataLoaders(*_torch_loaders(train, valid, sc))
        dev = torch.device("cpu")
        return DataLoaders(FastaiDL(train, bs=sc["bs"], device=dev), FastaiDL(valid, bs=sc["bs"], device=dev),
                           device=dev)

    return Lib(
        "fastai", fl.Learner, fc.Callback, {c: getattr(fc, f"Cancel{c}Exception") for c in CANCELS},
        _losses(flo), _metrics(fm), {"adam": fo.Adam, "adam_foreach": fo.Adam, "sgd": fo.SGD,
                                     "sgd_mom": partial(fo.SGD, mom=0.9), **_wrapped(fo.OptimWrapper)}, make_dls,
        {"save": ft.SaveModelCallback, "early": ft.EarlyStoppingCallback, "plateau": ft.ReduceLROnPlateau},
    )


def _learnloop_lib() -> Lib:
    import learnloop as ll
    import learnloop.losses as llo
    import learnloop.metrics as lm
    import learnloop.optimizer as lopt

    def make_dls(train: TensorDataset, valid: TensorDataset, sc: dict[str, Any]) -> Any:
        if sc["data"] == "torch":
            return ll.DataLoaders(*_torch_loaders(train, valid, sc), device="cpu")
        return ll.DataLoaders(DataLoader(train, batch_size=sc["bs"]), DataLoader(valid, batch_size=sc["bs"]),
                              device="cpu")

    return Lib(
        "learnloop", ll.Learner, ll.Callback, {c: getattr(ll, f"Cancel{c}Exception") for c in CANCELS},
        _losses(llo), _metrics(lm), {"adam": lopt.Adam, "adam_foreach": partial(lopt.Adam, implementation="foreach"),
                                     "sgd": lopt.SGD, "sgd_mom": partial(lopt.SGD, mom=0.9),
                                     **_wrapped(ll.OptimWrapper)}, make_dls,
        {"save": ll.SaveModelCallback, "early": ll.EarlyStoppingCallback, "plateau": ll.ReduceLROnPlateau},
    )


def _wrapped(optim_wrapper: Any) -> dict[str, Any]:
    return {"wrap_sgd": partial(optim_wrapper, opt=torch.optim.SGD),
            "wrap_adamw": partial(optim_wrapper, opt=torch.optim.AdamW)}


def _losses(mod: Any) -> dict[str, Callable[[], Any]]:
    return {"CrossEntropyLossFlat": mod.CrossEntropyLossFlat, "nn.CrossEntropyLoss": nn.CrossEntropyLoss,
            "MSELossFlat": mod.MSELossFlat, "nn.MSELoss": nn.MSELoss, "L1LossFlat": mod.L1LossFlat}


def _metrics(mod: Any) -> dict[str, Callable[[], Any]]:
    return {"accuracy": lambda: mod.accuracy, "error_rate": lambda: mod.error_rate, "rmse": lambda: mod.rmse,
            "mae": lambda: mod.mae, "avg_sq_err": lambda: mod.AvgMetric(_sq_err)}


# ----------------------------------------------------------------------------------------------- scenarios
def make_scenario(seed: int) -> dict[str, Any]:
    """Draw one scenario (plain data, JSON-able) from `random.Random(seed)`."""
    r = random.Random(seed)
    classif = r.random() < 0.5
    sc: dict[str, Any] = {"seed": seed, "classif": classif, "n_in": r.randint(2, 5), "n_out": r.randint(2, 4)}
    sc["n_train"] = r.choice([r.randint(1, 12), r.randint(8, 40)])
    sc["n_valid"] = 0 if r.random() < 0.1 else r.randint(1, 24)
    sc["bs"] = r.choice([1, 2, 3, 4, 5, 8, 16])
    sc["hidden"] = r.choice([0, 3, 8])  # 0: one Linear after a Linear feature layer
    sc["bn"] = r.random() < 0.1
    if classif:
        sc["loss"] = r.choice(["CrossEntropyLossFlat", "nn.CrossEntropyLoss"])
        sc["metrics"] = r.sample(["accuracy", "error_rate", "avg_sq_err"], r.randint(0, 2))
    else:
        sc["loss"] = r.choice(["MSELossFlat", "nn.MSELoss", "L1LossFlat"])
        sc["metrics"] = r.sample(["rmse", "mae", "avg_sq_err"], r.randint(0, 2))
    sc["train_metrics"] = r.random() < 0.2
    sc["opt"] = r.choice(["adam", "adam_foreach", "adam_foreach", "sgd", "sgd_mom", "wrap_sgd", "wrap_adamw"])
    sc["lr"] = r.choice([1e-3, 1e-2, 3e-2, 0.1])
    sc["wd"] = r.choice([None, None, 0.0, 0.1])
    sc["cbs"] = [_make_cb_spec(r, i) for i in range(r.randint(1, 4))]
    sc["ops"] = [_make_op(r, sc) for _ in range(r.randint(1, 3))]
    # torch DataLoaders in both libraries, the training one shuffled: the random draws must then be the same.
    sc["data"] = "torch" if r.random() < 0.4 else "fastai"
    torch_data = sc["data"] == "torch"
    sc["shuffle"] = torch_data and r.random() < 0.85
    sc["gen"] = sc["shuffle"] and r.random() < 0.4  # the shuffled training loader draws from a generator of its own
    sc["valid_shuffle"] = torch_data and r.random() < 0.2
    sc["dropout"] = r.choice([0.0, 0.3, 0.5]) if torch_data else 0.0  # fastai's own loaders draw nothing from torch
    sc["ckpt"] = r.choice([None, 1, 3, "epoch"]) if torch_data and r.random() < 0.3 else None  # learnloop's only
    sc["trackers"] = [_make_tracker(r) for _ in range(r.choice([0, 0, 0, 1, 1, 2]))]
    return sc


def _make_tracker(r: random.Random) -> dict[str, Any]:
    kind = r.choice(["save", "early", "plateau"])
    spec: dict[str, Any] = {"kind": kind, "where": r.choice(["init", "init", "fit"]),
                            "kw": {"monitor": r.choice(["valid_loss", "valid_loss", "train_loss"])}}
    if kind == "save":
        spec["kw"].update(every_epoch=r.random() < 0.2, at_end=r.random() < 0.2)
        if spec["kw"]["every_epoch"]:
            spec["kw"]["at_end"] = False  # both refuse the two together
    else:
        spec["kw"].update(patience=r.choice([0, 1, 2]), min_delta=r.choice([0.0, 0.0, 0.01]))
        if kind == "plateau":
            spec["kw"]["factor"] = r.choice([2.0, 10.0])
    return spec


def _make_cb_spec(r: random.Random, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": f"Cb{i}", "order": r.choice([-20, -10, -5, 0, 0, 0, 5, 20, 50, 55, 60, 100])}
    spec["run_train"] = r.random() > 0.15
    spec["run_valid"] = r.random() > 0.15
    spec["where"] = r.choice(["init", "init", "add_cb", "fit"])
    spec["constraint"] = None
    if i > 0 and r.random() < 0.08:  # only towards lower indices: no cycle can form
        spec["constraint"] = [r.choice(["run_before", "run_after"]), f"Cb{r.randrange(i)}"]
    spec["actions"] = []
    for _ in range(r.choice([0, 1, 1, 1, 2])):
        event = r.choice(ACTION_EVENTS)  # at its k-th call to this callback
        k = r.choice([0, 1, 2, 3, 5, 8] if event in INNER else [0, 0, 1, 2])
        action: dict[str, Any] = {"event": event, "k": k, "do": r.choice(ACTIONS)}
        if action["do"] == "cancel":
            action["what"] = r.choice(CANCELS)
        spec["actions"].append(action)
    return spec


def _make_op(r: random.Random, sc: dict[str, Any]) -> dict[str, Any]:
    kind = r.choice(["fit"] * 4 + ["fit_one_cycle"] * 2 + ["fit_flat_cos", "fine_tune", "validate", "get_preds",
                                                            "predict", "event", "lr_find", "fit_sgdr"])
    op: dict[str, Any] = {"op": kind}
    if kind in ("fit", "fit_one_cycle", "fit_flat_cos", "fine_tune"):
        op["n_epoch"] = r.randint(1, 3)
        if kind != "fine_tune":
            op["start_epoch"] = r.choice([0, 0, 0, 1])
            op["reset_opt"] = r.random() < 0.2
            if r.random() < 0.3:
                op["lr"] = r.choice([1e-3, 1e-2, 0.05])
        else:
            op["freeze_epochs"] = r.choice([0, 1, 1, 2])
            if r.random() < 0.5:
                op["kw"] = {"base_lr": r.choice([1e-3, 2e-3, 1e-2]), "lr_mult": r.choice([1, 10, 100]),
                            "pct_start": r.choice([0.1, 0.3, 0.5]), "div": r.choice([2.0, 5.0, 25.0])}
    elif kind == "fit_sgdr":
        op.update(n_cycles=r.choice([1, 2]), cycle_len=r.choice([1, 1, 2]), cycle_mult=r.choice([1, 2, 2, 2, 3]),
                  start_epoch=r.choice([0, 0, 0, 1]))
        if op["n_cycles"] == 2 and op["cycle_len"] == 2:
            op["cycle_mult"] = min(op["cycle_mult"], 2)  # at most 6 epochs
        if r.random() < 0.3:
            op["lr"] = r.choice([1e-3, 1e-2, 0.05])
    elif kind == "lr_find":
        op["kw"] = {"num_it": r.choice([12, 20, 40]), "stop_div": r.random() < 0.7,
                    "start_lr": r.choice([1e-7, 1e-7, 1e-4]), "end_lr": r.choice([10, 10, 1])}
    elif kind == "get_preds":
        op.update(ds_idx=r.choice([0, 1, 1]), with_input=r.random() < 0.3, with_loss=r.random() < 0.3,
                  act=r.choice([None, None, "sigmoid", "double"]))
    elif kind == "predict":
        op["item"] = r.randrange(sc["n_train"])
    elif kind == "event":
        op["events"] = r.choice([["before_fit"], ["after_fit"], ["before_epoch", "after_epoch"], ["after_create"],
                                 ["befor_fit"], ["after_batch"], ["before_train", "before_validate"]])
    return op


def _data(sc: dict[str, Any]) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(sc["seed"])
    n_in, n_out = sc["n_in"], sc["n_out"]
    w = torch.randn(n_in, n_out, generator=g)

    def make(n: int) -> TensorDataset:
        x = torch.randn(n, n_in, generator=g)
        if sc["classif"]:
            return TensorDataset(x, (x @ w).argmax(1))
        return TensorDataset(x, (x @ w)[:, :1] + 0.1 * torch.randn(n, 1, generator=g))

    return make(sc["n_train"]), make(sc["n_valid"])


def _model(sc: dict[str, Any]) -> nn.Sequential:
    torch.manual_seed(sc["seed"])
    out = sc["n_out"] if sc["classif"] else 1
    h = sc["hidden"] or 4
    body: list[nn.Module] = [nn.Linear(sc["n_in"], h)]
    if sc["bn"]:
        body.append(nn.BatchNorm1d(h))
    body.append(nn.ReLU())
    head: list[nn.Module] = [nn.Linear(h, sc["hidden"]), nn.ReLU(), nn.Linear(sc["hidden"], out)] if sc["hidden"] \
        else [nn.Linear(h, out)]
    if sc["dropout"]:
        head.insert(0, nn.Dropout(sc["dropout"]))
    return nn.Sequential(nn.Sequential(*body), nn.Sequential(*head))


def _splitter(m: nn.Sequential) -> list[list[nn.Parameter]]:
    return [list(m[0].parameters()), list(m[1].parameters())]


# ----------------------------------------------------------------------------------------------- one run
def norm(x: Any) -> Any:
    """A JSON-able, comparable form of a value: tensors as lists (with their shape), numbers as floats."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return {"shape": list(x.shape), "v": x.double().flatten().tolist()} if x.dim() else float(x)
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return float(x)
    if hasattr(x, "item") and getattr(x, "shape", None) == ():  # numpy scalars
        return float(x.item())
    if isinstance(x, (list, tuple)) or type(x).__name__ == "L":
        return [norm(o) for o in x]
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    return repr(x)


def _error(e: BaseException) -> dict[str, Any]:
    text = "\n".join([str(e), *getattr(e, "__notes__", [])])
    return {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__], "text": text,
            "injected": "boom" in text or type(e).__name__.startswith("Cancel")}


class _Run:
    """One library's run of a scenario: the learner, the callbacks' log and what each call returned."""

    def __init__(self, lib: Lib, sc: dict[str, Any]) -> None:
        self.lib, self.sc = lib, sc
        self.log: list[list[Any]] = []
        self.learn: Any = None
        self.cbs: dict[str, Any] = {}
        self.seen: Counter[tuple[str, str]] = Counter()
        self.op = ""  # the call running
        self.path = ""  # the learner's folder (a temporary one: trackers and lr_find write there)
        self.trackers: list[tuple[Any, str]] = []
        self.nested = False  # within a validate() or get_preds() a callback called
        classes: dict[str, type] = {}
        for spec in sc["cbs"]:
            classes[spec["name"]] = self._cb_class(spec, classes)
        self.cbs = {name: cls() for name, cls in classes.items()}

    def _cb_class(self, spec: dict[str, Any], classes: dict[str, type]) -> type:
        run = self
        attrs: dict[str, Any] = {"order": spec["order"], "run_train": spec["run_train"],
                                 "run_valid": spec["run_valid"]}
        if spec["constraint"]:
            attrs[spec["constraint"][0]] = classes[spec["constraint"][1]]
        for ev in EVENTS:
            attrs[ev] = (lambda self, _e=ev: run.on_event(self, spec, _e))
        return type(spec["name"] + "Callback", (self.lib.Callback,), attrs)

    def on_event(self, cb: Any, spec: dict[str, Any], ev: str) -> None:
        learn = self.learn if self.learn is not None else cb.__dict__.get("learn")
        entry = [spec["name"], ev]
        for attr in ("training", "epoch", "iter", "train_iter", "pct_train", "n_iter"):
            v = learn.__dict__.get(attr) if learn is not None else None
            entry.append(round(float(v), 9) if isinstance(v, (float, int)) and not isinstance(v, bool) else v)
        if ev in INNER and learn is not None:
            xb = learn.__dict__.get("xb")
            x = xb[0] if isinstance(xb, (tuple, list)) and xb else None  # which batch: the data order (fastai's xb
            # is a list over a torch DataLoader, whose batches are lists)
            entry.append(float(x.detach().double().sum()) if isinstance(x, torch.Tensor) else None)
            if isinstance(learn.__dict__.get("loss"), torch.Tensor):
                entry.append(float(learn.__dict__["loss"].detach().float().mean()))  # the logged loss, as it is
        self.log.append(entry)
        k = self.seen[spec["name"], ev]
        self.seen[spec["name"], ev] += 1
        for action in spec["actions"]:
            if action["event"] == ev and action["k"] == k:
                self._act(cb, spec, action, learn, ev)

    def _act(self, cb: Any, spec: dict[str, Any], action: dict[str, Any], learn: Any, ev: str) -> None:
        do = action["do"]
        self.log.append(["action", spec["name"], ev, do, action.get("what")])
        if do == "cancel":
            raise self.lib.cancel[action["what"]]()
        if do == "error":
            raise ValueError(f"boom in {spec['name']} at {ev}")
        if do == "loss_grad":
            learn.loss_grad = learn.loss_grad * 2
        elif do == "pred":
            learn.pred = learn.pred * 0.5
        elif do == "xb":
            learn.xb = (learn.xb[0] * 0.5,)
        elif do == "yb":
            learn.yb = (learn.yb[0] if self.sc["classif"] else learn.yb[0] + 1,)
        elif do in ("validate", "get_preds"):
            # Only from a fit's own events: fastai's validation holds a lock that a nested one waits on forever.
            if self.op not in ("fit", "fit_one_cycle", "fit_flat_cos", "fine_tune") or self.nested:
                return
            self.nested = True
            try:
                self.log.append([f"{do} ->", norm(getattr(learn, do)(**self._preds_source(learn, do, 1)))])
            finally:
                self.nested = False
        elif do == "remove_self":
            learn.remove_cb(cb)
        elif do == "remove_other":
            others = [c for n, c in self.cbs.items() if n != spec["name"]]
            if others:
                learn.remove_cb(others[0])
        elif do == "add_cb":
            extra = {"name": "Extra", "order": 0, "run_train": True, "run_valid": True, "constraint": None,
                     "actions": []}
            learn.add_cb(self._cb_class(extra, {})())
        elif do == "run_false":
            cb.run = False

    def build(self) -> None:
        sc, lib = self.sc, self.lib
        train, valid = _data(sc)
        loss = lib.losses[sc["loss"]]()
        metrics = [lib.metrics[m]() for m in sc["metrics"]]
        init = [self.cbs[s["name"]] for s in sc["cbs"] if s["where"] == "init"]
        self.trackers = [(lib.trackers[t["kind"]](**t["kw"]), t["where"]) for t in sc["trackers"]]
        init += [t for t, where in self.trackers if where == "init"]
        self.learn = None
        dls = lib.make_dls(train, valid, sc)
        learn = lib.Learner(dls, _model(sc), loss_func=loss, opt_func=lib.opts[sc["opt"]], lr=sc["lr"],
                            splitter=_splitter, cbs=init, metrics=metrics, wd=sc["wd"], path=self.path)
        self.learn = learn
        learn.recorder.train_metrics = sc["train_metrics"]
        for s in sc["cbs"]:
            if s["where"] == "add_cb":
                learn.add_cb(self.cbs[s["name"]])
        if sc["ckpt"] is not None and lib.name == "learnloop":  # documented to keep the data order and random draws
            from learnloop import CheckpointCallback
            every = {"every_epoch": True} if sc["ckpt"] == "epoch" else {"every_n_iters": sc["ckpt"]}
            learn.add_cb(CheckpointCallback(**every, keep_last=2))

    def call(self, op: dict[str, Any]) -> Any:
        learn, kind = self.learn, op["op"]
        self.op = kind
        given = [self.cbs[s["name"]] for s in self.sc["cbs"] if s["where"] == "fit"]
        fit_cbs = given + [t for t, where in self.trackers if where == "fit"] or None
        torch_data = self.sc["data"] == "torch"
        if kind in ("fit", "fit_one_cycle", "fit_flat_cos"):
            kw: dict[str, Any] = {"cbs": fit_cbs, "reset_opt": op["reset_opt"], "start_epoch": op["start_epoch"]}
            if "lr" in op:
                kw["lr_max" if kind == "fit_one_cycle" else "lr"] = op["lr"]
            return getattr(learn, kind)(op["n_epoch"], **kw)
        if kind == "fit_sgdr":
            kw = {"cbs": fit_cbs, "start_epoch": op["start_epoch"], "cycle_mult": op["cycle_mult"]}
            if "lr" in op:
                kw["lr_max"] = op["lr"]
            return learn.fit_sgdr(op["n_cycles"], op["cycle_len"], **kw)
        if kind == "fine_tune":
            return learn.fine_tune(op["n_epoch"], freeze_epochs=op["freeze_epochs"], cbs=fit_cbs, **op.get("kw", {}))
        if kind == "lr_find":  # no cbs= in either: the learner's callbacks run the sweep
            return learn.lr_find(show_plot=False, **op["kw"])
        if kind == "validate":
            return learn.validate(cbs=fit_cbs)
        if kind == "get_preds":
            act = {None: None, "sigmoid": torch.sigmoid, "double": _double}[op["act"]]
            return learn.get_preds(**self._preds_source(learn, kind, op["ds_idx"]), with_input=op["with_input"],
                                   with_loss=op["with_loss"], act=act, cbs=fit_cbs)
        if kind == "predict":
            item = _data(self.sc)[0].tensors[0][op["item"]]
            if self.lib.name == "learnloop":
                return learn.predict(item)[1:]
            # fastai's predict up to its decode_batch, which needs fastai's data pipeline: the same events and calls.
            # Its Datasets would give a tuple `(x,)` per item (a bare tensor is split along its rows). Over torch
            # loaders (no test_dl), the fastai DataLoader test_dl would make; neither draws from torch's generator.
            from fastai.data.load import DataLoader as FastaiDL
            dl = FastaiDL([(item,)], bs=1) if torch_data else learn.dls.test_dl([(item,)])
            _, preds, _, decoded = learn.get_preds(dl=dl, with_input=True, with_decoded=True, reorder=False)
            return decoded[0], preds[0]
        if kind == "event":
            return learn(op["events"] if len(op["events"]) > 1 else op["events"][0])
        raise ValueError(kind)

    def _preds_source(self, learn: Any, method: str, ds_idx: int) -> dict[str, Any]:
        """`get_preds`' data argument: `ds_idx`, but for fastai over torch loaders, whose get_preds(ds_idx) remakes
        its own loaders only (`dl.new`): a torch DataLoader over the dataset in order, as learnloop's reads it (one
        draw from torch's generator, as any DataLoader's iteration)."""
        if method == "get_preds" and self.sc["data"] == "torch" and self.lib.name == "fastai":
            return {"dl": DataLoader(learn.dls[ds_idx].dataset, batch_size=self.sc["bs"])}
        return {"ds_idx": ds_idx} if method == "get_preds" else {}

    def state(self) -> dict[str, Any]:
        learn = self.learn
        rec = getattr(learn, "recorder", None)
        opt = getattr(learn, "opt", None)
        reads: dict[str, Callable[[], Any]] = {
            a: (lambda a=a: learn.__dict__.get(a))
            for a in ("epoch", "train_iter", "n_epoch", "pct_train", "iter", "n_iter", "training")
        }
        reads["smooth_loss"] = lambda: getattr(learn, "smooth_loss", None)
        reads["model.training"] = lambda: learn.model.training
        reads["opt.hypers"] = lambda: None if opt is None else [dict(h) for h in opt.hypers]
        if rec is not None:
            for a in ("values", "losses", "lrs", "iters", "metric_names", "final_record"):
                reads[f"recorder.{a}"] = lambda a=a: getattr(rec, a, None)
        if self.trackers:
            trackers = [t for t, _ in self.trackers]
            reads["trackers"] = lambda: [[type(t).__name__, getattr(t, "best", None), getattr(t, "wait", None)]
                                         for t in trackers]
        if self.sc["data"] == "torch":  # what is left of the random streams: any extra or missing draw shows here
            reads["rng"] = lambda: _digest(torch.get_rng_state())
            gen = learn.dls[0].generator if self.sc["gen"] else None
            reads["loader_rng"] = lambda: None if gen is None else _digest(gen.get_state())
        out: dict[str, Any] = {}
        for name, read in reads.items():
            try:
                out[name] = norm(read())
            except Exception as e:  # noqa: BLE001 - reading the state failed: a result to compare too
                out[name] = f"raised {type(e).__name__}"
        return out


def _digest(state: torch.Tensor) -> str:
    return hashlib.sha1(state.numpy().tobytes()).hexdigest()[:12]


def run_lib(lib: Lib, sc: dict[str, Any]) -> dict[str, Any]:
    """Run scenario `sc` under `lib`: the log, each call's result or error and state, the final weights."""
    run = _Run(lib, sc)
    out: dict[str, Any] = {"log": run.log, "calls": [], "build_error": None}
    torch.manual_seed(sc["seed"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), tempfile.TemporaryDirectory() as run.path:
        warnings.simplefilter("ignore")
        try:
            run.build()
        except Exception as e:  # noqa: BLE001 - a scenario's error is a result to compare
            out["build_error"] = _error(e)
            return out
        for op in sc["ops"]:
            call: dict[str, Any] = {"op": op["op"], "result": None, "error": None}
            run.log.append(["call", op["op"]])
            try:
                call["result"] = norm(run.call(op))
            except Exception as e:  # noqa: BLE001
                call["error"] = _error(e)
            call["state"] = run.state()
            out["calls"].append(call)
            if call["error"]:
                break
        out["weights"] = [norm(p) for p in run.learn.model.state_dict().values()]
    return out


# ----------------------------------------------------------------------------------------------- comparing
def close(a: Any, b: Any) -> bool:
    """Whether two normalised values agree (floats to RTOL/ATOL, nan equal to nan)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


_FASTAI_WRAP = re.compile(r"Exception occured in `(\w+)` when calling event `(\w+)`")


def _same_error(fa: dict[str, Any] | None, ll: dict[str, Any] | None) -> str | None:
    if fa is None and ll is None:
        return None
    if fa is None or ll is None:
        return f"error: fastai {fa and fa['type']} vs learnloop {ll and ll['type']}"
    if fa["type"] not in ll["mro"]:
        return f"error type: fastai {fa['type']} vs learnloop {ll['type']}"
    for cls, ev in _FASTAI_WRAP.findall(fa["text"]):
        if cls not in ll["text"] or ev not in ll["text"]:
            return f"error message: fastai names {cls}/{ev}, learnloop's is {ll['text'][:200]!r}"
    return None


def compare(fa: dict[str, Any], ll: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, description) of each difference between two runs, in order; a difference in the log ends it."""
    if d := _same_error(fa["build_error"], ll["build_error"]):
        yield "build", d
        return
    for i, (a, b) in enumerate(zip(fa["log"], ll["log"], strict=False)):
        if not close(norm(a), norm(b)):
            if len(a) == len(b) == 10 and close(norm(a[:9]), norm(b[:9])):  # the same event and batch, another loss
                yield "log.loss", f"log[{i}]: fastai {a} vs learnloop {b}"
                continue
            yield "log", f"log[{i}]: fastai {a} vs learnloop {b}"
            return
    # One log ends where the other goes on: a call's error says more, when one of them raised.
    for i, (a, b) in enumerate(zip(fa["calls"], ll["calls"], strict=False)):
        if d := _same_error(a["error"], b["error"]):
            yield "error", f"call {i} {a['op']}: {d}"
            return
    if len(fa["log"]) != len(ll["log"]):
        n = min(len(fa["log"]), len(ll["log"]))
        yield "log", f"log[{n}]: fastai {fa['log'][n:n + 1]} vs learnloop {ll['log'][n:n + 1]} (lengths)"
        return
    for i, (a, b) in enumerate(zip(fa["calls"], ll["calls"], strict=False)):
        if d := _same_error(a["error"], b["error"]):
            yield "error", f"call {i} {a['op']}: {d}"
        if not close(a["result"], b["result"]):
            yield "result", f"call {i} {a['op']} result: fastai {_short(a['result'])} vs learnloop " \
                            f"{_short(b['result'])}"
        for k in a["state"]:
            if not close(a["state"][k], b["state"].get(k)):
                yield k, f"call {i} {a['op']} {k}: fastai {_short(a['state'][k])} vs learnloop " \
                         f"{_short(b['state'].get(k))}"
    if len(fa["calls"]) != len(ll["calls"]):
        yield "calls", f"{len(fa['calls'])} calls in fastai vs {len(ll['calls'])} in learnloop"
    if "weights" in fa and not close(fa["weights"], ll.get("weights")):
        yield "weights", "final weights differ"


def _short(x: Any, n: int = 160) -> str:
    s = json.dumps(x)
    return s if len(s) <= n else s[:n] + "..."


def _fastai_failed(fa: dict[str, Any]) -> dict[str, Any] | None:
    """fastai's own error (not one a callback injected), if its run ended with one."""
    errors = [fa["build_error"], *(c["error"] for c in fa["calls"])]
    return next((e for e in errors if e and not e["injected"]), None)


def _failed_op(sc: dict[str, Any], fa: dict[str, Any], err: dict[str, Any]) -> str:
    """The call fastai's error `err` ended ("build" when the learner was not made)."""
    return next((sc["ops"][i]["op"] for i, c in enumerate(fa["calls"]) if c["error"] is err), "build")


def _call_at(run: dict[str, Any], i: int) -> int:
    """The index of the call that log entry `i` belongs to."""
    return sum(1 for entry in run["log"][:i + 1] if entry[0] == "call") - 1


def _cancelled_in_call(log: list[list[Any]], call: int) -> bool:
    """Whether a callback cancelled a validation phase or a batch during call number `call`."""
    calls = -1
    for entry in log:
        calls += entry[0] == "call"
        if calls == call and entry[0] == "action" and entry[3] == "cancel" and entry[4] in ("Valid", "Batch"):
            return True
    return False


def _nested_before(log: list[list[Any]], call: int) -> bool:
    """Whether a callback called validate() or get_preds() during call number `call` or before."""
    return any(entry[3] in ("validate", "get_preds") for entry in _actions_to(log, call))


def _nested_in(log: list[list[Any]], call: int) -> bool:
    """Whether a callback called validate() or get_preds() during call number `call`."""
    calls = -1
    for entry in log:
        calls += entry[0] == "call"
        if calls == call and entry[0] == "action" and entry[3] in ("validate", "get_preds"):
            return True
    return False


def _cancelled_before(log: list[list[Any]], call: int, phases: tuple[str, ...]) -> bool:
    """Whether a callback cancelled one of `phases` during call number `call` or before."""
    return any(entry[3] == "cancel" and entry[4] in phases for entry in _actions_to(log, call))


def _actions_to(log: list[list[Any]], call: int) -> Iterator[list[Any]]:
    """The callbacks' actions logged up to the end of call number `call`."""
    calls = -1
    for entry in log:
        calls += entry[0] == "call"
        if calls > call:
            return
        if entry[0] == "action":
            yield entry


def _removed_mid_event(sc: dict[str, Any], log: list[list[Any]], i: int) -> bool:
    """Whether fastai's log entry `i` is an inner-loop event of a callback with `run_train`/`run_valid` off for it,
    which fastai calls only when the callback was removed during that event (its learner gone, it runs whatever
    they say), and the callback was removed before."""
    if i >= len(log) or log[i][0] not in {s["name"] for s in sc["cbs"]} or log[i][1] not in INNER:
        return False
    spec = next(s for s in sc["cbs"] if s["name"] == log[i][0])
    if spec["run_train"] if log[i][2] else spec["run_valid"]:
        return False
    return any(e[0] == "action" and e[3] in ("remove_other", "remove_self") for e in log[:i])


FUSED = ("adam", "sgd_mom")  # learnloop's defaults for these are fused kernels
FUSED_KIND = "documented: fused optimizer rounds differently"
NEW_TRACKER_KIND = "documented: a new tracker has its wait"
LEAVE_HYPERS = ("lr_find", "validate", "get_preds", "predict", "event")  # calls that set no hyper-parameter
LR_FIND_KIND = "documented: lr_find leaves the optimizer, the model's mode and the trackers as they were"
# Documented differences of one value that leave the rest comparable (the next fit sets the optimizer's
# hyper-parameters and the model's mode again, and its trackers reset).
LOCAL_KINDS = (FUSED_KIND, "documented: a new Recorder has its lists", NEW_TRACKER_KIND, LR_FIND_KIND)


def _only_new_wait(fa: Any, ll: Any) -> bool:
    """Whether two trackers' states differ only in `wait`, which fastai's creates at its first before_fit."""
    if not (isinstance(fa, list) and isinstance(ll, list) and len(fa) == len(ll)):
        return False
    return all(a[:2] == b[:2] and (a[2] == b[2] or (a[2] is None and b[2] == 0.0)) for a, b in zip(fa, ll, strict=True))


def classify(sc: dict[str, Any], fa: dict[str, Any], ll: dict[str, Any], field: str, desc: str) -> str:
    """Name the kind of a difference; `documented: ...` for those the porting guide lists."""
    if field.startswith("log"):
        m = re.match(r"log\[(\d+)\]", desc)
        i = int(m.group(1)) if m else 0
        call = _call_at(fa, i)
        entry = (fa["log"][i:i + 1] or ll["log"][i:i + 1])[0]
        where = entry[1] if len(entry) > 1 else entry[0]
    else:
        m = re.match(r"call (\d+)", desc)
        call = int(m.group(1)) if m else len(sc["ops"]) - 1
        where = ""
    op = sc["ops"][min(max(call, 0), len(sc["ops"]) - 1)]
    if sc.get("_rb_effective") and field == "log":
        return "documented: run_before/run_after honoured"
    if field == "log" and _removed_mid_event(sc, fa["log"], i):
        return "documented: removed callback keeps run_train/run_valid"
    if op["op"] == "fit_flat_cos" and op.get("start_epoch"):
        return "documented: fit_flat_cos skips start_epoch"
    if op["op"] in ("get_preds", "predict") and field in ("result", "error") and _cancelled_in_call(fa["log"], call):
        return "documented: get_preds where fastai fails"
    if field.startswith("recorder.") and fa["calls"][call]["state"][field] is None:
        return "documented: a new Recorder has its lists"
    if field == "trackers" and _only_new_wait(fa["calls"][call]["state"][field], ll["calls"][call]["state"][field]):
        return NEW_TRACKER_KIND
    sweeps = [j for j, o in enumerate(sc["ops"][:call + 1]) if o["op"] == "lr_find"]
    # What lr_find leaves (fastai's: the sweep's hyper-parameters, training mode) lasts until a fit sets them again.
    if sweeps and (field == "model.training" or field in ("opt.hypers", "trackers") and op["op"] in LEAVE_HYPERS):
        return LR_FIND_KIND
    numbers = field in ("weights", "result", "log.loss", "smooth_loss") or field.startswith("recorder.")
    if numbers and any(fa["calls"][j]["error"] or _nested_in(fa["log"], j) for j in sweeps if j < len(fa["calls"])):
        return "documented: lr_find puts the weights back however the sweep ends"  # fastai's keeps the sweep's
    tracked = numbers or field in ("trackers", "opt.hypers", "log", "calls")  # what a tracker's choices change
    if sc["trackers"] and op["op"] in ("validate", "get_preds", "predict") and tracked:
        return "documented: trackers do nothing outside fit"  # fastai's judge its row, SaveModelCallback loads
    if sc["opt"].startswith("wrap") and any(t["kind"] == "plateau" for t in sc["trackers"]) and tracked:
        return "documented: ReduceLROnPlateau lowers an OptimWrapper's lr"  # fastai's lowers a copy
    if sc["trackers"] and tracked and _nested_before(fa["log"], call):
        return "documented: trackers leave the epoch of a validate() inside a fit unjudged"
    if sc["trackers"] and tracked and _cancelled_before(fa["log"], call, ("Train", "Valid", "Epoch")):
        return "documented: trackers skip what a cancelled phase left out of its row"  # fastai's read past it
    if sc["opt"] in FUSED and numbers and field != "recorder.metric_names":
        return FUSED_KIND
    if field == "log":
        return f"log at {where} ({op['op']})"
    return f"{field} ({op['op']})"


def rb_effective(sc: dict[str, Any]) -> bool:
    """Whether the scenario's run_before/run_after constraints change the order of fastai's sort by `order`."""
    # The learner's callbacks are in the order they were added: the Learner's, add_cb's, then a fit's cbs.
    specs = sorted(sc["cbs"], key=lambda s: ["init", "add_cb", "fit"].index(s["where"]))
    pos = {s["name"]: (s["order"], i) for i, s in enumerate(specs)}
    for s in specs:
        if s["constraint"]:
            how, other = s["constraint"]
            before = pos[s["name"]] < pos[other]
            if before != (how == "run_before"):
                return True
    return False


class _Timeout(BaseException):
    """A run that takes too long (a deadlock): not an Exception, so no scenario code catches it."""


def _timeout(signum: int, frame: Any) -> None:
    raise _Timeout


def check(seed: int) -> dict[str, Any]:
    """Run one seed under both libraries and compare: the JSON line written for it."""
    sc = make_scenario(seed)
    sc["_rb_effective"] = rb_effective(sc)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(TIMEOUT)
    try:
        fa = run_lib(LIBS["fastai"], sc)
        signal.alarm(TIMEOUT)
        ll = run_lib(LIBS["learnloop"], sc)
    except _Timeout:
        who = "learnloop" if "fa" in locals() else "fastai"
        return {"seed": seed, "status": "diff" if who == "learnloop" else "skipped", "kind": f"{who} hangs",
                "first_diff": f"no end after {TIMEOUT} s"}
    finally:
        signal.alarm(0)
    documented = ""
    for field, desc in compare(fa, ll):
        kind = classify(sc, fa, ll, field, desc)
        if kind in LOCAL_KINDS:  # a difference of one value, documented: look further
            documented = documented or kind
            continue
        fa_err = _fastai_failed(fa)
        if fa_err is not None and not kind.startswith("documented") and field in ("build", "error", "log", "calls"):
            where = _FASTAI_WRAP.search(fa_err["text"])
            at = f" in {where.group(1)}.{where.group(2)}" if where else f" ({_failed_op(sc, fa, fa_err)})"
            return {"seed": seed, "status": "skipped", "kind": f"fastai fails: {fa_err['type']}{at}",
                    "first_diff": " ".join(fa_err["text"].split())[:200]}
        return {"seed": seed, "status": "diff", "kind": kind, "first_diff": desc}
    if documented:
        return {"seed": seed, "status": "diff", "kind": documented, "first_diff": ""}
    return {"seed": seed, "status": "same", "kind": "", "first_diff": ""}


LIBS: dict[str, Lib] = {}


def _init() -> None:
    torch.set_num_threads(1)
    LIBS["fastai"], LIBS["learnloop"] = _fastai_lib(), _learnloop_lib()


def show(seed: int) -> None:
    """Print scenario `seed` and both runs side by side."""
    sc = make_scenario(seed)
    print(json.dumps({k: v for k, v in sc.items() if k != "cbs"}))
    for s in sc["cbs"]:
        print("  ", json.dumps(s))
    fa, ll = run_lib(LIBS["fastai"], sc), run_lib(LIBS["learnloop"], sc)
    width = 90
    rows = [(json.dumps(a) if a else "", json.dumps(b) if b else "")
            for a, b in zip(fa["log"] + [None] * len(ll["log"]), ll["log"] + [None] * len(fa["log"]), strict=False)]
    print(f"{'fastai':{width}} | learnloop")
    for a, b in rows:
        if a or b:
            print(f"{'  ' if close(norm(json.loads(a or 'null')), norm(json.loads(b or 'null'))) else '!!'}"
                  f"{a[:width - 2]:{width - 2}} | {b[:width]}")
    for name, res in (("fastai", fa), ("learnloop", ll)):
        print(f"--- {name}: build error {res['build_error']}")
        for c in res["calls"]:
            print(f"  {c['op']}: error {c['error'] and (c['error']['type'], c['error']['text'][:300])}")
            print(f"    result {_short(c['result'], 300)}")
            for k, v in c["state"].items():
                print(f"    {k} {_short(v, 300)}")
    sc["_rb_effective"] = rb_effective(sc)
    print("=>", check(seed))


def run_cli(
    doc: str, init: Callable[[], None], show: Callable[[int], None], check: Callable[[int], dict[str, Any]]
) -> None:
    """The command line of a fastai fuzzer: ``START STOP [--procs N] [--out FILE] [--show SEED]``, the seeds run by
    `check` (in forked worker processes with ``--procs``), one JSON line per seed, and the summary table."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("start", type=int)
    ap.add_argument("stop", type=int)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--show", type=int, default=None)
    args = ap.parse_args()
    init()
    if args.show is not None:
        show(args.show)
        return
    seeds = range(args.start, args.stop)
    out = open(args.out, "w") if args.out else None  # noqa: SIM115
    counts: Counter[tuple[str, str]] = Counter()
    with multiprocessing.get_context("fork").Pool(args.procs) if args.procs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap(check, seeds, chunksize=4) if pool is not None else map(check, seeds)
        for res in results:
            counts[res["status"], res["kind"]] += 1
            if out:
                out.write(json.dumps(res) + "\n")
                out.flush()
    if out:
        out.close()
    print(f"{'status':8} {'count':>6}  kind")
    for (status, kind), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1])):
        print(f"{status:8} {n:6d}  {kind}")
    print(f"{'total':8} {sum(counts.values()):6d}")


def main() -> None:
    run_cli(__doc__ or "", _init, show, check)


if __name__ == "__main__":
    sys.exit(main())
