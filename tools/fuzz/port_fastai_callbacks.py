"""Port fastai 2.8's own callbacks and optimizer steppers to learnloop by changing only their imports, and compare.

What: learnloop promises that "a fastai callback or optimizer stepper runs after changing only its imports". This
tool takes that at its word with fastai's own code. At run time it reads the source of fastai's callback modules
and of ``fastai/optimizer.py`` from the installed package (none of fastai's code is in this file) and ports each
module mechanically, as a user would:

- every ``from fastai...`` / relative import is replaced by learnloop's counterparts, per the import table of
  docs/porting-from-fastai.md (``from ..basics import *`` becomes ``from learnloop import *`` and the star imports of
  ``learnloop.callbacks``, ``.optimizer``, ``.torch_core``, ``.hooks``, ``.summary``, ``.losses``, ``.metrics``; a
  name imported by name that learnloop lacks is reported as ``missing``);
- what fastai's own ``fastai/imports.py`` and ``torch_imports.py`` bring that is not fastai's (the standard library,
  numpy, torch, fastcore, fastprogress: what a fastai user already has) stays, read from those files;
- the definitions learnloop provides as the base a port builds on are left out: ``Callback``, the events and cancel
  exceptions (callback/core.py), ``_BaseOptimizer``, ``Optimizer`` and ``_update`` (optimizer.py). Every other
  top-level statement runs as it is, one by one; one that fails is reported with the names it defines.
  fastcore's ``@patch`` then lands on learnloop's classes (``Learner.fit_one_cycle`` becomes fastai's): the classes
  are put back after each case.

Each case then runs one ported callback, stepper chain or patched method on learnloop, and fastai's original on
fastai, on the same small task (the tasks, models and comparison of ``callbacks_vs_fastai.py``: same initial
weights, same batches, unshuffled, same torch/numpy/random state), and compares what they leave: the weights, the
optimizer's hyper-parameters and state, ``recorder.values``, ``losses``, ``lrs``, ``hps``, the loop's counters, the
files written (CSV without its time column, ``.pth`` contents), what the run printed, the case's result (lr_find's
suggestions, get_preds' tensors, summary text...), the callback's own attributes (numbers, tensors, lists of them;
other objects by type name) and the events that reached it, in order (event, epoch, iter, training).

How to run (fastai and learnloop in one process: the benchmark environment)::

    PYTHONPATH=$PWD/src nice -n 10 /tmp/benchenv/bin/python tools/fuzz/port_fastai_callbacks.py --seeds 3
    PYTHONPATH=$PWD/src /tmp/benchenv/bin/python tools/fuzz/port_fastai_callbacks.py --show tracker.SaveModelCallback

The cases: every callback of the ported modules (the trackers, schedules and fit policies, lr_find and its
suggestions, ``MixedPrecision``, the hooks and ``ActivationStats``, ``MixUp``/``CutMix``, the progress bar, graph and
CSV logger, the RNN callbacks, ``ChannelsLast``, ``CollectDataCallback``, ``TrainEvalCallback``, the gathering
callbacks), some together (fastai's trackers and ``CSVLogger`` through fastai's ``lr_find``, ``FetchPredsCallback``
beside them), ``lifecycle.*`` (a ported callback left on the learner through lr_find, fit_one_cycle, fit, validate()
and get_preds(), each step's result or error compared), fastai's optimizers built from the ported steppers
(parameter by parameter on learnloop's ``Optimizer``; ``Lookahead`` over it), and ``docs.*``: callbacks written here
in the idioms of fastai's documentation (an overridden ``__call__``, keyword hooks, ``store_attr`` and ``L``, changes
to ``xb``/``pred``/``loss_grad``, the backward/step/batch cancels, a callback that removes itself, a
``HookCallback`` subclass), made on each library's own base classes.

What the port cannot do is counted apart, as ``limit:<what>``: fastai's ``summary`` reads ``dls.train.one_batch()``
(learnloop's ``dls.train`` is your torch DataLoader; learnloop's ``dls.one_batch()`` is the one there is).
(``model_sizes``/``dummy_eval``/``num_features_model`` call ``in_channels``, which ``learnloop.hooks`` has since this
tool found it missing.) ``OptimWrapper`` derives from fastai's private ``_BaseOptimizer`` and is not ported (learnloop
has its own). ``documented:cancelled_phase``: learnloop's ``get_preds()`` cut short by a ``ShortEpochCallback`` gives
what was gathered, where fastai's raises an IndexError (docs/porting-from-fastai.md). When both sides raise the same
error (fastai's own bugs, which the port keeps: its trackers in ``validate()``, ``TerminateOnNaNCallback`` on per-item
losses) the case is ``same``, and the summary says ``both raised``.

``--seeds N`` runs each case on seeds 0..N-1 (the seed draws the data and weights); ``--only SUBSTRING`` keeps the
cases whose name contains it; ``--show NAME`` prints one case's differences on seed 0 in full; ``--out FILE``
writes one JSON line per case and seed. The run ends with the port report (every module: ported names, failures,
what was not ported and why) and a summary table, one row per case: ``same`` (equal), ``close`` (within rtol
1e-5), ``diff`` (with the first difference), ``port_error`` (the ported module could not define it, or it raised
where fastai's did not), ``documented:<name>`` (a difference docs/porting-from-fastai.md lists; see ``DOCUMENTED``).

Not ported: ``callback/wandb.py``, ``comet.py``, ``azureml.py`` (third-party services), ``captum.py`` (captum, and
fastai's vision layer), ``tensorboard.py`` (tensorboard is not in the benchmark environment; its projector callback
is fastai's vision/text layer), ``all.py`` (re-exports only); in ``callback/data.py``, ``WeightedDL`` and
``PartialDL`` (fastai's data layer); fastai's ``NonNativeMixedPrecision`` family in ``fp16.py`` (fastai's
``fp16_utils``, CUDA half precision).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import random
import sys
import tempfile
import traceback
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callbacks_vs_fastai as cvf  # noqa: E402 -- the sibling fuzzer's tasks, models and comparison

# ------------------------------------------------------------------ the mechanical port
MODULES = ["callback/core.py", "callback/training.py", "callback/tracker.py", "callback/fp16.py", "callback/hook.py",
           "callback/mixup.py", "callback/preds.py", "callback/progress.py", "callback/rnn.py",
           "callback/schedule.py", "callback/channelslast.py", "callback/data.py", "optimizer.py"]
NOT_PORTED = {
    "callback/wandb.py": "a third-party service (Weights & Biases)",
    "callback/comet.py": "a third-party service (Comet)",
    "callback/azureml.py": "a third-party service (Azure ML)",
    "callback/captum.py": "captum, and fastai's vision layer",
    "callback/tensorboard.py": "tensorboard is not installed in the benchmark environment; the projector part is "
                               "fastai's vision/text layer",
    "callback/all.py": "re-exports only",
}
# learnloop's modules that stand in for fastai's (a star import of each, in this order: later ones win).
LEARNLOOP_STARS = ["learnloop", "learnloop.callbacks", "learnloop.optimizer", "learnloop.torch_core",
                   "learnloop.hooks", "learnloop.summary", "learnloop.losses", "learnloop.metrics"]
# Definitions a port builds on rather than redefines: learnloop's own.
BASE_DEFS = {"Callback", "CancelStepException", "CancelBackwardException", "CancelFitException", "CancelEpochException",
             "CancelTrainException", "CancelValidException", "CancelBatchException", "event", "_events",
             "_inner_loop", "_ex_docs", "_all_", "_BaseOptimizer", "Optimizer", "_update"}
# What the mechanical port replaces fastai's data layer's loaders by.
EXTRA_PRELUDE = "from torch.utils.data import DataLoader"


def _fastai_dir() -> Path:
    import fastai
    return Path(fastai.__file__).parent


def _is_fastai_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "fastai"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "fastai" for a in node.names)
    return False


def prelude() -> str:
    """The non-fastai imports of fastai's ``imports.py`` and ``torch_imports.py``, then learnloop's star imports."""
    lines = []
    for rel in ("imports.py", "torch_imports.py"):
        tree = ast.parse((_fastai_dir() / rel).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom) and not _is_fastai_import(node):
                lines.append(ast.unparse(node))
    lines.append(EXTRA_PRELUDE)
    lines += [f"from {m} import *" for m in LEARNLOOP_STARS]
    return "\n".join(lines)


@dataclass
class Port:
    """One ported module: its namespace, what failed to define, and the names imported that learnloop lacks."""

    rel: str
    ns: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


_PRELUDE_NS: dict[str, Any] = {}


def port(rel: str) -> Port:
    """Run fastai's module `rel` with learnloop's imports in place of fastai's, statement by statement."""
    if not _PRELUDE_NS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(prelude(), "<port prelude>", "exec"), _PRELUDE_NS)  # noqa: S102 -- the point of the tool
    ns: dict[str, Any] = dict(_PRELUDE_NS)
    ns["__name__"] = "ported_" + rel.replace("/", "_").removesuffix(".py")
    p = Port(rel, ns)
    tree = ast.parse((_fastai_dir() / rel).read_text())
    with _defaults_restored():
        _run_port(p, tree)
    return p


