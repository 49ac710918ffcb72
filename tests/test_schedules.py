"""Annealers, ParamScheduler and the fit policies (fit_one_cycle, fit_flat_cos, fit_sgdr, fine_tune).

The expected hyper-parameters are written here from the textbook formulas, independently of
learnloop.schedules, and compared with what the optimizer holds at every training step.
"""

from __future__ import annotations

import functools
import math
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synth_dls, synth_learner
from learnloop import Callback, Learner
from learnloop.callback import noop
from learnloop.callbacks.schedule import ParamScheduler, fit_one_cycle, sgdr_epochs
from learnloop.errors import ArgumentError, InputError
from learnloop.optimizer import SGD, Optimizer, OptimWrapper, sgd_step
from learnloop.schedules import (
    SchedCos,
    SchedExp,
    SchedLin,
    SchedNo,
    SchedPoly,
    annealer,
    combine_scheds,
    combined_cos,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_no,
)

approx = functools.partial(pytest.approx, rel=1e-9, abs=1e-15)


# ------------------------------------------------------------------ independent reference formulas
def cos_anneal(a: float, b: float, t: float) -> float:
    """Cosine annealing from a (t=0) to b (t=1)."""
    return b + (a - b) * (1 + math.cos(math.pi * t)) / 2


def f32_segment(p: float, fractions: list[float]) -> tuple[int, float]:
    """(segment, position inside it) of progress p, as fastai's combine_scheds finds them: the bounds are the
    cumulative sum of the fractions as a float32 tensor (torch sums in float64, stores float32); p is compared
    with them, and its position worked out, in float32. Written with numpy's float32 scalars."""
    bounds = np.cumsum(np.array([0.0, *fractions], dtype=np.float32), dtype=np.float64).astype(np.float32)
    p32 = np.float32(p)
    idx = min(int(np.nonzero(p32 >= bounds)[0].max()), len(fractions) - 1)
    return idx, float((p32 - bounds[idx]) / (bounds[idx + 1] - bounds[idx]))


def two_phase(p: float, split: float, a: float, b: float, c: float) -> float:
    """a -> b by cosine over [0, split), then b -> c by cosine over [split, 1] (fastai's float32 positions)."""
    idx, t = f32_segment(p, [split, 1 - split])
    return cos_anneal(a, b, t) if idx == 0 else cos_anneal(b, c, t)


# ------------------------------------------------------------------ annealers
def test_sched_lin() -> None:
    s = SchedLin(0.0, 10.0)
    assert [s(p) for p in (0.0, 0.25, 0.5, 1.0)] == [0.0, 2.5, 5.0, 10.0]


def test_sched_cos() -> None:
    s = SchedCos(1.0, 0.0)
    assert s(0.0) == 1.0 and s(1.0) == 0.0
    assert s(0.5) == approx(0.5)
    assert s(0.25) == approx(cos_anneal(1.0, 0.0, 0.25))
    assert s(0.1) == approx((1 + math.cos(math.pi * 0.1)) / 2)


def test_sched_no() -> None:
    s = SchedNo(3.0, 7.0)
    assert [s(p) for p in (0.0, 0.3, 1.0)] == [3.0, 3.0, 3.0]


def test_sched_exp() -> None:
    s = SchedExp(1e-3, 1e-1)
    assert s(0.0) == approx(1e-3) and s(0.5) == approx(1e-2) and s(1.0) == approx(1e-1)
    assert s(0.3) == approx(1e-3 * 100**0.3)


def test_sched_poly() -> None:
    s = SchedPoly(0.0, 1.0, 2)
    assert [s(p) for p in (0.0, 0.5, 1.0)] == [0.0, 0.25, 1.0]
    s = SchedPoly(2.0, 0.0, 0.5)
    assert s(0.25) == approx(2.0 - 2.0 * 0.5)


def test_scalars_give_floats_arrays_give_arrays() -> None:
    assert type(SchedCos(1, 2)(0.3)) is float
    start, end = np.array([1e-4, 1e-3]), np.array([1e-2, 1e-1])
    for sched in (SchedLin(start, end), SchedCos(start, end), SchedNo(start, end), SchedExp(start, end)):
        out = sched(0.5)
        assert isinstance(out, np.ndarray) and out.shape == (2,)
    np.testing.assert_allclose(SchedLin([0.0, 10.0], [1.0, 20.0])(0.5), [0.5, 15.0])
    np.testing.assert_allclose(SchedExp(start, end)(0.5), np.sqrt(start * end))
    np.testing.assert_allclose(SchedCos(start, 0.0)(1 / 3), [cos_anneal(x, 0.0, 1 / 3) for x in start])


