"""Differential fuzzer: what comes after training (inference, interpretation, saving, hooks) against fastai 2.8.

Each seed builds one random scenario from ``random.Random(seed)``: synthetic tensors for a task (classes, several
labels, regression, two targets, a model with a tuple output), one or two inputs (``n_inp``), a training loader that
shuffles and drops its last batch (when no operation trains: the libraries' shuffles differ), a small
``nn.Sequential`` (BatchNorm, Dropout), a loss function (``CrossEntropyLossFlat``, ``FocalLossFlat``,
``LabelSmoothingCrossEntropyFlat``, ``BCEWithLogitsLossFlat(thresh=...)``, ``MSELossFlat``, ``L1LossFlat``, torch's
own, or the fuzzer's for two targets and tuple outputs), metrics, then 1-4 operations drawn from:

- ``get_preds`` with random ``ds_idx``, ``dl`` (a loader or a list of batches), ``with_input``, ``with_decoded``,
  ``with_loss``, ``act``, ``reorder``, ``with_preds``/``with_targs``, ``concat_dim``, ``save_preds``/``save_targs``
  (the files written are compared too), ``cbs`` (``MCDropoutCallback``, a callback that counts batches) and
  ``inner``;
- ``predict`` of a training item (fastai's is emulated up to its ``decode_batch``, which needs fastai's data
  pipeline, as the loop fuzzer does); ``validate`` with its metrics, a ``dl`` and ``cbs``;
- ``Interpretation`` / ``ClassificationInterpretation``: ``from_learner`` (``ds_idx``, ``dl``, ``act``),
  ``top_losses(k, largest, items)``, ``interp[idxs]``, ``confusion_matrix``, ``most_confused(min_val)``,
  ``print_classification_report`` (its text);
- ``learn.save`` / ``learn.load`` (``with_opt``, ``strict``, ``device``) after a short fit: the file's layout
  (keys, weights, optimizer state's shape), the weights and the optimizer's state after loading the learner's own
  file, then each library's load of the *other* library's file, and a load of a missing file;
- ``export`` / ``load_learner``: the loaded learner's ``get_preds`` and ``predict``, a missing file;
- hooks: ``hook_output`` / ``hook_outputs`` / ``Hooks`` (forward, and ``grad=True`` through a backward pass),
  ``total_params``, ``layer_info``, ``learn.summary()``'s text (up to its list of callbacks),
  ``model_sizes`` / ``dummy_eval`` / ``num_features_model`` on a small conv net; ``ActivationStats`` (``stats``,
  ``layer_stats``, ``hist``), a ``HookCallback`` subclass and ``FetchPredsCallback`` through a one-epoch fit
  with plain SGD (bit-identical in both libraries).

Each library runs the scenario from the same initial weights and batches (fastai over its own ``DataLoader``,
learnloop over torch's), and each operation's result or error (type: learnloop's may subclass fastai's), the
model's weights after it and what it leaves on the learner (the model's and the learner's mode, ``pred``,
``loss``, ``xb``, ``yb``, ``epoch``, the callbacks) are compared (``allclose``, rtol 1e-5).

Run it with the benchmark environment, which has both libraries::

    PYTHONPATH=$PWD/src nice -n 10 /tmp/benchenv/bin/python tools/fuzz/inference_vs_fastai.py 0 1000 --out inf.jsonl
    PYTHONPATH=$PWD/src /tmp/benchenv/bin/python tools/fuzz/inference_vs_fastai.py 0 0 --show 17

``START STOP`` is the range of seeds; ``--procs N`` runs N worker processes; ``--out`` writes one JSON line per seed
(``seed``, ``status``: same/diff/skipped, ``kind``, ``first_diff``); a summary table ends the run. ``--show SEED``
prints the scenario and both runs' results.

A scenario fastai cannot run itself (it raises in an operation, and learnloop does not raise the same type) is
``skipped`` with fastai's error as the kind: fastai's bugs (``get_preds(concat_dim=1)`` with ``reorder``,
``top_losses(0, items=True)``, ``hist`` of an empty record), but also learnloop's silent ones, so look at new
skipped kinds too. Not compared, as the guide says they differ: ``predict``'s first element (learnloop's decoded
class, fastai's decoded target of its pipeline), the optimizer's ``state_dict`` layout (each library's; the files
are loaded across instead), ``top_losses(items=True)`` (``dl.dataset[i]``, fastai's ``dl.items``: here the same
tuples), the interpretation's ``vocab`` type. A difference that docs/porting-from-fastai.md (or checkpoints.md) lists
as deliberate is counted apart, under a ``documented: ...`` kind:

- ``documented: summary() puts the model's mode back``, ``documented: summary() changes nothing``: fastai's leaves
  the model in eval mode, and its Recorder with a record a later ``get_preds(inner=True)`` reads;
- ``documented: get_preds(with_preds=False) keeps None for the decoded``: fastai's tuple has no place for them;
- ``documented: to_concat gives the slices along concat_dim``: ``concat_dim=1`` over batches that do not join;
- ``documented: fastai's opt state needs weights_only=False``: learnloop's ``load`` of a file fastai saved with its
  optimizer refuses fastcore's ``L`` (a ``CheckpointError``);
- ``documented: a refused load loads nothing``: fastai's (torch's) copies the tensors that fit;
- ``documented: load_learner(model=) has no loss of the user's own``: the fuzzer's own losses (two targets, tuple
  outputs) are not rebuilt, so the loaded learner's ``get_preds`` of a labelled loader fails;
- ``documented: ClassificationInterpretation without decodes``: torch's ``nn.CrossEntropyLoss`` gives the argmax
  (fastai: an AssertionError); ``documented: top_losses(k) above the number of items``: an ``InputError``;
- ``documented: a failed fit's hooks come off``: after a fit that raised (BatchNorm on a batch of one);
- ``documented: export changes nothing on the learner``: fastai's ``export`` clears the last
  batch's state (``xb``, ``pred``...) and makes a new optimizer (one also when the learner had none).

These differences leave the rest comparable: the comparison goes on past them, and the scenario counts under one
only when nothing else differs. A run still going after 30 s is stopped (``fastai hangs`` is skipped,
``learnloop hangs`` a diff)."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import signal
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from loop_vs_fastai import _error, _short, _Timeout, _timeout, close, norm, run_cli
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TIMEOUT = 30  # seconds per library and scenario
TASKS = {
    "ce": ["CrossEntropyLossFlat", "nn.CrossEntropyLoss", "FocalLossFlat", "LabelSmoothingCrossEntropyFlat"],
    "bce": ["BCEWithLogitsLossFlat", "nn.BCEWithLogitsLoss"],
    "reg": ["MSELossFlat", "nn.MSELoss", "L1LossFlat"],
    "two_targ": ["TwoTargetLoss"],
    "tuple_out": ["TupleLoss"],
}
TRAINS = ("save_load", "activation_stats", "hook_callback", "fetch_preds")
OPS = ["get_preds"] * 5 + ["predict", "validate", "interp", "save_load", "export", "hooks", "summary",
                           "conv_sizes", "activation_stats", "hook_callback", "fetch_preds"]


# ----------------------------------------------------------------------------------------------- helpers shared
class TwoTargetLoss(nn.Module):
    """Cross-entropy on the first target plus MSE of the output's first column on the second."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, pred: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(pred, y1, reduction="none")
        mse = (pred[:, 0] - y2) ** 2
        out = ce + mse
        return out.mean() if self.reduction == "mean" else out.sum() if self.reduction == "sum" else out


