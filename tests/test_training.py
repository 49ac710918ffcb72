"""GradientAccumulation, GradientClip, TerminateOnNaNCallback, ShortEpochCallback, BnFreeze; with MixedPrecision."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conftest import EventLog, synth_dls
from learnloop import Callback, DataLoaders, Learner, NonFiniteLossWarning, ProgressCallback, TrainEvalCallback
from learnloop.callback import noop
from learnloop.callbacks.ema import EMACallback
from learnloop.callbacks.fp16 import MixedPrecision
from learnloop.callbacks.steps import schedule_pct
from learnloop.callbacks.training import (
    BnFreeze,
    GradientAccumulation,
    GradientClip,
    ShortEpochCallback,
    TerminateOnNaNCallback,
    batch_size,
    bn_types,
    set_bn_eval,
)
from learnloop.errors import ArgumentError, InputError
from learnloop.events import CancelFitException
from learnloop.optimizer import SGD, Adam


def make_learner(n_train: int = 32, bs: int = 8, model: nn.Module | None = None, **kwargs: Any) -> Learner:
    torch.manual_seed(0)
    model = model if model is not None else nn.Linear(2, 1)
    learn = Learner(synth_dls(n_train=n_train, bs=bs), model, loss_func=nn.MSELoss(), **kwargs)
    learn.logger = noop
    return learn


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))


def weights(learn: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learn.model.parameters()]


class CountSteps(Callback):
    def before_fit(self) -> None:
        self.steps = 0

    def after_step(self) -> None:
        self.steps += 1


# ------------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("opt_func", [SGD, Adam], ids=["SGD", "Adam"])
@pytest.mark.parametrize("acc", [{"n_acc": 32}, {"n_steps": 4}], ids=["n_acc", "n_steps"])
def test_accumulation_matches_one_big_batch(opt_func: Any, acc: dict[str, int]) -> None:
    big = make_learner(bs=32, opt_func=opt_func, lr=0.1)
    big.fit(2)
    small = make_learner(bs=8, opt_func=opt_func, lr=0.1)
    counter = CountSteps()
    small.fit(2, cbs=[GradientAccumulation(**acc), counter])
    assert counter.steps == 2
    for a, b in zip(weights(small), weights(big), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_counts_samples_and_leaves_leftovers_as_fastai() -> None:
    learn = make_learner(n_train=64, bs=8)
    counter, acc = CountSteps(), GradientAccumulation(n_acc=20)
    learn.fit(1, cbs=[counter, acc])
    assert counter.steps == 2  # after 24 and 48 samples; the last 16 never reach 20
    # As fastai: the partial accumulation stays after the fit, counted and in the gradients.
    assert acc.count == 16
    model = learn.model
    assert isinstance(model, nn.Linear) and model.weight.grad is not None
    x, y = learn.dls.train.dataset.tensors  # type: ignore[attr-defined]
    expected = torch.zeros_like(model.weight)
    for xb, yb in ((x[48:56], y[48:56]), (x[56:64], y[56:64])):
        expected += torch.autograd.grad(nn.functional.mse_loss(model(xb), yb) / (20 / 8), model.weight)[0]
    torch.testing.assert_close(model.weight.grad, expected)


def test_accumulation_count_starts_from_zero_each_fit() -> None:
    learn = make_learner(n_train=64, bs=8)
    counter, acc = CountSteps(), GradientAccumulation(n_acc=20)
    learn.fit(1, cbs=[counter, acc])
    assert acc.count == 16
    learn.fit(1, cbs=[counter, acc])
    assert counter.steps == 2  # not 3: the 16 samples left by the first fit are not counted again
    assert acc.count == 16


class LossGradLog(Callback):
    """Records, at every event of a training batch, the event and ``loss_grad`` relative to ``loss``."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.rows: list[tuple[str, float]] = []

    def _log(self, event: str) -> None:
        if self.learn.training:
            self.rows.append((event, round((self.learn.loss_grad / self.learn.loss).item(), 5)))


for _event in ("after_loss", "before_backward", "after_backward", "before_step", "after_step",
               "after_cancel_batch", "after_batch"):
    setattr(LossGradLog, _event, lambda self, _e=_event: self._log(_e))


