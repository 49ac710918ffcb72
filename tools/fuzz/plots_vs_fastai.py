"""Differential fuzzer: what learnloop's plots draw against what fastai 2.8's draw.

Each seed builds one random scenario from ``random.Random(seed)``: synthetic classification or regression tensors, a
small ``nn.Sequential``, a loss, metrics, plain ``SGD`` or the foreach ``Adam`` (which agree with fastai's to the
last digits), sometimes ``ShowGraphCallback`` and ``ActivationStats(with_hist=True)`` on the learner; then 1-3
training calls (``fit``, ``fit_one_cycle``, ``fit_flat_cos``, ``fit_sgdr``, ``validate``, and ``lr_find`` with
random ``start_lr``, ``end_lr``, ``num_it``, ``stop_div``, ``show_plot`` and suggestion functions), each fit with a
callback that may cancel a phase or a batch at a chosen epoch; then 1-4 plots, with random arguments, bad ones
among them: ``recorder.plot_loss(skip_start, with_valid, log, show_epochs, ax)``, ``plot_sched(keys, figsize)``,
``plot_lr_find(skip_end, return_fig, suggestions, nms)``, ``ClassificationInterpretation.plot_confusion_matrix
(normalize, title, cmap, norm_dec, plot_txt, figsize)``, ``ActivationStats.color_dim(idx, figsize, ax)`` and
``plot_layer_stats(idx)``.

Every call runs under matplotlib's Agg backend with no figure open, so fastai's ``plt.gca()`` makes a new figure as
learnloop's ``plot_loss`` does. The figures each call leaves open (and the ShowGraphCallback's figure after each
fit) are described and compared: their size, their axes (count, grid geometry, position, whether the axis is
drawn), each axes' title, labels, scales and limits, its lines (x/y data, color, line style, marker, label), its
legend's texts and place, its images (array, colormap, origin, interpolation), its texts (place, string, color,
alignment), its tick labels where the plot sets them (the confusion matrix), its collections' offsets; and each
call's result or error (type: learnloop's may subclass fastai's). Numbers agree to rtol 1e-5 (``close``).

fastai's ShowGraphCallback draws through fastprogress's notebook bar, whose ``update_graph`` does nothing on a
console: here the console bar keeps the last graphs and bounds it was given, and the fuzzer draws them as the
notebook bar does (a 6x4 figure, the lines labelled ``train`` and ``valid``, the legend at the upper right, the
bounds set).

Run it with the benchmark environment, which has both libraries::

    PYTHONPATH=$PWD/src nice -n 10 /tmp/benchenv/bin/python tools/fuzz/plots_vs_fastai.py 0 1000 --out plots.jsonl
    PYTHONPATH=$PWD/src /tmp/benchenv/bin/python tools/fuzz/plots_vs_fastai.py 0 0 --show 17

``START STOP`` is the range of seeds; ``--procs N`` runs N worker processes; ``--out`` writes one JSON line per seed
(``seed``, ``status``: same/diff/skipped, ``kind``, ``first_diff``); a summary table ends the run. ``--show SEED``
prints the scenario, both runs' calls and what differs.

A scenario fastai cannot run itself (it raises where learnloop does not raise the same type) is ``skipped``, with
fastai's error as the kind; after a plot fastai fails, the calls that follow are still compared (a plot, but for
the confusion matrix's ``get_preds``, changes neither learner), and a difference there counts first. A difference
that docs/porting-from-fastai.md lists as deliberate is counted apart, under a ``documented: ...`` kind:

- ``documented: the plots return what they draw``: ``plot_sched``, ``plot_lr_find``, ``plot_layer_stats`` and
  ``plot_confusion_matrix`` return their Figure and ``color_dim`` its Axes, where fastai's return None;
- ``documented: plot_loss and ShowGraphCallback read the valid_loss column``: after a phase a callback cancelled,
  fastai's take another value of the short row (or fail on its None: then the scenario is skipped);
- ``documented: the lr finder stops at a NaN loss``: fastai's sweep goes on to ``num_it`` and records NaN losses,
  so its curve is longer;
- ``documented: lr_find checks suggest_funcs before the sweep``: a sweep too short for its suggestion functions is
  refused before it runs, so the Recorder keeps the previous fit's record that the plots after it draw (fastai's
  sweeps, then fails).

Five more documented kinds, the porting guide's bullet on the plots:

- ``documented: plotting an empty record is a ValueError``: ``plot_loss`` without losses or ``plot_lr_find``
  without learning rates (after ``validate()`` or ``get_preds()``, which start the Recorder's record again in both
  libraries) says there is nothing to plot; fastai's draws empty axes, or fails reading a row;
- ``documented: a refused plot leaves no figure``: ``plot_sched`` of a key not scheduled raises fastai's KeyError
  before it makes a figure (fastai's leaves the empty one open);
- ``documented: ShowGraphCallback's figure is made at before_fit``: ``cb.fig`` (learnloop's own attribute)
  exists, empty, when a fit ends before its first epoch does; fastai's graph is made at the first epoch's end;
- ``documented: ShowGraphCallback bounds a diverged fit's graph by its finite losses``: fastai's y bound is then
  the NaN or infinite loss, which leaves matplotlib's default limits;
- ``documented: a nan row leaves the other cells' text colors as they are``: in a normalized confusion matrix with
  a class absent from the targets, the cells above half the largest value are written in white; fastai's
  threshold is then nan and every cell's text is black.

These leave the rest comparable: the comparison goes on past them, and the scenario counts under one (the return
values last) only when nothing else differs. A run still going after 30 s is stopped
(``fastai hangs`` is skipped, ``learnloop hangs`` a diff)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported, here or by either library

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from loop_vs_fastai import _data, _error, _model, _same_error, _short, _Timeout, _timeout, close, norm, run_cli  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

TIMEOUT = 30  # seconds per library and scenario
FITS = ("fit", "fit_one_cycle", "fit_flat_cos", "fit_sgdr")
SUGGESTIONS = ("valley", "slide", "minimum", "steep")
PLOTS = ["plot_loss"] * 3 + ["plot_sched", "plot_lr_find", "plot_lr_find", "confusion", "color_dim", "layer_stats"]


# ----------------------------------------------------------------------------------------------- the two libraries
@dataclass
class Lib:
    """What a scenario needs from one library."""

    name: str
    ns: dict[str, Any]


def _fastai_lib() -> Lib:
    import fastai.callback.core as fc
    import fastai.callback.hook as fh
    import fastai.callback.progress as fp
    import fastai.callback.schedule as fs
    import fastai.interpret as fi
    import fastai.learner as fl
    import fastai.losses as flo
    import fastai.metrics as fm
    import fastai.optimizer as fo
    import fastprogress.fastprogress as fpp
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FastaiDL
    from fastai.data.transforms import CategoryMap

    fpp.ConsoleMasterBar.update_graph = _notebook_graph

    def make_dls(train: Any, valid: Any, bs: int) -> Any:
        dev = torch.device("cpu")
        return DataLoaders(FastaiDL(train, bs=bs, device=dev), FastaiDL(valid, bs=bs, device=dev), device=dev)

    def interp(learn: Any, vocab: list[str]) -> Any:
        learn.dls.valid.dataset.vocab = CategoryMap(vocab, sort=False)  # what the loader's copy reads
        return fi.ClassificationInterpretation.from_learner(learn)

    return Lib("fastai", dict(
        Learner=fl.Learner, Callback=fc.Callback, cancel={c: getattr(fc, f"Cancel{c}Exception") for c in CANCELS},
        loss={"ce": flo.CrossEntropyLossFlat, "mse": flo.MSELossFlat}, metrics=_metrics(fm),
        opt={"sgd": fo.SGD, "adam": fo.Adam}, make_dls=make_dls, ShowGraphCallback=fp.ShowGraphCallback,
        ActivationStats=fh.ActivationStats, interp=interp, suggest={n: getattr(fs, n) for n in SUGGESTIONS},
    ))


def _learnloop_lib() -> Lib:
    from functools import partial

    from torch.utils.data import DataLoader

    import learnloop as ll
    import learnloop.losses as llo
    import learnloop.metrics as lm
    import learnloop.optimizer as lopt
    from learnloop.interpret import ClassificationInterpretation

    def make_dls(train: Any, valid: Any, bs: int) -> Any:
        return ll.DataLoaders(DataLoader(train, batch_size=bs), DataLoader(valid, batch_size=bs), device="cpu")

    def interp(learn: Any, vocab: list[str]) -> Any:
        return ClassificationInterpretation.from_learner(learn, vocab=vocab)

    return Lib("learnloop", dict(
        Learner=ll.Learner, Callback=ll.Callback, cancel={c: getattr(ll, f"Cancel{c}Exception") for c in CANCELS},
        loss={"ce": llo.CrossEntropyLossFlat, "mse": llo.MSELossFlat}, metrics=_metrics(lm),
        opt={"sgd": lopt.SGD, "adam": partial(lopt.Adam, implementation="foreach")}, make_dls=make_dls,
        ShowGraphCallback=ll.ShowGraphCallback, ActivationStats=ll.ActivationStats, interp=interp,
        suggest={n: getattr(ll, n) for n in SUGGESTIONS},
    ))


CANCELS = ("Fit", "Epoch", "Train", "Valid", "Batch")


def _metrics(mod: Any) -> dict[str, Any]:
    return {"accuracy": mod.accuracy, "error_rate": mod.error_rate, "rmse": mod.rmse, "mae": mod.mae}


# ----------------------------------------------------------------------------------------------- scenarios
def make_scenario(seed: int) -> dict[str, Any]:
    """Draw one scenario (plain data, JSON-able) from `random.Random(seed)`."""
    r = random.Random(seed)
    classif = r.random() < 0.6
    sc: dict[str, Any] = {"seed": seed, "classif": classif, "n_in": r.randint(2, 5), "n_out": r.randint(2, 4),
                          "n_train": r.randint(3, 40), "n_valid": 0 if r.random() < 0.05 else r.randint(1, 20),
                          "bs": r.choice([2, 3, 4, 8, 16]), "hidden": r.choice([0, 3, 8]), "bn": False,
                          "dropout": 0.0, "loss": "ce" if classif else "mse",
                          "opt": r.choice(["sgd", "adam"]), "lr": r.choice([1e-3, 1e-2, 0.1, 1.0])}
    sc["metrics"] = r.sample(["accuracy", "error_rate"] if classif else ["rmse", "mae"], r.randint(0, 2))
    sc["graph"] = r.random() < 0.3
    sc["stats"] = r.random() < 0.25
    sc["vocab"] = [r.choice(["c", "class_", ""]) + str(i) for i in range(sc["n_out"])]
    sc["ops"] = [_make_train(r) for _ in range(r.randint(1, 3))]
    sc["ops"] += [_make_plot(r, sc) for _ in range(r.randint(1, 4))]
    return sc


def _make_train(r: random.Random) -> dict[str, Any]:
    kind = r.choice(["fit", "fit_one_cycle", "fit_one_cycle", "fit_flat_cos", "fit_sgdr", "lr_find", "lr_find",
                     "validate"])
    op: dict[str, Any] = {"op": kind, "n_epoch": r.randint(1, 4)}
    if kind == "fit_sgdr":
        op.update(n_cycles=r.randint(1, 2), cycle_len=r.randint(1, 2))
    if kind == "lr_find":
        funcs = r.sample(SUGGESTIONS, r.randint(1, 4)) if r.random() < 0.85 else None
        op["kw"] = {"start_lr": r.choice([1e-7, 1e-5, 1e-3]), "end_lr": r.choice([1.0, 10.0, 100.0]),
                    "num_it": r.choice([10, 20, 30, 60, 100]), "stop_div": r.random() < 0.8,
                    "show_plot": r.random() < 0.7, "suggest_funcs": funcs}
    if kind in FITS and r.random() < 0.35:  # a callback cancels something at one epoch of this fit
        what = r.choice(CANCELS[1:] + ("Train", "Valid"))
        event = {"Epoch": r.choice(["before_epoch", "before_train", "after_train", "before_validate"]),
                 "Train": r.choice(["before_train", "after_batch"]), "Valid": r.choice(["before_validate",
                                                                                        "after_batch"]),
                 "Batch": r.choice(["before_batch", "after_loss", "after_step"]), "Fit": "after_epoch"}[what]
        op["cancel"] = {"what": what, "event": event, "epoch": r.randint(0, 2), "iter": r.randint(0, 3)}
    return op


def _make_plot(r: random.Random, sc: dict[str, Any]) -> dict[str, Any]:
    kind = r.choice(PLOTS)
    bad = r.random() < 0.15  # a bad argument
    if kind == "plot_loss":
        return {"op": kind, "kw": {"skip_start": r.choice([0, 1, 5, 5, 12] + ([-3, 10_000] if bad else [])),
                                   "with_valid": r.random() < 0.7, "log": r.random() < 0.3,
                                   "show_epochs": r.random() < 0.3}, "ax": r.random() < 0.25}
    if kind == "plot_sched":
        keys = r.choice([None, None, "lr", ["lr"], ["mom"], ["lr", "mom"], ["mom", "lr"]]
                        + (["wd", ["lr", "nope"], []] if bad else []))
        return {"op": kind, "kw": {"keys": keys, "figsize": r.choice([None, None, (5, 3)])}}
    if kind == "plot_lr_find":
        kw: dict[str, Any] = {"skip_end": r.choice([0, 1, 5, 5, 8] + ([-2, 200] if bad else [])),
                              "return_fig": r.random() < 0.7}
        n = r.choice([0, 0, 1, 2, 3])
        if n:
            kw["suggestions"] = [[r.choice([1e-4, 3e-3, 0.1]), r.choice([0.2, 1.5, 4.0])] for _ in range(n)]
            kw["nms"] = [r.choice(["valley", "steep", "x", "my pick"]) for _ in range(n - (bad and n > 1))]
            if bad and r.random() < 0.5:
                kw["nms"] = None
        return {"op": kind, "kw": kw}
    if kind == "confusion":
        kw = {"normalize": r.random() < 0.4, "title": r.choice(["Confusion matrix", "cm", ""]),
              "cmap": r.choice(["Blues", "Blues", "viridis"] + (["no_such_cmap"] if bad else [])),
              "norm_dec": r.choice([0, 1, 2, 3]), "plot_txt": r.random() < 0.8}
        if r.random() < 0.3:
            kw["figsize"] = (4, 4)
        return {"op": kind, "kw": kw}
    idx = r.choice([0, 1, -1] + ([99] if bad else []))
    if kind == "color_dim":
        return {"op": kind, "idx": idx, "figsize": r.choice([(10, 5), (4, 3)]), "ax": r.random() < 0.25}
    return {"op": kind, "idx": idx}


# ----------------------------------------------------------------------------------------------- describing figures
def _floats(x: Any) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=float).ravel()]


def _text(t: Any) -> list[Any]:
    return [_floats(t.get_position()), t.get_text(), to_hex(t.get_color(), keep_alpha=True),
            t.get_horizontalalignment(), t.get_verticalalignment(), float(t.get_rotation())]


def describe_axes(ax: Any, ticks: bool) -> dict[str, Any]:
    """What an Axes shows (ticks: the tick labels too, for the plots that set them)."""
    spec = ax.get_subplotspec()
    legend = ax.get_legend()
    d: dict[str, Any] = {
        "geometry": list(spec.get_geometry()) if spec is not None else None,
        "position": [round(v, 3) for v in ax.get_position().bounds], "axison": ax.axison,
        "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
        "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
        "xlim": _floats(ax.get_xlim()), "ylim": _floats(ax.get_ylim()),
        "lines": [{"x": _floats(ln.get_xdata(orig=False)), "y": _floats(ln.get_ydata(orig=False)),
                   "color": to_hex(ln.get_color(), keep_alpha=True), "ls": ln.get_linestyle(),
                   "marker": str(ln.get_marker()), "label": ln.get_label()} for ln in ax.get_lines()],
        "legend": None if legend is None else {"texts": [t.get_text() for t in legend.get_texts()],
                                               "loc": legend._loc},  # noqa: SLF001 - where it was asked to go
        "images": [{"a": norm(torch.as_tensor(np.asarray(im.get_array(), dtype=float))),
                    "cmap": im.get_cmap().name, "origin": im.origin, "interpolation": im.get_interpolation()}
                   for im in ax.get_images()],
        "texts": [_text(t) for t in ax.texts],
        "collections": [_floats(c.get_offsets()) for c in ax.collections],
    }
    if ticks:
        d["xticks"] = [_floats(ax.get_xticks()), [_text(t)[1:] for t in ax.get_xticklabels()]]
        d["yticks"] = [_floats(ax.get_yticks()), [_text(t)[1:] for t in ax.get_yticklabels()]]
    return d


def describe(fig: Any, ticks: bool = False) -> dict[str, Any]:
    """What a figure shows, as plain JSON-able values (numpy's numbers as Python's)."""
    d = {"size": _floats(fig.get_size_inches()), "axes": [describe_axes(ax, ticks) for ax in fig.axes]}
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else repr(o)))


def _returned(x: Any) -> Any:
    """A call's result, figures and axes by their kind."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if isinstance(x, Figure):
        return "<Figure>"
    if isinstance(x, Axes):
        return "<Axes>"
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # lr_find's SuggestedLRs
        return {"fields": list(x._fields), "values": norm(list(x))}
    return norm(x)