class TupleLoss(nn.Module):
    """The MSE of a tuple output's first part."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, pred: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred[0], y, reduction=self.reduction)


class Net(nn.Module):
    """A body and a head, with one or two inputs and, for `tuple_out`, a tuple output."""

    def __init__(self, sc: dict[str, Any]) -> None:
        super().__init__()
        h = sc["hidden"]
        body: list[nn.Module] = [nn.Linear(sc["n_in"], h)]
        if sc["bn"]:
            body.append(nn.BatchNorm1d(h))
        body.append(nn.ReLU())
        if sc["dropout"]:
            body.append(nn.Dropout(sc["dropout"]))
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(h, sc["n_out"])
        self.tuple_out = sc["task"] == "tuple_out"

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> Any:
        for m in more:
            x = x + m
        out = self.head(self.body(x))
        return (out, out * 2) if self.tuple_out else out


def _double(x: Any) -> Any:
    return x * 2


def _count_cb(Callback: type) -> Any:
    class CountBatches(Callback):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            self.n = 0

        def after_pred(self) -> None:
            self.n += 1

    return CountBatches()


def _mean_hook_cb(HookCallback: type, modules: Any) -> Any:
    class MeanHooks(HookCallback):  # type: ignore[misc,valid-type]
        def hook(self, m: nn.Module, i: Any, o: Any) -> Any:
            return float(o.detach().float().mean())

        def after_batch(self) -> None:
            if self.training:
                self.means.append(list(self.hooks.stored))
            super().after_batch()

    cb = MeanHooks(modules=modules)
    cb.means = []
    return cb


# ----------------------------------------------------------------------------------------------- the two libraries
@dataclass
class Lib:
    """What a scenario needs from one library."""

    name: str
    ns: dict[str, Any]


def _losses(mod: Any) -> dict[str, Any]:
    return {"CrossEntropyLossFlat": mod.CrossEntropyLossFlat, "nn.CrossEntropyLoss": nn.CrossEntropyLoss,
            "FocalLossFlat": mod.FocalLossFlat, "LabelSmoothingCrossEntropyFlat": mod.LabelSmoothingCrossEntropyFlat,
            "BCEWithLogitsLossFlat": mod.BCEWithLogitsLossFlat, "nn.BCEWithLogitsLoss": nn.BCEWithLogitsLoss,
            "MSELossFlat": mod.MSELossFlat, "nn.MSELoss": nn.MSELoss, "L1LossFlat": mod.L1LossFlat,
            "TwoTargetLoss": TwoTargetLoss, "TupleLoss": TupleLoss}


def _fastai_lib() -> Lib:
    import fastai.callback.core as fc
    import fastai.callback.hook as fh
    import fastai.callback.preds as fp
    import fastai.interpret as fi
    import fastai.learner as fl
    import fastai.losses as flo
    import fastai.metrics as fm
    import fastai.optimizer as fo
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FastaiDL
    from fastai.data.transforms import CategoryMap

    def make_dls(train: TensorDataset, valid: TensorDataset, bs: int, n_inp: int | None, shuffle: bool) -> Any:
        dev = torch.device("cpu")
        dls = DataLoaders(FastaiDL(train, bs=bs, device=dev, shuffle=shuffle, drop_last=shuffle),
                          FastaiDL(valid, bs=bs, device=dev), device=dev)
        # The loop reads n_inp from the DataLoaders, summary() from the training loader: what fastai's own loaders
        # derive from their items (1 for one element, else all but the last), unless the scenario declares it.
        n = n_inp if n_inp is not None else max(1, len(train.tensors) - 1)
        dls.n_inp = dls.train.n_inp = dls.valid.n_inp = n
        return dls

    def make_dl(ds: TensorDataset, bs: int) -> Any:
        return FastaiDL(ds, bs=bs, device=torch.device("cpu"))

    def vocab_dl(dl: Any, vocab: list[str]) -> Any:
        dl.vocab = CategoryMap(vocab, sort=False)
        return dl

    return Lib("fastai", dict(
        Learner=fl.Learner, Callback=fc.Callback, losses=_losses(flo), make_dls=make_dls, make_dl=make_dl,
        metrics={"accuracy": fm.accuracy, "rmse": fm.rmse, "mae": fm.mae, "accuracy_multi": fm.accuracy_multi},
        sgd=fo.SGD, adam=fo.Adam, load_learner=fl.load_learner, vocab_dl=vocab_dl,
        Interpretation=fi.Interpretation, ClassificationInterpretation=fi.ClassificationInterpretation,
        hook_output=fh.hook_output, hook_outputs=fh.hook_outputs, Hooks=fh.Hooks, total_params=fh.total_params,
        layer_info=fh.layer_info, model_sizes=fh.model_sizes, dummy_eval=fh.dummy_eval,
        num_features_model=fh.num_features_model, ActivationStats=fh.ActivationStats, HookCallback=fh.HookCallback,
        FetchPredsCallback=fc.FetchPredsCallback, MCDropoutCallback=fp.MCDropoutCallback,
    ))


def _learnloop_lib() -> Lib:
    import learnloop as ll
    import learnloop.callbacks as lc
    import learnloop.hooks as lh
    import learnloop.interpret as li
    import learnloop.losses as llo
    import learnloop.metrics as lm
    import learnloop.optimizer as lo
    import learnloop.summary as ls

    def make_dls(train: TensorDataset, valid: TensorDataset, bs: int, n_inp: int | None, shuffle: bool) -> Any:
        return ll.DataLoaders(DataLoader(train, batch_size=bs, shuffle=shuffle, drop_last=shuffle),
                              DataLoader(valid, batch_size=bs), device="cpu", n_inp=n_inp)

    def make_dl(ds: TensorDataset, bs: int) -> Any:
        return DataLoader(ds, batch_size=bs)

    def vocab_dl(dl: Any, vocab: list[str]) -> Any:
        dl.dataset.classes = vocab
        return dl

    return Lib("learnloop", dict(
        Learner=ll.Learner, Callback=ll.Callback, losses=_losses(llo), make_dls=make_dls, make_dl=make_dl,
        metrics={"accuracy": lm.accuracy, "rmse": lm.rmse, "mae": lm.mae, "accuracy_multi": lm.accuracy_multi},
        sgd=lo.SGD, adam=partial(lo.Adam, implementation="foreach"), load_learner=ll.load_learner, vocab_dl=vocab_dl,
        Interpretation=li.Interpretation, ClassificationInterpretation=li.ClassificationInterpretation,
        hook_output=lh.hook_output, hook_outputs=lh.hook_outputs, Hooks=lh.Hooks, total_params=ls.total_params,
        layer_info=ls.layer_info, model_sizes=lh.model_sizes, dummy_eval=lh.dummy_eval,
        num_features_model=lh.num_features_model, ActivationStats=lh.ActivationStats, HookCallback=lh.HookCallback,
        FetchPredsCallback=lc.FetchPredsCallback, MCDropoutCallback=lc.MCDropoutCallback,
    ))


# ----------------------------------------------------------------------------------------------- scenarios
def make_scenario(seed: int) -> dict[str, Any]:
    """Draw one scenario (plain data, JSON-able) from `random.Random(seed)`."""
    r = random.Random(seed)
    task = r.choice(["ce", "ce", "ce", "bce", "reg", "reg", "two_targ", "tuple_out"])
    sc: dict[str, Any] = {"seed": seed, "task": task, "loss": r.choice(TASKS[task]), "n_in": r.randint(2, 5)}
    sc["n_out"] = {"ce": r.randint(2, 4), "bce": r.randint(1, 4), "reg": r.choice([1, 1, 2]),
                   "two_targ": r.randint(2, 4), "tuple_out": 1}[task]
    sc["thresh"] = r.choice([None, 0.3, 0.5, 0.7])
    sc["n_train"] = r.randint(3, 24)
    sc["n_valid"] = r.randint(2, 20)
    sc["bs"] = r.choice([1, 2, 3, 4, 8, 16])
    sc["n_inp"] = r.choice([1, 1, 1, 2])
    sc["declare_n_inp"] = sc["n_inp"] == 2 or r.random() < 0.3
    sc["hidden"] = r.choice([3, 5, 8])
    sc["bn"] = r.random() < 0.2
    sc["dropout"] = r.choice([0, 0, 0, 0.5])
    metric = {"ce": "accuracy", "bce": "accuracy_multi", "reg": "rmse"}.get(task)
    sc["metrics"] = [m for m in [metric, "mae" if task == "reg" else None] if m and r.random() < 0.6]
    sc["ops"] = [_make_op(r, sc) for _ in range(r.randint(1, 4))]
    # A shuffled training loader (its last partial batch dropped) when no operation trains: the two libraries'
    # loaders draw different orders, which get_preds and the interpretations must read in dataset order.
    sc["shuffle"] = r.random() < 0.4 and not any(o["op"] in TRAINS for o in sc["ops"])
    sc["freeze"] = r.random() < 0.15  # the first layer's weight not trainable (summary, total_params)
    return sc


def _make_op(r: random.Random, sc: dict[str, Any]) -> dict[str, Any]:
    kind = r.choice(OPS)
    op: dict[str, Any] = {"op": kind}
    if kind == "get_preds":
        op.update(ds_idx=r.choice([0, 1, 1]), dl=r.choice([None, None, None, "loader", "list"]),
                  with_input=r.random() < 0.4, with_decoded=r.random() < 0.4, with_loss=r.random() < 0.4,
                  act=r.choice([None, None, "sigmoid", "double"]), reorder=r.random() < 0.8,
                  with_preds=r.random() > 0.15, with_targs=r.random() > 0.15,
                  concat_dim=r.choice([0, 0, 0, 1]), save=r.choice([None, None, None, "preds", "targs", "both"]),
                  cbs=r.choice([None, None, "count", "mc_dropout", "mc_dropout_class"]), inner=r.random() < 0.1)
    elif kind == "predict":
        op.update(item=r.randrange(sc["n_train"]), with_input=r.random() < 0.3)
    elif kind == "validate":
        op.update(ds_idx=r.choice([0, 1]), dl=r.random() < 0.3, cbs=r.random() < 0.3)
    elif kind == "interp":
        op.update(classif=sc["task"] == "ce" and r.random() < 0.7, ds_idx=r.choice([0, 1]), dl=r.random() < 0.2,
                  act=r.choice([None, None, "sigmoid"]), k=r.choice([None, 0, 1, 3, 3, 40]),
                  largest=r.random() < 0.7, items=r.random() < 0.3, idxs=r.choice([None, 0, [0, 1], [1, 0, 1]]),
                  min_val=r.choice([0, 1, 1, 2]))
    elif kind == "save_load":
        op.update(fit=r.random() < 0.7, opt=r.choice(["sgd", "adam"]), with_opt_save=r.random() < 0.7,
                  with_opt_load=r.random() < 0.7, strict=r.random() < 0.8, device=r.choice([None, "cpu"]),
                  mismatch=r.random() < 0.15, buffer=r.random() < 0.15)
    elif kind == "export":
        op.update(item=r.randrange(sc["n_train"]))
    elif kind == "hooks":
        op.update(which=r.choice(["hook_output", "hook_outputs", "Hooks"]), grad=r.random() < 0.3,
                  detach=r.random() < 0.8, cpu=r.random() < 0.3, whole=r.random() < 0.2)
    elif kind == "conv_sizes":
        op.update(c_in=r.choice([1, 3]), c=r.choice([4, 8]), n_conv=r.randint(1, 3), size=r.choice([16, 32]),
                  pool=r.random() < 0.5)
    elif kind == "activation_stats":
        op.update(with_hist=r.random() < 0.5, every=r.choice([None, None, 2]),
                  then=r.choice([None, None, "validate", "get_preds", "fit"]))
    elif kind == "fetch_preds":
        op.update(ds_idx=r.choice([0, 1]), with_input=r.random() < 0.5, with_decoded=r.random() < 0.5)
    return op


class ItemsDataset(TensorDataset):
    """A TensorDataset with what fastai's export and Interpretation read of a dataset: `items`, `new_empty`."""

    @property
    def items(self) -> list[tuple[torch.Tensor, ...]]:
        return [self[i] for i in range(len(self))]

    def new_empty(self) -> ItemsDataset:
        return ItemsDataset(*(t[:0] for t in self.tensors))


