"""Recorder plots: each returns a Figure with labelled axes and can save a PNG; they run headless."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests only: the library leaves the backend to matplotlib

import matplotlib.pyplot as plt  # noqa: E402

from conftest import synth_learner  # noqa: E402
from learnloop import Learner, mae  # noqa: E402
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


def test_plot_sched(trained: Learner, tmp_path: Path) -> None:
    fig = trained.recorder.plot_sched(fname=tmp_path / "sched")  # suffix added
    assert_png(tmp_path / "sched.png")
    assert [ax.get_ylabel() for ax in fig.axes] == ["lr", "mom"]
    assert all(ax.get_xlabel() == "steps" for ax in fig.axes)
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
    assert [t.split(":")[0] for t in legend] == ["minimum", "steep", "valley"]
    # fastai's positional order (skip_end, return_fig, suggestions, nms); return_fig=False returns nothing
    assert learn.recorder.plot_lr_find(0, False, points, list(res._fields)) is None  # type: ignore[attr-defined]
    assert len(plt.gcf().axes[0].get_lines()[0].get_xdata()) == len(learn.recorder.lrs)


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
