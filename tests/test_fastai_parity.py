"""Parity with fastai 2.8's observable behaviour, each value computed here from fastai's formulas written out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synth_learner
from learnloop.callbacks.lr_finder import LRFinder, lr_find, minimum, slide, steep, valley


# ------------------------------------------------------------------ lr_find
def _fastai_valley_index(losses: list[float]) -> int:
    """fastai's valley: two thirds down the longest strictly decreasing run (its loop, written out)."""
    n = len(losses)
    lds, max_start, max_end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_lr_find_suggestions_are_read_off_float32_lrs_as_in_fastai() -> None:
    learn = synth_learner(n_train=64, bs=16)
    res = lr_find(learn, num_it=40, show_plot=False, suggest_funcs=(valley, minimum, steep))
    assert res is not None
    # fastai: tensor(recorder.lrs[num_it//10:-5]) -- a float32 tensor -- and the losses likewise.
    lrs = torch.tensor([float(x) for x in learn.recorder.lrs[4:-5]], dtype=torch.float32)
    losses = torch.tensor([float(x) for x in learn.recorder.losses[4:-5]], dtype=torch.float32)
    assert res.valley == float(lrs[_fastai_valley_index(losses.tolist())])
    assert res.minimum == lrs[losses.argmin()].item() / 10
    slopes = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    assert res.steep == lrs[slopes.argmin()].item()


def test_lr_find_with_fewer_than_6_iterations_runs_6_as_in_fastai() -> None:
    learn = synth_learner(n_train=32, bs=16)  # 2 batches per epoch
    res = lr_find(learn, start_lr=1e-5, end_lr=1e-1, num_it=5, show_plot=False)
    # LRFinder raises num_it to 6: lrs start * (end/start) ** (i/6); the suggestions see recorder.lrs[0:-5].
    assert learn.recorder.lrs == pytest.approx([1e-5 * 1e4 ** (i / 6) for i in range(6)], rel=1e-12)
    assert res is not None and res.valley == pytest.approx(1e-5, rel=1e-6)
    assert LRFinder(num_it=3).num_it == 6


def test_suggestion_functions_on_known_curves() -> None:
    lrs = torch.logspace(-6, 0, 60, dtype=torch.float32)
    x = torch.linspace(0, 1, 60)
    losses = 2 - 4 * x + 5 * x**2  # a valley with its minimum at x = 0.4
    losses[50:] += torch.linspace(0, 3, 10)
    lr, _ = valley(lrs, losses, 60)
    assert lr == float(lrs[_fastai_valley_index(losses.tolist())])
    lr, _ = minimum(lrs, losses, 60)
    assert lr == lrs[losses.argmin()].item() / 10
    lr, _ = steep(lrs, losses, 60)
    slopes = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    assert lr == lrs[slopes.argmin()].item()
    # slide, written out: a window of lr_diff points slides down from the end until the gradients at its
    # two ends are within thresh; the lr at its left end.
    grads = np.gradient(losses.numpy())
    r, left = 59, 59 - 15
    expected = float(lrs[left])
    while left >= 0 and abs(grads[r] - grads[left]) > 0.005:
        expected = float(lrs[left])
        r, left = r - 1, left - 1
    lr, _ = slide(lrs, losses, 60)
    assert lr == expected
    assert not math.isnan(lr)


# ------------------------------------------------------------------ Recorder
def test_a_metric_with_several_values_is_recorded_as_it_is() -> None:
    from learnloop import AccumMetric

    def mae_and_mse(inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        return torch.stack([(inp - targ).abs().mean(), (inp - targ).pow(2).mean()])

    learn = synth_learner(metrics=AccumMetric(mae_and_mse))
    learn.fit(1)
    value = learn.recorder.values[-1][-1]  # fastai's _maybe_item: .item() only for one-element tensors
    assert isinstance(value, torch.Tensor) and value.shape == (2,)
    assert isinstance(learn.recorder.values[-1][0], float)


# ------------------------------------------------------------------ schedules
def _cos(start: float, end: float, pos: float) -> float:
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def _combined_cos(pct: float, start: float, middle: float, end: float, pos: float) -> float:
    """fastai's combined_cos: its combine_scheds keeps the segment bounds in float32 and works out the segment
    and the position inside it in float32 (then the cosine in float64)."""
    # The cumulative sum of the float32 fractions (summed in float64, stored as float32, as torch does).
    bounds = np.cumsum(np.array([0.0, pct, 1 - pct], dtype=np.float32), dtype=np.float64).astype(np.float32)
    p32 = np.float32(pos)
    if p32 < bounds[1]:
        return _cos(start, middle, float(p32 / bounds[1]))
    return _cos(middle, end, float((p32 - bounds[1]) / (bounds[2] - bounds[1])))


def test_fit_one_cycle_hypers_every_batch_with_discriminative_lrs() -> None:
    from torch import nn

    from learnloop import Callback

    class Spy(Callback):
        order = 100

        def before_fit(self) -> None:
            self.seen: list[list[tuple[float, float]]] = []

        def before_step(self) -> None:
            self.seen.append([(h["lr"], h["mom"]) for h in self.learn.opt.hypers])

    learn = synth_learner(n_train=48, bs=16)  # 3 batches per epoch
    learn.model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    learn.splitter = lambda m: [list(m[0].parameters()), list(m[1].parameters())]
    spy = Spy()
    learn.fit_one_cycle(3, slice(1e-3, 1e-1), pct_start=0.3, cbs=spy)
    assert len(spy.seen) == 9
    for i, groups in enumerate(spy.seen):
        pos = i / 9  # pct_train at before_batch
        for (lr, mom), lr_max in zip(groups, [1e-3, 1e-1], strict=True):
            assert lr == pytest.approx(_combined_cos(0.3, lr_max / 25, lr_max, lr_max / 1e5, pos), rel=1e-9)
            assert mom == pytest.approx(_combined_cos(0.3, 0.95, 0.85, 0.95, pos), rel=1e-9)
    assert learn.recorder.hps["lr"] == pytest.approx([g[-1][0] for g in spy.seen], rel=1e-12)
    assert learn.recorder.lrs == pytest.approx([g[-1][0] for g in spy.seen], rel=1e-12)