def test_fastai_schedule_functions() -> None:
    # fastai's sched_lin/sched_cos/sched_no/sched_exp: f(start, end, pos), on numbers or arrays as they are.
    assert [sched_lin(0.0, 10.0, p) for p in (0.0, 0.25, 1.0)] == [0.0, 2.5, 10.0]
    assert sched_cos(1.0, 0.0, 0.0) == 1.0 and sched_cos(1.0, 0.0, 1.0) == 0.0
    assert sched_cos(1.0, 0.0, 0.25) == approx(cos_anneal(1.0, 0.0, 0.25))
    assert sched_no(3, 7, 0.4) == 3
    assert sched_exp(1e-3, 1e-1, 0.5) == approx(1e-2)
    np.testing.assert_allclose(sched_lin(np.array([0.0, 10.0]), np.array([1.0, 20.0]), 0.5), [0.5, 15.0])
    for fn, cls in ((sched_lin, SchedLin), (sched_cos, SchedCos), (sched_exp, SchedExp)):
        assert [fn(1e-4, 1e-2, p) for p in (0.1, 0.37, 0.9)] == [cls(1e-4, 1e-2)(p) for p in (0.1, 0.37, 0.9)]


def sched_half(start: float, end: float, pos: float) -> float:
    """A module-level annealing function (so that its annealed schedules pickle)."""
    return start + (end - start) * min(2 * pos, 1.0)


def test_annealer_makes_schedules_from_a_function() -> None:
    maker = annealer(sched_half)
    assert maker.__name__ == "sched_half" and maker.__doc__ == sched_half.__doc__
    sched = maker(2.0, 4.0)
    assert (sched.f, sched.start, sched.end) == (sched_half, 2.0, 4.0)  # type: ignore[attr-defined]
    assert [sched(p) for p in (0.0, 0.25, 0.5, 1.0)] == [2.0, 3.0, 4.0, 4.0]
    assert pickle.loads(pickle.dumps(sched))(0.25) == 3.0
    assert annealer(sched_lin)(0.0, 10.0)(0.3) == sched_lin(0.0, 10.0, 0.3)
    learn = synth_learner(n_train=64, bs=16)
    learn.fit(1, cbs=ParamScheduler({"lr": maker(1e-3, 1e-2)}))
    assert learn.recorder.hps["lr"] == approx([1e-3 + 9e-3 * min(2 * k / 4, 1.0) for k in range(4)])


def test_sched_exp_rejects_zero_start_or_sign_change() -> None:
    # fastai's fails when called (ZeroDivisionError) or gives complex numbers; an InputError is an AssertionError
    with pytest.raises(InputError, match=r"SchedExp\(0.0, 1.0\): .*needs a non-zero start"):
        SchedExp(0.0, 1.0)
    with pytest.raises(InputError, match=r"SchedExp\(-1.0, 1.0\): .*an end of the same sign \(or 0\)"):
        SchedExp(-1.0, 1.0)
    with pytest.raises(InputError, match="same sign"):
        SchedExp(np.array([1.0, 1.0]), np.array([2.0, -2.0]))


def test_sched_exp_towards_zero_as_fastai() -> None:
    # fastai: start * (0 / start) ** pct, i.e. start at pct 0 and 0 after (-0.0 from a negative start)
    assert [SchedExp(1.0, 0.0)(p) for p in (0.0, 0.5, 1.0)] == [1.0, 0.0, 0.0]
    down = [SchedExp(-1.0, 0.0)(p) for p in (0.0, 0.5, 1.0)]
    assert down == [-1.0, 0.0, 0.0] and math.copysign(1.0, down[1]) == -1.0
    assert SchedExp(-1.0, -2.0)(0.5) == approx(-math.sqrt(2))
    arr = SchedExp(np.array([1.0, 2.0]), np.array([0.0, 1.0]))(0.5)
    assert arr.tolist() == approx([0.0, math.sqrt(2)])


def test_combine_scheds() -> None:
    s = combine_scheds([0.3, 0.7], [SchedLin(0.0, 1.0), SchedCos(1.0, 0.0)])
    assert s(0.0) == 0.0
    assert s(0.15) == approx(0.5)
    assert s(0.3) == approx(1.0)
    idx, t = f32_segment(0.3 + 0.7 / 2, [0.3, 0.7])
    assert idx == 1 and t == approx(0.5, rel=1e-7) and s(0.3 + 0.7 / 2) == approx(cos_anneal(1.0, 0.0, t))
    assert s(1.0) == approx(0.0)
    three = combine_scheds([0.25, 0.25, 0.5], [SchedNo(1.0, 1.0), SchedLin(2.0, 3.0), SchedLin(10.0, 20.0)])
    assert [three(p) for p in (0.1, 0.25, 0.375, 0.5, 0.75, 1.0)] == approx([1.0, 2.0, 2.5, 10.0, 15.0, 20.0])


