"""Learner (SPEC §1 state rules and §3): construction, fit state, batches, validate, get_preds, predict, freezing."""

from __future__ import annotations

import functools
import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from conftest import EventLog, synth_classif_learner, synth_dls, synth_learner
from learnloop import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelValidException,
    CastToTensor,
    CollectDataCallback,
    DataLoaders,
    EarlyStoppingCallback,
    FetchPredsCallback,
    GradientAccumulation,
    Learner,
    ParamScheduler,
    ProgressCallback,
    Recorder,
    SchedLin,
    TerminateOnNaNCallback,
    TrainEvalCallback,
    accuracy,
    rmse,
    trainable_params,
)
from learnloop.attrs import OwnAttrs
from learnloop.callbacks import GatherPredsCallback
from learnloop.learner import norm_bias_params
from learnloop.optimizer import Adam, OptimWrapper


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 closeness (torch.testing.assert_close's defaults) without its first-call import cost."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=1.3e-6, atol=1e-5), (actual, expected)


# ------------------------------------------------------------------ construction
def test_constructor_signature_matches_the_spec() -> None:
    params = inspect.signature(Learner).parameters
    defaults = {k: v.default for k, v in params.items()}
    assert list(params) == ["dls", "model", "loss_func", "opt_func", "lr", "splitter", "cbs", "metrics", "path",
                            "model_dir", "wd", "wd_bn_bias", "train_bn", "moms", "default_cbs"]
    assert defaults["loss_func"] is None and defaults["opt_func"] is Adam and defaults["lr"] == 1e-3
    assert defaults["splitter"] is trainable_params
    assert (defaults["cbs"], defaults["metrics"], defaults["path"]) == (None, None, None)
    assert defaults["model_dir"] == "models"
    assert (defaults["wd"], defaults["wd_bn_bias"], defaults["train_bn"]) == (None, False, True)
    assert defaults["moms"] == (0.95, 0.85, 0.95) and defaults["default_cbs"] is True


def test_parameter_helpers_take_fastais_argument_names() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    model[2].weight.requires_grad_(False)
    assert trainable_params(m=model) == [p for p in model.parameters() if p.requires_grad]
    bn_and_biases = [model[1].weight, model[1].bias, model[0].bias, model[2].bias]
    assert {id(p) for p in norm_bias_params(m=model, with_bias=True)} == {id(p) for p in bn_and_biases}
    assert norm_bias_params(m=model, with_bias=False) == [model[1].weight, model[1].bias]


def test_construction_state() -> None:
    learn = synth_learner()
    assert [type(cb) for cb in learn.cbs] == [TrainEvalCallback, Recorder, ProgressCallback]
    assert learn.opt is None and learn.training is False
    # As in fastai: the loop's state comes with the loop (n_epoch with TrainEvalCallback's after_create).
    loop_state = ("epoch", "iter", "n_iter", "train_iter", "pct_train", "dl", "xb", "yb", "pred", "loss", "loss_grad")
    assert learn.n_epoch == 1 and not any(name in vars(learn) for name in loop_state)
    with pytest.raises(AttributeError, match="no attribute 'xb'"):
        _ = learn.xb
    learn.fit(1)  # its end leaves what fastai's _end_cleanup leaves
    assert learn.xb == (None,) and learn.yb == (None,) and learn.pred is None and learn.loss is None
    assert learn.metrics == [] and learn.lr == 1e-2
    bare = synth_learner(default_cbs=False)
    assert bare.cbs == [] and not hasattr(bare, "recorder") and not hasattr(bare, "progress")


def test_attributes_fall_through_to_the_model(learn: Learner) -> None:
    assert list(learn.parameters()) == list(learn.model.parameters())
    assert learn.weight is learn.model.weight
    with pytest.raises(AttributeError, match="no_such_attr"):
        learn.no_such_attr  # noqa: B018


def test_call_fires_events() -> None:
    learn = synth_learner(default_cbs=False)
    log = EventLog()
    learn.add_cb(log)
    learn("after_epoch")
    learn(["before_validate", "after_validate"])
    assert log.events == ["after_epoch", "before_validate", "after_validate"]


def test_loss_func_is_read_from_the_dataloaders_when_not_given() -> None:
    dls = synth_dls()
    dls.loss_func = nn.L1Loss()  # type: ignore[attr-defined]
    assert isinstance(Learner(dls, nn.Linear(2, 1)).loss_func, nn.L1Loss)


# ------------------------------------------------------------------ the state fit sets
class StateSpy(Callback):
    """Records the learner's counters and flags at several events."""

    order = 100

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def _grab(self, event: str) -> None:
        learn = self.learn
        self.seen.append({
            "event": event, "n_epoch": learn.n_epoch, "epoch": learn.epoch, "iter": getattr(learn, "iter", None),
            "n_iter": getattr(learn, "n_iter", None), "training": learn.training,
            "model_training": learn.model.training, "dl": getattr(learn, "dl", None), "pct_train": learn.pct_train,
            "train_iter": learn.train_iter,
            "grad": torch.is_grad_enabled(),
        })

    def before_fit(self) -> None:
        self._grab("before_fit")

    def before_epoch(self) -> None:
        self._grab("before_epoch")

    def before_train(self) -> None:
        self._grab("before_train")

    def before_batch(self) -> None:
        self._grab("before_batch")

    def after_batch(self) -> None:
        self._grab("after_batch")

    def before_validate(self) -> None:
        self._grab("before_validate")


def test_fit_sets_counters_and_flags_seen_by_callbacks() -> None:
    learn = synth_learner(n_train=48, n_valid=32, bs=16)  # 3 training batches, 2 validation batches
    spy = StateSpy()
    learn.fit(2, cbs=spy)
    seen = spy.seen
    assert seen[0] == {**seen[0], "event": "before_fit", "n_epoch": 2, "epoch": 0, "pct_train": 0.0, "train_iter": 0}
    train_batches = [s for s in seen if s["event"] == "before_batch" and s["training"]]
    valid_batches = [s for s in seen if s["event"] == "before_batch" and not s["training"]]
    assert [(s["epoch"], s["iter"]) for s in train_batches] == [(e, i) for e in range(2) for i in range(3)]
    assert [(s["epoch"], s["iter"]) for s in valid_batches] == [(e, i) for e in range(2) for i in range(2)]
    assert all(s["n_iter"] == 3 and s["dl"] is learn.dls.train and s["model_training"] and s["grad"]
               for s in train_batches)
    assert all(s["n_iter"] == 2 and s["dl"] is learn.dls.valid and not s["model_training"] and not s["grad"]
               for s in valid_batches)
    # pct_train before each training batch: the fraction of training done; train_iter counts batches
    assert [s["pct_train"] for s in train_batches] == pytest.approx([i / 6 for i in range(6)])
    assert [s["train_iter"] for s in train_batches] == list(range(6))
    after_train = [s for s in seen if s["event"] == "after_batch" and s["training"]]
    # fastai's sum to the end of the fit (six sixths add up to 0.9999999999999999), exactly 1.0 once it is over
    assert after_train[-1]["pct_train"] == sum([1 / 6] * 6) < 1.0 and after_train[-1]["train_iter"] == 6
    assert learn.pct_train == 1.0
    starts = [s for s in seen if s["event"] == "before_train"]
    assert [s["pct_train"] for s in starts] == [0.0, 0.5] and all(s["training"] for s in starts)
    assert [s["epoch"] for s in seen if s["event"] == "before_epoch"] == [0, 1]
    assert all(not s["training"] for s in seen if s["event"] == "before_validate")


def fastai_pct_train(n_epoch: int, n_iter: int) -> list[float]:
    """pct_train before each training batch as fastai computes it: epoch/n_epoch at before_train, then
    1/(n_iter*n_epoch) added after each batch."""
    seen = []
    for epoch in range(n_epoch):
        pct = epoch / n_epoch
        for _ in range(n_iter):
            seen.append(pct)
            pct += 1.0 / (n_iter * n_epoch)
    return seen


def test_pct_train_is_fastais_sum_bit_for_bit_and_ends_at_exactly_one() -> None:
    # 3 epochs of 7 batches: 9 of fastai's 21 sums differ in the last bit from (epoch + i/n_iter) / n_epoch,
    # and the last one lands at 1.0000000000000002; a schedule must see fastai's numbers.
    expected = fastai_pct_train(3, 7)
    assert expected != [(e + i / 7) / 3 for e in range(3) for i in range(7)]
    learn = synth_learner(n_train=14, bs=2)
    spy = StateSpy()
    sched = ParamScheduler({"lr": SchedLin(1e-2, 1e-4)})
    learn.fit(3, cbs=[spy, sched])
    assert [s["pct_train"] for s in spy.seen if s["event"] == "before_batch" and s["training"]] == expected
    assert learn.recorder.hps["lr"] == [SchedLin(1e-2, 1e-4)(p) for p in expected]
    assert learn.pct_train == 1.0  # SPEC: after a fit (one that ran its last batch), exactly 1.0


def test_pct_train_steps_as_fastais_own_train_eval_test_checks_then_is_one_after_the_fit() -> None:
    # fastai's 13a_learner notebook (TestTrainEvalCallback): after each training batch, the previous value plus
    # 1/(n_iter*n_epoch), exactly; with 10 batches the sum ends at 0.9999999999999999, also at after_fit.
    class Steps(Callback):
        run_after, run_valid = TrainEvalCallback, False

        def before_train(self) -> None:
            self.old = self.learn.pct_train

        def after_batch(self) -> None:
            assert self.learn.pct_train == self.old + 1 / (self.learn.n_iter * self.learn.n_epoch)
            self.old = self.learn.pct_train

        def after_fit(self) -> None:
            self.at_after_fit = self.learn.pct_train

    learn, steps = synth_learner(n_train=160, bs=16), Steps()
    learn.fit(1, cbs=steps)
    assert steps.at_after_fit == sum([0.1] * 10) < 1.0
    assert learn.pct_train == 1.0  # SPEC: after the fit


def test_state_after_fit(learn: Learner) -> None:
    learn.fit(2)
    assert learn.xb == (None,) and learn.yb == (None,)
    assert learn.pred is None and learn.loss is None and learn.dl is None
    # loss_grad is left as the last batch's loss, as fastai leaves it (a validation batch's here: no graph).
    assert isinstance(learn.loss_grad, torch.Tensor) and learn.loss_grad.grad_fn is None
    assert not learn.model.training and learn.training is False
    assert learn.pct_train == 1.0 and learn.train_iter == 4
    assert learn.n_epoch == 2 and learn.epoch == 1


def test_fit_validates_its_arguments(learn: Learner) -> None:
    with pytest.raises(ValueError, match="n_epoch"):
        learn.fit(-1)
    learn.fit(0)  # nothing to do, but fine
    assert learn.recorder.values == []


# ------------------------------------------------------------------ loss_grad, loss and what callbacks may replace
def test_loss_is_a_detached_copy_of_loss_grad(learn: Learner) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    learn.fit(1, cbs=Callback(after_loss=lambda: seen.append((learn.loss, learn.loss_grad))))
    loss, loss_grad = seen[0]
    assert loss_grad.requires_grad and not loss.requires_grad
    assert torch.equal(loss, loss_grad.detach())


@pytest.mark.parametrize("where", ["own callback", "hook set on a library callback"])
def test_loss_grad_changed_in_place_changes_the_gradients_not_the_logged_loss(where: str) -> None:
    # fastai's RNNRegularizer adds its penalties with `learn.loss_grad += ...`: the Recorder logs the loss without
    # them, because `learn.loss` is copied before after_loss.
    plain = synth_learner(n_train=32, bs=16)
    plain.fit(2, lr=0.0)
    learn = synth_learner(n_train=32, bs=16)
    logged: list[tuple[float, float]] = []

    def penalty() -> None:
        if learn.training:
            learn.loss_grad += 10.0

    class Watch(Callback):
        order = 55  # after the Recorder

        def after_batch(self) -> None:
            logged.append((float(self.learn.loss), float(self.learn.loss_grad.detach())))

    if where == "own callback":
        cbs: list[Callback] = [Callback(after_loss=penalty), Watch()]
    else:  # and no other hook that could change the loss: the learner must see this one
        carrier = ParamScheduler({"lr": lambda pct: 0.0})
        carrier.after_loss = penalty
        cbs = [carrier]
    learn.fit(2, lr=0.0, cbs=cbs)
    assert_close(torch.stack(learn.recorder.losses), torch.stack(plain.recorder.losses))
    assert learn.recorder.values == plain.recorder.values
    if where == "own callback":  # the first epoch's two training batches: loss_grad has the penalty, loss not
        assert len(logged) == 6 and all(abs(g - loss - 10.0) < 1e-4 for loss, g in logged[:2])


def test_loss_changed_in_place_leaves_loss_grad_and_the_gradients_alone() -> None:
    def exp_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # its backward reads its own output
        return torch.exp(F.mse_loss(pred, y))

    plain = _first_grad(synth_learner(loss_func=exp_mse))
    learn = synth_learner(loss_func=exp_mse)
    zeroed = _first_grad(learn, Callback(after_loss=lambda: learn.loss.zero_()))
    assert_close(zeroed, plain)


def test_the_loss_is_copied_only_when_a_hook_not_of_learnloop_could_change_it() -> None:
    # The copy costs a tensor op per batch: the learner pays it only when a hook that is not one of learnloop's
    # own methods runs between the loss and the end of the batch (a speed promise, checked on what decides it).
    learn = synth_learner()
    assert not learn._copy_loss
    library = [ParamScheduler({"lr": lambda pct: 1e-3}), GatherPredsCallback(), GradientAccumulation(n_steps=2),
               TerminateOnNaNCallback()]
    with learn.added_cbs(library):
        assert not learn._copy_loss

    class OwnRecorder(Recorder):
        def after_batch(self) -> None:
            super().after_batch()

    scheduler = ParamScheduler({"lr": lambda pct: 1e-3})
    scheduler.after_step = lambda: None
    for cb in (Callback(after_batch=lambda: None), OwnRecorder(), scheduler):
        with learn.added_cbs(cb):
            assert learn._copy_loss, cb
        assert not learn._copy_loss
    learn.fit(1, cbs=Callback(before_step=lambda: None))
    assert not learn._copy_loss


def _first_grad(learn: Learner, cb: Callback | None = None) -> torch.Tensor:
    grads: list[torch.Tensor] = []
    cbs: list[Callback] = [Callback(after_backward=lambda: grads.append(learn.model.weight.grad.clone()))]
    learn.fit(1, lr=0.0, cbs=cbs + ([cb] if cb else []))
    return grads[0]


def test_backward_uses_loss_grad_which_callbacks_may_replace() -> None:
    plain = _first_grad(synth_learner())
    learn = synth_learner()

    def triple() -> None:
        learn.loss_grad = learn.loss_grad * 3

    tripled = _first_grad(learn, Callback(after_loss=triple))
    assert_close(tripled, 3 * plain)
    assert plain.abs().sum() > 0


def test_callbacks_may_replace_xb_yb_and_pred() -> None:
    learn = synth_learner(n_train=16, bs=16)
    seen: dict[str, Any] = {}

    class Replace(Callback):
        def before_batch(self) -> None:
            self.learn.xb = (torch.zeros_like(self.learn.xb[0]),)
            self.learn.yb = (torch.ones_like(self.learn.yb[0]),)

        def after_pred(self) -> None:
            seen["pred"] = self.learn.pred
            self.learn.pred = self.learn.pred + 1

        def after_loss(self) -> None:
            seen["loss"] = self.learn.loss

    learn.fit(1, lr=0.0, cbs=Replace())
    bias = learn.model.bias.detach()
    assert_close(seen["pred"], bias.expand(16, 1))  # the model saw the zeroed inputs
    assert_close(seen["loss"], ((bias + 1 - 1) ** 2).mean())  # the loss saw the new pred and yb


# ------------------------------------------------------------------ splitting batches into xb / yb
class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lin(a) + b


def _batches_seen(learn: Learner, **fit_kw: Any) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    seen: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
    learn.fit(1, cbs=Callback(before_batch=lambda: seen.append((learn.xb, learn.yb))), **fit_kw)
    return seen


def _three_tensor_dls(n_inp: int | None) -> DataLoaders:
    ds = TensorDataset(torch.randn(16, 2), torch.randn(16, 1), torch.randn(16, 1))
    return DataLoaders(DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), device="cpu", n_inp=n_inp)