GRAPH: list[Any] = []  # fastai's ShowGraphCallback figure, as fastprogress's notebook bar leaves it


def _notebook_graph(bar: Any, graphs: Any, x_bounds: Any = None, y_bounds: Any = None) -> None:
    """What fastprogress's notebook bar draws of the graphs it is given (its console bar draws nothing): one 6x4
    figure for the fit, cleared and drawn again each time."""
    from matplotlib.figure import Figure

    if not GRAPH:
        GRAPH.append(Figure(figsize=(6, 4)))
        GRAPH[0].add_subplot()
    ax = GRAPH[0].axes[0]
    ax.clear()
    for (x, y), name in zip(graphs, ("train", "valid"), strict=False):
        ax.plot(x, y, label=name)
    ax.legend(loc="upper right")
    if x_bounds is not None:
        ax.set_xlim(*x_bounds)
    if y_bounds is not None:
        ax.set_ylim(*y_bounds)


# ----------------------------------------------------------------------------------------------- one run
class _Run:
    """One library's run of a scenario: the learner and what each call drew."""

    def __init__(self, lib: Lib, sc: dict[str, Any], path: str) -> None:
        self.lib, self.sc, self.ns = lib, sc, lib.ns
        ns = self.ns
        train, valid = _data(sc)
        self.graph = ns["ShowGraphCallback"]() if sc["graph"] else None
        self.stats = ns["ActivationStats"](with_hist=True) if sc["stats"] else None
        cbs = [cb for cb in (self.graph, self.stats) if cb is not None]
        self.learn = ns["Learner"](
            ns["make_dls"](train, valid, sc["bs"]), _model(sc), loss_func=ns["loss"][sc["loss"]](),
            opt_func=ns["opt"][sc["opt"]], lr=sc["lr"], cbs=cbs, metrics=[ns["metrics"][m] for m in sc["metrics"]],
            path=path)
        self.suggestions: list[Any] = []  # the last lr_find's points, for plot_lr_find

    def _canceller(self, spec: dict[str, Any]) -> Any:
        exc, event, epoch, it = self.ns["cancel"][spec["what"]], spec["event"], spec["epoch"], spec["iter"]

        def act(cb: Any) -> None:
            learn = cb.learn
            if learn.epoch == epoch and (event not in ("before_batch", "after_loss", "after_step", "after_batch")
                                         or learn.iter == it):
                raise exc()

        return type("Canceller", (self.ns["Callback"],), {event: act, "order": 70})()

    def call(self, op: dict[str, Any]) -> Any:
        learn, kind = self.learn, op["op"]
        cbs = [self._canceller(op["cancel"])] if "cancel" in op else None
        GRAPH.clear()  # each fit makes its own bar, and so its own graph
        if kind in ("fit", "fit_flat_cos"):
            return getattr(learn, kind)(op["n_epoch"], cbs=cbs)
        if kind == "fit_one_cycle":
            return learn.fit_one_cycle(op["n_epoch"], cbs=cbs)
        if kind == "fit_sgdr":
            return learn.fit_sgdr(op["n_cycles"], op["cycle_len"], cbs=cbs)
        if kind == "validate":
            return learn.validate()
        if kind == "lr_find":
            kw = dict(op["kw"])
            if kw["suggest_funcs"] is not None:
                kw["suggest_funcs"] = tuple(self.ns["suggest"][n] for n in kw["suggest_funcs"])
            return learn.lr_find(**kw)
        rec = learn.recorder
        if kind == "plot_loss":
            ax = plt.subplots()[1] if op["ax"] else None
            return rec.plot_loss(**op["kw"], ax=ax)
        if kind == "plot_sched":
            return rec.plot_sched(**op["kw"])
        if kind == "plot_lr_find":
            kw = dict(op["kw"])
            if "suggestions" in kw:
                kw["suggestions"] = [tuple(s) for s in kw["suggestions"]]
            return rec.plot_lr_find(**kw)
        if kind == "confusion":
            if not self.sc["classif"]:
                return "regression: no confusion matrix"
            return self.ns["interp"](learn, self.sc["vocab"]).plot_confusion_matrix(**op["kw"])
        if self.stats is None:
            return "no ActivationStats"
        if kind == "color_dim":
            ax = plt.subplots()[1] if op["ax"] else None
            return self.stats.color_dim(op["idx"], figsize=tuple(op["figsize"]), ax=ax)
        if kind == "layer_stats":
            return self.stats.plot_layer_stats(op["idx"])
        raise ValueError(kind)