@pytest.mark.parametrize(
    "order, seen",
    [
        # Before GradientAccumulation (order 6): its before_step on every batch, the scaled loss until then.
        (0, [("after_loss", 1.0), ("before_backward", 0.25), ("after_backward", 0.25), ("before_step", 0.25)]),
        # After it: the scaled loss from after_loss on, no before_step on the batches that do not step.
        (20, [("after_loss", 0.25), ("before_backward", 0.25), ("after_backward", 0.25)]),
    ],
    ids=["before", "after"],
)
def test_accumulation_cancels_at_before_step_and_unscales_loss_grad(order: int, seen: list[tuple[str, float]]) -> None:
    learn = make_learner(n_train=32, bs=8)
    log = LossGradLog(order)
    learn.fit(1, cbs=[GradientAccumulation(n_acc=32), log])
    # Three accumulation batches (cancelled at before_step, loss_grad unscaled again), then one that steps.
    cancelled = [*seen, ("after_cancel_batch", 1.0), ("after_batch", 1.0)]
    stepped = [*seen[:3], ("before_step", 0.25 if order == 0 else 1.0), ("after_step", 1.0), ("after_batch", 1.0)]
    assert log.rows == cancelled * 3 + stepped


def test_accumulation_carries_over_a_validate_run_inside_the_fit() -> None:
    # The validate() fires a before_fit of its own: the count of the accumulation in progress must survive it, as its
    # gradients do, or the next step sums more batches than n_acc samples.
    class ValidateAfterEachEpoch(Callback):
        order = 50

        def __init__(self) -> None:
            self.steps: list[tuple[int, int]] = []

        def after_step(self) -> None:
            self.steps.append((self.learn.epoch, self.learn.iter))

        def after_epoch(self) -> None:
            if not self.learn._nested_run:
                self.learn.validate()

    learn = make_learner(n_train=24, bs=8)  # 3 batches an epoch, a step every 4
    check = ValidateAfterEachEpoch()
    learn.fit(3, cbs=[GradientAccumulation(n_acc=32), check])
    assert check.steps == [(1, 0), (2, 1)]


def test_accumulation_beyond_the_data_never_steps() -> None:
    learn = make_learner(n_train=32, bs=8)
    before = weights(learn)
    learn.fit(2, lr=0.1, cbs=GradientAccumulation(n_acc=1000))
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True))
    assert learn.recorder.values[0][1] == learn.recorder.values[1][1]


class LossProbe(Callback):
    order = 100

    def before_fit(self) -> None:
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def after_loss(self) -> None:
        if self.learn.training:
            self.rows.append((self.learn.loss.clone(), self.learn.pred.detach(), self.learn.yb[0]))


def test_accumulation_logs_the_unscaled_loss() -> None:
    learn = make_learner(bs=8)
    probe = LossProbe()
    learn.fit(1, cbs=[GradientAccumulation(n_acc=32), probe])
    for loss, pred, y in probe.rows:
        torch.testing.assert_close(loss, nn.functional.mse_loss(pred, y))
    assert learn.recorder.losses[0].item() == pytest.approx(probe.rows[0][0].item(), rel=1e-6)


def test_batch_size_of_targets() -> None:
    assert batch_size((torch.zeros(5, 3),)) == 5
    assert batch_size(([torch.zeros(4), torch.zeros(4)],)) == 4
    assert batch_size(([1, 2, 3],)) == 3
    assert batch_size((torch.tensor(2.0),)) == 1


@pytest.mark.parametrize(
    "yb",
    [
        ({"boxes": torch.zeros(4, 3), "labels": torch.zeros(4)},),  # a dict: its first tensor, not its keys
        ({"meta": ["a", "b"], "boxes": torch.zeros(4, 3)},),  # the first tensor, wherever it is
        ([{"labels": torch.zeros(4, 2)}, torch.zeros(7)],),
        (["a", "b"], torch.zeros(4)),  # no tensor in the first target: the next one's
    ],
    ids=["dict", "dict-after-a-list", "list-of-dict", "second-target"],
)
def test_batch_size_finds_the_first_tensor_as_fastais_find_bs(yb: tuple[Any, ...]) -> None:
    assert batch_size(yb) == 4