def test_batches_split_at_n_inp() -> None:
    learn = Learner(_three_tensor_dls(n_inp=2), TwoInputs(), loss_func=nn.MSELoss())
    learn.logger = lambda _: None
    xb, yb = _batches_seen(learn)[0]
    assert isinstance(xb, tuple) and isinstance(yb, tuple) and (len(xb), len(yb)) == (2, 1)


def test_batches_split_before_the_last_element_by_default() -> None:
    learn = Learner(_three_tensor_dls(n_inp=None), TwoInputs(), loss_func=nn.MSELoss())
    learn.logger = lambda _: None
    xb, yb = _batches_seen(learn)[0]
    assert (len(xb), len(yb)) == (2, 1)


def test_split_by_hand_uses_the_learners_n_inp_as_fastais_notebooks_call_it() -> None:
    b = (torch.zeros(2), torch.ones(2), torch.full((2,), 2.0))
    learn = Learner(_three_tensor_dls(n_inp=1), TwoInputs(), loss_func=nn.MSELoss())
    learn._split(b)
    assert (len(learn.xb), len(learn.yb)) == (1, 2)
    learn = Learner(_three_tensor_dls(n_inp=None), TwoInputs(), loss_func=nn.MSELoss())
    learn._split(b)
    assert (len(learn.xb), len(learn.yb)) == (2, 1) and learn.yb[0] is b[2]