def run_lib(lib: Lib, sc: dict[str, Any]) -> dict[str, Any]:
    """Run scenario `sc` under `lib`: each call's result or error and the figures it left."""
    out: dict[str, Any] = {"calls": [], "build_error": None}
    torch.manual_seed(sc["seed"])
    plt.close("all")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), tempfile.TemporaryDirectory() as path:
        warnings.simplefilter("ignore")
        try:
            run = _Run(lib, sc, path)
        except Exception as e:  # noqa: BLE001 - a scenario's error is a result to compare
            out["build_error"] = _error(e)
            return out
        for op in sc["ops"]:
            call: dict[str, Any] = {"op": op["op"], "result": None, "error": None}
            try:
                call["result"] = _returned(run.call(op))
            except Exception as e:  # noqa: BLE001
                call["error"] = _error(e)
            call["figures"] = [describe(plt.figure(n), ticks=op["op"] == "confusion") for n in plt.get_fignums()]
            plt.close("all")
            if op["op"] in FITS and run.graph is not None:
                fig = (GRAPH or [None])[0] if lib.name == "fastai" else run.graph.fig
                call["graph"] = None if fig is None else describe(fig)
            call["lr_find_nan"] = op["op"] == "lr_find" and any(
                math.isnan(float(x)) for x in run.learn.recorder.losses)
            out["calls"].append(call)
        out["rows"] = norm(run.learn.recorder.values)
    return out