def test_combine_scheds_positions_are_float32_as_fastai() -> None:
    # What fastai 2.8 returns: its segment bounds are a float32 tensor, and the position inside a segment is
    # float32 arithmetic ((pct - lo) / (hi - lo)); the schedule then runs in float64.
    assert combined_cos(0.25, 4e-5, 1e-3, 1e-8)(999 / 1000) == 1.438619689651463e-08
    assert combined_cos(0.3, 2e-4, 1e-3, 1e-8)(998 / 1000) == 3.014095441636333e-08
    assert combined_cos(0.25, 0.95, 0.85, 0.95)(646 / 1000) == 0.9043925687063421
    # On a boundary: float32(1/7) + float32(2/7) rounds above float32(3/7), so pct = 3/7 still ends the second
    # SGDR cycle (lr ~ 0) instead of starting the third (lr_max).
    sgdr = combine_scheds([1 / 7, 2 / 7, 4 / 7], [SchedCos(1e-2, 0.0)] * 3)
    assert sgdr(15 / 35) == 7.875644580934704e-16
    assert sgdr(16 / 35) == approx(1e-2 * (1 + math.cos(math.pi * f32_segment(16 / 35, [1 / 7, 2 / 7, 4 / 7])[1])) / 2)


def test_combine_scheds_empty_segments() -> None:
    # An empty first segment is skipped; an empty last one leaves the previous schedule at its end.
    assert combine_scheds([0.0, 1.0], [SchedLin(5.0, 6.0), SchedLin(0.0, 1.0)])(0.0) == 0.0
    assert combine_scheds([1.0, 0.0], [SchedLin(0.0, 1.0), SchedLin(5.0, 6.0)])(1.0) == 1.0


def test_combine_scheds_bad_input() -> None:
    # InputErrors: ValueErrors, and AssertionErrors as fastai's asserts
    with pytest.raises(AssertionError, match="add up to 1"):
        combine_scheds([0.3, 0.3], [SchedNo(0, 0), SchedNo(0, 0)])
    with pytest.raises(AssertionError, match=">= 0"):
        combine_scheds([1.5, -0.5], [SchedNo(0, 0), SchedNo(0, 0)])
    with pytest.raises(ValueError, match="one fraction per schedule"):
        combine_scheds([1.0], [SchedNo(0, 0), SchedNo(0, 0)])


@pytest.mark.parametrize("pct", [0.25, 0.3, 0.75])
def test_combined_cos(pct: float) -> None:
    s = combined_cos(pct, 1e-4, 1e-2, 1e-7)
    for p in np.linspace(0, 1, 41):
        assert s(float(p)) == approx(two_phase(float(p), pct, 1e-4, 1e-2, 1e-7))
    assert s(0.0) == approx(1e-4) and s(pct) == approx(1e-2) and s(1.0) == approx(1e-7)


def test_combined_cos_over_groups() -> None:
    lr_max = np.array([1e-4, 1e-3, 1e-2])
    s = combined_cos(0.25, lr_max / 25, lr_max, lr_max / 1e5)
    for p in (0.0, 0.1, 0.25, 0.6, 1.0):
        np.testing.assert_allclose(s(p), [two_phase(p, 0.25, x / 25, x, x / 1e5) for x in lr_max], rtol=1e-9)


# ------------------------------------------------------------------ recording what the optimizer holds
class HyperLog(Callback):
    """Records every group's lr (and mom) at before_step, i.e. after ParamScheduler's before_batch."""

    order = 100

    def __init__(self, names: tuple[str, ...] = ("lr", "mom")) -> None:
        self.names = names
        self.values: dict[str, list[list[float]]] = {n: [] for n in names}
        self.requires_grad: list[list[bool]] = []

    def before_fit(self) -> None:
        self.requires_grad.append([p.requires_grad for p in self.learn.model.parameters()])

    def before_step(self) -> None:
        for name in self.names:
            self.values[name].append([float(g[name]) for g in self.learn.opt.param_groups])


def expected_pcts(n_epoch: int, n_batches: int) -> list[float]:
    total = n_epoch * n_batches
    return [k / total for k in range(total)]


def two_layers(model: nn.Module) -> list[list[nn.Parameter]]:
    """A splitter: the first Linear, then the last one (two parameter groups)."""
    assert isinstance(model, nn.Sequential)
    return [list(model[0].parameters()), list(model[2].parameters())]


def two_group_learner(n_train: int = 64, bs: int = 16, **kwargs: Any) -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    learn = Learner(synth_dls(n_train, 16, bs), model, loss_func=nn.MSELoss(), splitter=two_layers, **kwargs)
    learn.logger = noop
    return learn


# ------------------------------------------------------------------ ParamScheduler
def test_param_scheduler_sets_hypers_from_pct_train() -> None:
    learn = synth_learner(n_train=64, bs=16)
    log = HyperLog(("lr",))
    sched = SchedLin(1e-2, 1e-4)
    ps = ParamScheduler({"lr": sched})
    learn.fit(2, cbs=[ps, log])
    assert [v[0] for v in log.values["lr"]] == approx([sched(p) for p in expected_pcts(2, 4)])
    assert ps.hps["lr"] == approx([sched(p) for p in expected_pcts(2, 4)])
    assert learn.recorder.hps["lr"] == ps.hps["lr"]
    assert learn.recorder.lrs == approx(ps.hps["lr"])