class DictTargets(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """The regression of `synth_dls` with each target a dict of two tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {"y": self.y[i], "weight": torch.ones(3)}


class DictMSE(nn.Module):
    """MSE against ``target["y"]``, with a ``reduction`` that get_preds(with_loss=True) can set to 'none'."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, pred: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(pred, target["y"], reduction=self.reduction)


def dict_target_learner(bs: int) -> Learner:
    plain = synth_dls(n_train=32, n_valid=8, bs=bs, n_in=3)
    (x, y), (xv, yv) = (plain.train.dataset.tensors, plain.valid.dataset.tensors)  # type: ignore[attr-defined]
    y, yv = y.repeat(1, 3), yv.repeat(1, 3)  # three outputs: a per-item loss has three values to average
    dls = DataLoaders(DataLoader(DictTargets(x, y), batch_size=bs), DataLoader(DictTargets(xv, yv), batch_size=bs),
                      device="cpu")
    torch.manual_seed(0)
    learn = Learner(dls, nn.Linear(3, 3), loss_func=DictMSE(), opt_func=SGD, lr=0.1)
    learn.logger = noop
    return learn


def test_accumulation_counts_the_items_of_dict_targets() -> None:
    # Batches of 4 with n_acc=8: a step every 2 batches, as one batch of 8 (counting the dict's 2 keys, it
    # took 4 batches and divided loss_grad by 4 instead of 2).
    small, big = dict_target_learner(bs=4), dict_target_learner(bs=8)
    counter = CountSteps()
    small.fit(1, cbs=[GradientAccumulation(n_acc=8), counter])
    big.fit(1)
    assert counter.steps == 4
    for a, b in zip(weights(small), weights(big), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_get_preds_losses_per_item_with_dict_targets() -> None:
    learn = dict_target_learner(bs=4)  # GatherPredsCallback reads the batch size of a per-item loss too
    preds, _, losses = learn.get_preds(with_loss=True, with_targs=False)
    targets = learn.dls.valid.dataset.y  # type: ignore[attr-defined]
    assert losses.shape == (8,)  # one per item (counting the dict's keys, it gave 2 per batch of 4)
    torch.testing.assert_close(losses, ((preds - targets) ** 2).mean(1))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"n_acc": 0}, InputError, r"n_acc is a number of samples and must be >= 1 and finite, got 0\."),
        ({"n_acc": -8}, InputError, "n_acc .* must be >= 1"),
        ({"n_acc": math.nan}, InputError, "n_acc is NaN"),
        ({"n_acc": math.inf}, InputError, "n_acc .* finite"),
        ({"n_acc": "32"}, ArgumentError, r"n_acc must be a number \(an int or a float, a numpy scalar or a 0-dim"),
        ({"n_acc": True}, ArgumentError, "n_acc must be a number"),
        ({"n_acc": torch.ones(2)}, ArgumentError, "n_acc must be a number"),
        ({"n_steps": -2}, InputError, "n_steps is a number of batches, a whole number >= 1; got -2"),
        ({"n_steps": 2.5}, ArgumentError, "n_steps is a number of batches, a whole number"),
        ({"n_acc": 32, "n_steps": 4}, ValueError, "not both"),
    ],
)
def test_accumulation_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        GradientAccumulation(**kwargs)


@pytest.mark.parametrize(
    "n_acc, expected",
    [(np.int64(16), 16), (torch.tensor(16), 16), (16.0, 16.0), (np.float32(16.0), 16.0), (torch.tensor(16.0), 16.0)],
    ids=["np.int64", "int-tensor", "float", "np.float32", "float-tensor"],
)
def test_accumulation_takes_numpy_and_torch_scalars(n_acc: Any, expected: float) -> None:
    acc = GradientAccumulation(n_acc=n_acc)
    assert acc.n_acc == expected and type(acc.n_acc) is type(expected)  # an int stays an int
    counter = CountSteps()
    make_learner(n_train=64, bs=8).fit(1, cbs=[acc, counter])
    assert counter.steps == 4
    assert type(GradientAccumulation(n_steps=np.int64(4)).n_steps) is int


def test_accumulation_with_a_fractional_n_acc_as_fastai() -> None:
    counter = CountSteps()
    make_learner(n_train=64, bs=8).fit(1, cbs=[GradientAccumulation(n_acc=12.5), counter])
    assert counter.steps == 4  # after 16 samples each time: 8 < 12.5 <= 16