def test_n_inp_one_passes_several_targets_to_the_loss() -> None:
    def two_target_loss(pred: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, y1) + F.mse_loss(pred, y2)

    learn = Learner(_three_tensor_dls(n_inp=1), nn.Linear(2, 1), loss_func=two_target_loss)
    learn.logger = lambda _: None
    xb, yb = _batches_seen(learn)[0]
    assert (len(xb), len(yb)) == (1, 2)


def _inputs_only_learner(batches: list[Any]) -> tuple[Learner, EventLog]:
    model = nn.Linear(2, 1)
    learn = Learner(DataLoaders(batches, batches, device="cpu"), model, loss_func=nn.MSELoss())
    learn.logger = lambda _: None
    log = EventLog()
    learn.add_cb(log)
    return learn, log


@pytest.mark.parametrize("kind", ["one-element tuple", "bare tensor"])
def test_batches_without_targets_do_no_backward_or_step(kind: str) -> None:
    x = torch.randn(4, 2)
    learn, log = _inputs_only_learner([(x,), (x,)] if kind == "one-element tuple" else [x, x])
    before = learn.model.weight.detach().clone()
    with pytest.warns(UserWarning, match="have no targets"):  # nothing is trained: said once a fit
        seen = _batches_seen(learn)
    assert all(xb[0] is x or torch.equal(xb[0], x) for xb, _ in seen) and all(yb == () for _, yb in seen)
    assert all(len(xb) == 1 for xb, _ in seen)
    assert "before_backward" not in log.events and "before_step" not in log.events
    assert log.events.count("after_loss") == 4  # after_loss still fires, with no loss computed
    assert torch.equal(learn.model.weight, before)


# ------------------------------------------------------------------ the optimizer across fits
def test_optimizer_is_created_once_and_kept_unless_reset_opt(learn: Learner) -> None:
    learn.fit(1)
    opt = learn.opt
    assert opt is not None
    learn.fit(1, lr=0.05, wd=0.1)
    assert learn.opt is opt and opt.hypers[-1]["lr"] == 0.05 and opt.hypers[-1]["wd"] == 0.1
    learn.fit(1, reset_opt=True)
    assert learn.opt is not opt and learn.opt.hypers[-1]["lr"] == learn.lr


def test_learner_wd_is_used_when_fit_has_none() -> None:
    learn = synth_learner(wd=0.25)
    learn.fit(1)
    assert learn.opt.hypers[-1]["wd"] == 0.25


def test_start_epoch_skips_epochs_and_keeps_the_schedule_position() -> None:
    learn = synth_learner()
    log, spy = EventLog(), StateSpy()
    learn.fit(4, start_epoch=2, cbs=[log, spy])
    # the skipping callback (order 70) cancels before the log (order 100) sees before_epoch
    assert log.events[:4] == ["before_fit", "after_cancel_epoch", "after_epoch", "after_cancel_epoch"]
    assert log.events.count("after_cancel_epoch") == 2 and log.events.count("before_train") == 2
    starts = [s for s in spy.seen if s["event"] == "before_train"]
    assert [(s["epoch"], s["pct_train"]) for s in starts] == [(2, 0.5), (3, 0.75)]
    assert learn.pct_train == 1.0
    assert len(learn.cbs) == 3  # the skipping callback is gone