def test_param_scheduler_is_silent_during_validation() -> None:
    learn = synth_learner(n_train=32, n_valid=32, bs=16)
    ps = ParamScheduler({"lr": SchedLin(1.0, 2.0)})
    seen: list[float] = []
    learn.fit(1, cbs=[ps, Callback(before_validate=lambda: seen.append(learn.opt.hypers[0]["lr"]))])
    assert len(ps.hps["lr"]) == 2  # training batches only
    assert seen == [ps.hps["lr"][-1]]  # validation did not move the lr


def test_a_learner_with_a_param_scheduler_validates_before_its_first_fit() -> None:
    # No optimizer exists yet: validate() and get_preds() run as fastai's do, instead of failing on `opt.hypers`.
    learn = synth_learner(n_train=32, n_valid=32, bs=16, cbs=ParamScheduler({"lr": SchedLin(1e-2, 1e-3)}))
    assert learn.opt is None
    assert len(learn.validate()) == 1
    preds, _ = learn.get_preds()
    assert preds.shape[0] == 32
    assert learn.recorder.hps == {"lr": []}
    learn.fit(1)
    assert len(learn.recorder.hps["lr"]) == 2


def test_param_scheduler_sets_a_new_hyper_as_fastai_and_a_torch_optimizer_refuses_it() -> None:
    learn = synth_learner()  # a stepper of the user's might read 'noise' from **kwargs: fastai adds it, as here
    with pytest.warns(UserWarning, match=r"schedules 'noise', which no stepper of this optimizer reads \(its "
                      r"hyper-parameters are \['eps', 'lr', 'mom', 'sqr_mom', 'wd'\]\)"):
        learn.fit(1, cbs=ParamScheduler({"noise": SchedLin(0.5, 0.0)}))
    assert learn.recorder.hps["noise"] == [0.5, 0.25] and learn.opt.hypers[0]["noise"] == 0.25
    torch_opt = synth_learner(opt_func=functools.partial(OptimWrapper, opt=torch.optim.SGD))
    with pytest.raises(KeyError, match=r"unknown hyper-parameter 'noise'; valid names: \[.*'lr'"):
        torch_opt.fit(1, cbs=ParamScheduler({"noise": SchedNo(0.5, 0.5)}))  # before any batch
    assert torch_opt.recorder.lrs == []


def noisy_sgd_step(p: torch.Tensor, lr: float, **kwargs: Any) -> None:
    """A stepper of the user's reading a hyper-parameter of its own through **kwargs."""
    assert p.grad is not None
    p.data.add_(p.grad.data, alpha=-lr * (1 + kwargs.get("noise", 0.0)))