def test_accumulation_state_dict() -> None:
    acc = GradientAccumulation(n_acc=64)
    learn = make_learner(n_train=32, bs=8)
    learn.add_cb(acc)
    acc.count = 24
    other = GradientAccumulation(n_acc=64)
    other.load_state_dict(acc.state_dict())
    assert other.count == 24


# ------------------------------------------------------------------------------------ clipping
class GradNorms(Callback):
    """Records the gradient norm at before_step, wherever its order puts it."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.norms: list[float] = []

    def before_step(self) -> None:
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_bounds_the_gradient_norm(norm_type: float) -> None:
    learn = make_learner(model=mlp(), lr=0.1)
    after = GradNorms(order=20)
    clip = GradientClip(max_norm=0.05, norm_type=norm_type)
    learn.fit(1, cbs=[clip, after])
    if norm_type == 2.0:
        assert max(after.norms) <= 0.05 * (1 + 1e-4)
    assert clip.total_norm is not None and clip.total_norm.item() > 0.05


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"max_norm": -1.0}, InputError, r"max_norm must be >= 0 \(0 zeroes the gradients\), got -1.0"),
        ({"max_norm": math.nan}, InputError, "max_norm is NaN"),
        ({"max_norm": "1"}, ArgumentError, "max_norm must be a number"),
        ({"norm_type": -2}, InputError, r"norm_type must be >= 0 \(2.0, 1.0, or math.inf\), got -2"),
        ({"norm_type": -math.inf}, InputError, "norm_type must be >= 0"),
        ({"norm_type": math.nan}, InputError, "norm_type is NaN"),
        ({"norm_type": "inf"}, ArgumentError, "norm_type must be a number"),
    ],
)
def test_clip_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        GradientClip(**kwargs)


@pytest.mark.parametrize(
    "max_norm, norm_type, expected",
    [
        (np.float32(0.5), np.int64(2), (0.5, 2)),
        (torch.tensor(0.5), torch.tensor(2.0), (0.5, 2.0)),
        (1, 2, (1, 2)),  # ints stay ints, as fastai keeps what it is given
        (0.5, 0, (0.5, 0)),
        (0.5, 0.0, (0.5, 0.0)),
    ],
    ids=["numpy", "tensor", "ints", "norm_type-0", "norm_type-0.0"],
)
def test_clip_takes_what_fastai_takes(max_norm: Any, norm_type: Any, expected: tuple[float, float]) -> None:
    clip = GradientClip(max_norm=max_norm, norm_type=norm_type)
    assert (clip.max_norm, clip.norm_type) == expected
    assert [type(v) for v in (clip.max_norm, clip.norm_type)] == [type(v) for v in expected]
    learn = make_learner(model=mlp(), lr=0.1)
    after = GradNorms(order=20)
    learn.fit(1, cbs=[clip, after])
    assert clip.total_norm is not None
    if expected[1] == 2:
        assert max(after.norms) <= expected[0] * (1 + 1e-4)
    else:  # torch's 0-"norm": the number of parameters with a non-zero gradient
        assert clip.total_norm.item() == len(list(learn.model.parameters()))


def test_clip_to_zero_zeroes_the_gradients() -> None:
    learn = make_learner(model=mlp(), lr=0.1, opt_func=SGD)
    before, after = GradNorms(order=-50), GradNorms(order=20)
    learn.fit(1, cbs=[GradientClip(max_norm=0), before, after])
    assert min(before.norms) > 0 and after.norms == [0.0] * len(before.norms)
    assert all(torch.equal(a, b) for a, b in zip(weights(learn), weights(make_learner(model=mlp())), strict=True))


class EarlyClip(GradientClip):
    order = 5  # before MixedPrecision: it unscales the gradients itself


@pytest.mark.parametrize("clip_cls", [GradientClip, EarlyClip], ids=["after_mp", "before_mp"])
def test_clip_sees_unscaled_fp16_gradients(clip_cls: type[GradientClip]) -> None:
    learn = make_learner(model=mlp(), cbs=MixedPrecision(init_scale=2.0**10))
    scaled = GradNorms(order=-50)  # before anything touches the gradients
    clip = clip_cls(max_norm=1e-3)
    seen: list[float] = []

    class Record(Callback):
        order = 50

        def before_step(self) -> None:
            assert clip.total_norm is not None
            seen.append(clip.total_norm.item())

    learn.fit(1, cbs=[scaled, clip, Record()])
    assert learn.skipped_steps == 0
    assert seen == pytest.approx([n / 2.0**10 for n in scaled.norms], rel=1e-4)


# --------------------------------------------------------------------------------- terminate
class Poison(Callback):
    order = 5

    def __init__(self, at_iter: int, value: float) -> None:
        self.at_iter, self.value = at_iter, value

    def after_pred(self) -> None:
        if self.learn.training and self.learn.train_iter == self.at_iter:
            self.learn.pred = self.learn.pred * self.value


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_terminate_on_nan(value: float) -> None:
    learn = make_learner(n_train=64, bs=8)
    log = EventLog()
    with pytest.warns(NonFiniteLossWarning) as record:
        learn.fit(3, cbs=[TerminateOnNaNCallback(), Poison(2, value), log])
    assert len(record) == 1 and record[0].filename == __file__  # at the fit call
    assert str(record[0].message).startswith(
        f"TerminateOnNaNCallback: the loss of training batch 2 of epoch 0 is {value}: stopping (CancelFitException). "
        "Lower the learning rate"
    )
    assert learn.train_iter == 3
    # TerminateOnNaN (order -9) raises in after_batch before the log (order 100) sees that event.
    assert log.events[-3:] == ["after_step", "after_cancel_fit", "after_fit"]
    assert "before_validate" not in log.events
    assert learn.recorder.values == []


class PoisonValidation(Callback):
    def after_pred(self) -> None:
        if not self.learn.training:
            self.learn.pred = self.learn.pred * math.nan


def test_terminate_on_nan_checks_validation_batches_in_fit() -> None:
    learn = make_learner(n_train=32, bs=8)
    log = EventLog()
    with pytest.warns(NonFiniteLossWarning, match="the loss of validation batch 0 is nan: stopping"):
        learn.fit(2, cbs=[TerminateOnNaNCallback(), PoisonValidation(), log])
    # The first validation batch ends the fit: no after_validate, after_epoch, nor a second epoch.
    assert log.events[-8:] == [
        "after_batch", "after_train", "before_validate",
        "before_batch", "after_pred", "after_loss", "after_cancel_fit", "after_fit",
    ]
    assert log.events.count("before_epoch") == 1
    assert learn.recorder.values == []


def test_terminate_on_nan_in_validate_reaches_the_caller() -> None:
    learn = make_learner(cbs=[TerminateOnNaNCallback(), PoisonValidation()])
    log = EventLog()
    with pytest.raises(CancelFitException), pytest.warns(NonFiniteLossWarning, match="validation batch 0 is nan"):
        learn.validate(cbs=log)
    assert log.events == [
        "before_fit", "before_epoch", "before_validate",
        "before_batch", "after_pred", "after_loss", "after_epoch", "after_fit",
    ]


def test_terminate_on_nan_with_a_per_item_loss_says_it_holds_non_finite_values() -> None:
    learn = make_learner(cbs=[TerminateOnNaNCallback(), PoisonValidation()])
    learn.loss_func = nn.MSELoss(reduction="none")  # a loss per item: no single number to quote
    with pytest.raises(CancelFitException), pytest.warns(NonFiniteLossWarning) as record:
        learn.validate()
    assert str(record[0].message).startswith(
        "TerminateOnNaNCallback: the loss of validation batch 0 holds NaN or infinite values: stopping")


def test_run_valid_flags_are_fastais() -> None:
    assert (GradientAccumulation.run_valid, GradientClip.run_valid, TerminateOnNaNCallback.run_valid) == (
        False, True, True)


def test_callbacks_run_in_the_order_that_makes_them_correct() -> None:
    learn = make_learner(cbs=[GradientClip(), MixedPrecision(), GradientAccumulation()])
    names = [type(cb).__name__ for cb in learn.sorted_cbs()]
    assert names.index("GradientAccumulation") < names.index("MixedPrecision") < names.index("GradientClip")


def test_terminate_on_nan_lets_finite_training_run() -> None:
    learn = make_learner()
    learn.fit(2, cbs=TerminateOnNaNCallback())
    assert len(learn.recorder.values) == 2


# ------------------------------------------------------------------------------ combination
class InfGradAt(Callback):
    def __init__(self, *iters: int) -> None:
        self.iters = set(iters)

    def after_backward(self) -> None:
        if self.learn.train_iter in self.iters:
            grad = next(self.learn.model.parameters()).grad
            assert grad is not None
            grad.view(-1)[0] = math.inf


class StepProbe(Callback):
    """Counts scaler updates and records the lr of every step attempt and the clock of every batch."""

    order = 9  # before MixedPrecision's before_step, so skipped attempts are seen too

    def before_fit(self) -> None:
        self.updates = 0
        self.attempt_lrs: list[float] = []
        self.attempt_iters: list[int] = []
        self.clock: list[float] = []
        self.losses: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_train(self) -> None:
        scaler = self.learn.scaler  # created by MixedPrecision's before_fit
        if getattr(scaler, "counted", False):
            return
        update = scaler.update

        def counting_update(*args: Any, **kwargs: Any) -> None:
            self.updates += 1
            update(*args, **kwargs)

        scaler.update, scaler.counted = counting_update, True

    def before_batch(self) -> None:
        self.clock.append(schedule_pct(self.learn))

    def after_loss(self) -> None:
        if self.learn.training:
            self.losses.append((self.learn.loss.clone(), nn.functional.mse_loss(self.learn.pred, self.learn.yb[0])))

    def before_step(self) -> None:
        self.attempt_lrs.append(self.learn.opt.hypers[-1]["lr"])
        self.attempt_iters.append(self.learn.train_iter)


def combined_run() -> tuple[Learner, StepProbe, EMACallback, GradNorms, GradientClip]:
    learn = make_learner(n_train=64, bs=8, model=mlp(), opt_func=Adam)  # 8 batches an epoch
    learn.to_fp16(init_scale=2.0**8)
    probe, ema = StepProbe(), EMACallback(decay=0.9)
    scaled, clip = GradNorms(order=-50), GradientClip(max_norm=0.1)
    # Two epochs, one step every 2 batches: 8 attempts; the gradient of batch 6 is poisoned, so the
    # attempt at batch 7 is skipped and batches 6 and 7 are lost.
    learn.fit_one_cycle(2, lr_max=1e-2, cbs=[GradientAccumulation(n_acc=16), clip, ema, probe, scaled, InfGradAt(6)])
    return learn, probe, ema, scaled, clip


def test_fp16_accumulation_clipping_one_cycle() -> None:
    learn, probe, ema, scaled, clip = combined_run()
    assert probe.attempt_iters == [1, 3, 5, 7, 9, 11, 13, 15]
    assert probe.updates == 8  # one scaler.update per step attempt, none on accumulation micro-batches
    assert learn.skipped_steps == 1
    assert ema.n_updates == 7
    assert all(learn.opt.state[p]["step"] == 7 for p in learn.model.parameters())
    # Clipping saw unscaled gradients (scaled.norms: what backward left, i.e. scale * gradient).
    scales = [2.0**8] * 4 + [2.0**7] * 4  # backed off after the skipped attempt
    assert clip.total_norm is not None
    assert clip.total_norm.item() == pytest.approx(scaled.norms[-1] / scales[-1], rel=1e-3)
    # The logged loss is the plain mean squared error, never divided or scaled.
    for loss, reference in probe.losses:
        torch.testing.assert_close(loss, reference)
    # The schedule clock held still over the two lost batches.
    n = 16
    expected = [i / n for i in range(8)] + [(i - 2) / n for i in range(8, 16)]
    train_clock = probe.clock[:8] + probe.clock[10:18]  # two validation batches after epoch 0
    assert train_clock == pytest.approx(expected)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_skipped_step_does_not_advance_one_cycle() -> None:
    _, probe, *_ = combined_run()
    # The attempt at batch 7 was skipped: the next real step (batch 9) gets the lr that attempt had.
    assert probe.attempt_lrs[4] == pytest.approx(probe.attempt_lrs[3])


# ------------------------------------------------------------------------------- short epochs
class BatchLog(Callback):
    order = 100

    def before_fit(self) -> None:
        self.batches: list[tuple[str, int]] = []

    def after_batch(self) -> None:
        self.batches.append(("train" if self.learn.training else "valid", self.learn.iter))


def short_run(cb: ShortEpochCallback, n_epoch: int = 1) -> tuple[Learner, BatchLog, list[str]]:
    learn = make_learner(n_train=80, bs=8)  # 10 training batches, 2 validation batches
    out = io.StringIO()
    learn.logger = print  # make_learner's is silent
    learn.remove_cb(ProgressCallback)
    learn.add_cb(ProgressCallback(bars=False, file=out))  # the table, as printed off a terminal
    log = BatchLog()
    learn.fit(n_epoch, cbs=[cb, log])
    return learn, log, [line.rstrip() for line in out.getvalue().splitlines()]


def test_short_epoch_default_cuts_both_phases_as_fastai() -> None:
    learn, log, printed = short_run(ShortEpochCallback())
    # The phases stop after their batch 1 (1/10 >= 0.01), which the log (order 100) does not see.
    assert log.batches == [("train", 0), ("valid", 0)]
    assert learn.train_iter == 2  # TrainEvalCallback (order -10) counted batch 1; the Recorder (50) did not
    assert len(learn.recorder.lrs) == 1
    assert learn.recorder.values == [[]]  # fastai's empty row for an epoch whose phases were both cut
    assert printed == ["epoch     train_loss  valid_loss  time", "0         00:00"]


def test_short_epoch_keeps_the_whole_validation_unless_short_valid() -> None:
    learn, log, printed = short_run(ShortEpochCallback(pct=0.3, short_valid=False), n_epoch=2)
    assert log.batches == [("train", 0), ("train", 1), ("train", 2), ("valid", 0), ("valid", 1)] * 2
    assert learn.train_iter == 8  # 4 batches an epoch: the one that reached 30% is the last
    values = learn.recorder.values
    assert [len(row) for row in values] == [1, 1]  # the validation loss alone: training was cut
    assert values[1][0] == pytest.approx(learn.validate()[0])  # over the whole validation set
    assert printed[2].startswith("1         ") and printed[2].endswith("00:00")


@pytest.mark.parametrize(
    "pct, exc, match",
    [
        (-0.1, InputError, r"pct is the share of each epoch to run, in \[0, 1\]; got -0.1"),
        (1.5, InputError, r"in \[0, 1\]; got 1.5"),
        (math.nan, InputError, "pct is NaN"),
        ("0.1", ArgumentError, "pct must be a number"),
    ],
)
def test_short_epoch_bad_pct(pct: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        ShortEpochCallback(pct=pct)


def test_short_epoch_defaults_are_fastais() -> None:
    cb = ShortEpochCallback(np.float64(0.5))
    assert (cb.pct, type(cb.pct), cb.short_valid) == (0.5, float, True)
    assert (ShortEpochCallback().pct, ShortEpochCallback().short_valid, ShortEpochCallback.order) == (0.01, True, 0)


class NoLength:
    """An iterable of batches without __len__: the learner's n_iter is 0 over it."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)


