"""MixedPrecision: autocast, the fp16 GradScaler path (skipped steps), and to_fp16/to_bf16/to_fp32."""

from __future__ import annotations

import io
import math
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synth_dls, synth_learner
from learnloop import Callback, CancelBackwardException, CancelBatchException, CancelFitException, Learner
from learnloop.callback import noop
from learnloop.callbacks.ema import EMACallback
from learnloop.callbacks.fp16 import MixedPrecision, to_float32
from learnloop.callbacks.steps import schedule_pct
from learnloop.callbacks.training import GradientAccumulation, GradientClip
from learnloop.errors import ArgumentError, InputError
from learnloop.optimizer import SGD, Adam, OptimWrapper


def autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu")


def mlp_learner(**kwargs: Any) -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    learn = Learner(synth_dls(n_train=64, bs=16), model, loss_func=nn.MSELoss(), **kwargs)
    learn.logger = noop
    return learn


class Probe(Callback):
    """Records, per batch, what the rest of the loop saw."""

    order = 100

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def before_batch(self) -> None:
        self.row: dict[str, Any] = {"training": self.learn.training, "autocast_at_start": autocast_on()}
        self.row["weights_before"] = [p.detach().clone() for p in self.learn.model.parameters()]
        if self.learn.training:
            self.row["schedule_pct"] = schedule_pct(self.learn)

    def after_pred(self) -> None:
        self.row["pred_dtype"] = self.learn.pred.dtype
        self.row["pred"] = self.learn.pred.detach().clone()

    def after_loss(self) -> None:
        self.row["loss"] = self.learn.loss.clone()
        self.row["autocast_after_loss"] = autocast_on()

    def after_backward(self) -> None:
        self.row["loss_grad"] = self.learn.loss_grad.detach().clone()
        scaler = getattr(self.learn, "scaler", None)
        self.row["scale"] = scaler.get_scale() if scaler is not None else 1.0

    def after_batch(self) -> None:
        self.row["weights_after"] = [p.detach().clone() for p in self.learn.model.parameters()]
        self.row["autocast_at_end"] = autocast_on()
        self.row["opt_step_skipped"] = getattr(self.learn, "opt_step_skipped", None)
        self.rows.append(self.row)


class InfGradAt(Callback):
    """Puts an inf in the first parameter's gradient on the given training iterations."""

    def __init__(self, *iters: int) -> None:
        self.iters = set(iters)

    def after_backward(self) -> None:
        if self.learn.train_iter in self.iters:
            grad = next(self.learn.model.parameters()).grad
            assert grad is not None
            grad.view(-1)[0] = math.inf


def train_rows(probe: Probe) -> list[dict[str, Any]]:
    return [r for r in probe.rows if r["training"]]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------- bf16
def test_bf16_autocasts_the_forward_and_gives_float32_preds() -> None:
    learn = mlp_learner(cbs=MixedPrecision("bf16"))
    inner: list[torch.dtype] = []
    first = next(m for m in learn.model.modules() if isinstance(m, nn.Linear))
    first.register_forward_hook(lambda m, i, o: inner.append(o.dtype))
    probe = Probe()
    learn.fit(1, cbs=probe)
    assert inner and set(inner) == {torch.bfloat16}  # training and validation forwards
    assert {r["pred_dtype"] for r in probe.rows} == {torch.float32}
    assert all(r["loss"].dtype == torch.float32 for r in probe.rows)
    assert not any(r["autocast_after_loss"] or r["autocast_at_end"] for r in probe.rows)
    assert learn.mixed_precision.scaler is None  # bf16 needs no loss scaling
    assert train_rows(probe)[0]["loss_grad"].dtype == torch.float32
    assert not autocast_on()
    preds, _ = learn.get_preds()
    assert preds.dtype == torch.float32


def test_to_float32_casts_nested_half_tensors_only() -> None:
    half, bf, dbl = torch.ones(2, dtype=torch.float16), torch.ones(2, dtype=torch.bfloat16), torch.ones(2).double()
    out = to_float32((half, [bf, {"a": dbl}], 3))
    assert out[0].dtype == torch.float32 and out[1][0].dtype == torch.float32
    assert out[1][1]["a"].dtype == torch.float64 and out[2] == 3