def test_param_scheduler_warns_only_when_no_stepper_can_read_the_name() -> None:
    # Built-in steppers read only the arguments they name: a name none of them reads is most likely a mistake.
    # Warned of once: the first fit sets it, so the next one finds it among the optimizer's hyper-parameters.
    learn = synth_learner()
    with pytest.warns(UserWarning, match="'learning_rate', which no stepper of this optimizer reads") as record:
        learn.fit(1, cbs=ParamScheduler({"learning_rate": SchedCos(1e-2, 1e-4)}))
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1, cbs=ParamScheduler({"learning_rate": SchedCos(1e-2, 1e-4)}))
    # A standard name, but not one this optimizer's steppers read (SGD has no eps), and one they read (Adam's).
    with pytest.warns(UserWarning, match="'eps', which no stepper of this optimizer reads"):
        synth_learner(opt_func=SGD).fit(1, cbs=ParamScheduler({"eps": SchedNo(1e-6, 1e-6)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synth_learner().fit(1, cbs=ParamScheduler({"eps": SchedNo(1e-6, 1e-6)}))
    # A name close to one they read: the optimizer's own warning of a likely typo, alone.
    with pytest.warns(UserWarning, match=r"'sqr_mon'.*did you mean 'sqr_mom'\?") as record:
        synth_learner().fit(1, cbs=ParamScheduler({"sqr_mon": SchedNo(0.9, 0.9)}))
    assert not any("ParamScheduler schedules" in str(w.message) for w in record)
    # A stepper of the user's may read any name from its **kwargs: no warning (fastai's behaviour, silently).
    custom = synth_learner(opt_func=lambda params, lr: Optimizer(params, [noisy_sgd_step], lr=lr))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        custom.fit(1, cbs=ParamScheduler({"noise": SchedLin(0.5, 0.0)}))
    assert custom.opt.hypers[0]["noise"] == 0.25


@pytest.mark.parametrize("scheds", [SchedCos(1e-2, 1e-4), [("lr", SchedCos(1e-2, 1e-4))], 0.1])
def test_param_scheduler_takes_a_dict(scheds: Any) -> None:
    # fastai fails at before_fit: "'SchedCos' object has no attribute 'keys'".
    with pytest.raises(ArgumentError, match=r"ParamScheduler takes a dict \{hyper-parameter name: schedule\}, e.g. "
                       r"\{'lr': SchedCos\(1e-3, 1e-5\)\}; got "):
        ParamScheduler(scheds)
    with pytest.raises(TypeError, match=r"Name the hyper-parameter it schedules: ParamScheduler\(\{'lr': schedule"):
        ParamScheduler(SchedCos(1e-2, 1e-4))  # type: ignore[arg-type]


class FastaiStyleSweep(ParamScheduler):
    """Written as fastai's LRFinder is: no super().__init__, its own progress given to `_update_val`."""

    def __init__(self, num_it: int) -> None:
        self.scheds = {"lr": SchedLin(1e-3, 1e-1)}
        self.num_it = num_it

    def before_batch(self) -> None:
        self._update_val(self.train_iter / self.num_it)


def test_a_subclass_ported_from_fastai_calls_update_val() -> None:
    learn = synth_learner(n_train=64, bs=16)
    sweep = FastaiStyleSweep(num_it=8)
    learn.fit(2, cbs=sweep)
    assert sweep.hps["lr"] == approx([SchedLin(1e-3, 1e-1)(i / 8) for i in range(8)])

    class Doubled(ParamScheduler):  # an override of fastai's name is what before_batch runs
        def _update_val(self, pct: float) -> None:
            super()._update_val(pct)
            self.learn.opt.set_hyper("lr", 2 * self.learn.opt.hypers[0]["lr"])

    doubled = Doubled({"lr": SchedNo(1e-2, 1e-2)})
    learn.fit(1, cbs=doubled)
    assert doubled.hps["lr"] == approx([2e-2] * 4)


def test_param_scheduler_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="'lr'.*not a function"):
        ParamScheduler({"lr": 0.1})  # type: ignore[dict-item]


def test_param_scheduler_with_torch_optimizer() -> None:
    opt_func = functools.partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9)
    learn = synth_learner(n_train=64, bs=16, opt_func=opt_func)
    seen: list[tuple[float, float]] = []

    def record() -> None:
        group = learn.opt.opt.param_groups[0]  # torch's own param group
        seen.append((group["lr"], group["momentum"]))

    learn.fit_one_cycle(2, lr_max=0.1, cbs=Callback(before_step=record))
    pcts = expected_pcts(2, 4)
    assert [lr for lr, _ in seen] == approx([two_phase(p, 0.25, 0.1 / 25, 0.1, 0.1 / 1e5) for p in pcts])
    assert [m for _, m in seen] == approx([two_phase(p, 0.25, 0.95, 0.85, 0.95) for p in pcts])


def test_one_cycle_without_momentum_hyper() -> None:
    learn = synth_learner(opt_func=functools.partial(OptimWrapper, opt=torch.optim.Adagrad))
    learn.fit_one_cycle(1, lr_max=0.1)
    assert list(learn.recorder.hps) == ["lr"]
    with pytest.raises(KeyError, match=r"unknown hyper-parameter 'mom'; valid names: \[.*'lr'"):
        learn.fit_one_cycle(1, lr_max=0.1, moms=(0.9, 0.8, 0.9))  # Adagrad has no momentum to schedule
    bare = synth_learner(opt_func=lambda params, lr: Optimizer(params, [sgd_step], lr=lr))
    bare.fit_one_cycle(1)
    assert list(bare.recorder.hps) == ["lr"]


# ------------------------------------------------------------------ fit policies
# An infinite div or div_final starts or ends the lr at 0, as fastai trains it (it was refused as not finite).
@pytest.mark.parametrize("pct_start,div,div_final", [(0.25, 25.0, 1e5), (0.5, 10.0, 100.0), (0.3, math.inf, math.inf)])
def test_fit_one_cycle_lr_and_mom_every_batch(pct_start: float, div: float, div_final: float) -> None:
    learn = synth_learner(n_train=64, bs=16)
    log = HyperLog()
    learn.fit_one_cycle(3, lr_max=1e-2, div=div, div_final=div_final, pct_start=pct_start, cbs=log)
    pcts = expected_pcts(3, 4)
    assert len(log.values["lr"]) == 12
    assert [v[0] for v in log.values["lr"]] == approx([two_phase(p, pct_start, 1e-2 / div, 1e-2, 1e-2 / div_final)
                                                         for p in pcts])
    assert [v[0] for v in log.values["mom"]] == approx([two_phase(p, pct_start, 0.95, 0.85, 0.95) for p in pcts])
    assert learn.recorder.hps["lr"] == approx([v[-1] for v in log.values["lr"]])
    assert learn.recorder.hps["mom"] == approx([v[-1] for v in log.values["mom"]])


def test_fit_one_cycle_defaults_to_learn_lr_and_custom_moms() -> None:
    learn = synth_learner(n_train=32, bs=16, lr=3e-3)
    log = HyperLog()
    learn.fit_one_cycle(2, moms=(0.9, 0.8, 0.7), cbs=log)
    pcts = expected_pcts(2, 2)
    assert [v[0] for v in log.values["lr"]] == approx([two_phase(p, 0.25, 3e-3 / 25, 3e-3, 3e-3 / 1e5) for p in pcts])
    assert [v[0] for v in log.values["mom"]] == approx([two_phase(p, 0.25, 0.9, 0.8, 0.7) for p in pcts])


def test_fit_one_cycle_discriminative_lrs() -> None:
    learn = two_group_learner()
    log = HyperLog()
    learn.fit_one_cycle(2, lr_max=slice(1e-4, 1e-2), cbs=log)
    pcts = expected_pcts(2, 4)
    for group, top in enumerate((1e-4, 1e-2)):
        assert [v[group] for v in log.values["lr"]] == approx([two_phase(p, 0.25, top / 25, top, top / 1e5)
                                                                  for p in pcts])
    assert learn.recorder.hps["lr"] == approx([v[1] for v in log.values["lr"]])
    learn.fit_one_cycle(1, lr_max=[1e-3, 2e-3], cbs=(log2 := HyperLog()))
    assert log2.values["lr"][0] == approx([1e-3 / 25, 2e-3 / 25])


def test_fit_one_cycle_start_epoch_resumes_the_schedule() -> None:
    full, resumed = HyperLog(), HyperLog()
    synth_learner(n_train=32, bs=16).fit_one_cycle(4, lr_max=1e-2, cbs=full)
    synth_learner(n_train=32, bs=16).fit_one_cycle(4, lr_max=1e-2, cbs=resumed, start_epoch=2)
    assert [v[0] for v in resumed.values["lr"]] == approx([v[0] for v in full.values["lr"][4:]])


def test_fit_flat_cos_every_batch() -> None:
    learn = two_group_learner()
    log = HyperLog(("lr",))
    learn.fit_flat_cos(2, lr=slice(1e-3, 1e-2), cbs=log)
    pcts = expected_pcts(2, 4)
    for group, lr in enumerate((1e-3, 1e-2)):
        assert [v[group] for v in log.values["lr"]] == approx([two_phase(p, 0.75, lr, lr, lr / 1e5) for p in pcts])
    assert list(learn.recorder.hps) == ["lr"]


def sgdr_reference(p: float, lr: float, n_cycles: int, cycle_len: int, cycle_mult: int, n_epoch: int) -> float:
    """The lr of SGDR at progress p: cycle i is the fraction cycle_len * cycle_mult**i / n_epoch of training,
    found as fastai does (float32 bounds); the lr anneals from lr to 0 inside it."""
    _, t = f32_segment(p, [cycle_len * cycle_mult**i / n_epoch for i in range(n_cycles)])
    return cos_anneal(lr, 0.0, t)


@pytest.mark.parametrize("n_cycles,cycle_len,cycle_mult,n_epoch", [(3, 1, 2, 7), (2, 2, 3, 8), (3, 1, 1, 3)])
def test_fit_sgdr_every_batch(n_cycles: int, cycle_len: int, cycle_mult: int, n_epoch: int) -> None:
    assert sgdr_epochs(n_cycles, cycle_len, cycle_mult) == n_epoch
    learn = synth_learner(n_train=32, bs=16)
    log = HyperLog(("lr",))
    learn.fit_sgdr(n_cycles, cycle_len, lr_max=1e-2, cycle_mult=cycle_mult, cbs=log)
    assert len(learn.recorder.values) == n_epoch
    pcts = expected_pcts(n_epoch, 2)
    assert [v[0] for v in log.values["lr"]] == approx(
        [sgdr_reference(p, 1e-2, n_cycles, cycle_len, cycle_mult, n_epoch) for p in pcts]
    )
    restarts = [i for i in range(1, len(pcts)) if log.values["lr"][i][0] > log.values["lr"][i - 1][0]]
    assert len(restarts) == n_cycles - 1


def test_fit_sgdr_cycle_boundary_as_fastai() -> None:
    # fit_sgdr(3, 1) with 5 batches an epoch: the batch at train_iter 15 (pct 3/7) still ends the second cycle in
    # fastai (float32 bounds), and the restart comes one batch later. The lrs fastai 2.8 records for batches 13-16:
    learn = synth_learner(n_train=80, bs=16)
    learn.fit_sgdr(3, 1, lr_max=1e-2)
    assert learn.recorder.hps["lr"][13:17] == [
        0.0009549160187091801,
        0.00024471840222200364,
        7.875644580934704e-16,
        0.009938441829301271,
    ]


def test_fit_sgdr_takes_numpy_integers_as_fastai() -> None:
    # fastai's arithmetic takes them (n_cycles from np.arange, say); they were refused as not whole numbers.
    learn, reference = synth_learner(n_train=32, bs=16), synth_learner(n_train=32, bs=16)
    learn.fit_sgdr(np.int64(2), np.int32(1), lr_max=1e-2, cycle_mult=np.int64(2))  # type: ignore[arg-type]
    reference.fit_sgdr(2, 1, lr_max=1e-2, cycle_mult=2)
    assert learn.n_epoch == 3 and type(learn.n_epoch) is int
    assert learn.recorder.hps == reference.recorder.hps
    with pytest.raises(InputError, match=r"n_cycles must be a whole number >= 1, got np.int64\(0\)"):
        learn.fit_sgdr(np.int64(0), 1)  # type: ignore[arg-type]


def test_fine_tune_freezes_then_unfreezes() -> None:
    learn = two_group_learner()
    log = HyperLog()
    learn.fine_tune(2, base_lr=2e-3, freeze_epochs=1, cbs=log)
    frozen, unfrozen = log.requires_grad
    assert frozen == [False, False, True, True]  # first Linear frozen, last trainable
    assert unfrozen == [True] * 4
    lrs = log.values["lr"]
    assert len(lrs) == 4 + 8
    first = expected_pcts(1, 4)
    for group, top in enumerate((2e-4, 2e-3)):  # slice(base_lr): base_lr/10 for all groups but the last
        assert [v[group] for v in lrs[:4]] == approx([two_phase(p, 0.99, top / 25, top, top / 1e5) for p in first])
    second = expected_pcts(2, 4)
    for group, top in enumerate((1e-3 / 100, 1e-3)):  # base_lr halved, spread over lr_mult
        assert [v[group] for v in lrs[4:]] == approx([two_phase(p, 0.3, top / 5, top, top / 1e5) for p in second])


def test_fine_tune_passes_kwargs_to_fit_one_cycle() -> None:
    learn = two_group_learner()
    log = HyperLog()
    learn.fine_tune(1, freeze_epochs=1, moms=(0.9, 0.8, 0.9), div_final=10.0, cbs=log)
    assert log.values["mom"][0] == approx([0.9, 0.9])
    assert log.values["lr"][-1][1] == approx(two_phase(3 / 4, 0.3, 1e-3 / 5, 1e-3, 1e-3 / 10))
    # As in fastai, what follows `div` is keyword-only: a seventh positional argument is refused, not misread.
    with pytest.raises(TypeError, match="positional"):
        learn.fine_tune(1, 1e-3, 1, 100, 0.3, 5.0, "latest")  # type: ignore[misc]


def test_fine_tune_gives_a_generator_of_callbacks_to_both_fits() -> None:
    # Its argument checks read `cbs` before the fits: a generator must reach both fits still (fastai's two fits run
    # them: the first adds them, and they stay on the learner).
    learn = two_group_learner()
    log = HyperLog()
    learn.fine_tune(1, freeze_epochs=1, cbs=(cb for cb in [log]))
    assert len(log.values["lr"]) == 4 + 4
    assert log not in learn.cbs


# ------------------------------------------------------------------ bad input
Policy = Callable[[Learner], None]
BAD: list[tuple[str, Policy, str]] = [
    ("pct_start>1", lambda l: l.fit_one_cycle(1, pct_start=1.5), "pct_start.*1.5"),
    ("pct_start<0", lambda l: l.fit_one_cycle(1, pct_start=-0.1), "pct_start"),
    ("pct_start nan", lambda l: l.fit_one_cycle(1, pct_start=float("nan")), "pct_start"),
    ("div=0", lambda l: l.fit_one_cycle(1, div=0), "div .*> 0"),
    ("div_final<0", lambda l: l.fit_one_cycle(1, div_final=-1.0), "div_final.*> 0"),
    ("moms len", lambda l: l.fit_one_cycle(1, moms=(0.9, 0.8)), "moms"),
    ("lr nan", lambda l: l.fit_one_cycle(1, lr_max=float("nan")), "lr_max"),
    ("flat pct", lambda l: l.fit_flat_cos(1, pct_start=2.0), "pct_start"),
    ("flat div_final", lambda l: l.fit_flat_cos(1, div_final=0.0), "div_final"),
    ("sgdr cycles", lambda l: l.fit_sgdr(0, 1), "n_cycles"),
    ("sgdr mult", lambda l: l.fit_sgdr(2, 1, cycle_mult=0), "cycle_mult"),
    ("fine_tune pct", lambda l: l.fine_tune(1, pct_start=3.0), "pct_start"),
    ("fine_tune div", lambda l: l.fine_tune(1, div=-5.0), "div"),
    ("div nan", lambda l: l.fit_one_cycle(1, div=float("nan")), "div .*> 0"),
    ("fine_tune lr_mult inf", lambda l: l.fine_tune(1, lr_mult=math.inf), "lr_mult .*a finite number > 0"),
]


@pytest.mark.parametrize("policy,match", [(p, m) for _, p, m in BAD], ids=[n for n, _, _ in BAD])
def test_bad_policy_arguments(policy: Policy, match: str) -> None:
    learn = synth_learner()
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=match):
        policy(learn)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))