# ----------------------------------------------------------------------------------------------- comparing
def _diffs(a: Any, b: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, description) of where two descriptions differ, the deepest place first found."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for k in a:
            yield from _diffs(a[k], b[k], f"{path}.{k}")
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and not all(
            isinstance(x, float) for x in a):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _diffs(x, y, f"{path}[{i}]")
        return
    if not close(a, b):
        yield path, f"{path}: fastai {_short(a)} vs learnloop {_short(b)}"


def compare(fa: dict[str, Any], ll: dict[str, Any]) -> Iterator[tuple[int, str, str]]:
    """(call, field, description) of each difference between two runs, in order."""
    if d := _same_error(fa["build_error"], ll["build_error"]):
        yield -1, "build", d
        return
    for i, (a, b) in enumerate(zip(fa["calls"], ll["calls"], strict=True)):
        if d := _same_error(a["error"], b["error"]):
            yield i, "error", f"call {i} {a['op']}: {d}"
            continue
        if not close(a["result"], b["result"]):
            yield i, "result", f"call {i} {a['op']} result: fastai {_short(a['result'])} vs learnloop " \
                               f"{_short(b['result'])}"
        if a["error"] is not None and a["figures"] and not b["figures"]:  # fastai's half-drawn figure
            yield i, "figures", f"call {i} {a['op']}: fastai leaves a figure, learnloop none (both raised)"
            continue
        for key in ("figures", "graph"):
            for path, desc in _diffs(a.get(key), b.get(key), key):
                yield i, path, f"call {i} {a['op']} {desc}"