# ------------------------------------------------------------------------------------------- fp16
def test_fp16_scales_loss_grad_but_never_the_logged_loss() -> None:
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    probe = Probe()
    learn.fit(1, cbs=probe)
    rows = train_rows(probe)
    y = [b[1] for b in learn.dls.train]
    for row, yb in zip(rows, y, strict=True):
        assert row["pred_dtype"] == torch.float32
        assert torch.allclose(row["loss"], nn.functional.mse_loss(row["pred"], yb))  # unscaled
        assert torch.allclose(row["loss_grad"], row["loss"] * row["scale"], rtol=1e-6)
    assert learn.recorder.losses[0].item() == pytest.approx(rows[0]["loss"].item(), rel=1e-6)
    assert learn.skipped_steps == 0
    assert not any(r["weights_before"][0].equal(r["weights_after"][0]) for r in rows)


@pytest.mark.parametrize(
    "opt_func",
    [Adam, SGD, partial(OptimWrapper, opt=torch.optim.AdamW)],
    ids=["Adam", "SGD", "OptimWrapper(AdamW)"],
)
def test_fp16_inf_gradient_skips_the_step(opt_func: Any) -> None:
    learn = synth_learner(n_train=64, bs=16, opt_func=opt_func, cbs=MixedPrecision(init_scale=2.0**8))
    probe, ema = Probe(), EMACallback(decay=0.5)
    learn.fit(1, cbs=[probe, ema, InfGradAt(1)])
    rows = train_rows(probe)
    assert len(rows) == 4
    assert [r["opt_step_skipped"] for r in rows] == [False, True, False, False]
    assert same(rows[1]["weights_before"], rows[1]["weights_after"])  # the step did not run
    assert not any(same(r["weights_before"], r["weights_after"]) for i, r in enumerate(rows) if i != 1)
    assert learn.skipped_steps == 1
    assert learn.mixed_precision.scaler.get_scale() == 2.0**7  # backed off once, after the skipped attempt
    assert ema.n_updates == 3
    if opt_func is Adam:  # the optimizer's own step counter did not move either
        assert all(learn.opt.state[p]["step"] == 3 for p in learn.model.parameters())
    # The schedule clock holds still over the skipped step: batch 2 gets what batch 1 had.
    assert [r["schedule_pct"] for r in rows] == pytest.approx([0.0, 0.25, 0.25, 0.5])
    # The logged losses are the plain ones, even on the skipped batch.
    assert all(torch.isfinite(r["loss"]) and r["loss"] < 100 for r in rows)
    assert learn.pct_skipped == 0.0  # reset at after_fit: it must not shift a later fit's schedule


def test_a_fit_that_raises_does_not_hold_back_the_next_fits_schedule() -> None:
    # No after_fit on this path: the share of the fit its skipped steps wasted stayed on the learner, and the next
    # fit's schedule (here one without MixedPrecision, which was the failed fit's own) started that far behind.
    learn = synth_learner(n_train=64, bs=16)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[MixedPrecision(init_scale=2.0**8), InfGradAt(0, 1), RaiseAt(RuntimeError("boom"), at_iter=2)])
    assert learn.skipped_steps == 2 and learn.pct_skipped == 0.0
    probe = Probe()
    learn.fit_one_cycle(1, cbs=probe)
    assert [r["schedule_pct"] for r in train_rows(probe)] == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_fp16_natural_overflow_backs_off_the_scale() -> None:
    """With torch's default scale, the first fp16 backward overflows; the scale halves until it fits."""
    learn = mlp_learner(cbs=MixedPrecision(init_scale=2.0**24))
    learn.fit(1)
    scaler = learn.mixed_precision.scaler
    assert learn.skipped_steps >= 1
    assert scaler.get_scale() == 2.0 ** (24 - learn.skipped_steps)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


# -------------------------------------------------------------------------------- autocast exits
class RaiseAt(Callback):
    order = 20  # after MixedPrecision's after_pred

    def __init__(self, exc: type[BaseException] | BaseException, event: str = "after_pred", at_iter: int = 1) -> None:
        self.exc, self.at_iter = exc, at_iter
        setattr(self, event, self._maybe_raise)

    def _maybe_raise(self) -> None:
        if self.learn.training and self.learn.iter == self.at_iter:
            raise self.exc