def _data(sc: dict[str, Any]) -> tuple[ItemsDataset, ItemsDataset]:
    g = torch.Generator().manual_seed(sc["seed"])
    n_in, n_out, task = sc["n_in"], sc["n_out"], sc["task"]
    w = torch.randn(n_in, n_out, generator=g)

    def make(n: int) -> ItemsDataset:
        xs = [torch.randn(n, n_in, generator=g) for _ in range(sc["n_inp"])]
        x = sum(xs[1:], xs[0])
        z = x @ w
        if task == "ce":
            ys = [z.argmax(1)]
        elif task == "bce":
            ys = [(z > 0).float()]
        elif task == "two_targ":
            ys = [z.argmax(1), z[:, 0] + 0.1 * torch.randn(n, generator=g)]
        else:
            ys = [z + 0.1 * torch.randn(n, n_out, generator=g)]
        return ItemsDataset(*xs, *ys)

    return make(sc["n_train"]), make(sc["n_valid"])


def _loss(lib: Lib, sc: dict[str, Any]) -> Any:
    cls = lib.ns["losses"][sc["loss"]]
    if sc["loss"] == "BCEWithLogitsLossFlat" and sc["thresh"] is not None:
        return cls(thresh=sc["thresh"])
    return cls()


def _model(sc: dict[str, Any]) -> Net:
    torch.manual_seed(sc["seed"])
    return Net(sc)