@pytest.mark.parametrize("moms", [0.9, "abc", None])
def test_moms_that_is_not_a_sequence_is_a_type_error(moms: Any) -> None:
    # fastai: "argument after * must be an iterable, not float".
    learn = synth_learner()
    before = [p.detach().clone() for p in learn.model.parameters()]
    match = r"fit_one_cycle: moms must be a sequence of 3 momentums \(start, middle, end\), e.g. \(0.95, 0.85, 0.95\)"
    if moms is None:  # the learner's own, used when fit_one_cycle gets none
        learn.moms, match = 0.9, match.replace("moms", "learn.moms", 1)  # type: ignore[assignment]
    with pytest.raises(ArgumentError, match=match):
        learn.fit_one_cycle(1, moms=moms)
    with pytest.raises(TypeError, match=match):
        learn.fine_tune(1, moms=moms)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))


BAD_FRACTIONS: list[tuple[str, Policy, str]] = [
    ("one_cycle pct>1", lambda l: l.fit_one_cycle(1, pct_start=1.5), "pct_start.*in \\[0, 1\\]; got 1.5"),
    ("flat pct<0", lambda l: l.fit_flat_cos(1, pct_start=-0.5), "pct_start.*in \\[0, 1\\]; got -0.5"),
    ("fine_tune pct", lambda l: l.fine_tune(1, pct_start=3.0), "pct_start.*got 3.0"),
    ("sgdr cycle_len", lambda l: l.fit_sgdr(2, 1.5), "cycle_len must be a whole number >= 1, got 1.5"),  # type: ignore[arg-type]
    ("sgdr cycles", lambda l: l.fit_sgdr(0, 1), "n_cycles must be a whole number >= 1, got 0"),
]


