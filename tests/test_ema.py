"""EMACallback: the average itself, real steps only, swapping for validation (and back on every path)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synth_dls
from learnloop import Callback, CancelStepException, CancelValidException, Learner
from learnloop.callback import noop
from learnloop.callbacks.ema import EMACallback
from learnloop.callbacks.training import GradientAccumulation
from learnloop.data import DataLoaders
from learnloop.optimizer import SGD


def make_learner(model: nn.Module | None = None, n_train: int = 64, bs: int = 16, **kwargs: Any) -> Learner:
    torch.manual_seed(0)
    model = model if model is not None else nn.Linear(2, 1)
    learn = Learner(synth_dls(n_train=n_train, bs=bs), model, loss_func=nn.MSELoss(), opt_func=SGD, lr=0.1, **kwargs)
    learn.logger = noop
    return learn


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class Track(Callback):
    """Training weights after each step, weights seen during validation and at phase boundaries."""

    order = 100

    def __init__(self) -> None:
        self.after_steps: list[list[torch.Tensor]] = []
        self.in_validation: list[list[torch.Tensor]] = []
        self.at_before_train: list[list[torch.Tensor]] = []
        self.at_after_validate: list[list[torch.Tensor]] = []

    def after_step(self) -> None:
        self.after_steps.append(weights(self.learn.model))

    def before_train(self) -> None:
        self.at_before_train.append(weights(self.learn.model))

    def before_batch(self) -> None:
        if not self.learn.training:
            self.in_validation.append(weights(self.learn.model))

    def after_validate(self) -> None:
        self.at_after_validate.append(weights(self.learn.model))


@pytest.mark.parametrize("decay", [np.float32(0.9), np.float64(0.5), torch.tensor(0.99)])
def test_decay_as_a_numpy_or_tensor_number(decay: Any) -> None:
    # Refused with "decay must be a number in (0, 1)", which it is; the other callbacks take such numbers.
    assert EMACallback(decay=decay).decay == pytest.approx(float(decay))


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, np.True_, "0.9", float("nan"), torch.tensor([0.9])])
def test_decay_outside_open_unit_interval(decay: Any) -> None:
    with pytest.raises(ValueError, match=r"decay must be a number in \(0, 1\)"):
        EMACallback(decay=decay)


def test_average_matches_the_formula() -> None:
    learn = make_learner()
    start = weights(learn.model)
    ema, track = EMACallback(decay=0.8), Track()
    learn.fit(2, cbs=[ema, track])
    expected = start
    for w in track.after_steps:
        expected = [0.8 * e + 0.2 * x for e, x in zip(expected, w, strict=True)]
    assert ema.n_updates == len(track.after_steps) == 8
    for got, want in zip(ema.averaged, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_validation_uses_the_average_and_training_weights_come_back() -> None:
    learn = make_learner()
    ema, track = EMACallback(decay=0.5), Track()
    learn.add_cbs([ema, track])  # on the learner, not only for the fit: validate() below uses it too
    learn.fit(2)
    # Epoch 0 ends after 4 steps: validation saw the average, after_validate the training weights again.
    assert not same(track.in_validation[0], track.after_steps[3])
    assert same(track.at_after_validate[0], track.after_steps[3])
    assert same(track.at_before_train[1], track.after_steps[3])
    assert same(weights(learn.model), track.after_steps[-1])  # training weights after fit
    assert not ema.swapped
    # The recorded valid loss is the average's.
    xv, yv = learn.dls.valid.dataset.tensors
    w, b = ema.averaged
    ema_loss = nn.functional.mse_loss(xv @ w.T + b, yv).item()
    assert learn.recorder.values[-1][1] == pytest.approx(ema_loss, rel=1e-5)
    # validate() and get_preds() outside fit use the average too, and give the model back.
    assert learn.validate()[0] == pytest.approx(ema_loss, rel=1e-5)
    preds, _ = learn.get_preds()
    torch.testing.assert_close(preds, xv @ w.T + b)
    assert same(weights(learn.model), track.after_steps[-1])


class CancelValidation(Callback):
    def after_pred(self) -> None:
        if not self.learn.training:
            raise CancelValidException


def test_cancelled_validation_restores_training_weights() -> None:
    learn = make_learner()
    ema, track = EMACallback(decay=0.5), Track()
    learn.fit(2, cbs=[ema, track, CancelValidation()])
    assert same(track.at_before_train[1], track.after_steps[3])
    assert same(weights(learn.model), track.after_steps[-1])


class FailValidation(Callback):
    def after_pred(self) -> None:
        if not self.learn.training:
            raise RuntimeError("validation broke")


def test_exception_in_validation_keeps_training_weights_recoverable() -> None:
    learn = make_learner()
    ema, track = EMACallback(decay=0.5), Track()
    learn.add_cbs([ema, track])
    failing = FailValidation()
    with pytest.raises(RuntimeError, match="validation broke"):
        learn.fit(1, cbs=failing)
    assert ema.swapped  # no event fired on the way out: the average is still in the model
    ema.restore_training_weights()
    assert not ema.swapped and same(weights(learn.model), track.after_steps[-1])
    # The next fit also restores them by itself at before_fit.
    with pytest.raises(RuntimeError):
        learn.fit(1, cbs=failing)
    last = track.after_steps[-1]
    learn.fit(1)
    assert same(track.at_before_train[-1], last)


class CancelStepAt(Callback):
    order = 20

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter

    def before_step(self) -> None:
        if self.learn.train_iter == self.at_iter:
            raise CancelStepException


def test_cancelled_step_does_not_update_the_average() -> None:
    learn = make_learner()
    ema = EMACallback(decay=0.5)
    seen: list[list[torch.Tensor]] = []

    class Snap(Callback):
        order = 100

        def after_batch(self) -> None:
            if self.learn.training:
                seen.append([t.clone() for t in ema.averaged])

    learn.fit(1, cbs=[ema, CancelStepAt(1), Snap()])
    assert ema.n_updates == 3
    assert same(seen[0], seen[1]) and not same(seen[1], seen[2])


def test_accumulation_micro_batches_do_not_update_the_average() -> None:
    learn = make_learner(n_train=64, bs=8)
    ema = EMACallback()
    learn.fit(1, cbs=[ema, GradientAccumulation(n_acc=32)])
    assert ema.n_updates == 2


def test_state_dict_round_trip() -> None:
    learn = make_learner()
    ema = EMACallback(decay=0.7)
    learn.fit(1, cbs=ema)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = EMACallback(decay=0.7)
    fresh.load_state_dict(state)  # no learner yet: applied at before_fit
    other = make_learner()
    other.add_cb(fresh)
    other.validate()
    assert fresh.n_updates == 4
    assert same(fresh.averaged, ema.averaged)
    attached = EMACallback(decay=0.7)
    other.add_cb(attached)
    attached.load_state_dict(state)  # on a learner: checked and applied at once
    assert same(attached.averaged, ema.averaged)


def test_state_from_another_model_is_refused() -> None:
    learn = make_learner()
    ema = EMACallback()
    learn.fit(1, cbs=ema)
    bigger = make_learner(model=nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1)))
    fresh = EMACallback()
    bigger.add_cb(fresh)
    with pytest.raises(ValueError, match="was it saved from another model"):
        fresh.load_state_dict(ema.state_dict())


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


@pytest.mark.parametrize("ema_buffers", [True, False])
def test_buffers_option(ema_buffers: bool) -> None:
    learn = make_learner(model=bn_model())
    bn = next(m for m in learn.model.modules() if isinstance(m, nn.BatchNorm1d))
    assert bn.running_mean is not None
    running_mean: torch.Tensor = bn.running_mean  # updated in place, so this stays the live buffer
    ema, track = EMACallback(decay=0.5, ema_buffers=ema_buffers), Track()
    running: list[torch.Tensor] = []

    class Buffers(Callback):
        order = 100

        def after_step(self) -> None:
            running.append(running_mean.clone())

        def before_batch(self) -> None:
            if not self.learn.training:
                running.append(running_mean.clone())

    learn.fit(1, cbs=[ema, track, Buffers()])
    in_validation, training = running[-1], running[-2]
    if ema_buffers:
        assert len(ema.averaged) == 6 + 2  # params, then running_mean and running_var
        torch.testing.assert_close(in_validation, ema.averaged[6])
        assert not torch.equal(in_validation, training)
    else:
        assert len(ema.averaged) == 6
        assert torch.equal(in_validation, training)
    assert torch.equal(running_mean, training)  # training statistics back after fit


def test_replace_weights_at_the_end() -> None:
    learn = make_learner()
    ema = EMACallback(decay=0.5, replace_weights=True)
    learn.fit(1, cbs=ema)
    assert same(weights(learn.model), ema.averaged)


def test_no_validation_swap_when_asked() -> None:
    learn = make_learner()
    ema, track = EMACallback(decay=0.5, validate_ema=False), Track()
    learn.fit(1, cbs=[ema, track])
    assert same(track.in_validation[0], track.after_steps[-1])
    assert ema.n_updates == 4


def test_validate_inside_the_fit_keeps_the_training_weights() -> None:
    # A validate() a callback runs inside the fit ends with an after_fit of its own: with replace_weights, that one
    # must not put the average in the model, or the next epoch trains from it.
    class ValidateAfterFirstEpoch(Callback):
        order = 50

        def after_epoch(self) -> None:
            if self.learn.epoch == 0 and not self.learn._nested_run:
                self.before = weights(self.learn.model)
                self.learn.validate()
                self.after = weights(self.learn.model)

    learn = make_learner()
    ema, check = EMACallback(decay=0.5, replace_weights=True), ValidateAfterFirstEpoch()
    learn.fit(2, cbs=[ema, check])
    assert same(check.before, check.after)
    assert same(weights(learn.model), ema.averaged)  # the end of the fit itself still replaces them


def test_average_follows_the_model_to_another_dtype() -> None:
    learn = make_learner()
    ema = EMACallback(decay=0.5)
    learn.add_cb(ema)
    learn.fit(1)
    kept = [t.clone() for t in ema.averaged]
    learn.model.double()
    x, y = (t.double() for t in learn.dls.train.dataset.tensors)
    xv, yv = (t.double() for t in learn.dls.valid.dataset.tensors)
    learn.dls = DataLoaders.from_tensors(x, y, xv, yv, bs=16, shuffle=False, device="cpu")
    learn.fit(1)  # failed: the float32 average could not be blended with the float64 weights
    assert all(t.dtype == torch.float64 for t in ema.averaged)
    assert ema.n_updates == 8 and not same([t.double() for t in kept], ema.averaged)


@pytest.mark.parametrize("run", ["validate", "get_preds", "predict", "summary"])
def test_replace_weights_leaves_the_weights_alone_outside_a_fit(run: str) -> None:
    # The average replaces the weights at the end of a fit only: after it, a validate() (or get_preds(), predict(),
    # summary(), which run a validation phase too) of other weights, loaded say, put the average back in the model.
    learn = make_learner()
    ema = EMACallback(decay=0.5, replace_weights=True)
    learn.fit(1, cbs=ema)
    learn.add_cb(ema)
    with torch.no_grad():
        learn.model.weight.fill_(3.0)
    loaded = weights(learn.model)
    if run == "predict":
        learn.predict(torch.zeros(2))
    else:
        getattr(learn, run)()
    assert same(weights(learn.model), loaded)
    assert not same(ema.averaged, loaded)


class SumOfInputs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1, keepdim=True)


@pytest.mark.parametrize("run", ["validate", "get_preds"])
def test_a_model_without_parameters(run: str) -> None:
    # There is nothing to average or swap in: torch's _foreach copy refused the empty lists (a RuntimeError).
    learn = make_learner(SumOfInputs())
    expected = getattr(learn, run)()
    ema = EMACallback(decay=0.5)
    learn.add_cb(ema)
    got = getattr(learn, run)()
    assert ema.averaged == [] and not ema.swapped
    if run == "validate":
        assert got == expected
    else:
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("how", ["new learner", "model replaced"])
def test_another_model_starts_its_own_average(how: str) -> None:
    # One callback for several learners (a loop over folds, say): the second model's validation used an average made
    # mostly of the first model's weights, since the average carried over whenever the shapes matched.
    ema = EMACallback(decay=0.99)
    first = make_learner(cbs=ema)
    first.fit(1)
    torch.manual_seed(1)
    model = nn.Linear(2, 1)
    if how == "new learner":
        second = make_learner(model, cbs=ema)
    else:
        second, first.model = first, model
    start = weights(model)
    second.fit(1, cbs=Track())
    assert ema.n_updates == 4  # the 4 steps of this fit, not 8
    # Four steps of decay 0.99 from the new model's weights: within 4% of the way they moved.
    moved = max((w - s).abs().max().item() for w, s in zip(weights(model), start, strict=True))
    assert max((a - s).abs().max().item() for a, s in zip(ema.averaged, start, strict=True)) <= 0.04 * moved + 1e-7


def test_two_averages_validated_are_refused() -> None:
    # Each swapped its average in over what the model held: after validation the second put the first one's average
    # back in place of the training weights, and the training went on from it.
    learn = make_learner()
    with pytest.raises(ValueError, match="2 EMACallbacks with validate_ema=True"):
        learn.fit(1, cbs=[EMACallback(decay=0.5), EMACallback(decay=0.9)])
    assert not any(isinstance(cb, EMACallback) for cb in learn.cbs)
    ema = EMACallback(decay=0.5)
    learn.add_cb(ema)
    with pytest.warns(UserWarning, match="already in learn.cbs"):
        learn.fit(1, cbs=ema)  # one EMACallback, twice: not two averages
    learn.remove_cb(ema)
    track, slow = Track(), EMACallback(decay=0.9, validate_ema=False)
    learn.fit(1, cbs=[EMACallback(decay=0.5), slow, track])  # one validated: the training weights come back
    assert same(track.at_after_validate[-1], weights(learn.model)) and slow.n_updates == 4


@pytest.mark.parametrize("run", ["validate", "get_preds"])
def test_weights_loaded_before_the_first_step_are_averaged(run: str) -> None:
    # A validate() (or get_preds()) before any training took the weights as the average; weights loaded after it
    # (learn.load of a trained model) were then neither validated (the stale copy was swapped in) nor averaged from.
    trained = make_learner()
    trained.fit(2)
    good = weights(trained.model)
    learn = make_learner()
    ema = EMACallback(decay=0.5)
    learn.add_cb(ema)
    getattr(learn, run)()
    learn.model.load_state_dict(trained.model.state_dict())
    assert learn.validate() == trained.validate()
    assert same(ema.averaged, good) and ema.n_updates == 0
    learn.fit(1, lr=0.0)  # steps that change nothing: the average stays the loaded weights
    assert ema.n_updates == 4 and same(ema.averaged, good)
    # Once a step has updated it, the average carries over: a load does not restart it.
    learn.model.load_state_dict(make_learner().model.state_dict())
    learn.validate()
    assert same(ema.averaged, good)


def test_a_validate_inside_the_fit_keeps_the_average_of_its_start() -> None:
    # Inside a fit an average no step has updated yet is the fit's own: a validate() a callback runs there does not take
    # the weights again (BatchNorm statistics move without a step), so a run resumed from a checkpoint matches.
    class ValidateMidFit(Callback):
        def after_batch(self) -> None:
            if self.learn.training and self.learn.iter == 1:
                self.learn.validate()

    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    learn = make_learner(model)
    ema = EMACallback(decay=0.5)
    start = [t.detach().clone() for t in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]]
    learn.fit(1, cbs=[ema, GradientAccumulation(n_steps=100), ValidateMidFit()])
    assert ema.n_updates == 0
    assert same(ema.averaged, start)
    assert not torch.equal(model[1].running_mean, start[-2])  # the statistics moved, the average did not follow