@pytest.mark.parametrize("event", ["after_pred", "after_loss"])
def test_cancelled_batch_leaves_autocast(event: str) -> None:
    learn = mlp_learner(cbs=MixedPrecision("bf16"))
    probe = Probe()
    learn.fit(1, cbs=[RaiseAt(CancelBatchException, event), probe])
    assert len(train_rows(probe)) == 4
    assert all(r["autocast_at_start"] for r in probe.rows)  # entered by MixedPrecision (order 10 < 100)
    assert not any(r["autocast_at_end"] for r in probe.rows)  # and left, whether the batch was cancelled or not
    assert not autocast_on()


def test_cancelled_fit_leaves_autocast() -> None:
    learn = mlp_learner(cbs=MixedPrecision("fp16"))
    learn.fit(1, cbs=RaiseAt(CancelFitException))
    assert not autocast_on()
    assert learn.scaler is None


@pytest.mark.parametrize("where", ["learner", "fit"])
def test_a_fit_that_raises_leaves_autocast(where: str) -> None:
    # No event fires on this path (as in fastai, whose autocast stays entered): the fit leaves it itself. It stayed
    # for good when the callback was the fit's own (cbs=), and every later forward on the thread ran in bfloat16.
    learn = mlp_learner(cbs=MixedPrecision("bf16") if where == "learner" else None)
    mp = MixedPrecision("bf16") if where == "fit" else None
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[RaiseAt(RuntimeError("boom")), *([mp] if mp else [])])
    assert not autocast_on()
    probe = Probe()
    learn.fit(1, cbs=probe)
    assert [r["autocast_at_start"] for r in probe.rows] == [where == "learner"] * len(probe.rows)
    assert not autocast_on()


@pytest.mark.parametrize("switch", ["to_fp32", "to_bf16", "to_fp16", "to_contiguous"])
def test_switching_precision_after_an_exception_leaves_its_autocast(switch: str) -> None:
    # The callback that entered autocast is removed: no before_fit of it would ever leave it, and every later
    # forward on this thread (an fp32 fit's, a plain model(x)) ran in float16; under to_bf16's autocast it failed.
    learn = mlp_learner(cbs=MixedPrecision("fp16"))
    old = learn.mixed_precision
    try:
        with pytest.raises(RuntimeError, match="boom"):
            learn.fit(1, cbs=RaiseAt(RuntimeError("boom")))
        assert not autocast_on()  # the fit left it
        getattr(learn, switch)(**({"to_fp32": True} if switch == "to_contiguous" else {}))
        assert not autocast_on()
        probe = Probe()
        learn.fit(1, cbs=probe)
        assert [r["autocast_at_start"] for r in probe.rows] == [switch in ("to_bf16", "to_fp16")] * len(probe.rows)
        assert not autocast_on()
    finally:
        old.exit_autocast()
    assert not autocast_on()


@pytest.mark.parametrize("second", ["fp16", "bf16"])
def test_two_mixed_precisions_leave_autocast(second: str) -> None:
    # Both enter their autocast at before_batch and leave it at after_loss, in the same order: the first one left
    # restored "off", then the second restored the "on" it had found, and every later forward on the thread (a plain
    # model(x) too) ran in float16.
    learn = mlp_learner().to_fp16()
    learn.fit(1, cbs=MixedPrecision(second))
    assert not autocast_on()
    learn.add_cb(MixedPrecision(second))
    learn.fit(1)
    assert not autocast_on()
    assert learn.model(torch.ones(1, 2)).dtype == torch.float32