@contextlib.contextmanager
def _defaults_restored() -> Iterator[None]:
    """fastcore's ``defaults`` is fastai's too: a ported module's ``defaults.callbacks.append(...)`` (a registration
    learnloop does not read) must not add learnloop callbacks to fastai's learners."""
    from fastcore.basics import defaults
    saved = {k: list(v) if isinstance(v, list) else v for k, v in vars(defaults).items()}
    try:
        yield
    finally:
        vars(defaults).clear()
        vars(defaults).update(saved)


def _run_port(p: Port, tree: ast.Module) -> None:
    ns, rel = p.ns, p.rel
    for node in tree.body:
        if _is_fastai_import(node):
            assert isinstance(node, ast.ImportFrom | ast.Import)
            p.missing += [a.name for a in node.names if a.name != "*" and a.name not in ns]
            continue
        names = _defined_names(node)
        if names and set(names) <= BASE_DEFS or _is_base_loop(node):
            p.left_out += names
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                exec(compile(ast.Module([node], []), f"<port {rel}>", "exec"), ns)  # noqa: S102
        except Exception as e:  # noqa: BLE001 -- a statement the port cannot run is a result
            for n in names or [ast.unparse(node).splitlines()[0][:60]]:
                p.failed[n] = f"{type(e).__name__}: {e}"


def _is_base_loop(node: ast.stmt) -> bool:
    """callback/core.py's statements that make the events and cancel exceptions (learnloop has its own)."""
    text = ast.unparse(node)
    return isinstance(node, ast.For | ast.Expr) and ("_ex_docs" in text or "mk_class('event'" in text)


def _learnloop_classes() -> list[type]:
    seen: dict[int, type] = {}
    for m in LEARNLOOP_STARS:
        mod = importlib.import_module(m)
        for v in vars(mod).values():
            if isinstance(v, type) and v.__module__.startswith("learnloop"):
                seen[id(v)] = v
    return list(seen.values())