DOC_RETURNS = "documented: the plots return what they draw"
DOC_VALID_COL = "documented: plot_loss and ShowGraphCallback read the valid_loss column"
DOC_NAN_SWEEP = "documented: the lr finder stops at a NaN loss"
DOC_EMPTY = "documented: plotting an empty record is a ValueError"
DOC_NO_FIGURE = "documented: a refused plot leaves no figure"
DOC_EMPTY_GRAPH = "documented: ShowGraphCallback's figure is made at before_fit"
DOC_NAN_COLORS = "documented: a nan row leaves the other cells' text colors as they are"
DOC_DIVERGED_GRAPH = "documented: ShowGraphCallback bounds a diverged fit's graph by its finite losses"
DOC_SWEEP_REFUSED = "documented: lr_find checks suggest_funcs before the sweep"
RETURNING = ("plot_sched", "plot_lr_find", "confusion", "color_dim", "layer_stats")


def _field_kind(field: str) -> str:
    """A difference's place without its indices: 'figures.axes.lines.y'."""
    import re

    return re.sub(r"\[\d+\]", "", field)


def classify(sc: dict[str, Any], fa: dict[str, Any], ll: dict[str, Any], call: int, field: str) -> str:
    """The kind of a difference: a documented one, or where it is."""
    ops = sc["ops"]
    op = ops[call]["op"] if call >= 0 else "build"
    if field == "result" and op in RETURNING and fa["calls"][call]["result"] is None \
            and ll["calls"][call]["result"] in ("<Figure>", "<Axes>"):
        return DOC_RETURNS
    cancelled = any("cancel" in o and o["cancel"]["what"] in ("Train", "Valid", "Epoch", "Batch")
                    for o in ops[:call + 1])
    if cancelled and (op == "plot_loss" or field.startswith("graph")) and (".lines" in field or "lim" in field):
        return DOC_VALID_COL  # another value plotted, so other limits too
    if field == "figures" and fa["calls"][call]["error"] is not None:
        return DOC_NO_FIGURE
    if field == "graph" and fa["calls"][call]["graph"] is None and not any(
            line["x"] for ax in ll["calls"][call]["graph"]["axes"] for line in ax["lines"]):
        return DOC_EMPTY_GRAPH
    refused = [i for i in range(call) if ops[i]["op"] == "lr_find" and fa["calls"][i]["error"] is not None
               and not fa["calls"][i]["error"]["injected"]]
    if refused and op in ("plot_lr_find", "plot_loss", "plot_sched"):
        return DOC_SWEEP_REFUSED
    if field.startswith("graph") and ".ylim" in field and any(
            not math.isfinite(y) for ax in fa["calls"][call]["graph"]["axes"] for line in ax["lines"]
            for y in line["y"]):
        return DOC_DIVERGED_GRAPH
    if op == "confusion" and ".texts" in field and ops[call]["kw"]["normalize"] and any(
            t[1] == "nan" for ax in fa["calls"][call]["figures"][0]["axes"] for t in ax["texts"]):
        return DOC_NAN_COLORS
    ll_err = ll["calls"][call]["error"] if call >= 0 else None
    if field == "error" and fa["calls"][call]["error"] is None and ll_err and "Nothing to plot" in ll_err["text"]:
        return DOC_EMPTY
    if op == "plot_lr_find" or (op == "lr_find" and field.startswith("figures")):
        last_sweep = max((i for i in range(call + 1) if ops[i]["op"] == "lr_find"), default=None)
        if last_sweep is not None and fa["calls"][last_sweep]["lr_find_nan"]:
            return DOC_NAN_SWEEP
    return f"{op}: {_field_kind(field)}"