# ------------------------------------------------------------------ validate, get_preds, predict
def test_validate_returns_valid_loss_and_metrics() -> None:
    learn = synth_classif_learner(metrics=accuracy)
    learn.fit(1)
    valid_loss, acc = learn.validate()
    x, y = learn.dls.valid.dataset.tensors
    with torch.no_grad():
        out = learn.model(x)
    assert valid_loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert isinstance(valid_loss, float) and isinstance(acc, float)


def test_metrics_may_be_any_iterable_of_metrics() -> None:
    # As fastai's `L(metrics)`: a generator, a set (or fastcore's L) of metrics, not only a list or a tuple.
    cases = [((m for m in (accuracy, rmse)), ["accuracy", "_rmse"]), ({accuracy}, ["accuracy"]), (range(0), [])]
    for given, names in cases:
        assert [m.name for m in synth_classif_learner(metrics=given).metrics] == names
    learn = synth_classif_learner()
    learn.metrics = (m for m in [accuracy])
    assert len(learn.validate()) == 2


def test_validate_on_another_dl() -> None:
    learn = synth_learner()
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    [loss] = learn.validate(dl=DataLoader(TensorDataset(x, y), batch_size=3))
    with torch.no_grad():
        assert loss == pytest.approx(F.mse_loss(learn.model(x), y).item(), rel=1e-5)


def test_get_preds_shapes_and_values() -> None:
    learn = synth_classif_learner()
    preds, targs = learn.get_preds()
    x, y = learn.dls.valid.dataset.tensors
    assert preds.shape == (24, 3) and targs.shape == (24,)
    with torch.no_grad():
        assert_close(preds, learn.model(x))
    assert torch.equal(targs, y)


def test_get_preds_on_a_shuffled_training_set_is_in_dataset_order() -> None:
    learn = synth_classif_learner(n_train=40, bs=16, shuffle=True)  # drops its last partial batch in training
    assert learn.dls.train.drop_last
    preds, targs = learn.get_preds(ds_idx=0)
    x, y = learn.dls.train.dataset.tensors
    assert torch.equal(targs, y)
    with torch.no_grad():
        assert_close(preds, learn.model(x))


def test_get_preds_with_input_loss_and_decoded() -> None:
    learn = synth_classif_learner()
    inputs, preds, targs, decoded, losses = learn.get_preds(with_input=True, with_decoded=True, with_loss=True)
    x, y = learn.dls.valid.dataset.tensors
    assert torch.equal(inputs, x)
    assert_close(losses, F.cross_entropy(preds, y, reduction="none"))
    assert torch.equal(decoded, preds)  # nn.CrossEntropyLoss has no `decodes`
    assert learn.loss_func.reduction == "mean"  # restored


def test_get_preds_with_loss_on_a_plain_function() -> None:
    learn = synth_classif_learner(loss_func=F.cross_entropy)
    preds, targs, losses = learn.get_preds(with_loss=True)
    assert_close(losses, F.cross_entropy(preds, targs, reduction="none"))
    assert learn.loss_func is F.cross_entropy


def test_get_preds_with_loss_refuses_a_loss_that_takes_no_reduction() -> None:
    # fastai's fails at the first batch ("unexpected keyword argument 'reduction'"), which learnloop's note blamed on
    # the model's output and the targets; it is said before any batch runs, and the loss function is left as it was.
    def loss(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, targ)

    learn = synth_classif_learner(loss_func=loss)
    log = EventLog()
    with pytest.raises(TypeError, match="reduction='none'.*a keyword it does not take"):
        learn.get_preds(with_loss=True, cbs=log)
    assert log.events == [] and learn.loss_func is loss and log not in learn.cbs
    with pytest.raises(TypeError, match="has no `reduction` attribute"), learn.loss_not_reduced():
        pass
    # A function that takes **kwargs is called with reduction="none".
    learn.loss_func = lambda pred, targ, **kwargs: F.cross_entropy(pred, targ, **kwargs)
    assert learn.get_preds(with_loss=True)[2].shape == (24,)


def test_get_preds_regression_losses_are_per_item(learn: Learner) -> None:
    preds, targs, losses = learn.get_preds(with_loss=True)
    assert preds.shape == (16, 1) and losses.numel() == 16  # one loss per item (shaped like the output, as fastai)
    assert_close(losses.reshape(-1), ((preds - targs) ** 2).reshape(-1))