# ---------------------------------------------------------------------------- learner methods
def test_to_fp16_to_bf16_to_fp32() -> None:
    learn = synth_learner()
    assert learn.to_fp16(init_scale=1024.0) is learn
    learn.to_fp16()
    mps = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert len(mps) == 1 and mps[0].amp_mode == "fp16" and learn.mixed_precision is mps[0]
    learn.to_bf16()
    mps = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert len(mps) == 1 and mps[0].amp_mode == "bf16"
    learn.fit(1)
    assert learn.to_fp32() is learn
    assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
    assert not hasattr(learn, "mixed_precision")
    with pytest.raises(ValueError, match="unknown amp_mode 'fp8'"):
        learn.to_fp16(amp_mode="fp8")
    assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"amp_mode": "float16"}, ValueError, "unknown amp_mode 'float16'; use 'fp16'"),
        ({"init_scale": 0.0}, InputError, "init_scale .* must be a finite number > 0"),
        ({"init_scale": math.inf}, InputError, "init_scale .* must be a finite number > 0"),
        ({"init_scale": "65536"}, ArgumentError, "init_scale must be a number"),
        ({"growth_factor": 1.0}, InputError, "growth_factor .* must be > 1"),
        ({"growth_factor": math.nan}, InputError, "growth_factor is NaN"),
        ({"backoff_factor": 1.5}, InputError, r"backoff_factor .* must be in \(0, 1\)"),
        ({"growth_interval": 0}, InputError, "growth_interval is a number of steps, a whole number >= 1; got 0"),
        ({"growth_interval": 2.5}, ArgumentError, "growth_interval is a number of steps, a whole number"),
        ({"growth_interval": "100"}, ArgumentError, "growth_interval must be a number"),
    ],
)
def test_bad_arguments_fail_at_creation(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        MixedPrecision(**kwargs)


def test_numpy_and_torch_scalar_arguments_as_fastai() -> None:
    mp = MixedPrecision(init_scale=np.float32(2.0**8), growth_factor=torch.tensor(4.0), backoff_factor=np.float64(0.25),
                        growth_interval=np.int64(3))
    assert (mp.init_scale, mp.growth_factor, mp.backoff_factor, mp.growth_interval) == (2.0**8, 4.0, 0.25, 3)
    assert type(mp.growth_interval) is int and type(mp.init_scale) is float
    learn = synth_learner(n_train=64, bs=16, cbs=mp)
    learn.fit(1)
    assert mp.scaler is not None and mp.scaler.get_scale() == 2.0**8 * 4  # grew once, after 3 good steps
    assert MixedPrecision(growth_interval=torch.tensor(7)).growth_interval == 7


def test_scaler_state_travels_in_state_dict() -> None:
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    learn.fit(1, cbs=InfGradAt(0, 2))
    state = learn.mixed_precision.state_dict()
    assert state["scaler"]["scale"] == 2.0**6
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = MixedPrecision()
    fresh.load_state_dict(loaded)  # before the scaler exists: applied by the next fit that trains
    assert fresh.state_dict()["scaler"]["scale"] == 2.0**6
    other = synth_learner(cbs=fresh)
    other.fit(1)
    assert fresh.scaler is not None and fresh.scaler.get_scale() == 2.0**6
    fresh.load_state_dict({"scaler": {**loaded["scaler"], "scale": 2.0**3}})  # the scaler exists now
    assert fresh.scaler.get_scale() == 2.0**3 and fresh.state_dict()["scaler"]["scale"] == 2.0**3


def test_each_fit_starts_a_fresh_scaler_unless_state_was_loaded() -> None:
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    learn.fit(1, cbs=InfGradAt(1, 2, 3))  # say lr_find diverged: the scale collapsed
    mp = learn.mixed_precision
    assert mp.scaler.get_scale() == 2.0**5
    state = mp.state_dict()
    learn.fit(1)
    assert mp.scaler.get_scale() == 2.0**8  # fastai's behaviour: the next fit starts at init_scale
    assert learn.skipped_steps == 0  # counted per fit
    mp.load_state_dict(state)  # resuming from a checkpoint: the next fit continues from its scale
    learn.fit(1)
    assert mp.scaler.get_scale() == 2.0**5


# ------------------------------------------------------------------------- fastai's attributes
class ScaleSpy(Callback):
    """At every step that runs (after MixedPrecision's before_step), what learn.scaler says."""

    order = MixedPrecision.order + 1

    def before_fit(self) -> None:
        self.scales: list[float] = []
        self.during: list[Any] = []

    def before_step(self) -> None:
        self.scales.append(self.learn.scaler.get_scale())
        self.during.append((self.learn.mixed_precision.scales, self.learn.mixed_precision.autocast))


class CutAfterUnscale(Callback):
    """Cancels the batch in before_step after an early GradientClip unscaled it, before MixedPrecision's step."""

    order = 7

    def __init__(self, *iters: int) -> None:
        self.iters = set(iters)

    def before_step(self) -> None:
        if self.learn.train_iter in self.iters:
            raise CancelBatchException


class EarlyClip(GradientClip):
    order = 5  # before MixedPrecision: it unscales the gradients itself


@pytest.mark.parametrize(
    "extra",
    [[], [InfGradAt(2, 9)], [EarlyClip(max_norm=10.0), CutAfterUnscale(4, 5, 11)]],
    ids=["growth", "overflows", "cut-after-unscale"],
)
def test_scales_lists_the_loss_scale_of_each_step(extra: list[Callback]) -> None:
    learn = synth_learner(n_train=256, bs=16, cbs=MixedPrecision(init_scale=2.0**8, growth_interval=3))
    spy = ScaleSpy()
    learn.fit(1, cbs=[spy, *extra])
    assert learn.mixed_precision.scales is None  # as fastai's: None after the fit
    scales, mp_autocast = spy.during[-1]
    assert isinstance(mp_autocast, torch.autocast)
    assert scales == spy.scales and len(scales) == 16 - learn.skipped_steps - 3 * (len(extra) == 2)
    assert len(set(scales)) > 2  # the scale grew (and backed off) during the fit
    assert learn.mixed_precision.autocast is None


def test_scales_follow_a_scaler_state_loaded_in_the_fit() -> None:
    learn = synth_learner(n_train=128, bs=16, cbs=MixedPrecision(init_scale=2.0**8, growth_interval=3))
    spy = ScaleSpy()

    class LoadAt(Callback):
        def after_batch(self) -> None:  # as a resumed fit does: another scale, 2 good steps into a growth interval
            if self.learn.train_iter == 2:
                self.learn.mixed_precision.load_state_dict(
                    {"scaler": {"scale": 2.0**4, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3,
                                "_growth_tracker": 2}})

    learn.fit(1, cbs=[spy, LoadAt()])
    assert spy.during[-1][0] == spy.scales == [2.0**8, 2.0**8, 2.0**4, 2.0**5, 2.0**5, 2.0**5, 2.0**6, 2.0**6]


def test_scales_with_accumulation_one_per_step() -> None:
    learn = synth_learner(n_train=128, bs=16, cbs=MixedPrecision(init_scale=2.0**8, growth_interval=2))
    spy = ScaleSpy()
    learn.fit(1, cbs=[spy, GradientAccumulation(n_acc=32)])
    assert spy.during[-1][0] == spy.scales == [2.0**8, 2.0**8, 2.0**9, 2.0**9]


class CancelBackwardAt(Callback):
    """Cancels the backward of the given training iterations, before or after MixedPrecision scales the loss."""

    def __init__(self, order: int, *iters: int) -> None:
        self.order, self.iters = order, set(iters)

    def before_backward(self) -> None:
        if self.learn.training and self.learn.train_iter in self.iters:
            raise CancelBackwardException


@pytest.mark.parametrize("opt_func", [SGD, partial(OptimWrapper, opt=torch.optim.SGD)], ids=["SGD", "OptimWrapper"])
@pytest.mark.parametrize("order", [0, 20], ids=["cancelled-unscaled", "cancelled-scaled"])
@pytest.mark.parametrize("iters", [(0,), (2,), (0, 1, 2, 3)], ids=["first", "third", "all"])
@pytest.mark.parametrize("clip", [False, True], ids=["", "clip"])
def test_a_step_after_cancelled_backwards_runs_as_in_fp32(
    opt_func: Any, order: int, iters: tuple[int, ...], clip: bool
) -> None:
    # The step finds no gradient scaled since the last one, or none at all (the first batch; OptimWrapper drops
    # them after each step): GradScaler had nothing to unscale or check, and failed the fit with an AssertionError.
    mp = MixedPrecision(init_scale=2.0**8, growth_interval=1)
    learn = synth_learner(n_train=64, bs=16, opt_func=opt_func, cbs=mp)
    probe, spy = Probe(), ScaleSpy()
    extra = [GradientClip(max_norm=1e6)] if clip else []  # it unscales the gradients too: once per step
    learn.fit(1, cbs=[probe, spy, CancelBackwardAt(order, *iters), *extra])
    rows = train_rows(probe)
    assert [same(r["weights_before"], r["weights_after"]) for r in rows] == [i in iters for i in range(4)]
    assert learn.skipped_steps == 0
    # Every step ran and is listed. The scaler grows after each step whose gradients it checked: a cancelled
    # backward's step has some only when the loss was scaled and the optimizer keeps zeroed gradients (SGD).
    checked = [
        i not in iters or (order == 20 and opt_func is SGD and any(j not in iters for j in range(i))) for i in range(4)
    ]
    assert spy.during[-1][0] == spy.scales == [2.0 ** (8 + sum(checked[:i])) for i in range(4)]


@pytest.mark.parametrize("kwargs", [{"amp_mode": "bf16"}, {"enabled": False}], ids=["bf16", "disabled"])
def test_without_loss_scaling_learn_scaler_is_a_disabled_grad_scaler(kwargs: dict[str, Any]) -> None:
    mp = MixedPrecision(**kwargs)
    learn = synth_learner(n_train=64, bs=16, cbs=mp)
    seen: list[Any] = []

    class Spy(Callback):
        order = 11

        def before_step(self) -> None:  # as a fastai callback may: the scaler's methods work
            scaler = self.learn.scaler
            seen.append((type(scaler), scaler.is_enabled(), scaler.get_scale(),
                         scaler.scale(self.learn.loss) is self.learn.loss))

    learn.fit(1, cbs=Spy())
    assert seen == [(torch.amp.GradScaler, False, 1.0, True)] * 4
    assert learn.scaler is None and mp.scaler is None  # none after the fit; mp.scaler is fp16's only
    assert mp.kwargs["enabled"] is False


def test_bf16_scales_are_ones() -> None:
    learn = mlp_learner(cbs=MixedPrecision("bf16"))
    spy = ScaleSpy()
    learn.fit(1, cbs=spy)
    assert spy.during[-1][0] == [1.0] * 4


def test_kwargs_are_the_grad_scaler_keywords_read_only() -> None:
    mp = MixedPrecision(init_scale=1024, growth_interval=np.int64(10))
    assert dict(mp.kwargs) == {"init_scale": 1024, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 10,
                               "enabled": True}
    assert type(mp.kwargs["init_scale"]) is int  # kept as given, as fastai keeps it
    with pytest.raises(TypeError):
        mp.kwargs["init_scale"] = 2.0  # type: ignore[index]
    assert MixedPrecision("bf16").kwargs["enabled"] is False
    assert mp.scales is None and mp.autocast is None  # no fit yet


def test_repr_is_the_class_name_as_every_callback() -> None:
    assert repr(MixedPrecision()) == "MixedPrecision" == repr(MixedPrecision("bf16"))
    assert "MixedPrecision," in repr(mlp_learner(cbs=[MixedPrecision(), EMACallback()]))


def test_validate_inside_a_fit_leaves_the_fits_autocast_scaler_and_scales() -> None:
    learn = mlp_learner(cbs=MixedPrecision(init_scale=2.0**8, growth_interval=3))
    spy, probe, seen = ScaleSpy(), Probe(), []

    class ValidateAt(Callback):
        def after_train(self) -> None:
            if self.learn.epoch == 0:
                scaler = self.learn.scaler
                self.learn.validate()  # fastai's MixedPrecision fails at the next batch (its autocast is None)
                mp = self.learn.mixed_precision
                seen.append((self.learn.scaler is scaler is mp.scaler, list(mp.scales), mp.autocast is not None))

    learn.fit(2, cbs=[spy, probe, ValidateAt()])
    assert seen == [(True, [2.0**8] * 3 + [2.0**9], True)]
    assert [r["autocast_at_start"] for r in train_rows(probe)] == [True] * 8  # epoch 1's batches too
    assert spy.during[-1][0] == [2.0**8] * 3 + [2.0**9] * 3 + [2.0**10] * 2  # the same list, growing on
    assert learn.scaler is None and learn.mixed_precision.scales is None


def test_a_validate_in_a_fit_that_never_ended_leaks_into_no_later_fit() -> None:
    # Another callback's before_fit raises inside a validate() called in a fit: that validate's after_fit never
    # fires, nor, the exception leaving the fit, the fit's. The next fit starts from scratch and ends cleared.
    learn = mlp_learner(cbs=MixedPrecision(init_scale=2.0**8))

    class FailsInsideAFit(Callback):
        order = 20  # after MixedPrecision's before_fit

        def before_fit(self) -> None:
            if self.learn._in_fit:
                raise RuntimeError("not now")

    class ValidateOnce(Callback):
        def after_train(self) -> None:
            self.learn.validate(cbs=FailsInsideAFit())

    with pytest.raises(RuntimeError, match="not now"):
        learn.fit(1, cbs=ValidateOnce())
    learn.fit(1)
    mp = learn.mixed_precision
    assert learn.scaler is None and mp.scales is None and mp.autocast is None and learn.pct_skipped == 0.0
    assert not autocast_on()
    learn.validate()
    assert learn.scaler is None and mp.scales is None and mp.autocast is None


def _validate(learn: Learner) -> None:
    learn.validate()


def _get_preds(learn: Learner) -> None:
    learn.get_preds()


def _summary(learn: Learner) -> None:
    learn.summary()


def _empty_fit(learn: Learner) -> None:
    learn.fit(0)


def _lr_find(learn: Learner) -> None:
    learn.lr_find(num_it=5, show_plot=False)  # trains, then puts the callbacks' states back


@pytest.mark.parametrize("between", [_validate, _get_preds, _summary, _empty_fit, _lr_find],
                         ids=["validate", "get_preds", "summary", "fit(0)", "lr_find"])
def test_a_loaded_scaler_state_waits_for_a_fit_that_trains(between: Any) -> None:
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    learn.fit(1, cbs=InfGradAt(1, 2, 3))
    mp = learn.mixed_precision
    state = mp.state_dict()
    assert state["scaler"]["scale"] == 2.0**5
    learn.fit(1)  # a fresh scaler, at init_scale
    mp.load_state_dict(state)  # say from a checkpoint: the next fit that trains resumes from it
    between(learn)  # fires before_fit (and after_fit) but trains nothing
    assert mp.state_dict()["scaler"]["scale"] == 2.0**5  # still waiting
    assert learn.scaler is None
    spy = ScaleSpy()
    learn.fit(1, cbs=spy)
    assert spy.scales[0] == 2.0**5 and mp.scaler.get_scale() == 2.0**5
    learn.fit(1)  # used up: the next fit starts afresh
    assert mp.scaler.get_scale() == 2.0**8


@pytest.mark.parametrize("between", [_validate, _get_preds, _summary], ids=["validate", "get_preds", "summary"])
def test_validate_after_a_fit_leaves_its_scaler_and_state_dict(between: Any) -> None:
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    learn.fit(1, cbs=InfGradAt(1, 2, 3))
    mp = learn.mixed_precision
    scaler = mp.scaler
    between(learn)
    assert mp.scaler is scaler and scaler.get_scale() == 2.0**5  # the last fit's, for a checkpoint written now
    assert mp.state_dict()["scaler"]["scale"] == 2.0**5


def test_learn_scaler_during_validate_outside_a_fit_is_a_fresh_grad_scaler_as_fastais() -> None:
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    learn.fit(1, cbs=InfGradAt(1, 2, 3))
    seen: list[Any] = []
    learn.validate(cbs=Callback(before_validate=lambda: seen.append(learn.scaler.get_scale())))
    assert seen == [2.0**8] and learn.scaler is None


def test_a_scaler_state_loaded_in_a_fit_before_it_trains_is_the_fits() -> None:
    # fit(resume=...) loads a checkpoint taken at an epoch's end right after before_fit, before any before_train.
    learn = synth_learner(n_train=64, bs=16, cbs=MixedPrecision(init_scale=2.0**8))
    learn.fit(1, cbs=InfGradAt(1, 2, 3))
    mp = learn.mixed_precision
    state = mp.state_dict()
    learn.fit(1)
    spy = ScaleSpy()
    seen: list[Any] = []

    class LoadAtFirstEpoch(Callback):
        order = 20

        def before_epoch(self) -> None:
            if self.learn.epoch == 0:
                mp.load_state_dict({**state, "n_accumulated": 0})
                seen.append((mp.scaler is self.learn.scaler, mp.state_dict()["scaler"]["scale"]))

    learn.fit(2, cbs=[spy, LoadAtFirstEpoch()])
    assert seen == [(True, 2.0**5)] and spy.scales[0] == 2.0**5
    learn.fit(1)
    assert mp.scaler.get_scale() == 2.0**8  # the next fit starts afresh


def test_to_fp16_on_a_float16_model_says_what_to_do_before_any_step() -> None:
    # torch's "Attempting to unscale FP16 gradients" came from the GradScaler at the first step.
    learn = synth_learner(n_train=32, bs=16)
    learn.model.half()
    weights = [p.detach().clone() for p in learn.model.parameters()]
    learn.to_fp16()
    with pytest.raises(InputError, match=r"parameters, but the model's are float16 \(weight and 1 more; "
                                         r"model\.half\(\), say\).*Call learn\.model\.float\(\) first"):
        learn.fit(1)
    assert learn.train_iter == 0
    assert all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), weights, strict=True))
    assert len(learn.validate()) == 1  # validating a float16 model is no training: it runs
    learn.model.float()
    learn.fit(1)
    assert learn.train_iter == 2