def _conv_model(op: dict[str, Any]) -> nn.Sequential:
    torch.manual_seed(op["c"] * 100 + op["n_conv"])
    layers: list[nn.Module] = []
    c_in = op["c_in"]
    for i in range(op["n_conv"]):
        layers += [nn.Conv2d(c_in, op["c"] * (i + 1), 3, stride=2, padding=1), nn.ReLU()]
        c_in = op["c"] * (i + 1)
    if op["pool"]:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------- one run
def _summary_lines(text: str) -> list[str]:
    """A summary's text up to its callbacks (each library lists its own), without the optimizer's line (its repr
    holds an address): the porting guide says the rest is fastai's, line for line."""
    return [line for line in text.split("Callbacks:")[0].splitlines() if not line.startswith("Optimizer used")]


def _file_summary(path: Path | io.BytesIO) -> Any:
    """A comparable description of a `.pth` file: its keys, the model's tensors, the optimizer state's shape."""
    obj = torch.load(path, weights_only=False)

    def shape(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return norm(x)
        if isinstance(x, dict):
            return {str(k): shape(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)) or type(x).__name__ == "L":
            return [shape(o) for o in x]
        return norm(x)

    def model(sd: Any) -> Any:  # the weights, and what torch's state dict carries (its type, each module's version)
        if not isinstance(sd, dict):
            return type(sd).__name__
        return {"type": type(sd).__name__, "metadata": norm(dict(getattr(sd, "_metadata", None) or {})),
                "tensors": shape(sd)}

    if isinstance(obj, dict) and set(obj) == {"model", "opt"}:
        return {"keys": ["model", "opt"], "model": model(obj["model"]), "opt": shape(obj["opt"])}
    return {"keys": "state_dict", "model": model(obj)}


class _Run:
    """One library's run of a scenario."""

    def __init__(self, lib: Lib, sc: dict[str, Any], tmp: Path) -> None:
        self.lib, self.sc, self.tmp, self.ns = lib, sc, tmp, lib.ns
        self.learn: Any = None
        self.saved: list[Path] = []

    def new_learner(self, model: nn.Module | None = None, opt: str = "sgd") -> Any:
        sc, ns = self.sc, self.ns
        train, valid = _data(sc)
        dls = ns["make_dls"](train, valid, sc["bs"], sc["n_inp"] if sc["declare_n_inp"] else None, sc["shuffle"])
        metrics = [ns["metrics"][m] for m in sc["metrics"]]
        if model is None:
            model = _model(sc)
            if sc["freeze"]:
                model.body[0].weight.requires_grad_(False)
        return ns["Learner"](dls, model, loss_func=_loss(self.lib, sc), opt_func=ns[opt], lr=0.1, metrics=metrics,
                             path=self.tmp)

    def build(self) -> None:
        self.learn = self.new_learner()

    def _dl(self, which: str | None, ds_idx: int) -> Any:
        train, valid = _data(self.sc)
        ds = train if ds_idx == 0 else valid
        if which == "loader":
            return self.ns["make_dl"](ds, self.sc["bs"])
        if which == "list":
            bs = self.sc["bs"]
            return [tuple(t[i:i + bs] for t in ds.tensors) for i in range(0, len(ds), bs)]
        return None

    def call(self, op: dict[str, Any]) -> Any:
        return norm(getattr(self, "op_" + op["op"])(op))

    # ---- inference
    def op_get_preds(self, op: dict[str, Any]) -> Any:
        ns, learn = self.ns, self.learn
        kw: dict[str, Any] = {}
        act = {None: None, "sigmoid": torch.sigmoid, "double": _double}[op["act"]]
        for k in ("with_input", "with_decoded", "with_loss", "reorder", "with_preds", "with_targs", "inner"):
            kw[k] = op[k]
        if op["concat_dim"]:
            kw["concat_dim"] = op["concat_dim"]
        out: dict[str, Any] = {}
        if op["save"] in ("preds", "both"):
            kw["save_preds"] = self.tmp / "preds"
            kw["save_preds"].mkdir(exist_ok=True)
        if op["save"] in ("targs", "both"):
            kw["save_targs"] = self.tmp / "targs"
            kw["save_targs"].mkdir(exist_ok=True)
        cb = None
        if op["cbs"] == "count":
            cb = _count_cb(ns["Callback"])
        elif op["cbs"] == "mc_dropout":
            cb = ns["MCDropoutCallback"]()
        elif op["cbs"] == "mc_dropout_class":
            cb = ns["MCDropoutCallback"]
        torch.manual_seed(1)
        res = learn.get_preds(ds_idx=op["ds_idx"], dl=self._dl(op["dl"], op["ds_idx"]), act=act, cbs=cb, **kw)
        out["res"] = norm(res)
        if op["cbs"] == "count":
            out["count"] = cb.n
        for d in ("preds", "targs"):
            if (self.tmp / d).exists():
                out[d + "_files"] = {f.name: norm(torch.load(f, weights_only=False))
                                     for f in sorted((self.tmp / d).iterdir())}
        out["model.training"] = learn.model.training
        return out

    def op_predict(self, op: dict[str, Any]) -> Any:
        learn = self.learn
        train, _ = _data(self.sc)
        n_inp = self.sc["n_inp"]
        item = tuple(t[op["item"]] for t in train.tensors[:n_inp])
        if self.lib.name == "learnloop":
            res = learn.predict(item if n_inp > 1 else item[0], with_input=op["with_input"])
            return norm(res[2:] if op["with_input"] else res[1:]), norm(res[0]) if op["with_input"] else None
        # fastai's predict up to its decode_batch, which needs fastai's pipeline: the same events and calls.
        dl = learn.dls.test_dl([item])
        inp, preds, _, decoded = learn.get_preds(dl=dl, with_input=True, with_decoded=True)
        inp = tuple(x[0] for x in inp) if isinstance(inp, (list, tuple)) else inp[0]
        return norm((decoded[0], preds[0])), norm(inp) if op["with_input"] else None

    def op_validate(self, op: dict[str, Any]) -> Any:
        cbs = _count_cb(self.ns["Callback"]) if op["cbs"] else None
        # A shuffled training loader drops another last batch in each library: read it in order then.
        dl = self._dl("loader", op["ds_idx"]) if op["dl"] or (self.sc["shuffle"] and op["ds_idx"] == 0) else None
        res = self.learn.validate(ds_idx=op["ds_idx"], dl=dl, cbs=cbs)
        return norm(res), cbs.n if cbs else None

    # ---- interpretation
    def op_interp(self, op: dict[str, Any]) -> Any:
        ns, learn = self.ns, self.learn
        act = torch.sigmoid if op["act"] == "sigmoid" else None
        dl = self._dl("loader", op["ds_idx"]) if op["dl"] else None
        if op["classif"]:
            vocab = [f"c{i}" for i in range(self.sc["n_out"])]
            if dl is None:  # the vocab where each library looks for it
                dl = ns["vocab_dl"](self._dl("loader", op["ds_idx"]), vocab)
            else:
                dl = ns["vocab_dl"](dl, vocab)
            interp = ns["ClassificationInterpretation"].from_learner(learn, ds_idx=op["ds_idx"], dl=dl, act=act)
        else:
            interp = ns["Interpretation"].from_learner(learn, ds_idx=op["ds_idx"], dl=dl, act=act)
        out: dict[str, Any] = {"losses": norm(interp.losses)}
        # fastai's items are `dl.items` (documented: learnloop's are `dl.dataset[i]`, here the same tuples)
        tl = interp.top_losses(op["k"], largest=op["largest"], items=op["items"])
        out["top_losses"] = norm(tl[:2])
        if op["items"]:
            out["items"] = norm([tuple(it) for it in tl[2]])
        if op["idxs"] is not None:
            if self.lib.name == "learnloop":
                out["getitem"] = norm(interp[op["idxs"]])
            else:  # fastai's runs its test_dl pipeline over `dl.items[idxs]`: the same batches, in a plain loader
                idxs = op["idxs"] if isinstance(op["idxs"], list) else [op["idxs"]]
                ds = interp.dl.dataset
                sub = self.ns["make_dl"](ItemsDataset(*(t[idxs] for t in ds.tensors)), self.sc["bs"])
                res = learn.get_preds(dl=sub, with_input=True, with_decoded=True, act=act, reorder=False)
                out["getitem"] = norm((*res, interp.losses[idxs]))
        if op["classif"]:
            out["cm"] = interp.confusion_matrix().tolist()
            out["most_confused"] = [[str(a), str(b), int(c)] for a, b, c in interp.most_confused(op["min_val"])]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                interp.print_classification_report()
            out["report"] = buf.getvalue()
        return out

    # ---- saving
    def op_save_load(self, op: dict[str, Any]) -> Any:
        learn = self.learn = self.new_learner(opt=op["opt"])
        out: dict[str, Any] = {}
        if op["fit"]:
            learn.fit(1)
        name: Any = f"m{len(self.saved)}"
        if op["buffer"]:
            name = io.BytesIO()
            learn.save(name, with_opt=op["with_opt_save"])
            out["file"] = _file_summary(io.BytesIO(name.getvalue()))
            name.seek(0)
        else:
            path = learn.save(name, with_opt=op["with_opt_save"])
            self.saved.append(Path(path))
            out["path"] = str(Path(path).relative_to(self.tmp))
            out["file"] = _file_summary(Path(path))
        before = norm(list(learn.model.state_dict().values()))
        with torch.no_grad():
            for p in learn.model.parameters():
                p.mul_(0.5)
        model = learn.model
        if op["mismatch"]:
            model.extra = nn.Linear(1, 1)
        try:
            learn.load(name, with_opt=op["with_opt_load"], strict=op["strict"], device=op["device"])
        except Exception as e:  # noqa: BLE001 - a model that does not match the file
            if not op["mismatch"]:
                raise
            out["load_error"] = _error(e)["mro"]
            # What a refused load left in the model, then a fresh learner: the next operations start alike.
            out["failed_load_weights"] = close(norm(list(learn.model.state_dict().values())), before)
            self.learn = self.new_learner(opt=op["opt"])
            return out
        finally:
            if op["mismatch"]:
                del model.extra
        out["weights_back"] = close(norm(list(learn.model.state_dict().values())), before)
        out["opt"] = learn.opt is not None
        out["opt_state"] = norm([learn.opt.state_dict()["hypers"] if self.lib.name == "fastai" else
                                 learn.opt.state_dict()["hypers"]]) if learn.opt is not None else None
        try:
            learn.load("no_such_file")
        except Exception as e:  # noqa: BLE001 - the error is the result
            out["missing"] = _error(e)["mro"]
        return out

    def op_export(self, op: dict[str, Any]) -> Any:
        learn = self.learn
        had_opt = learn.opt is not None
        learn.export("exp.pkl")
        opt_after = (had_opt, learn.opt is not None)
        kw = {"model": _model(self.sc)} if self.lib.name == "learnloop" else {}
        loaded = self.ns["load_learner"](self.tmp / "exp.pkl", **kw)
        if self.lib.name == "fastai" and self.sc["declare_n_inp"]:  # set on the DataLoaders, not in the export
            loaded.dls.n_inp = self.sc["n_inp"]
        train, valid = _data(self.sc)
        dl = self.ns["make_dl"](valid, self.sc["bs"])
        out: dict[str, Any] = {"preds": norm(loaded.get_preds(dl=dl)), "training": loaded.model.training,
                               "opt_after": opt_after, "item": norm(loaded.get_preds(dl=[self._xb()])[0])}
        try:
            self.ns["load_learner"](self.tmp / "nope.pkl", **kw)
        except Exception as e:  # noqa: BLE001 - the error is the result
            out["missing"] = _error(e)["mro"]
        return out

    # ---- hooks
    def _xb(self) -> tuple[torch.Tensor, ...]:
        train, _ = _data(self.sc)
        return tuple(t[: self.sc["bs"]] for t in train.tensors[: self.sc["n_inp"]])

    def op_hooks(self, op: dict[str, Any]) -> Any:
        ns, model = self.ns, self.learn.model
        mods = [model.body[0], model.head] + ([model.body[1]] if len(model.body) > 1 else [])
        xb = self._xb()
        model.eval()
        kw = {"detach": op["detach"], "cpu": op["cpu"], "grad": op["grad"]}
        if op["whole"]:
            mods = [model] + mods[:1]
        if op["which"] == "hook_output":
            h = ns["hook_output"](mods[0], **kw)
        elif op["which"] == "hook_outputs":
            h = ns["hook_outputs"](mods, **kw)
        else:
            h = ns["Hooks"](mods, lambda m, i, o: o.detach().sum(0), detach=op["detach"], cpu=op["cpu"])
        with h:
            xs = tuple(x.clone().requires_grad_(True) for x in xb)
            out = model(*xs)
            if op["grad"] and op["which"] != "Hooks":
                (out[0] if isinstance(out, tuple) else out).sum().backward()
            stored = h.stored
        model.zero_grad()
        return {"stored": norm(stored), "removed": [len(m._forward_hooks) + len(m._backward_hooks) for m in mods]}

    def op_summary(self, op: dict[str, Any]) -> Any:
        ns, learn = self.ns, self.learn
        out = {"total_params": norm(ns["total_params"](learn.model))}
        out["layer_info"] = norm([list(x) for x in ns["layer_info"](learn, *self._xb())])
        out["summary"] = _summary_lines(str(learn.summary()))
        out["model.training"] = learn.model.training
        return out

    def op_conv_sizes(self, op: dict[str, Any]) -> Any:
        ns, m = self.ns, _conv_model(op)
        size = (op["size"], op["size"])
        out = {"model_sizes": [list(s) for s in ns["model_sizes"](m, size)]}
        out["dummy_eval"] = list(ns["dummy_eval"](m, size).shape)
        out["num_features_model"] = ns["num_features_model"](m)
        return out

    def op_activation_stats(self, op: dict[str, Any]) -> Any:
        learn = self.learn = self.new_learner()
        cb = self.ns["ActivationStats"](with_hist=op["with_hist"], every=op["every"])
        learn.fit(1, cbs=cb)
        if op["then"] == "fit":
            learn.fit(1, cbs=cb)
        elif op["then"]:  # with the callback on the learner: its before_fit starts a new record
            learn.add_cb(cb)
            getattr(learn, op["then"])()
            learn.remove_cb(cb)
        n = len(cb.modules)
        out: dict[str, Any] = {"n_stats": len(cb.stats), "n_modules": n}
        out["layer_stats"] = [norm(cb.layer_stats(i)) for i in range(n)]
        if op["with_hist"]:
            out["hist"] = [norm(cb.hist(i)) for i in range(n)]
        out["weights"] = norm(list(learn.model.state_dict().values()))
        return out

    def op_hook_callback(self, op: dict[str, Any]) -> Any:
        learn = self.learn = self.new_learner()
        cb = _mean_hook_cb(self.ns["HookCallback"], [learn.model.body[0], learn.model.head])
        learn.fit(1, cbs=cb)
        return {"means": norm(cb.means), "hooks_left": len(learn.model.head._forward_hooks)}

    def op_fetch_preds(self, op: dict[str, Any]) -> Any:
        learn = self.learn = self.new_learner()
        cb = self.ns["FetchPredsCallback"](ds_idx=op["ds_idx"], with_input=op["with_input"],
                                           with_decoded=op["with_decoded"])
        learn.fit(1, cbs=cb)
        return {"preds": norm(cb.preds), "values": norm(learn.recorder.values)}


def _state(learn: Any) -> dict[str, Any]:
    """What a call leaves on the learner: modes, the last batch's state, the callbacks."""
    out: dict[str, Any] = {"model.training": learn.model.training}
    for a in ("training", "pred", "loss", "xb", "yb", "epoch", "n_epoch"):
        out[a] = norm(learn.__dict__.get(a))
    out["cbs"] = [type(c).__name__ for c in learn.cbs if type(c).__name__ not in ("CastToTensor", "ProgressCallback")]
    return out


def run_lib(lib: Lib, sc: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run scenario `sc` under `lib`: each call's result or error, the weights after it."""
    run = _Run(lib, sc, tmp)
    out: dict[str, Any] = {"calls": [], "build_error": None, "saved": run.saved}
    torch.manual_seed(sc["seed"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            run.build()
        except Exception as e:  # noqa: BLE001 - a scenario's error is a result to compare
            out["build_error"] = _error(e)
            return out
        for op in sc["ops"]:
            call: dict[str, Any] = {"op": op["op"], "result": None, "error": None}
            try:
                call["result"] = run.call(op)
            except Exception as e:  # noqa: BLE001
                call["error"] = _error(e)
            call["weights"] = norm(list(run.learn.model.state_dict().values()))
            call["state"] = _state(run.learn)
            out["calls"].append(call)
    return out


def cross_load(lib: Lib, sc: dict[str, Any], tmp: Path, files: list[Path]) -> list[Any]:
    """Load each of the other library's saved files into a fresh learner of `lib`: the weights, or the error."""
    res: list[Any] = []
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for f in files:
            learn = _Run(lib, sc, tmp).new_learner()
            try:
                learn.load(f.with_suffix(""), with_opt=True)
                res.append(norm(list(learn.model.state_dict().values())))
            except Exception as e:  # noqa: BLE001
                res.append(_error(e)["mro"][0])
    return res


# ----------------------------------------------------------------------------------------------- comparing
def _same_error(fa: dict[str, Any] | None, ll: dict[str, Any] | None) -> str | None:
    if fa is None and ll is None:
        return None
    if fa is None or ll is None:
        return f"error: fastai {fa and fa['type']} vs learnloop {ll and ll['type']}: " \
               f"{((fa or ll) or {}).get('text', '')[:200]!r}"
    if fa["type"] not in ll["mro"]:
        return f"error type: fastai {fa['type']} vs learnloop {ll['type']}: {ll['text'][:200]!r}"
    return None


def _diff_path(a: Any, b: Any, path: str = "") -> str:
    """Where two normalised values first differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path} keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            if not close(a[k], b[k]):
                return _diff_path(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if not close(x, y):
                return _diff_path(x, y, f"{path}[{i}]")
    return f"{path}: fastai {_short(a)} vs learnloop {_short(b)}"


def _carry(sc: dict[str, Any], op: dict[str, Any], carried: set[str]) -> None:
    """Update what a documented difference leaves on the learner that the calls after `op` do not compare."""
    if op["op"] in TRAINS or op["op"] in ("get_preds", "validate", "predict"):
        carried.difference_update(("model.training", "pred", "loss", "xb", "yb"))  # a validation phase sets them
    if op["op"] in TRAINS:
        carried.discard("opt")  # each makes a new learner
    if op["op"] == "summary":
        carried.add("model.training")
    if op["op"] in ("export", "interp") or (op["op"] == "summary" and sc["shuffle"]):
        # export: documented (and its optimizer); interp and summary: see compare
        carried.update(("pred", "loss", "xb", "yb"))
    if op["op"] == "export":
        carried.add("opt")


def compare(sc: dict[str, Any], fa: dict[str, Any], ll: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, description) of each difference between the two runs."""
    diffs: list[tuple[str, str]] = []
    if d := _same_error(fa["build_error"], ll["build_error"]):
        return [("build", d)]
    carried: set[str] = set()  # state a documented difference leaves behind, not compared in the calls after it
    for i, (a, b) in enumerate(zip(fa["calls"], ll["calls"], strict=True)):
        op = sc["ops"][i]
        sa, sb = ({k: v for k, v in st.items() if k not in carried} for st in (a["state"], b["state"]))
        _carry(sc, op, carried)
        if d := _same_error(a["error"], b["error"]):
            diffs.append((f"{op['op']}.error", f"call {i} {d}"))
            continue
        ra, rb = a["result"], b["result"]
        if op["op"] == "summary" and "opt" in carried and ra and rb:  # an export made fastai's optimizer
            ra, rb = ({**r, "summary": [x for x in r["summary"] if x and not x.startswith("Model ")]} for r in (ra, rb))
        if op["op"] == "save_load" and ra and rb:
            ra, rb = dict(ra), dict(rb)
            for k in ("file", "opt_state"):  # the optimizers' state_dict layouts are each library's
                if k in ra and k in rb:
                    fa_f, ll_f = ra.pop(k), rb.pop(k)
                    if k == "file" and not close(fa_f["model"], ll_f["model"]):
                        diffs.append(("save_load.file", f"call {i} {_diff_path(fa_f['model'], ll_f['model'])}"))
                    if k == "file" and fa_f["keys"] != ll_f["keys"]:
                        diffs.append(("save_load.file", f"call {i} layout {fa_f['keys']} vs {ll_f['keys']}"))
        if op["op"] == "save_load" and ra and rb and "load_error" in ra and "load_error" in rb:
            ra, rb = dict(ra), dict(rb)
            if ra.pop("load_error")[0] not in rb.pop("load_error"):
                diffs.append(("save_load.error", f"call {i} a refused load's error types differ"))
            if ra.pop("failed_load_weights") != rb.pop("failed_load_weights"):
                diffs.append((FAILED_LOAD, f"call {i} fastai's refused load copied the weights that fit"))
        if op["op"] == "get_preds" and not op["with_preds"] and op["with_decoded"] and ra and rb:
            # learnloop keeps a None for the decoded predictions; fastai's tuple has no place for them
            pos = 2 + op["with_input"]
            if len(rb["res"]) == len(ra["res"]) + 1 and rb["res"][pos] is None:
                rb = {**rb, "res": rb["res"][:pos] + rb["res"][pos + 1:]}
                diffs.append((DECODED_NONE, f"call {i}"))
        if op["op"] == "summary" and ra and rb and ra["model.training"] != rb["model.training"]:
            ra, rb = {**ra, "model.training": None}, {**rb, "model.training": None}
            diffs.append((SUMMARY_MODE, f"call {i}"))
        if not close(ra, rb):
            diffs.append((f"{op['op']}.result", f"call {i} {_diff_path(ra, rb)}"))
        if not close(a["weights"], b["weights"]):
            diffs.append((f"{op['op']}.weights", f"call {i} weights differ"))
        if op["op"] == "interp" or (op["op"] == "summary" and sc["shuffle"]):
            # The last batch run differs: fastai's ClassificationInterpretation runs get_preds again in each method
            # (learnloop's once, documented) and interp[idxs] is emulated for fastai; summary runs the first batch
            # of each library's shuffled loader.
            sa, sb = ({k: v for k, v in st.items() if k not in ("pred", "loss", "xb", "yb")} for st in (sa, sb))
        if op["op"] == "summary" and sa.get("model.training") != sb.get("model.training"):
            sa, sb = {**sa, "model.training": None}, {**sb, "model.training": None}
            diffs.append((SUMMARY_MODE, f"call {i}"))
        if op["op"] == "export" and any(not close(sa.get(k), sb.get(k)) for k in ("pred", "loss", "xb", "yb")):
            sa, sb = ({k: v for k, v in st.items() if k not in ("pred", "loss", "xb", "yb")} for st in (sa, sb))
            diffs.append((EXPORT_KEEPS, f"call {i}"))
        if not close(sa, sb):
            diffs.append((f"{op['op']}.state", f"call {i} {_diff_path(sa, sb)}"))
    for i, (a, b) in enumerate(zip(fa.get("cross", []), ll.get("cross", []), strict=False)):
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                diffs.append(("cross_load", f"file {i}: fastai loading learnloop's: {_short(a, 60)}, learnloop "
                                            f"loading fastai's: {_short(b, 60)}"))
        elif not close(a, b):
            diffs.append(("cross_load", f"file {i}: weights loaded differ"))
    return diffs


FAILED_LOAD = "documented: a refused load loads nothing"
DECODED_NONE = "documented: get_preds(with_preds=False) keeps None for the decoded"
SUMMARY_MODE = "documented: summary() puts the model's mode back"
EXPORT_KEEPS = "documented: export changes nothing on the learner"


def classify(sc: dict[str, Any], fa: dict[str, Any], ll: dict[str, Any], field: str, desc: str) -> str:
    """Name the kind of a difference; `documented: ...` for those the porting guide lists."""
    if field.startswith("documented"):
        return field
    m = re.match(r"call (\d+)", desc)
    i = int(m.group(1)) if m else 0
    op, before = sc["ops"][i], sc["ops"][:i]
    if op["op"] == "export" and field == "export.error" and sc["loss"] in ("TwoTargetLoss", "TupleLoss"):
        return "documented: load_learner(model=) has no loss of the user's own"
    if op["op"] == "hooks" and field == "hooks.result" and ".removed" in desc and any(
            fa["calls"][j]["error"] and o["op"] in ("activation_stats", "hook_callback") for j, o in enumerate(before)):
        return "documented: a failed fit's hooks come off"
    if op["op"] == "get_preds" and op["inner"] and field == "get_preds.error" and any(
            o["op"] == "summary" for o in before):
        return "documented: summary() changes nothing"
    if op["op"] == "get_preds" and op["concat_dim"] == 1 and field == "get_preds.result":
        n = sc["n_train"] if op["ds_idx"] == 0 else sc["n_valid"]
        if n % sc["bs"]:
            return "documented: to_concat gives the slices along concat_dim"
    if op["op"] == "interp" and op["classif"] and sc["loss"] == "nn.CrossEntropyLoss" and field == "interp.error":
        return "documented: ClassificationInterpretation without decodes"
    n = sc["n_train"] if op.get("ds_idx") == 0 else sc["n_valid"]
    if op["op"] == "interp" and (op["k"] or 0) > n and field == "interp.error":
        return "documented: top_losses(k) above the number of items"
    if op["op"] == "export" and ".opt_after" in desc:
        return EXPORT_KEEPS
    if field == "cross_load" and "learnloop loading fastai's: \"CheckpointError" in desc:
        i = int(desc.split()[1].rstrip(":"))
        op = [o for o in sc["ops"] if o["op"] == "save_load"][i]
        if op["fit"] and op["with_opt_save"]:  # fastai's optimizer state holds fastcore's L
            return "documented: fastai's opt state needs weights_only=False"
    return field


def _fastai_failed(fa: dict[str, Any], desc: str) -> dict[str, Any] | None:
    """fastai's error in the call a difference is about."""
    m = re.match(r"call (\d+)", desc)
    return fa["build_error"] if m is None else fa["calls"][int(m.group(1))]["error"]


def check(seed: int) -> dict[str, Any]:
    """Run one seed under both libraries and compare: the JSON line written for it."""
    sc = make_scenario(seed)
    signal.signal(signal.SIGALRM, _timeout)
    with tempfile.TemporaryDirectory() as d:
        tfa, tll = Path(d, "fastai"), Path(d, "learnloop")
        tfa.mkdir()
        tll.mkdir()
        signal.alarm(TIMEOUT)
        try:
            fa = run_lib(LIBS["fastai"], sc, tfa)
            signal.alarm(TIMEOUT)
            ll = run_lib(LIBS["learnloop"], sc, tll)
            if fa["saved"] and ll["saved"]:
                fa["cross"] = cross_load(LIBS["fastai"], sc, tfa, ll["saved"])
                ll["cross"] = cross_load(LIBS["learnloop"], sc, tll, fa["saved"])
        except _Timeout:
            who = "learnloop" if "fa" in locals() else "fastai"
            return {"seed": seed, "status": "diff" if who == "learnloop" else "skipped", "kind": f"{who} hangs",
                    "first_diff": f"no end after {TIMEOUT} s"}
        finally:
            signal.alarm(0)
    documented = ""
    for field, desc in compare(sc, fa, ll):
        kind = classify(sc, fa, ll, field, desc)
        if kind.startswith(("documented", "kept")):
            documented = documented or kind
            continue
        fa_err = _fastai_failed(fa, desc)
        if fa_err is not None and field.endswith("error"):
            return {"seed": seed, "status": "skipped", "kind": f"fastai fails: {field} {fa_err['type']}",
                    "first_diff": " ".join(fa_err["text"].split())[:200]}
        return {"seed": seed, "status": "diff", "kind": kind, "first_diff": desc[:400]}
    if documented:
        return {"seed": seed, "status": "diff", "kind": documented, "first_diff": ""}
    return {"seed": seed, "status": "same", "kind": "", "first_diff": ""}


LIBS: dict[str, Lib] = {}


def _init() -> None:
    torch.set_num_threads(1)
    LIBS["fastai"], LIBS["learnloop"] = _fastai_lib(), _learnloop_lib()


def show(seed: int) -> None:
    """Print scenario `seed` and both runs' results."""
    sc = make_scenario(seed)
    print(json.dumps(sc))
    with tempfile.TemporaryDirectory() as d:
        runs = {}
        for name in ("fastai", "learnloop"):
            Path(d, name).mkdir()
            runs[name] = run_lib(LIBS[name], sc, Path(d, name))
        for name, res in runs.items():
            print(f"--- {name}: build error {res['build_error']}")
            for c in res["calls"]:
                print(f"  {c['op']}: error {c['error'] and (c['error']['type'], c['error']['text'][:400])}")
                print(f"    result {_short(c['result'], 1500)}")
    for field, desc in compare(sc, runs["fastai"], runs["learnloop"]):
        print("!!", field, desc)
    print("=>", check(seed))


def main() -> None:
    run_cli(__doc__ or "", _init, show, check)


if __name__ == "__main__":
    sys.exit(main())
