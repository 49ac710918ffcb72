"""Recorder plots: each returns a Figure with labelled axes and can save a PNG; they run headless."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")  # tests only: the library leaves the backend to matplotlib

import matplotlib.pyplot as plt  # noqa: E402

from conftest import synth_learner  # noqa: E402
from learnloop import (  # noqa: E402
    Callback,
    CancelTrainException,
    CancelValidException,
    Learner,
    Recorder,
    ShortEpochCallback,
    mae,
)
from learnloop.callbacks import ShowGraphCallback  # noqa: E402
from learnloop.callbacks.lr_finder import minimum, steep, valley  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def trained() -> Learner:
    learn = synth_learner(n_train=64, bs=16, metrics=[mae])
    learn.fit_one_cycle(3, lr_max=1e-2)
    return learn


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_loss(trained: Learner, tmp_path: Path) -> None:
    ax = trained.recorder.plot_loss(skip_start=2, fname=tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png")
    ax.set_title("mine")  # fastai returns the Axes: its users' `plot_loss().set_title(...)` works
    assert ax.figure.axes == [ax]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("steps", "loss")
    train, valid = ax.get_lines()
    assert list(train.get_xdata()) == list(range(2, 12))
    assert list(valid.get_xdata()) == trained.recorder.iters == [4, 8, 12]
    assert list(valid.get_ydata()) == pytest.approx([row[1] for row in trained.recorder.values])


def test_plot_loss_options(trained: Learner) -> None:
    ax = trained.recorder.plot_loss(with_valid=False, log=True, show_epochs=True)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 1 + 3  # the train curve and one marker per epoch end
    _, given = plt.subplots()
    assert trained.recorder.plot_loss(ax=given) is given


def test_plot_loss_draws_fastais_lines_and_legend(trained: Learner) -> None:
    # fastai's: a plain valid line, gaps for epochs whose validation was cancelled, a legend only with the valid
    # line, and that line even when skip_start leaves it no point.
    train, valid = trained.recorder.plot_loss().get_lines()
    assert (train.get_marker(), valid.get_marker()) == ("None", "None")
    assert trained.recorder.plot_loss(with_valid=False).get_legend() is None
    ax = trained.recorder.plot_loss(skip_start=100)
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [0, 0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "valid"]
    # log scales are set before the lines are drawn, as fastai's ax.loglog sets them: the same limits
    ax = trained.recorder.plot_loss(skip_start=100, log=True, show_epochs=True)
    _, expected = plt.subplots()
    expected.loglog([], [])
    for it in trained.recorder.iters:
        expected.axvline(it)
    expected.plot([], [])
    assert (ax.get_xlim(), ax.get_ylim()) == (expected.get_xlim(), expected.get_ylim())

    def cancel(cb: Callback) -> None:
        if cb.epoch == 0:
            raise CancelValidException

    learn = synth_learner(n_train=64, bs=16)
    learn.fit(2, cbs=Callback(before_validate=cancel))
    valid = learn.recorder.plot_loss(skip_start=0).get_lines()[1]
    assert list(valid.get_xdata()) == [4, 8]
    assert math.isnan(valid.get_ydata()[0]) and valid.get_ydata()[1] == learn.recorder.values[1][1]


def test_plot_sched(trained: Learner, tmp_path: Path) -> None:
    fig = trained.recorder.plot_sched(fname=tmp_path / "sched")  # suffix added
    assert_png(tmp_path / "sched.png")
    assert [ax.get_ylabel() for ax in fig.axes] == ["lr", "mom"]
    assert all(ax.get_xlabel() == "" for ax in fig.axes)  # fastai's: the y labels only, no tight layout
    plain = plt.subplots(1, 2)[0]
    assert [ax.get_position().bounds for ax in fig.axes] == [ax.get_position().bounds for ax in plain.axes]
    three = trained.recorder.plot_sched(keys=["lr", "mom", "lr"])
    assert [ax.get_subplotspec().get_geometry() for ax in three.axes] == [(2, 2, i, i) for i in range(4)]
    assert three.axes[3].axison and not three.axes[3].get_lines()  # the panel left over is drawn empty
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == pytest.approx(trained.recorder.hps["lr"])
    assert [ax.get_ylabel() for ax in trained.recorder.plot_sched(keys="mom").axes] == ["mom"]
    with pytest.raises(KeyError, match="'beta'.*recorded ones are \\['lr', 'mom'\\]"):
        trained.recorder.plot_sched(keys=["beta"])


def test_plot_metrics(trained: Learner, tmp_path: Path) -> None:
    fig = trained.recorder.plot_metrics(fname=tmp_path / "metrics.png")
    assert_png(tmp_path / "metrics.png")
    visible = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == ["losses", "mae"]
    assert [line.get_label() for line in visible[0].get_lines()] == ["train_loss", "valid_loss"]
    assert all(ax.get_xlabel() == "epoch" for ax in visible)
    with pytest.raises(ValueError, match="1x1 axes cannot hold the 2 panels"):
        trained.recorder.plot_metrics(nrows=1, ncols=1)
    for bad in ({"ncols": 0}, {"nrows": 0}, {"nrows": -1, "ncols": 2}):  # ncols=0 was a ZeroDivisionError
        with pytest.raises(ValueError, match=r"plot_metrics: n(rows|cols) must be at least 1 .*got (0|-1)"):
            trained.recorder.plot_metrics(**bad)


def test_plot_metrics_keeps_metrics_of_the_same_name_apart() -> None:
    def named_mae() -> Any:  # a second metric named 'mae', of constant value
        def mae(pred: Any, targ: Any) -> Any:
            return pred.new_tensor(0.5)

        return mae

    learn = synth_learner(n_train=64, bs=16, metrics=[mae, named_mae()])
    learn.fit(2)
    assert learn.recorder.metric_names[3:5] == ["mae", "mae"]
    fig = learn.recorder.plot_metrics()
    lines = fig.axes[1].get_lines()
    # Each its own column: the first is not lost under the second's name.
    assert [list(line.get_ydata()) for line in lines] == [[row[2] for row in learn.recorder.values], [0.5, 0.5]]


@pytest.mark.parametrize("train_metrics", [False, True])
def test_plots_put_the_values_of_an_epoch_whose_training_was_cancelled_under_their_names(train_metrics: bool) -> None:
    # ShortEpochCallback(short_valid=False) cuts the training phase: the Recorder's row holds the validation
    # values only (as fastai's), which fastai's plot_loss reads at the training layout's positions.
    learn = synth_learner(n_train=64, bs=16, metrics=[mae])
    learn.remove_cb(learn.recorder)
    learn.add_cb(Recorder(train_metrics=train_metrics))
    learn.fit(2, cbs=ShortEpochCallback(pct=0.5, short_valid=False))
    values = learn.recorder.values
    assert all(len(row) == 2 for row in values)  # [valid_loss, mae]
    valid = learn.recorder.plot_loss(skip_start=0).get_lines()[1]
    assert list(valid.get_ydata()) == [row[0] for row in values]
    fig = learn.recorder.plot_metrics()
    plotted = {line.get_label(): list(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()}
    assert plotted["valid_loss"] == [row[0] for row in values]
    assert plotted["valid_mae" if train_metrics else "mae"] == [row[1] for row in values]
    assert all(math.isnan(v) for v in plotted["train_loss"])


def test_plot_lr_find(tmp_path: Path) -> None:
    learn = synth_learner(n_train=64, bs=16)
    res = learn.lr_find(show_plot=False, suggest_funcs=(minimum, steep, valley))
    assert res is not None
    points = [(float(v), 1.0) for v in res]
    fig = learn.recorder.plot_lr_find(suggestions=points, nms=list(res._fields), fname=tmp_path / "lr.png")  # type: ignore[attr-defined]
    assert_png(tmp_path / "lr.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Learning Rate", "Loss")
    assert len(ax.get_lines()[0].get_xdata()) == len(learn.recorder.lrs) - 5
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["minimum", "steep", "valley"]  # the names, as fastai's legend
    # fastai's positional order (skip_end, return_fig, suggestions, nms); return_fig=False returns nothing
    assert learn.recorder.plot_lr_find(0, False, points, list(res._fields)) is None  # type: ignore[attr-defined]
    assert len(plt.gcf().axes[0].get_lines()[0].get_xdata()) == len(learn.recorder.lrs)
    # fastai's slice lrs[:-skip_end]: past the points it leaves none, a negative one keeps the first points
    for skip_end, n in [(len(learn.recorder.lrs) + 2, 0), (-3, 3)]:
        curve = learn.recorder.plot_lr_find(skip_end).axes[0].get_lines()[0]
        assert len(curve.get_xdata()) == len(curve.get_ydata()) == n
    # fastai's takes any other keyword and ignores it
    curve = learn.recorder.plot_lr_find(figsize=(3, 2), show_plot=True).axes[0].get_lines()[0]
    assert len(curve.get_xdata()) == len(learn.recorder.lrs) - 5


def test_lr_find_shows_its_plot() -> None:
    learn = synth_learner(n_train=64, bs=16)
    assert plt.get_fignums() == []
    learn.lr_find(suggest_funcs=(valley, steep))
    (num,) = plt.get_fignums()
    ax = plt.figure(num).axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 3  # the curve and two suggestions


def test_nothing_to_plot_is_a_clear_error() -> None:
    learn = synth_learner()
    with pytest.raises(ValueError, match="no training losses yet; fit the learner first"):
        learn.recorder.plot_loss()
    with pytest.raises(ValueError, match="no scheduled hyper-parameters"):
        learn.recorder.plot_sched()
    with pytest.raises(ValueError, match="run learn.lr_find\\(\\) first"):
        learn.recorder.plot_lr_find()
    with pytest.raises(ValueError, match="no epoch values"):
        learn.recorder.plot_metrics()


def test_missing_matplotlib_names_the_extra(trained: Learner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'learnloop\[plot\]'"):
        trained.recorder.plot_loss()
    learn = synth_learner(n_train=64, bs=16)
    with pytest.warns(UserWarning, match=r"no plot.*learnloop\[plot\].*show_plot=False"):
        res = learn.lr_find(num_it=20)
    assert res is not None


# ------------------------------------------------------------------ ShowGraphCallback
def graph_data(cb: ShowGraphCallback) -> list[tuple[list[float], list[float]]]:
    assert cb.fig is not None
    return [([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
            for line in cb.fig.axes[0].lines]


def test_show_graph_plots_the_recorders_losses_and_the_valid_loss_at_each_epoch_end() -> None:
    learn = synth_learner(n_train=64, bs=16)  # 4 batches an epoch
    cb = ShowGraphCallback()
    learn.fit(2, cbs=cb)
    rec = learn.recorder
    (train_x, train_y), (valid_x, valid_y) = graph_data(cb)
    assert train_x == list(range(8)) and train_y == [float(x) for x in rec.losses]
    assert valid_x == [4.0, 8.0] and valid_y == [row[1] for row in rec.values]
    assert cb.fig is not None and cb.fig.axes[0].get_xlim() == (0, 8)
    assert cb.fig.axes[0].get_ylim() == (0, max(train_y + valid_y))
    assert (cb.order, cb.run_train, cb.run_valid) == (65, True, False)  # fastai's
    ax = cb.fig.axes[0]  # fastprogress's graph: two plain lines, a legend at the upper right, no axis labels
    assert [(line.get_label(), line.get_marker()) for line in ax.lines] == [("train", "None"), ("valid", "None")]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_legend()._loc) == ("", "", 1)
    assert plt.get_fignums() == []  # made without pyplot: no window can open, nothing waits to be shown


def test_show_graph_spans_the_whole_fit_from_the_first_epoch() -> None:
    # fastai's bounds: the epochs to come are guessed from the first one's batches.
    limits: list[tuple[float, float]] = []
    cb = ShowGraphCallback()
    spy = Callback(after_epoch=lambda: limits.append(cb.fig.axes[0].get_xlim()))  # type: ignore[union-attr]
    spy.order = 66
    synth_learner(n_train=64, bs=16).fit(3, cbs=[cb, spy])
    assert limits == [(0, 12)] * 3


def test_show_graph_takes_event_methods_as_keywords_like_any_callback() -> None:
    seen: list[int] = []
    cb = ShowGraphCallback(after_fit=lambda cb: seen.append(len(cb.valid_losses)))
    synth_learner(n_train=64, bs=16).fit(2, cbs=cb)
    assert seen == [2]


def test_show_graph_sits_out_get_preds_lr_find_and_validate_and_draws_the_next_fit() -> None:
    learn = synth_learner(n_train=64, bs=16)
    cb = ShowGraphCallback()
    learn.add_cb(cb)
    learn.fit(1)
    fig, drawn = cb.fig, graph_data(cb)
    learn.get_preds()
    learn.validate()
    learn.lr_find(num_it=10, show_plot=False)
    assert cb.fig is fig and graph_data(cb) == drawn and cb.run
    learn.fit(2)
    assert cb.fig is not fig and graph_data(cb)[1][0] == [4.0, 8.0]


def test_show_graph_draws_every_epoch_of_a_fit_that_calls_validate_inside() -> None:
    # The validate() fires before_epoch too: it must not make the fit's epoch look untrained (nothing drawn).
    learn = synth_learner(n_train=64, bs=16)
    cb = ShowGraphCallback()
    learn.fit(3, cbs=[cb, Callback(after_validate=lambda: None if learn._nested_run else learn.validate())])
    assert len(cb.nb_batches) == len(cb.valid_losses) == 3 and cb.run


@pytest.mark.parametrize("exc", [CancelTrainException, CancelValidException])
def test_show_graph_reads_the_valid_loss_of_an_epoch_with_a_phase_cancelled(exc: type[Exception]) -> None:
    def cancel() -> None:
        if learn.epoch == 0:
            raise exc

    learn = synth_learner(n_train=64, bs=16)
    event = "before_train" if exc is CancelTrainException else "before_validate"
    cb = ShowGraphCallback()
    learn.fit(2, cbs=[cb, Callback(**{event: cancel})])
    valid_x, valid_y = graph_data(cb)[1]
    assert valid_x == ([0.0, 4.0] if exc is CancelTrainException else [4.0, 8.0])
    if exc is CancelTrainException:  # the row holds no training loss: the valid loss comes first
        assert valid_y == [learn.recorder.values[0][0], learn.recorder.values[1][1]]
    else:
        assert math.isnan(valid_y[0]) and valid_y[1] == learn.recorder.values[1][1]


class FakeHandle:
    def __init__(self, shown: list[Any]) -> None:
        self.shown = shown

    def update(self, obj: Any) -> None:
        self.shown.append(("update", obj))


def fake_ipython(monkeypatch: pytest.MonkeyPatch, kernel: bool) -> list[Any]:
    """An IPython whose shell is (or is not) a Jupyter kernel; returns what gets displayed."""
    shown: list[Any] = []

    def display(obj: Any, display_id: bool = False) -> FakeHandle:
        shown.append(("display", obj, display_id))
        return FakeHandle(shown)

    shell = types.SimpleNamespace(kernel=object()) if kernel else types.SimpleNamespace()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    ipy_display = types.ModuleType("IPython.display")
    ipy_display.display = display  # type: ignore[attr-defined]
    ipy_display.Image = lambda data, format: (format, data)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipy_display)
    return shown


def test_show_graph_in_a_notebook_shows_the_figure_once_then_updates_it_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown = fake_ipython(monkeypatch, kernel=True)
    synth_learner(n_train=64, bs=16).fit(3, cbs=ShowGraphCallback())
    assert [s[0] for s in shown] == ["display", "update", "update"]
    assert shown[0][2] is True  # a display id, for the updates
    assert all(s[1][0] == "png" and s[1][1][:8] == b"\x89PNG\r\n\x1a\n" for s in shown)


def test_show_graph_outside_a_kernel_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = fake_ipython(monkeypatch, kernel=False)  # a terminal IPython: no kernel
    cb = ShowGraphCallback()
    synth_learner(n_train=64, bs=16).fit(1, cbs=cb)
    assert shown == [] and len(graph_data(cb)[0][0]) == 4


def test_show_graph_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("matplotlib", "matplotlib.figure"):  # as if it were not installed
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"ShowGraphCallback needs matplotlib: pip install 'learnloop\[plot\]'"):
        ShowGraphCallback()


def test_show_graph_keeps_the_epochs_point_around_a_validate_inside_the_fit() -> None:
    # The validate()'s before_epoch forgot the fit's epoch had trained: no validation point was drawn.
    learn = synth_learner(n_train=64, bs=16)
    cb = ShowGraphCallback()
    validate = Callback(after_epoch=lambda self: None if self.learn._nested_run else self.learn.validate())
    learn.fit(2, cbs=[cb, validate])
    # A point per epoch; where it lies is the Recorder's (the validate() restarts train_iter and the epoch's row,
    # as fastai's).
    assert len(graph_data(cb)[1][0]) == 2
