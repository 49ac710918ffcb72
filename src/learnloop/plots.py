"""Plots of a Recorder's history (matplotlib, the optional ``learnloop[plot]`` extra).

Each function saves its figure as a PNG when given ``fname`` and returns it: the Figure, except
``plot_loss``, which returns its Axes as fastai's does (``plot_loss().set_title(...)``; the Figure is
``ax.figure``). matplotlib is imported on first use; its backend is left to matplotlib (it falls back to
Agg when there is no display).

>>> learn.recorder.plot_loss(fname="loss.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .distributed import is_rank_zero

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .callbacks.recorder import Recorder

__all__ = ["plot_loss", "plot_lr_find", "plot_metrics", "plot_sched"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("Plotting needs matplotlib: pip install 'learnloop[plot]'") from e
    return plt


def _save(fig: Figure, fname: str | Path | None) -> None:
    if fname is None or not is_rank_zero():  # in a distributed job, rank 0 writes the figure
        return
    path = Path(fname)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


def _float(x: Any) -> float:
    """A recorded value as a float (nan for a missing one)."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _require(values: Sequence[Any], what: str, how: str) -> None:
    if not values:
        raise ValueError(f"Nothing to plot: the recorder has no {what} yet; {how} first.")


def plot_loss(
    recorder: Recorder,
    skip_start: int = 5,
    with_valid: bool = True,
    log: bool = False,
    show_epochs: bool = False,
    ax: Axes | None = None,
    fname: str | Path | None = None,
) -> Axes:
    """Smoothed training loss per batch (skipping the first ``skip_start``), and with ``with_valid`` the
    validation loss at the batch where each epoch ended and a legend, the lines fastai draws; log-log axes with
    ``log``, epoch ends marked with ``show_epochs``. Draws on ``ax`` when given, else on a new figure (fastai
    draws on the current axes, ``plt.gca()``); returns the Axes (fastai's return value)."""
    _require(recorder.losses, "training losses", "fit the learner")
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots()
    else:
        fig = ax.figure
    steps = list(range(skip_start, len(recorder.losses)))
    losses = [_float(x) for x in recorder.losses[skip_start:]]
    if log:  # before the line, as fastai's ax.loglog: the limits are then autoscaled on log axes
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.plot(steps, losses, label="train")
    if show_epochs:
        for it in recorder.iters:
            ax.axvline(it, color="grey", linestyle=":")
    ax.set_xlabel("steps")
    ax.set_ylabel("loss")
    ax.set_title("learning curve")
    if with_valid and "valid_loss" in recorder.metric_names:
        col = recorder.metric_names.index("valid_loss") - 1  # row_values have no 'epoch' column
        # Each row laid out under its names: a row whose training phase was cancelled starts with the valid loss.
        # A value not recorded (a cancelled validation) is nan, a gap in the line; the line is drawn, and the
        # legend made, even with no point past skip_start, as fastai's.
        pairs = [
            (it, _float(recorder.row_values(i)[col]))
            for i, it in enumerate(recorder.iters[: len(recorder.values)])
            if it >= skip_start
        ]
        ax.plot([it for it, _ in pairs], [v for _, v in pairs], label="valid")
        ax.legend(loc="best")
    _save(fig, fname)
    return ax


def plot_sched(
    recorder: Recorder,
    keys: str | Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    fname: str | Path | None = None,
) -> Figure:
    """Each scheduled hyper-parameter (``recorder.hps``, or only ``keys``) against the training batch, on two
    columns of axes, each labelled with its name (fastai's figure)."""
    names = list(recorder.hps) if keys is None else [keys] if isinstance(keys, str) else list(keys)
    _require(names, "scheduled hyper-parameters", "fit with a schedule (fit_one_cycle, ...)")
    unknown = [k for k in names if k not in recorder.hps]
    if unknown:
        raise KeyError(f"plot_sched: {unknown} were not scheduled; the recorded ones are {list(recorder.hps)}.")
    plt = _pyplot()
    cols = min(2, len(names))
    rows = (len(names) + 1) // 2
    fig, axs = plt.subplots(rows, cols, figsize=figsize or (6 * cols, 4 * rows), squeeze=False)
    for name, ax in zip(names, axs.flat, strict=False):  # fastai's grid: an odd panel out is left empty
        ax.plot([_float(v) for v in recorder.hps[name]])
        ax.set_ylabel(name)
    _save(fig, fname)
    return fig