@pytest.mark.parametrize("policy,match", [(p, m) for _, p, m in BAD_FRACTIONS], ids=[n for n, _, _ in BAD_FRACTIONS])
def test_bad_fractions_are_assertion_errors_as_in_fastai(policy: Policy, match: str) -> None:
    # fastai's combine_scheds asserts on the fractions these give: code catching AssertionError still works.
    with pytest.raises(AssertionError, match=match) as info:
        policy(synth_learner())
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("args", [("2", 1), (1.5, 1), (2, "1"), (2, 1, 1.5)])
def test_fit_sgdr_lengths_that_are_not_whole_numbers_are_also_type_errors(args: tuple[Any, ...]) -> None:
    # fastai's arithmetic fails on a string or a fractional n_cycles with a TypeError (its combine_scheds asserts on
    # a fractional cycle_len or cycle_mult): the error is both, and a ValueError.
    name = ("n_cycles", "cycle_len", "cycle_mult")[next(i for i, a in enumerate(args) if a not in (1, 2))]
    with pytest.raises(TypeError, match=rf"fit_sgdr: {name} must be a whole number >= 1") as info:
        synth_learner().fit_sgdr(*args[:2], cycle_mult=args[2] if len(args) > 2 else 2)
    assert isinstance(info.value, (InputError, AssertionError))