class SoftmaxCE(nn.CrossEntropyLoss):
    """A cross-entropy loss that says how to turn outputs into probabilities and classes, like fastai's."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=-1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=-1)


def test_get_preds_applies_act_or_the_loss_activation() -> None:
    learn = synth_classif_learner()
    raw, _ = learn.get_preds()
    sig, _ = learn.get_preds(act=torch.sigmoid)
    assert_close(sig, torch.sigmoid(raw))
    learn.loss_func = SoftmaxCE()
    probs, _, decoded = learn.get_preds(with_decoded=True)
    assert_close(probs, F.softmax(raw, dim=-1))
    assert torch.equal(decoded, raw.argmax(-1))
    explicit, _ = learn.get_preds(act=functools.partial(F.log_softmax, dim=-1))
    assert_close(explicit, F.log_softmax(raw, dim=-1))
    identity, _ = learn.get_preds(act=nn.Sequential())  # falsy (no layers), yet given: it is applied, as in fastai
    assert torch.equal(identity, raw)


def test_get_preds_does_not_disturb_the_recorder_output_or_the_model(learn: Learner) -> None:
    printed: list[Any] = []
    learn.logger = printed.append
    learn.fit(1)
    printed.clear()
    preds, _ = learn.get_preds()
    assert printed == []
    # As fastai's, the last validation batch stays in the learner's state (no cleanup as after a fit).
    assert learn.pred is not None and torch.equal(learn.pred, preds[-len(learn.pred):])


class _RaisesInValidation(Callback):
    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def after_pred(self) -> None:
        if not self.training:
            raise self.exc("in validation")


@pytest.mark.parametrize("exc", [ValueError, CancelFitException, CancelEpochException])
@pytest.mark.parametrize("call", ["validate", "get_preds"])
def test_an_exception_leaving_validate_or_get_preds_still_fires_after_epoch_and_after_fit(exc: Any, call: str) -> None:
    learn, log = synth_learner(), EventLog()
    learn.add_cbs([log, _RaisesInValidation(exc)])
    with pytest.raises(exc):
        getattr(learn, call)()
    assert log.events[-3:] == ["before_batch", "after_epoch", "after_fit"]  # the log runs after the raiser
    assert "after_validate" not in log.events and "after_cancel_validate" not in log.events
    assert learn.recorder.values == [[]]  # the Recorder's after_epoch ran: an empty row, as fastai's


def test_get_preds_inner_fires_only_the_validation_phase() -> None:
    learn, log = synth_learner(), EventLog()
    learn.add_cb(log)
    learn.fit(1)
    values = learn.recorder.values
    log.events.clear()
    preds, targets = learn.get_preds(inner=True)
    assert log.events[0] == "before_validate" and log.events[-1] == "after_validate"
    assert "before_fit" not in log.events and "after_epoch" not in log.events
    assert learn.recorder.values is values and len(preds) == len(targets) == 16


def test_validate_returns_the_final_record_and_none_without_a_recorder() -> None:
    learn = synth_learner()
    result = learn.validate()
    assert result is learn.final_record and result is learn.recorder.values[-1]
    assert synth_learner(default_cbs=False).validate() is None


def test_fit_takes_a_numpy_integer() -> None:
    learn = synth_learner()
    learn.fit(np.int64(2))
    assert learn.n_epoch == 2 and type(learn.n_epoch) is int and len(learn.recorder.values) == 2


def test_an_optim_wrapper_instance_as_opt_func_is_used_as_it_is() -> None:
    learn = synth_learner()
    opt = OptimWrapper(list(learn.model.parameters()), opt=torch.optim.SGD, lr=0.1)
    learn.opt_func = opt
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, lr=0.05)
    assert learn.opt is opt and opt.hypers[0]["lr"] == 0.05
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))


def test_predict_whose_batch_a_callback_cancels_says_there_is_no_prediction() -> None:
    learn = synth_learner()
    learn.add_cb(Callback(before_batch=_cancel_batch))
    with pytest.raises(ValueError, match="cancelled before the model ran"):
        learn.predict(torch.zeros(1))


def test_predict_of_an_item_that_is_no_tensor_says_what_to_give() -> None:
    learn = synth_learner()
    # fastai: a ValueError for None (its unpacking fails), a TypeError for a string (the model's); torch.as_tensor's
    # "Could not infer dtype of NoneType" (a RuntimeError) and "new(): invalid data type 'str'" said nothing of predict
    for item, kind in ((None, ValueError), ("abc", TypeError), ({"x": 1.0}, TypeError)):
        with pytest.raises(kind, match=r"predict: the item is the model's input, a tensor .*; got a (None|str|dict)"):
            learn.predict(item)
    # The message said a list of numbers is an input; as fastai collates an item, it is one input per number.
    with pytest.raises(TypeError, match=r"or a tuple or list of them, one per input \(a list of numbers is one input "
                                        r"per number: torch.tensor\(\[...\]\) is one input\)"):
        learn.predict(None)
    with pytest.raises(TypeError, match=r"the model was called with 2 input\(s\): \(1,\) float32, \(1,\) float32"):
        learn.predict([0.5, -1.0])
    assert learn.predict(torch.tensor([0.5, -1.0]))[2].shape == (1,)


def _cancel_batch() -> None:
    raise CancelBatchException


def test_predict_one_item() -> None:
    learn = synth_learner()
    x = torch.tensor([0.5, -1.0])
    value, decoded, pred = learn.predict(x)
    with torch.no_grad():
        expected = learn.model(x[None])[0]
    assert_close(pred, expected)
    assert_close(decoded, expected)
    assert value == pytest.approx(expected.item())
    classif = synth_classif_learner(loss_func=SoftmaxCE())
    cls, dec, probs = classif.predict(torch.randn(4))
    assert probs.shape == (3,) and probs.sum().item() == pytest.approx(1.0)
    assert cls == probs.argmax().item() and dec == probs.argmax()
    x = torch.randn(4)
    inp, cls, dec, probs = classif.predict(x, with_input=True)
    assert torch.equal(inp, x) and torch.equal(probs, classif.predict(x)[2])
    # fastai's positional order: predict(item, rm_type_tfms, with_input); there are no transforms to remove
    assert torch.equal(classif.predict(x, None, True)[0], x)
    assert torch.equal(classif.predict(x, 0)[2], probs)  # fastai's "remove none"
    with pytest.raises(ValueError, match="learnloop applies no item transforms"):
        classif.predict(x, 1)
    with pytest.raises(TypeError, match="with_input is the third: pass with_input=True by keyword"):
        classif.predict(x, True)


def test_a_fit_without_train_eval_callback_trains_nothing_and_says_so() -> None:
    # As in fastai, nothing sets learn.training without it: no backward, no step. fastai's says nothing (or fails in
    # its Recorder); learnloop warns at the end of the training phase, unless another callback set learn.training.
    learn = synth_learner(default_cbs=False, cbs=Recorder)
    before = learn.model.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"no TrainEvalCallback .* no batch of this training phase computed") as w:
        learn.fit(2)
    assert len([x for x in w if "TrainEvalCallback" in str(x.message)]) == 1  # once a fit
    assert torch.equal(learn.model.weight, before) and learn.recorder.values[0][0] != learn.recorder.values[0][0]
    learn.add_cb(TrainEvalCallback())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1)
        learn.fit(1, start_epoch=1)  # trains no epoch
    assert not torch.equal(learn.model.weight, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synth_learner(default_cbs=False).fit(1, cbs=TrainEvalCallback)  # given to the fit

    class OwnTrainEval(Callback):  # a user's replacement: it sets learn.training, so there is nothing to say
        def before_train(self) -> None:
            self.learn.training = True
            self.model.train()

        def before_validate(self) -> None:
            self.learn.training = False

    learn = synth_learner(default_cbs=False, cbs=[Recorder, OwnTrainEval])
    before = learn.model.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1)
    assert not torch.equal(learn.model.weight, before)


# ------------------------------------------------------------------ devices
def test_model_and_batches_go_to_the_dataloaders_device() -> None:
    # The meta device shows where things go on a CPU-only machine; batches are cancelled before any
    # computation (the first computation on meta costs seconds of imports).
    dls = synth_dls(device="meta")
    model = nn.Linear(2, 1)
    learn = Learner(dls, model, loss_func=nn.MSELoss(), default_cbs=False, cbs=TrainEvalCallback)
    assert model.weight.device.type == "cpu"
    seen: list[torch.device] = []

    def look() -> None:
        seen.extend([model.weight.device, *(t.device for t in learn.xb + learn.yb)])
        raise CancelBatchException

    learn.fit(1, cbs=Callback(before_batch=look))
    assert len(seen) == 3 * 3 and all(d.type == "meta" for d in seen)


def test_default_device() -> None:
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert DataLoaders([]).device == expected
    assert Learner(([], []), nn.Linear(1, 1), loss_func=nn.MSELoss()).dls.device == expected


# ------------------------------------------------------------------ parameter groups, freezing, weight decay flags
def _grouped_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _two_groups(m: nn.Module) -> list[list[nn.Parameter]]:
    return [[*m[0].parameters(), *m[1].parameters()], list(m[2].parameters())]


def _grouped_learner(**kw: Any) -> Learner:
    torch.manual_seed(0)
    learn = Learner(synth_dls(), _grouped_model(), loss_func=nn.MSELoss(), splitter=_two_groups, lr=1e-2, **kw)
    learn.logger = lambda _: None
    return learn


def test_freeze_unfreeze_on_two_groups() -> None:
    learn = _grouped_learner()
    lin0, bn, lin2 = learn.model
    learn.freeze()
    assert not any(p.requires_grad for p in lin0.parameters())
    assert all(p.requires_grad for p in bn.parameters())  # train_bn: normalisation layers keep training
    assert all(p.requires_grad for p in lin2.parameters())
    w0 = lin0.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(lin0.weight, w0)
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    learn.fit(1)
    assert not torch.equal(lin0.weight, w0)
    learn.freeze_to(1)
    assert not lin0.weight.requires_grad and lin2.weight.requires_grad


def test_freeze_without_train_bn_freezes_norm_layers_too() -> None:
    learn = _grouped_learner(train_bn=False)
    learn.freeze()
    assert not any(p.requires_grad for p in learn.model[1].parameters())


def test_weight_decay_and_force_train_flags() -> None:
    learn = _grouped_learner()
    learn.create_opt()
    lin0, bn, lin2 = learn.model
    no_wd = {id(p) for p in [lin0.bias, bn.weight, bn.bias, lin2.bias]}
    for p in learn.model.parameters():
        assert learn.opt.state[p].get("do_wd", True) is (id(p) not in no_wd)
        assert learn.opt.state[p].get("force_train", False) is (p is bn.weight or p is bn.bias)
    with_bn = _grouped_learner(wd_bn_bias=True, train_bn=False)
    with_bn.create_opt()
    assert all("do_wd" not in with_bn.opt.state[p] for p in with_bn.model.parameters())
    assert all("force_train" not in with_bn.opt.state[p] for p in with_bn.model.parameters())


# ------------------------------------------------------------------ bad input
def test_empty_training_dataloader() -> None:
    dls = DataLoaders.from_tensors(torch.randn(10, 2), torch.randn(10, 1), bs=16, drop_last=True, device="cpu")
    learn = Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())
    with pytest.raises(ValueError, match=r"training DataLoader is empty.*10 items.*batch_size=16.*drop_last=True"):
        learn.fit(1)


def test_empty_training_iterable_says_only_what_it_knows() -> None:
    learn = Learner(DataLoaders([], [], device="cpu"), nn.Linear(2, 1), loss_func=nn.MSELoss())
    with pytest.raises(ValueError, match="yields no batches") as info:
        learn.fit(1)
    assert "?" not in str(info.value) and "at least one batch" in str(info.value)


def test_empty_training_dataloader_with_a_batch_sampler_names_its_settings() -> None:
    ds = TensorDataset(torch.randn(10, 2), torch.randn(10, 1))
    loader = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), batch_size=16, drop_last=True))
    learn = Learner(DataLoaders(loader, [], device="cpu"), nn.Linear(2, 1), loss_func=nn.MSELoss())
    with pytest.raises(ValueError) as info:  # the DataLoader's own batch_size is None, its drop_last False
        learn.fit(1)
    assert "(a dataset of 10 items, a batch_sampler with batch_size=16, drop_last=True)" in str(info.value)


def test_batch_that_cannot_be_split() -> None:
    ds = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    dls = DataLoaders(DataLoader(ds, batch_size=4), device="cpu", n_inp=3)
    learn = Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())
    learn.logger = lambda _: None
    with pytest.raises(ValueError, match=r"Cannot split a batch of 2 elements into 3 input.*n_inp"):
        learn.fit(1)
    with pytest.raises(TypeError, match="Cannot split"):  # fastai's type: its model gets too many arguments
        learn.fit(1)


def test_loss_that_rejects_the_shapes_names_them() -> None:
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16, 2))
    dls = DataLoaders.from_tensors(x, y, bs=8, device="cpu", shuffle=False)
    learn = Learner(dls, nn.Linear(4, 3), loss_func=nn.CrossEntropyLoss())
    learn.logger = lambda _: None
    with pytest.raises(RuntimeError, match=r"rejected the model's output \(8, 3\) float32 with target\(s\) \(8, 2\)"
                       ) as info:
        learn.fit(1)
    assert any("(8, 3)" in n and "(8, 2)" in n for n in info.value.__notes__)


def test_no_loss_function() -> None:
    with pytest.raises(ValueError, match="No loss function.*loss_func="):
        Learner(synth_dls(), nn.Linear(2, 1))


def test_model_that_is_not_a_module() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Learner(synth_dls(), lambda x: x, loss_func=nn.MSELoss())  # type: ignore[arg-type]


def test_misspelt_event(learn: Learner) -> None:
    with pytest.raises(ValueError, match="'after_bacth'.*Did you mean 'after_batch'"):
        learn("after_bacth")


@pytest.mark.parametrize("lr,exc,match", [
    ("fast", TypeError, "lr must be a number.*'fast'"),
    (None, None, None),
    (-0.1, ValueError, "non-negative.*-0.1"),
    (float("nan"), ValueError, "non-negative"),
    (True, TypeError, "lr must be a number"),
    (slice(1e-4, "x"), TypeError, "lr must be a number"),
])
def test_bad_lr(lr: Any, exc: type[Exception] | None, match: str | None) -> None:
    learn = synth_learner()
    if exc is None:
        learn.fit(1, lr=lr)
        return
    with pytest.raises(exc, match=match):
        learn.fit(1, lr=lr)
    assert learn.opt is None  # refused before anything was built
    with pytest.raises(exc, match=match):
        synth_learner(lr=lr)


def test_model_dir_is_kept_as_given(tmp_path: Path) -> None:
    learn = synth_learner()
    assert learn.model_dir == "models"
    assert synth_learner(path=tmp_path, model_dir="weights").save("m") == tmp_path / "weights" / "m.pth"


# ------------------------------------------------------------------ the loop reads the learner's own attributes fast
def test_own_attrs_share_the_objects_attributes_and_nothing_else() -> None:
    learn = synth_learner()
    view = OwnAttrs(learn)
    view.pred = "from the view"
    assert learn.pred == "from the view"
    learn.loss = "from the learner"
    assert view.loss == "from the learner"
    with pytest.raises(AttributeError):  # the model's attributes (learn.weight falls through) are not seen
        view.weight  # noqa: B018
    with pytest.raises(AttributeError):  # nor the Learner's properties
        view.smooth_loss  # noqa: B018


def test_callbacks_may_swap_model_loss_func_and_opt_between_batches() -> None:
    learn = synth_learner(n_train=48, bs=16)
    learn.fit(1)  # creates the optimizer
    doubled = nn.Linear(2, 1)
    calls: list[str] = []

    def loss_func(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append("loss")
        return F.mse_loss(pred, y)

    class CountingSGD:
        def __init__(self, opt: Any) -> None:
            self.opt = opt

        def step(self) -> None:
            calls.append("step")
            self.opt.step()

        def zero_grad(self) -> None:
            self.opt.zero_grad()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.opt, name)

    class Swap(Callback):
        def before_batch(self) -> None:
            if self.learn.iter == 1:
                self.learn.model, self.learn.loss_func = doubled, loss_func
                self.learn.opt = CountingSGD(self.learn.opt)

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    learn.fit(1, cbs=[Swap(), Callback(after_pred=lambda: seen.append((learn.xb[0], learn.pred)))])
    assert calls[:2] == ["loss", "step"] and calls.count("step") == 2  # from the second of three batches
    xb, pred = seen[1]
    with torch.no_grad():
        assert torch.equal(pred, doubled(xb))


def test_an_unpickled_learner_trains_its_own_state() -> None:
    import pickle

    learn = synth_learner(n_train=32, bs=16)
    learn.fit(1)
    copy = pickle.loads(pickle.dumps(learn))
    seen: list[int] = []
    copy.fit(1, cbs=Callback(after_batch=lambda: seen.append(copy.train_iter) if copy.training else None))
    assert seen == [1, 2] and copy.train_iter == 2 and copy.recorder.n_losses == 2
    assert learn.train_iter == 2 and learn.recorder.n_losses == 2  # the original is untouched


def test_train_eval_moves_the_model_only_when_it_is_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    learn = synth_learner()
    moved: list[Any] = []
    monkeypatch.setattr(learn.model, "to", lambda *a, **k: moved.append(a))
    learn.fit(1)  # the model is on the DataLoaders' device (cpu) already: `to` is not called
    assert moved == []
    monkeypatch.undo()
    learn.dls.device = torch.device("meta")  # a device the model is not on: it is moved
    learn.train_eval.before_fit()
    assert all(p.device.type == "meta" for p in learn.model.parameters())


def test_cast_to_tensor_makes_tensor_subclasses_plain_before_the_model() -> None:
    class Tagged(torch.Tensor):
        pass

    seen: list[type] = []
    plain = synth_dls()
    tagged = [[(x.as_subclass(Tagged), y.as_subclass(Tagged)) for x, y in dl] for dl in (plain.train, plain.valid)]
    learn = Learner(DataLoaders(*tagged), nn.Linear(2, 1), loss_func=F.mse_loss, cbs=CastToTensor())
    learn.add_cb(Callback(after_pred=lambda: seen.extend(type(t) for t in (*learn.xb, *learn.yb))))
    with learn.no_bar():
        learn.fit(1)
    assert seen and set(seen) == {torch.Tensor} and learn.cast_to_tensor.order == 9


def test_collect_data_keeps_every_batch_detached_and_starts_afresh_each_fit() -> None:
    learn = synth_learner(n_train=32, n_valid=16, bs=16)
    cb = CollectDataCallback()
    learn.fit(1, cbs=cb)
    assert len(cb.data) == 3  # two training batches, one validation batch
    dl_batches = [*learn.dls.train, *learn.dls.valid]
    for (xb, yb, pred, loss), (x, y) in zip(cb.data, dl_batches, strict=True):
        assert torch.equal(xb[0], x) and torch.equal(yb[0], y)
        assert pred.shape == (16, 1) and not pred.requires_grad and loss.ndim == 0
    xb, yb, pred, loss = cb.data[-1]  # validation: the trained model's prediction and loss
    assert torch.allclose(pred, learn.model(xb[0])) and torch.allclose(loss, F.mse_loss(pred, yb[0]))
    learn.fit(1, cbs=cb)
    assert len(cb.data) == 3


def test_fastai_helpers_x_y_ordered_cbs_loss_not_reduced_and_with_learn() -> None:
    learn, log = synth_learner(), EventLog()
    learn.add_cb(log)
    seen: list[tuple[Any, Any]] = []
    learn.add_cb(Callback(after_pred=lambda: seen.append((learn.x, learn.y))))
    learn.fit(1)
    assert all(x.shape == (16, 2) and y.shape == (16, 1) for x, y in seen)
    learn.xb, learn.yb = (1, 2), (3,)
    assert learn.x == (1, 2) and learn.y == 3
    learn.yb = ()  # a batch without targets: fastai's detuplify gives None
    assert learn.y is None
    # The callbacks with an after_batch method (not the one defining only after_pred), in order.
    assert [type(cb) for cb in learn.ordered_cbs("after_batch")] == [TrainEvalCallback, Recorder, ProgressCallback,
                                                                      EventLog]
    assert learn.ordered_cbs("before_fit")[-1] is log
    with learn.loss_not_reduced():
        losses = learn.loss_func(torch.zeros(4, 1), torch.ones(4, 1))
    assert losses.shape == (4, 1)
    log.events.clear()
    with pytest.raises(RuntimeError), learn:
        assert log.events == ["before_fit", "before_epoch"]
        raise RuntimeError
    assert log.events == ["before_fit", "before_epoch", "after_epoch", "after_fit"]


def test_fetch_preds_callback_fetches_during_the_fit_without_touching_its_records() -> None:
    fetch, log = FetchPredsCallback(), EventLog()
    learn = synth_learner(cbs=[fetch, log], metrics=rmse)
    plain = synth_learner(metrics=rmse)
    learn.fit(2, cbs=EarlyStoppingCallback(patience=5))
    plain.fit(2, cbs=EarlyStoppingCallback(patience=5))
    preds, targets = fetch.preds
    assert preds.shape == targets.shape == (16, 1)
    # The Recorder and the tracker sat out the fetch: the same records as a fit without it.
    assert learn.recorder.values == plain.recorder.values and learn.recorder.metric_names == plain.recorder.metric_names
    assert all(len(row) == 3 for row in learn.recorder.values)  # train_loss, valid_loss, rmse: no extra columns
    assert log.events.count("before_validate") == 4 and log.events.count("before_fit") == 1  # fetches: inner phases
    assert learn.recorder in learn.cbs and fetch in learn.cbs


def test_get_preds_of_a_learner_with_a_fetch_preds_callback_keeps_its_predictions() -> None:
    # The fetch runs a phase of its own at get_preds' after_validate: get_preds' gatherer sits it out, and still has
    # the predictions of its own phase (it had None). fastai's get_preds does not return here.
    fetch = FetchPredsCallback()
    learn = synth_learner(cbs=fetch)
    preds, targets = learn.get_preds()
    assert preds.shape == targets.shape == (16, 1)
    assert fetch.preds[0].shape == (16, 1)
    assert "gather_preds" not in vars(learn) and learn.cbs[-1] is fetch


def test_fetch_preds_callback_takes_fastais_reorder_and_passes_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    learn = synth_learner(cbs=FetchPredsCallback(reorder=False))
    seen: list[Any] = []
    get_preds = learn.get_preds
    monkeypatch.setattr(learn, "get_preds", lambda **kw: seen.append(kw["reorder"]) or get_preds(**kw))
    learn.fit(1)
    assert seen == [False] and learn.fetch_preds.reorder is False


def test_cast_to_tensor_keeps_namedtuples() -> None:
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")

    class Tagged(torch.Tensor):
        pass

    learn = synth_learner(cbs=CastToTensor())
    learn.xb, learn.yb = (Pair(torch.zeros(2).as_subclass(Tagged), 3),), ()
    learn.cast_to_tensor.before_batch()
    (pair,) = learn.xb
    assert type(pair) is Pair and type(pair.a) is torch.Tensor and pair.b == 3


def test_one_batch_and_all_batches_drive_the_loop_by_hand() -> None:
    # fastai's public methods: a batch (or a loader's batches) through the batch phase, outside fit().
    learn = synth_learner(n_train=32, n_valid=16, bs=8)
    log = EventLog()
    learn.add_cb(log)
    learn.cbs = learn.cbs[1:]  # as fastai's notebook does: no TrainEvalCallback (it counts a fit's batches)
    learn.create_opt()
    learn.model.train()
    learn.training = True
    xb, yb = next(iter(learn.dls.train))
    before = learn.model.weight.detach().clone()
    learn.one_batch(3, (xb, yb))
    assert learn.iter == 3 and not hasattr(learn, "n_iter")  # n_iter left as it is (unset), as fastai leaves it
    assert learn.xb[0] is xb and learn.yb[0] is yb
    assert torch.allclose(learn.loss, learn.loss_func(learn.pred, yb))
    assert not torch.equal(learn.model.weight, before)  # backward and step ran
    assert log.events == ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
                          "before_step", "after_step", "after_batch"]
    log.events.clear()
    learn.model.eval()
    learn.training, learn.dl = False, learn.dls.valid
    with torch.no_grad():
        learn.all_batches()
    assert learn.n_iter == 2 and learn.iter == 1
    assert log.events == ["before_batch", "after_pred", "after_loss", "after_batch"] * 2


def test_save_and_load_through_a_buffer(tmp_path: Path) -> None:
    import io

    learn = synth_learner(path=tmp_path)
    learn.fit(1)
    buffer = io.BytesIO()
    assert learn.save(buffer) is buffer  # written into and handed back, as in fastai; no file
    assert buffer.getbuffer().nbytes > 0 and not (tmp_path / "models").exists()
    other = synth_learner(path=tmp_path, seed=1)
    before = other.model.weight.detach().clone()
    # Not rewound: fastai's unpickler raises a bare EOFError; the CheckpointError says to seek back, nothing loaded
    with pytest.raises(RuntimeError, match=r"has been read to its end .*buffer.seek\(0\)"):
        other.load(buffer)
    assert torch.equal(other.model.weight, before)
    buffer.seek(0)
    other.load(buffer)
    assert torch.equal(other.model.weight, learn.model.weight)
    assert other.opt.state_dict()["hypers"] == learn.opt.state_dict()["hypers"]


def test_every_name_fastais_learner_module_exports_imports_from_learnloop() -> None:
    """The porting guide: `from fastai.learner import ...` becomes `from learnloop import ...` (fastai.learner.__all__
    as of fastai 2.8.12; `replacing_yield` was only in learnloop.learner)."""
    import learnloop

    fastai_learner_all = [
        "replacing_yield", "mk_metric", "save_model", "load_model", "SkipToEpoch", "Learner", "before_batch_cb",
        "load_learner", "Metric", "AvgMetric", "AvgLoss", "AvgSmoothLoss", "ValueMetric", "Recorder", "CastToTensor",
        "CancelBackwardException", "CancelStepException", "CancelFitException", "CancelEpochException",
        "CancelTrainException", "CancelValidException", "CancelBatchException",
    ]
    assert [n for n in fastai_learner_all if n not in learnloop.__all__] == []


def test_fastais_learner_helpers(tmp_path: Path) -> None:
    from learnloop import before_batch_cb, load_model, replacing_yield, save_model, to_detach

    learn = synth_learner()
    seen: list[float] = []

    def double(cb: Any, xb: tuple[Any, ...], yb: tuple[Any, ...]) -> tuple[Any, Any]:
        return (xb[0] * 2,), yb

    spy = Callback(after_pred=lambda cb: seen.append(float(cb.learn.xb[0].abs().sum())))
    raw = float(sum(x.abs().sum() for x, _ in learn.dls.train))
    learn.fit(1, cbs=[before_batch_cb(double), spy])
    assert sum(seen[:2]) == pytest.approx(2 * raw)  # the two training batches went in doubled

    with replacing_yield(learn, "lr", 0.5):
        assert learn.lr == 0.5
    assert learn.lr == 1e-2

    t = torch.ones(2, requires_grad=True) * 3
    out = to_detach({"a": [t], "b": 1})
    assert not out["a"][0].requires_grad and out["a"][0].device.type == "cpu" and out["b"] == 1
    assert learn.to_detach((t,))[0].requires_grad is False

    path = save_model(tmp_path / "m.pth", learn.model, learn.opt)
    other = synth_learner(seed=1)
    other.create_opt()
    load_model(path, other.model, other.opt)
    assert torch.equal(other.model.weight, learn.model.weight)
    with pytest.raises(ValueError, match="pickle_protocol=4 would write a file"):
        save_model(tmp_path / "p4.pth", learn.model, pickle_protocol=4)
    from learnloop.callback import noop

    learn.logger = print
    log = EventLog()
    with learn.validation_context(cbs=log):  # fastai's public name: what validate() runs its phase in
        assert learn.logger is noop and learn.create_mbar is False and log.events == ["before_fit", "before_epoch"]
    assert learn.logger is print and log.events[-2:] == ["after_epoch", "after_fit"] and log.learn is None


def test_replacing_yield_also_works_the_way_fastai_returns_it_from_a_contextmanager() -> None:
    from collections.abc import Iterator
    from contextlib import contextmanager

    from learnloop.learner import replacing_yield

    class Holder:
        def __init__(self) -> None:
            self.a = 42

        @contextmanager
        def a_changed(self, v: int) -> Iterator[None]:
            return replacing_yield(self, "a", v)  # fastai's idiom: its replacing_yield is a generator

    h = Holder()
    with h.a_changed(32):
        assert h.a == 32
    assert h.a == 42
    with pytest.raises(KeyError), h.a_changed(7):
        raise KeyError("x")
    assert h.a == 42
    with pytest.raises(KeyError), replacing_yield(h, "a", 7):
        raise KeyError("x")
    assert h.a == 42


def test_learner_to_detach_before_any_fit() -> None:
    learn = synth_learner()
    t = torch.ones(2, requires_grad=True) * 3
    assert not learn.to_detach(t).requires_grad  # no `learn.dl` yet: the module's to_detach, as in fastai


def test_predict_draws_from_torch_generator_as_the_dataloader_of_fastai_predict() -> None:
    # fastai's predict reads a DataLoader, whose iterator draws a base seed: the fits after it shuffle and drop out
    # from the generator that draw left, so learnloop's must draw it too (and only when the batch is read).
    learn = synth_learner()
    torch.manual_seed(0)
    learn.predict(torch.zeros(2))
    after_predict = torch.rand(3)
    torch.manual_seed(0)
    list(DataLoader([0]))
    assert torch.equal(after_predict, torch.rand(3))
    learn.add_cb(Callback(before_validate=_cancel_valid))
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="cancelled before the model ran"):
        learn.predict(torch.zeros(2))
    after_cancelled = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_cancelled, torch.rand(3))


def _cancel_valid() -> None:
    raise CancelValidException
