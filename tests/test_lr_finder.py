"""lr_find and LRFinder: the sweep, early stopping, exact restoration, the suggestion functions."""

from __future__ import annotations

import copy
import functools
import math
import re
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synth_learner
from learnloop import Callback, CancelFitException, EarlyStoppingCallback, EMACallback, Learner
from learnloop.callbacks.lr_finder import (
    LRFinder,
    SuggestionMethod,
    lr_find,
    min_points,
    minimum,
    slide,
    steep,
    valley,
)
from learnloop.optimizer import Optimizer, OptimWrapper, sgd_step


def trained_learner(**kwargs: Any) -> Learner:
    """A learner with one epoch behind it, so the optimizer has state (Adam moments, step counts)."""
    learn = synth_learner(n_train=64, bs=16, **kwargs)
    learn.fit(1, lr=1e-2)
    return learn


def model_state(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def assert_same_model(learn: Learner, before: dict[str, torch.Tensor]) -> None:
    after = learn.model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def assert_same_opt_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_opt_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_opt_state(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------ the sweep
def test_sweeps_the_exact_exponential_lrs() -> None:
    learn = synth_learner(n_train=64, bs=16)
    lr_find(learn, start_lr=1e-5, end_lr=1e-1, num_it=30, stop_div=False, show_plot=False, suggest_funcs=None)
    expected = [1e-5 * (1e-1 / 1e-5) ** (i / 30) for i in range(30)]
    assert learn.recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert len(learn.recorder.losses) == 30


@pytest.mark.parametrize("linear", [False, True])
def test_a_downward_sweep_is_allowed_as_in_fastai(linear: bool) -> None:
    # fastai's LRFinder(start_lr=1, end_lr=1e-3) sweeps from 1 down to 1e-3
    learn = synth_learner(n_train=160, bs=16)
    learn.fit(1, cbs=LRFinder(start_lr=1.0, end_lr=1e-3, num_it=10, stop_div=False, linear=linear))
    expected = [1 + (1e-3 - 1) * i / 10 if linear else 1e-3 ** (i / 10) for i in range(10)]
    assert learn.recorder.lrs == pytest.approx(expected, rel=1e-12)
    if not linear:  # fastai 2.8's first lrs, rounded
        assert learn.recorder.lrs[:4] == pytest.approx([1.0, 0.5012, 0.2512, 0.1259], abs=1e-4)


def test_linear_sweep_and_standalone_finder_restores() -> None:
    learn = trained_learner()
    before = model_state(learn)
    learn.fit(3, cbs=LRFinder(start_lr=1e-4, end_lr=1e-2, num_it=10, linear=True))
    assert learn.recorder.lrs == pytest.approx([1e-4 + (1e-2 - 1e-4) * i / 10 for i in range(10)], rel=1e-12)
    assert_same_model(learn, before)


@pytest.mark.parametrize("per_group", [list, np.array, torch.tensor])
def test_one_start_and_end_lr_per_group_as_a_list_or_an_array(per_group: Any) -> None:
    # A 1-d numpy array (which fastai's LRFinder takes) or tensor was refused as "not a number"; only lists worked.
    learn = synth_learner(n_train=64, bs=16, splitter=lambda m: [[m.weight], [m.bias]])
    lrs: list[list[float]] = []
    seen = Callback(after_batch=lambda: lrs.append([h["lr"] for h in learn.opt.hypers]))
    learn.fit(1, cbs=[LRFinder(start_lr=per_group([1e-4, 1e-3]), end_lr=per_group([1e-2, 1.0]), num_it=8), seen])
    expected = [[1e-4 * 100 ** (i / 8), 1e-3 * 1000 ** (i / 8)] for i in range(4)]  # 4 batches: one epoch
    assert np.allclose(lrs, expected, rtol=1e-6, atol=0)


class ValidateAtEpochEnd(Callback):
    """Runs validate() at each training epoch's end (not at the end of its own validate())."""

    def after_epoch(self) -> None:
        if not self.learn._nested_run:
            self.learn.validate()


def test_standalone_finder_restores_through_a_validate_inside_the_sweep() -> None:
    """The validate()'s own before_fit/after_fit reached the finder: it took a new snapshot mid-sweep, put that back
    at the validate()'s end and dropped it, so the fit ended with the sweep's weights."""
    learn = trained_learner()
    before = model_state(learn)
    learn.fit(3, cbs=[LRFinder(num_it=10), ValidateAtEpochEnd()])
    assert_same_model(learn, before)


def test_standalone_finder_keeps_the_loop_attributes() -> None:
    # LRFinder as a fit callback puts back model and optimizer only: the learner keeps its loop attributes
    # (fastai's values for 5 batches an epoch and num_it=8), recorder.hps is left alone, and it trains on.
    learn = synth_learner(n_train=80, bs=16)
    finder = LRFinder(start_lr=1e-4, end_lr=1.0, num_it=8)
    learn.fit(3, cbs=finder)
    assert (learn.n_epoch, learn.epoch, learn.iter, learn.n_iter, learn.train_iter) == (3, 1, 2, 5, 8)
    assert learn.training is True and learn.pct_train == pytest.approx(8 / 15)
    assert len(learn.final_record) == 1  # the training loss of epoch 0 (its validation was cancelled)
    assert learn.recorder.hps == {}
    assert finder.hps["lr"] == pytest.approx([1e-4 * 1e4 ** (i / 8) for i in range(8)], rel=1e-12)
    learn.fit(1)
    assert (learn.n_epoch, learn.train_iter) == (1, 5)


def test_validation_is_cancelled_and_epochs_cover_num_it() -> None:
    learn = synth_learner(n_train=64, bs=16)
    events: list[str] = []
    learn.add_cb(Callback(after_cancel_validate=lambda: events.append("cancel_valid"),
                          before_epoch=lambda: events.append("epoch")))
    lr_find(learn, num_it=10, stop_div=False, show_plot=False, suggest_funcs=None)
    assert events.count("epoch") == 3  # 10 batches of 4 per epoch: epochs 0, 1 and part of 2
    assert events.count("cancel_valid") == 2  # the third epoch is cut by CancelFitException
    assert len(learn.recorder.lrs) == 10


@pytest.mark.parametrize(("n_train", "num_it", "n_lrs"), [(16, 2, 3), (32, 3, 4), (48, 4, 6), (16, 8, 8)])
def test_a_num_it_below_6_runs_the_epochs_fastai_runs(n_train: int, num_it: int, n_lrs: int) -> None:
    # fastai counts the epochs from num_it as given (num_it // batches + 1) and the finder's own end from
    # max(num_it, 6): with 1, 2 or 3 batches an epoch, the fit ends after 3, 4 or 6 batches.
    learn = synth_learner(n_train=n_train, bs=16)
    lr_find(learn, num_it=num_it, stop_div=False, show_plot=False, suggest_funcs=None)
    assert len(learn.recorder.lrs) == n_lrs


class NaNAtBatch(nn.Module):
    """MSE, but NaN at the `at`-th call (1-based)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = ((pred - targ) ** 2).mean()
        return loss * math.nan if self.calls == self.at else loss


@pytest.mark.parametrize("at", [1, 4])
def test_stops_at_a_nan_smoothed_loss_with_one_lr_and_one_loss_per_batch(at: int) -> None:
    # fastai carries on to num_it (NaN > 4 * best is False) and records NaNs; learnloop stops at the first one.
    learn = synth_learner(n_train=160, bs=16, loss_func=NaNAtBatch(at))
    learn.fit(1, cbs=LRFinder(num_it=8))
    losses = [float(x) for x in learn.recorder.losses]
    assert len(learn.recorder.lrs) == len(losses) == at
    assert math.isnan(losses[-1]) and all(math.isfinite(x) for x in losses[:-1])


def test_suggestions_after_a_nan_stop_use_the_points_fastai_keeps() -> None:
    # fastai's sweep runs on to num_it=100 and drops its last 5 points, then those from the NaN (batch 50) on:
    # it suggests from points 10..48. learnloop stopped at batch 50, so dropping its own last 5 would lose 4.
    learn = synth_learner(n_train=320, bs=16, loss_func=NaNAtBatch(50))
    res = lr_find(learn, show_plot=False, suggest_funcs=(valley, minimum))
    assert len(learn.recorder.lrs) == 50
    lrs = torch.tensor([float(x) for x in learn.recorder.lrs[10:49]])
    losses = torch.tensor([float(x) for x in learn.recorder.losses[10:49]])
    assert res == (valley(lrs, losses, 100)[0], minimum(lrs, losses, 100)[0])
    assert res != (valley(lrs[:-4], losses[:-4], 100)[0], minimum(lrs[:-4], losses[:-4], 100)[0])


def test_stops_early_when_the_loss_diverges() -> None:
    learn = synth_learner(n_train=64, bs=16)
    lr_find(learn, start_lr=1e-3, end_lr=1e6, num_it=100, show_plot=False, suggest_funcs=None)
    n = len(learn.recorder.lrs)
    assert 5 < n < 100
    last = float(learn.recorder.losses[-1])
    assert not math.isfinite(last) or last > 4 * min(float(x) for x in learn.recorder.losses[:-1])
    learn.fit(1)  # the learner still trains afterwards
    assert math.isfinite(learn.recorder.values[-1][0])


def test_no_early_stop_without_stop_div() -> None:
    learn = synth_learner(n_train=64, bs=16)
    lr_find(learn, start_lr=1e-3, end_lr=1e3, num_it=40, stop_div=False, show_plot=False, suggest_funcs=None)
    assert len(learn.recorder.lrs) == 40


def test_recorder_hps_stay_those_of_the_previous_fit() -> None:
    # As fastai's finder, lr_find does not write its lrs into recorder.hps (recorder.lrs has them).
    learn = synth_learner(n_train=64, bs=16)
    learn.fit_one_cycle(1, 1e-2)
    hps = {name: list(values) for name, values in learn.recorder.hps.items()}
    assert sorted(hps) == ["lr", "mom"] and len(hps["lr"]) == 4
    lr_find(learn, num_it=20, show_plot=False, suggest_funcs=None)
    assert learn.recorder.hps == hps
    assert len(learn.recorder.lrs) == 20


# ------------------------------------------------------------------ restoring the learner
def test_restores_weights_and_optimizer_bit_identically() -> None:
    learn = trained_learner()
    before_model = model_state(learn)
    opt = learn.opt
    before_opt = copy.deepcopy(opt.state_dict())
    hypers = [dict(h) for h in opt.hypers]
    lr_find(learn, num_it=30, show_plot=False)
    assert_same_model(learn, before_model)
    assert learn.opt is opt
    assert_same_opt_state(opt.state_dict(), before_opt)
    assert [dict(h) for h in opt.hypers] == hypers


def test_restoring_hypers_the_sweep_added_does_not_warn_of_another_optimizer() -> None:
    # An optimizer made but never fit (learn.freeze() makes one) whose steppers declare no wd: the sweep's fit sets
    # learn.wd on it. Putting the optimizer's own hypers back warned "was it saved from another optimizer?".
    learn = synth_learner(opt_func=functools.partial(Optimizer, cbs=[sgd_step]), wd=0.01)
    learn.create_opt()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr_find(learn, num_it=10, show_plot=False)
    assert [dict(h) for h in learn.opt.hypers] == [{"lr": 1e-2}]


def test_restores_a_torch_optimizer() -> None:
    learn = trained_learner(opt_func=functools.partial(OptimWrapper, opt=torch.optim.AdamW))
    before_model, before_opt = model_state(learn), copy.deepcopy(learn.opt.state_dict())
    lr_find(learn, num_it=30, show_plot=False)
    assert_same_model(learn, before_model)
    assert_same_opt_state(learn.opt.state_dict(), before_opt)
    assert learn.opt.hypers[0]["lr"] == before_opt["param_groups"][0]["lr"]


def test_no_optimizer_before_means_none_after() -> None:
    learn = synth_learner()
    before = model_state(learn)
    lr_find(learn, num_it=20, show_plot=False)
    assert learn.opt is None
    assert_same_model(learn, before)


def test_a_model_with_uninitialized_lazy_parameters_is_refused_before_the_sweep() -> None:
    # The sweep gave them their first values, then putting the model back failed (torch cannot load uninitialized
    # parameters): the learner was left with the sweep's diverged weights and its optimizer at the last lr tried.
    learn = synth_learner(n_train=64, bs=16)
    torch.manual_seed(0)
    learn.model = nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 1))
    with pytest.raises(RuntimeError, match=r"the model's 0.weight, 0.bias are not initialized yet .*learn.model\(xb\)"):
        lr_find(learn, num_it=20, show_plot=False)
    assert learn.opt is None and learn.recorder.lrs == []  # nothing ran
    with pytest.raises(RuntimeError, match="not initialized yet"):
        learn.fit(1, cbs=LRFinder(num_it=20))  # the standalone finder, at before_fit
    assert learn.recorder.lrs == []
    learn.model(learn.dls.one_batch()[0])  # initialized: lr_find works, and puts the weights back
    before = model_state(learn)
    lr_find(learn, num_it=20, show_plot=False)
    assert_same_model(learn, before)


def test_restores_batchnorm_buffers_modes_and_grads() -> None:
    torch.manual_seed(0)
    first, norm, last = nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)
    model = nn.Sequential(first, norm, last)
    learn = synth_learner(n_train=64, bs=16)
    learn = Learner(learn.dls, model, loss_func=nn.MSELoss())
    learn.logger = lambda *_: None
    model.train()
    norm.eval()
    first.weight.grad = torch.ones_like(first.weight)
    before = model_state(learn)
    lr_find(learn, num_it=20, show_plot=False)
    assert_same_model(learn, before)  # running_mean, running_var, num_batches_tracked included
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert torch.equal(first.weight.grad, torch.ones_like(first.weight))
    assert last.weight.grad is None


class ScaledMSE(nn.Module):
    """A learnable loss: its log-scale is trained with the model, the splitter handing it to the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, out: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        return ((out - targ) ** 2).mean() * self.log_scale.exp() - self.log_scale


@pytest.mark.parametrize("fit_first", [True, False])
def test_restores_the_parameters_the_optimizer_trains_outside_the_model(fit_first: bool) -> None:
    """fastai (and learnloop before) put back only the model: a learnable loss kept the sweep's values."""
    loss = ScaledMSE()
    learn = synth_learner(n_train=64, bs=16, loss_func=loss, splitter=lambda m: [*m.parameters(), loss.log_scale])
    if fit_first:
        learn.fit(1)
        loss.log_scale.grad = torch.full((), 0.5)
    value, grad = loss.log_scale.detach().clone(), loss.log_scale.grad
    grad = None if grad is None else grad.clone()  # the sweep zeroes the gradient in place
    lr_find(learn, num_it=20, show_plot=False)
    assert torch.equal(loss.log_scale.detach(), value)
    assert (loss.log_scale.grad is None) if grad is None else torch.equal(loss.log_scale.grad, grad)


class Counter(Callback):
    """A user callback with state: it keeps what it saw during lr_find, as in fastai."""

    order = 5

    def __init__(self) -> None:
        self.fits = 0
        self.batches = 0

    def before_fit(self) -> None:
        self.fits += 1

    def after_batch(self) -> None:
        self.batches += 1


def test_user_callbacks_and_loop_counters_keep_what_the_sweep_left() -> None:
    # fastai 2.8 rolls back neither (its finder only reloads model and optimizer); the numbers are fastai's for
    # the same run: fit_one_cycle(1) on 5 training and 2 validation batches, then lr_find(num_it=12).
    learn = synth_learner(n_train=80, n_valid=32, bs=16)
    counter = Counter()
    learn.add_cb(counter)
    learn.fit_one_cycle(1, 1e-2)
    lr_find(learn, num_it=12, show_plot=False, suggest_funcs=None)
    assert (counter.fits, counter.batches) == (2, 19)  # 7 batches of the fit, the sweep's 12 (no validation)
    assert (learn.n_epoch, learn.epoch, learn.train_iter, learn.training) == (3, 2, 12, True)
    assert learn.pct_train == pytest.approx(0.8)
    assert [type(cb).__name__ for cb in learn.cbs][-1] == "Counter"
    assert not any(isinstance(cb, LRFinder) for cb in learn.cbs)


class Spy(Callback):
    order = 70

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, float]] = []

    def before_batch(self) -> None:
        self.seen.append(("before_batch", self.learn.train_iter, self.learn.opt.hypers[-1]["lr"]))

    def after_fit(self) -> None:
        self.seen.append(("after_fit", self.learn.train_iter, self.learn.opt.hypers[-1]["lr"]))