@contextlib.contextmanager
def classes_restored() -> Iterator[None]:
    """Put learnloop's classes back as they were after fastcore's ``@patch`` of a ported module changed them."""
    saved = [(c, dict(c.__dict__)) for c in _learnloop_classes()]
    try:
        yield
    finally:
        for c, d in saved:
            for k in [k for k in c.__dict__ if k not in d]:
                delattr(c, k)
            for k, v in d.items():
                if c.__dict__.get(k, None) is not v and k not in ("__dict__", "__weakref__", "__doc__"):
                    setattr(c, k, v)


# ------------------------------------------------------------------ a case and its run
@dataclass
class Side:
    """What one side runs with: its library (callbacks_vs_fastai's namespaces) and the module under test."""

    lib: types.SimpleNamespace
    mod: Any  # fastai's module, or the ported module's namespace as an object

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mod, name)


@dataclass
class Case:
    """One thing to port and compare: `cbs(side)` gives the callbacks, `run(side, learn, cbs)` trains."""

    name: str
    module: str
    cbs: Callable[[Side], list[Any]] = lambda s: []
    run: Callable[[Side, Any, list[Any]], Any] | None = None
    task: str = "classif"
    dropout: bool = False
    opt: Callable[[Side], Any] | None = None
    documented: str | None = None  # the porting guide's difference that explains a diff, if any
    also: tuple[str, ...] = ()  # more modules ported into the same namespace (after `module`)
    loss: str | None = None  # a loss of callbacks_vs_fastai's libraries' `losses` (else by task)
    limit: str | None = None  # why the mechanical port cannot run this (its failure is then counted as `limit`)
    cbs_on_learner: bool = False


def _fit(s: Side, learn: Any, cbs: list[Any]) -> Any:
    return learn.fit(2, 1e-2, cbs=cbs)


def _sgd(s: Side) -> Any:
    return partial(s.lib.SGD, mom=0.9) if s.lib.name == "fastai" else partial(s.lib.SGD, mom=0.9,
                                                                             implementation="foreach")


def _adam(s: Side) -> Any:
    return s.lib.Adam if s.lib.name == "fastai" else partial(s.lib.Adam, implementation="foreach")


class EventLog:
    """Wraps an instance's event methods to record (event, epoch, iter, training) at each call."""

    EVENTS = ("after_create before_fit before_epoch before_train before_batch after_pred after_loss before_backward "
              "after_backward before_step after_step after_batch after_train before_validate after_validate "
              "after_epoch after_fit after_cancel_fit after_cancel_epoch after_cancel_train after_cancel_validate "
              "after_cancel_batch after_cancel_backward after_cancel_step").split()

    def __init__(self, cb: Any):
        self.log: list[tuple[Any, ...]] = []
        for ev in self.EVENTS:
            meth = getattr(type(cb), ev, None)
            if callable(meth):
                object.__setattr__(cb, ev, self._wrap(cb, ev, meth.__get__(cb)))

    def _wrap(self, cb: Any, ev: str, meth: Callable[[], Any]) -> Callable[[], Any]:
        def logged(*args: Any, **kwargs: Any) -> Any:
            learn = cb.__dict__.get("learn")
            self.log.append((ev, getattr(learn, "epoch", None), getattr(learn, "iter", None),
                             getattr(learn, "training", None)))
            return meth(*args, **kwargs)
        logged.__name__ = ev
        return logged


def _state(x: Any, depth: int = 0) -> Any:
    """A callback attribute as comparable data: numbers, tensors, lists and dicts of them; else the type's name."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, bool | int | float | str) or x is None:
        return x
    if isinstance(x, Path):  # a file the run wrote (SaveModelCallback's last_saved_path): its name
        return f"<path {x.name}>"
    if isinstance(x, np.ndarray | np.generic):
        return torch.as_tensor(np.asarray(x, dtype=float))
    if depth < 4 and isinstance(x, list | tuple) or type(x).__name__ == "L":
        return [_state(v, depth + 1) for v in list(x)]
    if depth < 4 and isinstance(x, dict):
        return {str(k): _state(v, depth + 1) for k, v in x.items()}
    if callable(x) and hasattr(x, "__name__"):
        return f"<{x.__name__}>"
    return f"<{type(x).__name__}>"


def _cb_state(cb: Any) -> dict[str, Any]:
    skip = set(EventLog.EVENTS) | {"learn"}
    return {k: _state(v) for k, v in vars(cb).items() if k not in skip and not k.startswith("_")}


def run_side(side: Side, case: Case, seed: int, tmp: Path) -> dict[str, Any]:
    """Train `case` on one side; what it leaves, or its error."""
    c = cvf.Config(seed=seed, task=case.task if case.task != "rnn" else "regress", dropout=case.dropout)
    random.seed(seed)
    np.random.seed(seed)
    train, valid = _rnn_data(seed) if case.task == "rnn" else cvf._data(c)
    dls = side.lib.make_dls(train, valid, c.bs)
    model = _RNNish(seed) if case.task == "rnn" else cvf._model(c)
    if case.loss is not None:
        loss = getattr(side.lib.losses, case.loss)()
    elif case.task in ("regress", "rnn"):
        loss = side.lib.losses.MSELossFlat()
    else:
        loss = side.lib.losses.CrossEntropyLossFlat(axis=1 if case.task == "seg" else -1)
    out: dict[str, Any] = {"error": None}
    buf = io.StringIO()
    learn, cbs, logs = None, [], []
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cbs = case.cbs(side)
            logs = [EventLog(cb) for cb in cbs]
            opt = (case.opt or _adam)(side)
            learn = side.lib.Learner(dls, model, loss_func=loss, opt_func=opt, path=tmp, splitter=_splitter,
                                     cbs=cbs if case.cbs_on_learner else None)
            learn.remove_cb(side.lib.progress_cb)
            learn.logger = cvf._noop
            torch.manual_seed(seed)
            out["result"] = _state((case.run or _fit)(side, learn, [] if case.cbs_on_learner else cbs))
    except Exception as e:  # noqa: BLE001 -- an error is a result to compare
        out["error"] = type(e).__name__
        out["error_mro"] = [k.__name__ for k in type(e).__mro__]
        out["error_msg"] = f"{e}"[:300]
        out["traceback"] = traceback.format_exc()[-3000:]
    out["stdout"] = buf.getvalue().splitlines()
    if learn is not None:
        out.update(cvf._collect(learn, tmp))
    out["cb_state"] = [_cb_state(cb) for cb in cbs]
    out["events"] = [lg.log for lg in logs]
    return out


def _splitter(m: nn.Module) -> list[list[nn.Parameter]]:
    kids = list(m.children())
    if len(kids) < 2:
        return [[p for p in m.parameters()]]
    return [[p for k in kids[:-1] for p in k.parameters()], list(kids[-1].parameters())]


class _RNNish(nn.Module):
    """A GRU whose forward returns (output, raw outputs, dropped outputs), as fastai's AWD-LSTM does, with a reset."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = nn.GRU(3, 6, batch_first=True)
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(6, 1)
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw, _ = self.rnn(x)
        dropped = self.drop(raw)
        return self.head(dropped[:, -1]), raw, dropped