def test_pct_start_end_points_are_allowed() -> None:
    # fastai accepts them: pct_start=0 is a pure cosine annealing.
    learn = synth_learner(n_train=32, bs=16)
    log = HyperLog(("lr",))
    fit_one_cycle(learn, 1, lr_max=1e-2, pct_start=0.0, cbs=log)
    assert [v[0] for v in log.values["lr"]] == approx([cos_anneal(1e-2, 1e-7, p) for p in (0.0, 0.5)])


def test_policies_work_with_learnloop_sgd() -> None:
    learn = synth_learner(opt_func=SGD)
    learn.fit_one_cycle(1, lr_max=0.05)
    assert set(learn.recorder.hps) == {"lr", "mom"}


@pytest.mark.parametrize(("make", "match"), [
    (lambda: SchedCos("a", 1), r"SchedCos: start must be a number \(or one per parameter group\), got 'a'"),
    (lambda: SchedLin(1, ["0.1", 0.2]), r"SchedLin: end must be a number .*got \['0.1', 0.2\]"),
    (lambda: SchedExp(1, None), r"SchedExp: end must be a number .*got None"),
    (lambda: SchedPoly(1, 0, power="x"), r"SchedPoly: power must be a number .*got 'x'"),
    (lambda: combine_scheds("ab", [SchedCos(1, 0), SchedCos(0, 1)]), r"combine_scheds: pcts must be numbers .*'ab'"),
])
def test_schedule_values_that_are_not_numbers_are_type_errors_with_a_sentence(make: Callable[[], Any],
                                                                               match: str) -> None:
    # fastai's fail with a TypeError when called (numpy's "could not convert string to float" here before).
    with pytest.raises(ArgumentError, match=match):
        make()


def test_one_cycle_schedules_a_mom_a_partial_binds() -> None:
    # fastai's fit_one_cycle sets mom on every optimizer: with partial(average_grad, mom=0.5) the schedule's value
    # replaces the partial's (the call's keywords win). The optimizer holds no mom hyper-parameter (as in fastai).
    from learnloop.optimizer import average_grad, momentum_step

    cbs = [functools.partial(average_grad, mom=0.5), momentum_step]
    learn = synth_learner(opt_func=lambda params, lr: Optimizer(params, cbs, lr=lr))
    learn.create_opt()
    assert learn.opt is not None and "mom" not in learn.opt.hypers[0]
    learn.fit_one_cycle(1, lr_max=0.1)
    assert list(learn.recorder.hps) == ["lr", "mom"]
    assert learn.recorder.hps["mom"][0] == approx(0.95, abs=0.01)