@pytest.mark.parametrize("pct, n_run", [(0.01, 1), (0.0, 1), (0.5, 1), (1.0, 2)])
def test_short_epoch_without_a_length_cuts_after_the_first_batch(pct: float, n_run: int) -> None:
    learn = make_learner(n_train=80, bs=8)
    started: list[int] = []
    log = Callback(before_batch=lambda: started.append(learn.iter))
    valid = NoLength(learn.dls.valid)  # 2 batches
    learn.validate(dl=valid, cbs=[ShortEpochCallback(pct=pct), log])  # fastai's: ZeroDivisionError
    assert started == list(range(n_run))
    preds, _ = learn.get_preds(dl=valid, cbs=ShortEpochCallback(pct=pct))
    # The batch that reaches the cut is not gathered (ShortEpochCallback's after_batch comes first), as with a length.
    assert (preds is None) if n_run == 1 else len(preds) == 16


def test_number_checks_are_public_in_errors() -> None:
    from learnloop import errors

    assert {"to_number", "to_whole"} <= set(errors.__all__)
    assert errors.to_number(np.int64(3), "n_acc", "X") == 3 and type(errors.to_number(np.int64(3), "n", "X")) is int
    assert errors.to_number(torch.tensor(0.25), "pct", "X") == 0.25
    assert errors.to_whole(torch.tensor(2), "n_steps", "X", "a number of batches") == 2
    with pytest.raises(ArgumentError, match="X: n must be a number"):
        errors.to_number(np.bool_(True), "n", "X")
    # A string is fastai's ValueError (GradientClip(max_norm='x'): torch's float('x') at the first step), None its
    # TypeError: the error is both.
    for bad in ("x", None):
        with pytest.raises(ValueError, match="max_norm must be a number") as caught:
            GradientClip(max_norm=bad)
        assert isinstance(caught.value, TypeError)
    with pytest.raises(InputError, match="X: n is a count, a whole number >= 1; got 0"):
        errors.to_whole(0, "n", "X", "a count")