def test_a_callback_keeps_the_events_it_saw_in_the_sweep() -> None:
    learn = synth_learner(n_train=80, bs=16)
    spy = Spy()
    learn.add_cb(spy)
    lr_find(learn, num_it=12, show_plot=False, suggest_funcs=None)
    lrs = [1e-7 * 1e8 ** (i / 12) for i in range(12)]
    assert spy.seen[:-1] == [("before_batch", i, pytest.approx(lr, rel=1e-12)) for i, lr in enumerate(lrs)]
    assert spy.seen[-1][:2] == ("after_fit", 12)


def test_checkpointed_callback_state_is_put_back() -> None:
    # Callbacks whose state travels in checkpoints (state_dict) are restored: an EMA of the weights is not fed
    # the sweep, a tracker keeps its best value.
    learn = trained_learner()
    ema, early = EMACallback(decay=0.9), EarlyStoppingCallback(patience=3)
    learn.add_cbs([ema, early])
    learn.fit(2)
    averaged, n_updates = [t.clone() for t in ema.averaged], ema.n_updates
    best, wait = early.best, early.wait
    lr_find(learn, num_it=20, show_plot=False, suggest_funcs=None)
    assert ema.n_updates == n_updates
    assert all(torch.equal(a, b) for a, b in zip(ema.averaged, averaged, strict=True))
    assert (early.best, early.wait) == (best, wait)