def _rnn_data(seed: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, 3, generator=g)
    y = x.sum((1, 2)).unsqueeze(1) / 4
    items = [(x[i], y[i]) for i in range(64)]
    return items[:48], items[48:]


# ------------------------------------------------------------------ the cases
def _fit_n(n: int, lr: float = 1e-2) -> Callable[[Side, Any, list[Any]], Any]:
    return lambda s, learn, cbs: learn.fit(n, lr, cbs=cbs)


def _freeze_fit(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.train_bn = False
    learn.freeze()
    return learn.fit(2, 1e-2, cbs=cbs)


def _replace_train_eval(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.remove_cb(type(learn.train_eval))
    learn.add_cb(s.TrainEvalCallback())
    learn.fit(2, 1e-2)
    return [learn.train_iter, learn.pct_train, learn.training]


def _gather(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.fit(1, 1e-2)
    return learn.validate(cbs=cbs)


def _lr_find(s: Side, learn: Any, cbs: list[Any]) -> Any:
    res = learn.lr_find(end_lr=1.0, num_it=50, show_plot=False, suggest_funcs=(s.valley, s.minimum, s.steep, s.slide))
    return [float(x) for x in res]


def _lr_find_cbs(s: Side, learn: Any, cbs: list[Any]) -> Any:
    res = _lr_find(s, learn, cbs)
    learn.fit_one_cycle(2, 1e-2)
    return res


def _plots(s: Side, learn: Any, cbs: list[Any]) -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    learn.lr_find(end_lr=1.0, num_it=50, show_plot=True)
    learn.fit_one_cycle(1, 1e-2)
    learn.recorder.plot_sched()
    n = len(plt.get_fignums())
    plt.close("all")
    return n


def _lifecycle(s: Side, learn: Any, cbs: list[Any]) -> Any:
    """A callback on the learner through a sweep, two fits, validate() and get_preds() (each library's own methods);
    each step's result or error, the next step running after an error."""
    steps = [lambda: [float(x) for x in learn.lr_find(end_lr=1.0, num_it=30, show_plot=False)],
             lambda: learn.fit_one_cycle(2, 1e-2), lambda: learn.fit(1, 1e-3), learn.validate,
             lambda: learn.get_preds(with_loss=True)]
    out = []
    for step in steps:
        try:
            out.append(step())
        except Exception as e:  # noqa: BLE001 -- compared as a result
            out.append(f"raised {type(e).__name__}")
    return out


def _lifecycle_case(name: str, module: str, make: Callable[[Side], list[Any]], **kw: Any) -> Case:
    return Case(f"lifecycle.{name}", module, cbs=make, run=_lifecycle, cbs_on_learner=True, **kw)


def _hooks(s: Side, learn: Any, cbs: list[Any]) -> Any:
    with s.hook_outputs(list(learn.model.children())[:3], detach=True) as h:
        learn.fit(1, 1e-2)
        shapes = [tuple(o.shape) for o in h.stored]
    with s.Hook(learn.model[0], lambda m, i, o: o.mean()) as h1:
        learn.validate()
        stored = h1.stored
    return [shapes, stored, h.removed if hasattr(h, "removed") else None]


def _sizes(s: Side, learn: Any, cbs: list[Any]) -> Any:
    return [list(map(tuple, s.model_sizes(learn.model, size=(6, 6)))), s.num_features_model(learn.model),
            tuple(s.dummy_eval(learn.model, size=(6, 6)).shape), s.has_params(learn.model[2]),
            s.total_params(learn.model)]


def _progress(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.add_cbs([s.ProgressCallback(), *cbs])
    learn.fit(2, 1e-2)
    return [type(learn.logger).__name__ if not callable(learn.logger) else "callable"]


def _opt_case(name: str, **kw: Any) -> Case:
    def opt(s: Side) -> Any:
        return partial(getattr(s.mod, name), **kw)
    return Case(f"optimizer.{name}({', '.join(f'{k}={v}' for k, v in kw.items())})", "optimizer.py", opt=opt,
                run=_fit_n(2, 1e-2 if name != "Larc" else 0.5))


def _lookahead(s: Side) -> Any:
    return lambda params, lr, **k: s.mod.Lookahead(s.mod.SGD(params, lr, mom=0.9, **k), k=3)


def _mcdropout(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.fit(1, 1e-2)
    torch.manual_seed(1)
    preds, targs = learn.get_preds(cbs=cbs)
    return [preds, targs, learn.model.training]


def _rnn_fit(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.fit(2, 1e-2, cbs=cbs)
    return learn.model.resets


def _fp16(s: Side, learn: Any, cbs: list[Any]) -> Any:
    learn.to_fp16()
    learn.fit(1, 1e-2)
    learn.to_fp32()
    return [type(c).__name__ for c in learn.cbs if type(c).__name__ != "CastToTensor"]  # fastai's, not a port's


# Callbacks written the way fastai's documentation and tutorials write them (this file's own code, in their idioms:
# an overridden ``__call__``, keyword hooks, fastcore's ``store_attr`` and ``L``, a ``HookCallback`` subclass, changes
# to ``loss_grad``/``yb``/``pred``, cancels, a callback that removes itself), made on each side's own base classes.
def _doc_classes(s: Side) -> types.SimpleNamespace:
    from fastcore.basics import store_attr
    from fastcore.foundation import L
    if s.lib.name == "fastai":
        import fastai.callback.core as core
        from fastai.callback.hook import HookCallback
    else:
        import learnloop as core  # type: ignore[no-redef]
        from learnloop.hooks import HookCallback  # type: ignore[assignment]
    base = core.Callback

    class Verbose(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            self.seen: list[str] = []

        def __call__(self, event_name: str) -> Any:
            self.seen.append(event_name)
            return super().__call__(event_name)

    class Penalty(base):  # type: ignore[misc,valid-type]
        order = 5

        def __init__(self, coef: float = 0.1, noise: float = 0.05) -> None:
            store_attr()
            self.penalties = L()

        def before_batch(self) -> None:
            if self.training:
                self.learn.xb = (self.xb[0] + self.noise * torch.randn_like(self.xb[0]),)

        def after_pred(self) -> None:
            self.learn.pred = self.pred * 0.9

        def after_loss(self) -> None:
            pen = self.coef * sum(p.pow(2).sum() for p in self.model.parameters())
            self.penalties.append(float(pen))
            self.learn.loss_grad = self.learn.loss_grad + pen

    class SkipSome(base):  # type: ignore[misc,valid-type]
        run_valid = False

        def after_loss(self) -> None:
            if self.iter % 3 == 1:
                raise core.CancelBatchException()

        def before_step(self) -> None:
            if self.iter % 3 == 2:
                raise core.CancelStepException()

        def before_backward(self) -> None:
            if self.epoch == 1 and self.iter == 0:
                raise core.CancelBackwardException()

    class Watch(base):  # type: ignore[misc,valid-type]
        order = 55

        def __init__(self) -> None:
            self.rows = L()

        def after_batch(self) -> None:
            self.rows.append((self.epoch, self.iter, self.n_iter, self.train_iter, self.pct_train, self.training,
                              float(self.smooth_loss), float(self.loss), self.opt.hypers[-1]["lr"], len(self.dl),
                              self.n_epoch, tuple(self.yb[0].shape)))

        def after_epoch(self) -> None:
            self.rows.append(tuple(self.recorder.values[-1]))
            if self.epoch == 1:
                self.learn.remove_cb(self)

    class FirstLayerMeans(HookCallback):  # type: ignore[misc,valid-type]
        def hook(self, m: nn.Module, i: Any, o: torch.Tensor) -> torch.Tensor:
            return o.mean(0)

        def after_batch(self) -> None:
            self.means = getattr(self, "means", L()) + L(self.hooks.stored[0])

    def kw_hooks() -> Any:
        def before_fit(cb: Any) -> None:
            cb.log = []

        def after_batch(cb: Any) -> None:
            cb.log.append(float(cb.learn.loss))
        return base(before_fit=before_fit, after_batch=after_batch)

    return types.SimpleNamespace(Verbose=Verbose, Penalty=Penalty, SkipSome=SkipSome, Watch=Watch,
                                 FirstLayerMeans=FirstLayerMeans, kw_hooks=kw_hooks)


def _doc_case(name: str, make: Callable[[types.SimpleNamespace], list[Any]], **kw: Any) -> Case:
    return Case(f"docs.{name}", "callback/core.py", cbs=lambda s: make(_doc_classes(s)), **kw)


CASES: list[Case] = [
    # callback/core.py
    Case("core.TrainEvalCallback", "callback/core.py", run=_replace_train_eval),
    Case("core.GatherPredsCallback", "callback/core.py", run=_gather,
         cbs=lambda s: [s.GatherPredsCallback(with_input=True)]),
    Case("core.FetchPredsCallback", "callback/core.py",
         cbs=lambda s: [s.FetchPredsCallback(ds_idx=1, with_input=True, with_decoded=True)]),
    Case("core.FetchPredsCallback with trackers and CSVLogger", "callback/core.py", cbs_on_learner=True,
         cbs=lambda s: [s.SaveModelCallback(), s.CSVLogger(), s.FetchPredsCallback(with_input=True)],
         also=("callback/tracker.py", "callback/progress.py"), run=_fit_n(2)),
    # callback/training.py
    Case("training.ShortEpochCallback", "callback/training.py", cbs=lambda s: [s.ShortEpochCallback(pct=0.3)]),
    Case("training.ShortEpochCallback(short_valid=False)", "callback/training.py",
         cbs=lambda s: [s.ShortEpochCallback(pct=0.3, short_valid=False)]),
    Case("training.GradientAccumulation", "callback/training.py", cbs=lambda s: [s.GradientAccumulation(n_acc=40)]),
    Case("training.GradientAccumulation (seg, MixedPrecision)", "callback/training.py", task="seg",
         cbs=lambda s: [s.GradientAccumulation(n_acc=20), s.MixedPrecision()], also=("callback/fp16.py",)),
    Case("training.GradientClip", "callback/training.py", cbs=lambda s: [s.GradientClip(max_norm=0.05)], opt=_sgd),
    Case("training.BnFreeze", "callback/training.py", cbs=lambda s: [s.BnFreeze()], run=_freeze_fit),
    # callback/tracker.py
    Case("tracker.TerminateOnNaNCallback", "callback/tracker.py", cbs=lambda s: [s.TerminateOnNaNCallback()],
         task="regress", opt=lambda s: s.lib.SGD, run=_fit_n(3, 1e4)),
    Case("tracker.EarlyStoppingCallback", "callback/tracker.py",
         cbs=lambda s: [s.EarlyStoppingCallback(min_delta=0.05, patience=1)], run=_fit_n(5)),
    Case("tracker.SaveModelCallback", "callback/tracker.py", cbs=lambda s: [s.SaveModelCallback()], run=_fit_n(3)),
    Case("tracker.SaveModelCallback(every_epoch)", "callback/tracker.py",
         cbs=lambda s: [s.SaveModelCallback(every_epoch=True)], run=_fit_n(2)),
    Case("tracker.SaveModelCallback(at_end, with_opt)", "callback/tracker.py",
         cbs=lambda s: [s.SaveModelCallback(at_end=True, with_opt=True)], run=_fit_n(2)),
    Case("tracker.ReduceLROnPlateau", "callback/tracker.py",
         cbs=lambda s: [s.ReduceLROnPlateau(patience=0, min_delta=0.05)], run=_fit_n(4)),
    # callback/schedule.py (its fit policies and lr_find are @patch-ed onto learnloop's Learner)
    Case("schedule.ParamScheduler", "callback/schedule.py", opt=_sgd,
         cbs=lambda s: [s.ParamScheduler({"lr": s.SchedCos(1e-2, 1e-4), "mom": s.SchedLin(0.95, 0.85)})]),
    Case("schedule.combine_scheds", "callback/schedule.py",
         cbs=lambda s: [s.ParamScheduler({"lr": s.combine_scheds([0.3, 0.5, 0.2], [
             s.SchedExp(1e-4, 1e-2), s.SchedPoly(1e-2, 1e-3, 2.0), s.SchedNo(1e-3, 0)]),
             "sqr_mom": s.combined_cos(0.4, 0.9, 0.99, 0.9)})]),
    Case("schedule.fit_one_cycle", "callback/schedule.py", run=lambda s, learn, cbs: learn.fit_one_cycle(2, 1e-2)),
    Case("schedule.fit_flat_cos", "callback/schedule.py", run=lambda s, learn, cbs: learn.fit_flat_cos(2, 1e-2)),
    Case("schedule.fit_sgdr", "callback/schedule.py", run=lambda s, learn, cbs: learn.fit_sgdr(2, 1, 1e-2)),
    Case("schedule.fine_tune", "callback/schedule.py",
         run=lambda s, learn, cbs: learn.fine_tune(1, 1e-2, freeze_epochs=1)),
    Case("schedule.lr_find (LRFinder, suggestions)", "callback/schedule.py", run=_lr_find),
    Case("schedule.lr_find with trackers and CSVLogger on the learner", "callback/schedule.py", run=_lr_find_cbs,
         cbs=lambda s: [s.SaveModelCallback(), s.CSVLogger(), s.EarlyStoppingCallback(patience=0)],
         cbs_on_learner=True, also=("callback/tracker.py", "callback/progress.py")),
    Case("schedule.plot_sched, plot_lr_find", "callback/schedule.py", run=_plots),
    # callback/fp16.py (on the CPU: fastai's autocasts and scales on CUDA only, so both run in float32)
    Case("fp16.MixedPrecision (to_fp16, to_fp32)", "callback/fp16.py", run=_fp16),
    # callback/hook.py
    Case("hook.ActivationStats", "callback/hook.py", cbs=lambda s: [s.ActivationStats(with_hist=True)],
         run=_fit_n(1)),
    Case("hook.Hook, hook_outputs", "callback/hook.py", run=_hooks),
    Case("hook.HookCallback(hook=f, every=2)", "callback/hook.py", run=_fit_n(2),
         cbs=lambda s: [s.HookCallback(hook=lambda m, i, o: o.mean(), every=2, modules=None)]),
    Case("hook.model_sizes, dummy_eval, num_features_model", "callback/hook.py", run=_sizes, task="image"),
    Case("hook.summary", "callback/hook.py", run=lambda s, learn, cbs: learn.summary(),
         limit="dls.train.one_batch"),
    # callback/mixup.py
    Case("mixup.MixUp", "callback/mixup.py", cbs=lambda s: [s.MixUp(0.4)]),
    Case("mixup.CutMix", "callback/mixup.py", cbs=lambda s: [s.CutMix(1.0)], task="image"),
    Case("mixup.MixUp (label smoothing, ShortEpochCallback)", "callback/mixup.py", task="image",
         loss="LabelSmoothingCrossEntropyFlat", also=("callback/training.py",),
         cbs=lambda s: [s.MixUp(1.0), s.ShortEpochCallback(0.5, short_valid=False)], run=_fit_n(3)),
    Case("mixup.MixUp (regression)", "callback/mixup.py", task="regress", cbs=lambda s: [s.MixUp(0.4)]),
    # callback/preds.py
    Case("preds.MCDropoutCallback", "callback/preds.py", cbs=lambda s: [s.MCDropoutCallback()], run=_mcdropout,
         dropout=True),
    # callback/progress.py
    Case("progress.CSVLogger", "callback/progress.py", cbs=lambda s: [s.CSVLogger()]),
    Case("progress.CSVLogger(append)", "callback/progress.py", cbs=lambda s: [s.CSVLogger(append=True)],
         cbs_on_learner=True, run=lambda s, learn, cbs: [learn.fit(1, 1e-2), learn.fit(1, 1e-2)]),
    Case("progress.ProgressCallback", "callback/progress.py", run=_progress),
    Case("progress.ShowGraphCallback", "callback/progress.py", cbs=lambda s: [s.ShowGraphCallback()], run=_progress),
    # callback/rnn.py
    Case("rnn.ModelResetter, RNNCallback", "callback/rnn.py", cbs=lambda s: s.rnn_cbs(), task="rnn", run=_rnn_fit),
    Case("rnn.RNNRegularizer", "callback/rnn.py", cbs=lambda s: s.rnn_cbs(alpha=2.0, beta=1.0), task="rnn",
         run=_rnn_fit),
    # callback/channelslast.py
    Case("channelslast.ChannelsLast", "callback/channelslast.py", task="image",
         run=lambda s, learn, cbs: [learn.to_channelslast(use_amp=False), learn.fit(1, 1e-2),
                                    learn.model[0].weight.is_contiguous(memory_format=torch.channels_last)][2]),
    # callback/data.py
    Case("data.CollectDataCallback", "callback/data.py", cbs=lambda s: [s.CollectDataCallback()], run=_fit_n(1)),
    # optimizer.py: fastai's builders and steppers on learnloop's Optimizer (parameter by parameter)
    # ported callbacks left on the learner through lr_find, fit_one_cycle, fit, validate and get_preds
    _lifecycle_case("MixUp", "callback/mixup.py", lambda s: [s.MixUp(0.4)]),
    _lifecycle_case("CSVLogger", "callback/progress.py", lambda s: [s.CSVLogger()]),
    _lifecycle_case("SaveModelCallback, ReduceLROnPlateau", "callback/tracker.py",
                    lambda s: [s.SaveModelCallback(), s.ReduceLROnPlateau(patience=0, min_delta=0.05)]),
    _lifecycle_case("EarlyStoppingCallback", "callback/tracker.py", lambda s: [s.EarlyStoppingCallback(patience=2)]),
    _lifecycle_case("ActivationStats", "callback/hook.py", lambda s: [s.ActivationStats()]),
    _lifecycle_case("GradientAccumulation, ShortEpochCallback", "callback/training.py",
                    lambda s: [s.GradientAccumulation(n_acc=40), s.ShortEpochCallback(0.5)],
                    documented="cancelled_phase"),
    _lifecycle_case("TerminateOnNaNCallback", "callback/tracker.py", lambda s: [s.TerminateOnNaNCallback()]),
    _lifecycle_case("MCDropoutCallback", "callback/preds.py", lambda s: [s.MCDropoutCallback()], dropout=True),
    _lifecycle_case("rnn_cbs", "callback/rnn.py", lambda s: s.rnn_cbs(alpha=1.0, beta=1.0), task="rnn"),
    # fastai's documented idioms, written here
    _doc_case("Verbose (overrides __call__)", lambda d: [d.Verbose()]),
    _doc_case("Penalty (xb, pred, loss_grad; store_attr, L)", lambda d: [d.Penalty()], run=_fit_n(3)),
    _doc_case("SkipSome (cancel batch, step, backward)", lambda d: [d.SkipSome()], run=_fit_n(3), opt=_sgd),
    _doc_case("Watch (loop state; removes itself)", lambda d: [d.Watch()], run=_fit_n(3), cbs_on_learner=True),
    _doc_case("HookCallback subclass", lambda d: [d.FirstLayerMeans(modules=None)]),
    _doc_case("Callback(before_fit=..., after_batch=...)", lambda d: [d.kw_hooks()]),
    _opt_case("SGD", mom=0.9, wd=1e-2),
    _opt_case("SGD", wd=1e-2, decouple_wd=False),
    _opt_case("RMSProp", mom=0.9, wd=1e-2),
    _opt_case("Adam", wd=1e-2),
    _opt_case("Adam", decouple_wd=False, wd=1e-2),
    _opt_case("RAdam", beta=0.5),
    _opt_case("QHAdam"),
    _opt_case("Larc", clip=False),
    _opt_case("Larc", mom=0.9),
    _opt_case("Lamb", wd=1e-2),
    _opt_case("ranger"),
    Case("optimizer.Lookahead(SGD)", "optimizer.py", opt=_lookahead),
]


# ------------------------------------------------------------------ comparing and reporting
def compare(fa: dict[str, Any], ll: dict[str, Any]) -> cvf.Verdict:
    """Every difference between fastai's original (`fa`) and the port on learnloop (`ll`)."""
    v = cvf.Verdict()
    if fa["error"] or ll["error"]:
        if fa["error"] and ll["error"] and fa["error"] not in ll["error_mro"]:
            v.add("diff", "error_type", f"fastai {fa['error']} vs learnloop {ll['error']}: {ll['error_msg']}")
            return v
        if not (fa["error"] and ll["error"]):
            side = "learnloop" if ll["error"] else "fastai"
            r = ll if ll["error"] else fa
            v.add("diff", "port_error" if side == "learnloop" else "refused_by_fastai",
                  f"{side} raised {r['error']}: {r['error_msg']}")
            return v
    for key in ("result", "stdout", "cb_state", "events", "values", "losses", "lrs", "hps", "metric_names",
                "weights", "requires_grad", "training", "loop", "has_opt", "hypers", "opt_state", "files"):
        cvf._close(fa.get(key), ll.get(key), key, v, key)
    return v


def run_case(case: Case, seed: int, fa_lib: types.SimpleNamespace, ll_lib: types.SimpleNamespace,
             show: bool = False) -> dict[str, Any]:
    """Port `case.module`, run the case on both sides, compare: one JSON-able line."""
    fa_ns: dict[str, Any] = {}
    ll_ns: dict[str, Any] = {}
    with classes_restored():
        for i, rel in enumerate((case.module, *case.also)):  # a later module adds the names it exports
            fa_mod = importlib.import_module("fastai." + rel.removesuffix(".py").replace("/", "."))
            ported = port(rel).ns
            own = set(vars(fa_mod)) | set(ported) if i == 0 else set(getattr(fa_mod, "__all__", []))
            fa_ns.update({k: v for k, v in vars(fa_mod).items() if k in own})
            ll_ns.update({k: v for k, v in ported.items() if k in own})
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            fa = run_side(Side(fa_lib, types.SimpleNamespace(**fa_ns)), case, seed, Path(d1))
            ll = run_side(Side(ll_lib, types.SimpleNamespace(**ll_ns)), case, seed, Path(d2))
    v = compare(fa, ll)
    kind = v.kind if v.worst != "same" else None
    if kind and case.documented:
        kind = f"documented:{case.documented}({kind})"
    elif kind and case.limit:
        kind = f"limit:{case.limit}({kind})"
    if show:
        for side, r in (("fastai", fa), ("learnloop", ll)):
            if r["error"]:
                print(f"--- {side} raised:\n{r['traceback']}")
            print(f"--- {side}: values {r.get('values')} result {str(r.get('result'))[:300]}")
        print("\n".join(v.notes) or "no difference")
    row = {"case": case.name, "seed": seed, "status": v.worst, "kind": kind, "first_diff": v.first}
    if fa["error"] and ll["error"]:  # the same error on both sides: the port is faithful, but the case tests little
        row["both_raised"] = f"{fa['error']}: {fa['error_msg']}"[:100]
    return row


def port_report() -> str:
    """Each module: what the port defined, what failed and why, what was left out for learnloop's own."""
    lines = ["module                       ported  failed (name: error) / missing imports"]
    for rel in MODULES:
        with classes_restored():
            p = port(rel)
        fa_mod = importlib.import_module("fastai." + rel.removesuffix(".py").replace("/", "."))
        names = [n for n in getattr(fa_mod, "__all__", []) if n not in BASE_DEFS]
        ok = [n for n in names if n in p.ns and n not in p.failed]
        bad = "; ".join(f"{n}: {e}" for n, e in p.failed.items())
        miss = f" missing: {', '.join(p.missing)}" if p.missing else ""
        lines.append(f"{rel:28} {len(ok):3}/{len(names):<3} {bad}{miss}".rstrip())
    for rel, why in NOT_PORTED.items():
        lines.append(f"{rel:28} not ported: {why}")
    return "\n".join(lines)


def _status(r: dict[str, Any]) -> str:
    kind = r["kind"] or ""
    return "documented" if kind.startswith("documented") else "limit" if kind.startswith("limit") else r["status"]


def summary(rows: list[dict[str, Any]]) -> str:
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    width = max(len(n) for n in by_case) + 2
    lines = [f"{'case':{width}} {'result':24} first difference"]
    for name, rs in by_case.items():
        counts = Counter(_status(r) for r in rs)
        res = ", ".join(f"{k} {n}" for k, n in counts.items())
        first = next((r for r in rs if r["status"] != "same"), None)
        note = f"{first['kind']}: {first['first_diff']}".replace("\n", " ")[:110] if first else ""
        if not first and any("both_raised" in r for r in rs):
            note = "both raised " + next(r["both_raised"] for r in rs if "both_raised" in r).replace("\n", " ")
        lines.append(f"{name:{width}} {res:24} {note}")
    total = Counter(_status(r) for r in rows)
    lines.append(f"{len(by_case)} cases x seeds = {len(rows)} runs: " + ", ".join(f"{k} {n}" for k, n in
                                                                                  total.most_common()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--show", default=None, help="print one case's differences (seed 0)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    fa_lib, ll_lib = cvf._fastai(), cvf._learnloop()
    if args.show is not None:
        case = next(c for c in CASES if c.name == args.show)
        print(json.dumps(run_case(case, 0, fa_lib, ll_lib, show=True)))
        return 0
    rows = []
    sink = args.out.open("w") if args.out else None
    try:
        for case in CASES:
            if args.only not in case.name:
                continue
            for seed in range(args.seeds):
                try:
                    row = run_case(case, seed, fa_lib, ll_lib)
                except Exception as e:  # noqa: BLE001 -- a crash of the harness is reported, not fatal
                    row = {"case": case.name, "seed": seed, "status": "diff", "kind": "harness_error",
                           "first_diff": f"{type(e).__name__}: {e}"}
                rows.append(row)
                if sink:
                    print(json.dumps(row), file=sink, flush=True)
    finally:
        if sink:
            sink.close()
    print(port_report())
    print()
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