# ------------------------------------------------------------------------------ frozen batchnorm
def bn_model() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Sequential(nn.BatchNorm1d(4)),
                         nn.Linear(4, 1))


def bn_learner(train_bn: bool, cbs: list[Callback]) -> Learner:
    def splitter(m: nn.Module) -> list[list[nn.Parameter]]:
        body, head = list(m[0].parameters()) + list(m[1].parameters()), list(m[2:].parameters())
        return [body, head]

    return make_learner(model=bn_model(), splitter=splitter, train_bn=train_bn, cbs=cbs, lr=0.02)


@pytest.mark.parametrize(
    "train_bn, with_cb, frozen_stats_kept",
    [(False, True, True), (False, False, False), (True, True, False)],
    ids=["train_bn=False+BnFreeze", "no BnFreeze", "train_bn=True"],
)
def test_bn_freeze_keeps_the_frozen_statistics(train_bn: bool, with_cb: bool, frozen_stats_kept: bool) -> None:
    learn = bn_learner(train_bn, [BnFreeze()] if with_cb else [])
    learn.freeze()
    body_bn, head_bn = learn.model[1], learn.model[3][0]
    body_mean, head_mean = body_bn.running_mean.clone(), head_bn.running_mean.clone()
    learn.fit(1)
    assert torch.equal(body_mean, body_bn.running_mean) is frozen_stats_kept
    assert not torch.equal(head_mean, head_bn.running_mean)  # the trainable head's BatchNorm keeps learning
    learn.unfreeze()
    learn.fit(1)  # nothing frozen any more: TrainEvalCallback's train mode stands
    assert not torch.equal(body_mean, body_bn.running_mean)