def test_exception_inside_lr_find_still_restores() -> None:
    learn = trained_learner()
    before_model, before_opt = model_state(learn), copy.deepcopy(learn.opt.state_dict())

    class Boom(Callback):
        def __init__(self) -> None:
            self.calls = 0

        def after_batch(self) -> None:
            self.calls += 1
            if self.learn.train_iter == 5:
                raise RuntimeError("boom")

    boom = Boom()
    learn.add_cb(boom)
    with pytest.raises(RuntimeError, match="boom"):
        lr_find(learn, num_it=30, show_plot=False)
    assert_same_model(learn, before_model)
    assert_same_opt_state(learn.opt.state_dict(), before_opt)
    assert boom.calls == 5  # it keeps what it saw
    assert not any(isinstance(cb, LRFinder) for cb in learn.cbs)


def test_a_callback_sitting_out_a_sweep_that_raises_runs_in_the_next_fit() -> None:
    # A callback that sits out lr_find (run False at its before_fit) gets `run` back from after_fit, which a sweep that
    # raises never reaches: lr_find sets it back itself, or the callback would sit out every later fit.
    learn = trained_learner()

    class SitsOutSideRuns(Callback):
        def __init__(self) -> None:
            self.batches = 0

        def before_fit(self) -> None:
            self.run = not hasattr(self.learn, "lr_finder")

        def after_batch(self) -> None:
            self.batches += 1

    class Boom(Callback):
        def after_batch(self) -> None:
            if hasattr(self.learn, "lr_finder") and self.learn.train_iter == 3:
                raise RuntimeError("boom")

    sits_out = SitsOutSideRuns()
    learn.add_cbs([sits_out, Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        lr_find(learn, num_it=30, show_plot=False)
    assert sits_out.run and sits_out.batches == 0
    learn.fit(1)
    assert sits_out.batches > 0


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_standalone_finder_restores_at_ctrl_c_not_after_another_exception(error: type[BaseException]) -> None:
    # The finder restores in after_fit, which Ctrl-C gets and another exception skips (SPEC, as fastai's loop):
    # lr_find is what restores even then (above). The docs say so.
    learn = trained_learner()
    before_model, before_opt = model_state(learn), copy.deepcopy(learn.opt.state_dict())

    class Boom(Callback):
        def after_batch(self) -> None:
            if self.learn.train_iter == 5:
                raise error("boom")

    with pytest.raises(error):
        learn.fit(3, cbs=[LRFinder(num_it=30), Boom()])
    if error is KeyboardInterrupt:
        assert_same_model(learn, before_model)
        assert_same_opt_state(learn.opt.state_dict(), before_opt)
    else:
        assert not torch.equal(learn.model.weight, before_model["weight"])
        assert learn.opt.hypers[0]["lr"] != before_opt["hypers"][0]["lr"]  # the sweep's last lr


# ------------------------------------------------------------------ suggestions
def test_suggestions_are_named_and_in_range() -> None:
    learn = synth_learner(n_train=64, bs=16)
    res = lr_find(learn, num_it=100, show_plot=False, suggest_funcs=(minimum, steep, valley, slide))
    assert res is not None
    assert res._fields == ("minimum", "steep", "valley", "slide")  # type: ignore[attr-defined]
    lrs = learn.recorder.lrs
    for name, value in zip(res._fields, res, strict=True):  # type: ignore[attr-defined]
        low = min(lrs) / 10 if name == "minimum" else min(lrs)
        assert low <= value <= max(lrs), name
    assert learn.lr_find(show_plot=False)._fields == ("valley",)  # type: ignore[union-attr]


def test_single_function_and_partials_and_suggestion_method() -> None:
    learn = synth_learner(n_train=64, bs=16)
    res = lr_find(learn, show_plot=False, suggest_funcs=SuggestionMethod.Steep)
    assert res is not None and res._fields == ("steep",)  # type: ignore[attr-defined]
    res = lr_find(learn, show_plot=False, suggest_funcs=(functools.partial(slide, lr_diff=10), slide))
    assert res is not None and res._fields == ("slide", "slide_2")  # type: ignore[attr-defined]
    assert lr_find(learn, show_plot=False, suggest_funcs=None) is None


@pytest.mark.parametrize("funcs", [(), []])
def test_no_suggestion_functions_give_an_empty_result_as_fastai(funcs: Any) -> None:
    # fastai returns SuggestedLRs() (an empty named tuple) for suggest_funcs=(); only None gives None.
    res = lr_find(synth_learner(n_train=64, bs=16), num_it=20, show_plot=False, suggest_funcs=funcs)
    assert res is not None and type(res).__name__ == "SuggestedLRs" and tuple(res) == ()


def test_num_it_may_be_a_numpy_integer() -> None:
    # It was refused with "num_it is a number of batches >= 1, got np.int64(20)" (fastai's sweep fails on it).
    learn, reference = synth_learner(n_train=64, bs=16), synth_learner(n_train=64, bs=16)
    res = lr_find(learn, num_it=np.int64(20), show_plot=False)  # type: ignore[arg-type]
    assert res == lr_find(reference, num_it=20, show_plot=False)
    assert learn.recorder.lrs == reference.recorder.lrs and len(learn.recorder.lrs) == 20
    assert LRFinder(num_it=np.int32(3)).num_it == 6
    with pytest.raises(ValueError, match=r"num_it is a number of batches >= 1, got np.int64\(0\)"):
        LRFinder(num_it=np.int64(0))


def test_too_few_points_after_divergence_warns_and_gives_nan() -> None:
    learn = synth_learner(n_train=64, bs=16)
    with pytest.warns(UserWarning) as record:
        res = lr_find(learn, start_lr=1e-2, end_lr=1e30, num_it=100, show_plot=False, suggest_funcs=(valley, slide))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and all(re.search(r"stopped after \d+ of 100 iterations", m) for m in messages)
    assert "valley needs 1, so it suggests nan" in messages[0] and "slide needs 16" in messages[1]
    assert "(the loss diverged)" in messages[0] and "smaller end_lr" in messages[0]
    assert res is not None and math.isnan(res.valley) and math.isnan(res.slide)  # type: ignore[attr-defined]


def test_a_sweep_a_callback_cut_short_says_so_not_that_the_loss_diverged() -> None:
    learn = synth_learner(n_train=64, bs=16)

    class StopEarly(Callback):
        def after_batch(self) -> None:
            if learn.training and learn.train_iter >= 3:
                raise CancelFitException

    learn.add_cb(StopEarly())
    with pytest.warns(UserWarning, match=r"\(a callback stopped the fit, or batches had no target\)") as record:
        res = lr_find(learn, num_it=10, show_plot=False)
    assert "diverged" not in str(record[0].message) and "end_lr" not in str(record[0].message)
    assert res is not None and math.isnan(res.valley)  # type: ignore[attr-defined]


def lrs_for(n: int) -> torch.Tensor:
    return torch.logspace(-5, 0, n, dtype=torch.float64)


def test_valley() -> None:
    lrs = lrs_for(4)
    # longest decreasing run 3 > 1 > 0 ends at index 3 with length 3: counted from 0, two thirds down = 1
    assert valley(lrs, torch.tensor([3.0, 1.0, 2.0, 0.0]), 4) == (float(lrs[1]), (float(lrs[1]), 1.0))
    lrs = lrs_for(10)
    losses = torch.tensor([5.0, 4.0, 3.5, 3.0, 2.0, 1.0, 0.5, 2.0, 9.0, 20.0])  # valley over indices 0..6
    lr, (lr_pt, loss_pt) = valley(lrs, losses, 10)
    assert lr == float(lrs[2]) == lr_pt and loss_pt == 3.5  # start -1, end 6: -1 + int(7/3) + int(7/6) = 2
    assert valley(lrs_for(3), torch.tensor([1.0, 2.0, 3.0]), 3)[0] == float(lrs_for(3)[0])


def test_slide() -> None:
    lrs = lrs_for(25)
    straight = torch.linspace(5, 1, 25)
    assert slide(lrs, straight, 25)[0] == pytest.approx(float(lrs[25 - 1 - 15]))
    bend = torch.tensor([0.0] * 20 + [0.0, 1.0, 4.0, 9.0, 16.0])
    lr, (lr_pt, loss_pt) = slide(lrs, bend, 25)
    assert lr == pytest.approx(float(lrs[5])) and lr_pt == lr and loss_pt == pytest.approx(0.0)
    assert slide(lrs, straight, 25, adjust_value=0.5)[0] == pytest.approx(float(lrs[9]) / 2)
    with pytest.raises(ValueError, match="lr_diff=15"):
        slide(lrs_for(10), torch.zeros(10), 10)


def test_minimum_and_steep() -> None:
    lrs = lrs_for(4)
    assert minimum(lrs, torch.tensor([3.0, 2.0, 1.0, 2.0]), 4) == (float(lrs[2]) / 10, (float(lrs[2]), 1.0))
    # equal log-spacing: the steepest fall (-3 per step) starts at index 1
    assert steep(lrs, torch.tensor([5.0, 4.0, 1.0, 0.5]), 4) == (float(lrs[1]), (float(lrs[1]), 4.0))


def test_min_points() -> None:
    assert min_points(valley) == 1 and min_points(minimum) == 1 and min_points(steep) == 2
    assert min_points(slide) == 16 and min_points(functools.partial(slide, lr_diff=4)) == 5
    assert min_points(functools.partial(slide, lr_diff=0)) == 2  # np.gradient needs 2


@pytest.mark.parametrize(
    ("func", "n", "match"),
    [
        (valley, 0, r"valley needs at least 1 \(lr, loss\) point, got 0"),  # was "max() arg is an empty sequence"
        (minimum, 0, r"minimum needs at least 1 \(lr, loss\) point, got 0"),
        (steep, 1, r"steep needs at least 2 \(lr, loss\) points \(a slope between two\), got 1"),
        (slide, 10, r"slide needs at least 16 \(lr, loss\) points \(one more than lr_diff=15, .*got 10"),
        (functools.partial(slide, lr_diff=0), 1, r"slide needs at least 2 .*got 1"),
    ],
)
def test_too_few_points_is_a_clear_error_of_fastais_type(func: Any, n: int, match: str) -> None:
    # Called directly (lr_find checks before its sweep): fastai's read past the end, an IndexError (numpy's
    # ValueError for slide's gradient); the error is both, with a message saying what is missing.
    with pytest.raises(IndexError, match=match) as info:
        func(lrs_for(n), torch.linspace(1.0, 0.5, n), 100)
    assert isinstance(info.value, ValueError)


def test_suggestions_moved_to_lr_suggest_are_still_importable_from_lr_finder() -> None:
    import learnloop
    from learnloop.callbacks import lr_finder, lr_suggest

    for name in lr_suggest.__all__:
        assert name in lr_finder.__all__ and getattr(lr_finder, name) is getattr(lr_suggest, name), name
    assert lr_finder._suggestion_names is lr_suggest._suggestion_names
    assert learnloop.valley is lr_suggest.valley and learnloop.SuggestionMethod is lr_suggest.SuggestionMethod


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"start_lr": 0.0}, "start_lr and end_lr must be finite and > 0"),
        ({"start_lr": 1e-2, "end_lr": 0.0}, r"start_lr and end_lr must be finite and > 0, got 0.01, 0.0"),
        ({"end_lr": math.inf}, "start_lr and end_lr must be finite"),
        ({"num_it": 5, "suggest_funcs": (steep,)}, "num_it=5 runs 6 batches .* leave 1 point for.*use num_it >= 7"),
        ({"num_it": 6, "suggest_funcs": (steep,)}, "num_it >= 7"),
        ({"num_it": 20, "suggest_funcs": (slide,)}, r"\['slide'\] need 16; use num_it >= 23"),
        ({"num_it": 0, "suggest_funcs": None}, "num_it is a number of batches >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    learn = synth_learner()
    with pytest.raises(ValueError, match=match):
        lr_find(learn, show_plot=False, **kwargs)
    assert learn.recorder.lrs == []  # nothing ran


@pytest.mark.parametrize("num_it", [2.5, "100", None])
def test_a_num_it_that_is_not_a_whole_number_is_fastais_type_error_too(num_it: Any) -> None:
    # fastai's sweep fails with a TypeError ("'float' object cannot be interpreted as an integer"); learnloop's
    # ValueError was not one
    learn = synth_learner()
    with pytest.raises(TypeError, match="num_it is a whole number of batches >= 1"):
        lr_find(learn, num_it=num_it, show_plot=False)
    assert learn.recorder.lrs == []


@pytest.mark.parametrize(("n_train", "num_it"), [(16, 2), (64, 3)])
def test_a_sweep_cut_short_by_tiny_epochs_is_refused_before_it_runs(n_train: int, num_it: int) -> None:
    # 1 batch an epoch and num_it=2: 3 batches; 4 an epoch and num_it=3: 4. Once the last 5 are dropped, valley
    # would get no point at all (fastai raises an IndexError after the sweep).
    learn = synth_learner(n_train=n_train, bs=16)
    with pytest.raises(ValueError, match=r"runs [34] batches .* leave 0 points.*\['valley'\] need 1; use num_it >= 6"):
        lr_find(learn, num_it=num_it, show_plot=False)
    assert learn.recorder.lrs == []


def test_finder_needs_a_recorder() -> None:
    learn = synth_learner(default_cbs=False)
    from learnloop.callbacks.core import TrainEvalCallback

    learn.add_cb(TrainEvalCallback())
    with pytest.raises(ValueError, match="add a Recorder"):
        lr_find(learn, show_plot=False)


@pytest.mark.parametrize("funcs", [("valley",), "valley", 5])
def test_suggest_funcs_that_are_not_functions_are_also_attribute_errors(funcs: Any) -> None:
    # fastai reads each one's __name__: an AttributeError, before or after the sweep; learnloop's is one too.
    learn = synth_learner()
    with pytest.raises(AttributeError, match=r"lr_find: suggest_funcs must be functions like valley or steep"):
        learn.lr_find(suggest_funcs=funcs, show_plot=False)