def plot_lr_find(
    recorder: Recorder,
    skip_end: int = 5,
    return_fig: bool = True,
    suggestions: Sequence[tuple[float, float]] | None = None,
    nms: Sequence[str] | None = None,
    fname: str | Path | None = None,
    **kwargs: Any,
) -> Figure | None:
    """Loss against learning rate (log scale) of an ``lr_find`` run, without the last ``skip_end`` points;
    ``suggestions`` are ``(lr, loss)`` points marked and labelled with ``nms`` (the legend's texts, as fastai's).
    ``skip_end`` slices as fastai's (``lrs[:-skip_end]``, all of them for 0). Returns the Figure, or None
    with ``return_fig=False`` (the arguments in fastai's order). Other keywords are taken and ignored, as
    fastai's are."""
    _require(recorder.lrs, "learning rates", "run learn.lr_find()")
    plt = _pyplot()
    end = -skip_end if skip_end else None  # fastai's slice: a skip_end past the points leaves none
    fig, ax = plt.subplots()
    ax.plot([_float(x) for x in recorder.lrs[:end]], [_float(x) for x in recorder.losses[:end]])
    ax.set_xscale("log")
    ax.set_xlabel("Learning Rate")
    ax.set_ylabel("Loss")
    if suggestions:
        labels = list(nms) if nms is not None else [f"suggestion {i}" for i in range(len(suggestions))]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]
        for i, ((lr, loss), label) in enumerate(zip(suggestions, labels, strict=False)):
            ax.plot(lr, loss, "o", color=colors[i % len(colors)], label=label)
        ax.legend(loc="best")
    _save(fig, fname)
    return fig if return_fig else None


def plot_metrics(
    recorder: Recorder,
    nrows: int | None = None,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    fname: str | Path | None = None,
) -> Figure:
    """Every recorded value per epoch: the losses together on the first axes, then one axes per metric."""
    _require(recorder.values, "epoch values", "fit the learner")
    rows = [recorder.row_values(i) for i in range(len(recorder.values))]  # each value under its name
    names = recorder.metric_names[1 : 1 + len(rows[0])]  # without 'epoch' and 'time', as the rows
    # By position, not by name: two metrics may have the same name.
    columns = [[_float(row[i]) for row in rows] for i in range(len(names))]
    # train_x and valid_x share a panel; the losses' panel comes first, as in fastai.
    panels: dict[str, list[int]] = {}
    for i in sorted(range(len(names)), key=lambda i: _metric_of(names[i]) != "loss"):
        panels.setdefault(_metric_of(names[i]), []).append(i)
    n = len(panels)
    for name, given in (("nrows", nrows), ("ncols", ncols)):
        if given is not None and given < 1:
            raise ValueError(f"plot_metrics: {name} must be at least 1 (or None, to fit the {n} panels), got {given}.")
    if nrows is None and ncols is None:
        ncols = min(n, 3)
    if ncols is None:
        ncols = math.ceil(n / (nrows or 1))
    if nrows is None:
        nrows = math.ceil(n / ncols)
    if nrows * ncols < n:
        raise ValueError(f"plot_metrics: {nrows}x{ncols} axes cannot hold the {n} panels {list(panels)}.")
    plt = _pyplot()
    fig, axs = plt.subplots(nrows, ncols, figsize=figsize or (6 * ncols, 4 * nrows), squeeze=False)
    flat = list(axs.flat)
    epochs = list(range(len(recorder.values)))
    for (metric, cols), ax in zip(panels.items(), flat, strict=False):
        for col in cols:
            ax.plot(epochs, columns[col], marker="o", label=names[col])
        ax.set_title("losses" if metric == "loss" else metric)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(loc="best")
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    _save(fig, fname)
    return fig


def _metric_of(column: str) -> str:
    """'train_loss' -> 'loss', 'valid_accuracy' -> 'accuracy', 'accuracy' -> 'accuracy'."""
    for prefix in ("train_", "valid_"):
        if column.startswith(prefix):
            return column[len(prefix) :]
    return column