def test_bn_freeze_runs_after_train_eval_whatever_its_order() -> None:
    cb = BnFreeze()
    assert cb.run_after is TrainEvalCallback
    cb.order = -20  # run_after is honoured: it still follows TrainEvalCallback, which sets train mode
    learn = bn_learner(False, [cb])
    learn.freeze()
    names = [type(c).__name__ for c in learn.ordered_cbs("before_train")]
    assert names.index("TrainEvalCallback") < names.index("BnFreeze")
    mean = learn.model[1].running_mean.clone()
    learn.fit(1)
    assert torch.equal(mean, learn.model[1].running_mean)


def test_bn_freeze_takes_event_methods_as_keywords_like_any_callback() -> None:
    seen: list[str] = []
    learn = bn_learner(False, [BnFreeze(after_fit=lambda cb: seen.append(type(cb).__name__))])
    learn.fit(1)
    assert seen == ["BnFreeze"]
    with pytest.raises(TypeError, match="before_bacth"):
        BnFreeze(before_bacth=lambda cb: None)


def test_set_bn_eval() -> None:
    assert bn_types == (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    model = nn.Sequential(nn.Sequential(nn.BatchNorm2d(3)), nn.BatchNorm1d(2), nn.BatchNorm3d(2),
                          nn.BatchNorm1d(2, affine=False), nn.Linear(2, 2))
    for p in [*model[0].parameters(), *model[1].parameters(), *model[4].parameters()]:
        p.requires_grad_(False)
    set_bn_eval(model)
    # The frozen ones, nested or not; not the trainable BatchNorm3d, nor one without parameters, nor the Linear.
    assert [m.training for m in model.modules()] == [True, True, False, False, True, True, True]
    set_bn_eval(model, use_eval=False)  # back in train mode, nested ones too (fastai's recursion drops use_eval)
    assert all(m.training for m in model.modules())
    set_bn_eval(model[1])  # `m` itself is not looked at, as in fastai
    assert model[1].training