@pytest.mark.parametrize("leftover", ["accumulation", "cancelled", "raised"])
def test_gradients_left_after_an_fp16_fit_are_in_true_units(leftover: str) -> None:
    # 64 samples in batches of 16 with n_acc=48: the fit's last batch accumulates into a step that never comes; or a
    # fit cancelled after its first backward. The gradients stay on the parameters (fastai's rule), and must be the
    # true ones, not multiplied by the loss scale: a float32 fit after it steps with them (its weights moved by ~70).
    def run(amp: str | None) -> tuple[list[torch.Tensor], float]:
        learn = mlp_learner(opt_func=partial(SGD, mom=0.9))
        cbs: list[Callback] = [MixedPrecision(amp)] if amp else []
        if leftover == "accumulation":
            cbs.append(GradientAccumulation(n_acc=48))
        else:  # a fit that raises runs no after_fit: the next fit's before_fit takes the scale off
            exc = CancelFitException() if leftover == "cancelled" else RuntimeError("stop")
            cbs.append(Callback(after_backward=lambda: (_ for _ in ()).throw(exc)))
        try:
            learn.fit(1, 1e-2, cbs=cbs)
        except RuntimeError:
            assert leftover == "raised"
        if leftover == "raised" and amp:
            learn.add_cb(cbs[0])  # on the learner for the next fit, which finds the scaled gradients
            learn.fit(0)
            learn.remove_cb(cbs[0])
        grads = [p.grad.clone() for p in learn.model.parameters()]
        before = [p.detach().clone() for p in learn.model.parameters()]
        learn.fit(1, 1e-2)  # a float32 fit: its first step takes the gradients left over
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(learn.model.parameters(), before, strict=True))
        return grads, moved

    grads32, moved32 = run(None)
    for amp in ("fp16", "bf16"):
        grads, moved = run(amp)
        for g, g32 in zip(grads, grads32, strict=True):
            if amp == "fp16" and leftover != "accumulation":  # its first backward overflows at 2**16: thrown away
                assert not g.any()
            else:  # the fp16 fit's first step overflowed and was skipped: close to float32's, not equal
                assert float(g.abs().max()) < 2 * float(g32.abs().max()) + 0.01
        assert moved < 2 * moved32 + 0.1


def test_gradients_left_by_an_fp16_fit_join_the_next_fp16_fit_in_its_scale() -> None:
    # Unscaled at the end of the fit (whose scale fell to 2**15 after an overflow), the leftover gradients are scaled
    # again by the next fit's new scaler (2**16) before its first batch: its first step unscales them right.
    learn = mlp_learner(opt_func=partial(SGD, mom=0.9), cbs=GradientAccumulation(n_acc=48))
    learn.to_fp16()
    learn.fit(1, 1e-2)
    assert learn.mixed_precision.scaler.get_scale() == 2.0**15
    left = [p.grad.clone() for p in learn.model.parameters()]
    seen: list[list[torch.Tensor]] = []
    spy = Callback(before_batch=lambda: seen.append([p.grad.clone() for p in learn.model.parameters()]))
    learn.fit(1, 1e-2, cbs=spy)
    for g, first in zip(left, seen[0], strict=True):
        torch.testing.assert_close(first, g * 2.0**16, rtol=0, atol=0)