def _changes_learner(sc: dict[str, Any], call: int) -> bool:
    """Whether call `call` trains, sweeps or validates (the confusion matrix's get_preds too), rather than plots."""
    return sc["ops"][call]["op"] in (*FITS, "lr_find", "validate", "confusion")


def check(seed: int) -> dict[str, Any]:
    """Run one seed under both libraries and compare: the JSON line written for it."""
    sc = make_scenario(seed)
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
    found: list[str] = []
    skipped: dict[str, Any] | None = None
    for call, field, desc in compare(fa, ll):
        kind = classify(sc, fa, ll, call, field)
        if kind.startswith("documented"):
            found.append(kind)
            continue
        fa_err = fa["build_error"] if call < 0 else fa["calls"][call]["error"]
        if fa_err is not None and field == "error":
            skipped = skipped or {"seed": seed, "status": "skipped", "kind": f"fastai fails: {kind} {fa_err['type']}",
                                  "first_diff": " ".join(fa_err["text"].split())[:200]}
            if call < 0 or _changes_learner(sc, call):  # the runs part; after a plot both learners are as they were
                return skipped
            continue
        return {"seed": seed, "status": "diff", "kind": kind, "first_diff": desc[:400]}
    if skipped:
        return skipped
    if found:  # the kind a seed counts under: the return values last
        kind = min(found, key=lambda k: k == DOC_RETURNS)
        return {"seed": seed, "status": "diff", "kind": kind, "first_diff": ""}
    return {"seed": seed, "status": "same", "kind": "", "first_diff": ""}


LIBS: dict[str, Lib] = {}


def _init() -> None:
    torch.set_num_threads(1)
    LIBS["fastai"], LIBS["learnloop"] = _fastai_lib(), _learnloop_lib()


def show(seed: int) -> None:
    """Print scenario `seed`, both runs' calls and what differs."""
    sc = make_scenario(seed)
    print(json.dumps(sc))
    runs = {name: run_lib(LIBS[name], sc) for name in ("fastai", "learnloop")}
    for name, res in runs.items():
        print(f"--- {name}: build error {res['build_error']}")
        for c in res["calls"]:
            print(f"  {c['op']}: error {c['error'] and (c['error']['type'], c['error']['text'][:300])}")
            print(f"    result {_short(c['result'], 300)}")
    for call, field, desc in compare(runs["fastai"], runs["learnloop"]):
        print("!!", classify(sc, runs["fastai"], runs["learnloop"], call, field), "|", desc[:600])
    print("=>", check(seed))


def main() -> None:
    run_cli(__doc__ or "", _init, show, check)


if __name__ == "__main__":
    sys.exit(main())
