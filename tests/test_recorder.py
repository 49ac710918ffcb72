"""Recorder: metric names, per-epoch values, smoothed losses and lrs per batch, logging, history per fit."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from conftest import debiased_ema, synth_classif_learner, synth_learner
from learnloop import (
    Callback,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    DataLoaders,
    Learner,
    NonFiniteLossWarning,
    ProgressCallback,
    Recorder,
    TrainEvalCallback,
    accuracy,
)
from learnloop.callback import noop
from learnloop.callbacks.recorder import format_time


class LossSpy(Callback):
    """Keeps every training batch's loss, prediction and target."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def after_batch(self) -> None:
        if self.learn.training:
            self.losses.append(float(self.learn.loss))
            self.batches.append((self.learn.pred.detach(), self.learn.yb[0]))


def fastai_smoothed(losses: list[float], beta: float = 0.98) -> list[float]:
    """fastai's smoothed loss after each batch, written out: ``val = torch.lerp(loss, val, beta)`` on float32
    tensors from ``tensor(0.)``, then ``val / (1 - beta**n)``."""
    val, out = torch.tensor(0.0), []
    for n, loss in enumerate(losses, start=1):
        val = torch.lerp(torch.tensor(loss), val, beta)
        out.append((val / (1 - beta**n)).item())
    return out


# ------------------------------------------------------------------ names
def test_metric_names() -> None:
    assert synth_learner().recorder.metric_names == []  # filled in at before_fit
    learn = synth_learner()
    learn.fit(1)
    assert learn.recorder.metric_names == ["epoch", "train_loss", "valid_loss", "time"]
    learn = synth_classif_learner(metrics=accuracy)
    learn.fit(1)
    assert learn.recorder.metric_names == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    learn.recorder.train_metrics = True
    learn.fit(1)
    assert learn.recorder.metric_names == ["epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                                           "time"]
    learn.recorder.train_metrics, learn.recorder.valid_metrics, learn.recorder.add_time = False, False, False
    learn.fit(1)
    assert learn.recorder.metric_names == ["epoch", "train_loss", "accuracy"]


# ------------------------------------------------------------------ values
def test_values_losses_and_lrs() -> None:
    learn = synth_classif_learner(metrics=accuracy)  # 3 training batches per epoch
    spy = LossSpy()
    learn.fit(2, lr=0.05, cbs=spy)
    rec = learn.recorder
    assert len(rec.values) == 2 and all(len(v) == 3 for v in rec.values)
    smooth = fastai_smoothed(spy.losses)  # bit for bit, as fastai computes them in float32
    assert smooth == pytest.approx(debiased_ema(spy.losses), rel=1e-5)
    assert len(rec.losses) == 6 == len(spy.losses)
    assert [float(v) for v in rec.losses] == smooth
    # train_loss is the smoothed loss at the end of each training phase (not reset between epochs)
    assert [v[0] for v in rec.values] == [smooth[2], smooth[5]]
    assert rec.lrs == [0.05] * 6
    assert rec.iters == [3, 6]
    assert learn.final_record == rec.values[-1]
    assert float(learn.smooth_loss) == smooth[-1]
    assert all(isinstance(x, float) for v in rec.values for x in v)


def test_valid_loss_and_metric_values_match_a_manual_computation() -> None:
    learn = synth_classif_learner(n_valid=40, bs=16, metrics=accuracy)  # validation batches of 16, 16 and 8
    learn.fit(1)
    _, valid_loss, acc = learn.recorder.values[0]
    x, y = learn.dls.valid.dataset.tensors
    with torch.no_grad():
        out = learn.model(x)
    assert valid_loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == y).float().mean().item())


def test_train_metrics() -> None:
    learn = synth_classif_learner(metrics=accuracy)
    learn.recorder.train_metrics = True
    spy = LossSpy()
    learn.fit(1, cbs=spy)
    train_loss, train_acc, valid_loss, valid_acc = learn.recorder.values[0]
    hits = sum((p.argmax(1) == y).sum().item() for p, y in spy.batches)
    assert train_acc == pytest.approx(hits / sum(len(y) for _, y in spy.batches))
    assert train_loss == fastai_smoothed(spy.losses)[-1]
    assert valid_acc == pytest.approx(learn.validate()[1])


def test_a_train_metric_that_fails_leaves_no_loss_recorded_for_its_batch() -> None:
    # fastai appends the batch's smoothed loss after the training metrics: one that raises leaves none for it.
    calls = []

    def fails_on_the_second_batch(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("metric failed")
        return accuracy(pred, targ)

    learn = synth_classif_learner(metrics=fails_on_the_second_batch)
    learn.recorder.train_metrics = True
    with learn.no_logging(), pytest.raises(RuntimeError, match="metric failed"):
        learn.fit(1)
    assert len(learn.recorder.losses) == 1 and len(learn.recorder.lrs) == 1


def test_after_batch_fired_by_hand_after_a_fit_cancelled_in_training_records_nothing() -> None:
    # The fit's cleanup sets learn.loss to None and leaves learn.training True: the Recorder kept that None, and
    # reading recorder.losses (or the next fit) then failed with a TypeError. fastai's raises at the event.
    class CancelFit(Callback):
        def after_loss(self) -> None:
            if self.learn.iter == 1:
                raise CancelFitException

    learn = synth_learner(cbs=CancelFit())
    learn.fit(1)
    assert learn.training and learn.loss is None
    with pytest.raises(AttributeError, match="learn.loss is None"):
        learn("after_batch")
    assert len(learn.recorder.losses) == 1 and len(learn.recorder.lrs) == 1


def test_a_loss_a_callback_made_a_number_is_named_as_such_not_as_an_event_fired_by_hand() -> None:
    # A callback that sets learn.loss to a float fails at the Recorder's after_batch, as fastai's (an AttributeError);
    # the message blamed an after_batch fired outside a batch, which is not what happened.
    class FloatLoss(Callback):
        def after_loss(self) -> None:
            self.learn.loss = float(self.learn.loss)

    learn = synth_learner(cbs=FloatLoss())
    with pytest.raises(AttributeError, match="a float, not a tensor") as info:
        learn.fit(1)
    assert "outside a training batch" not in str(info.value)


def test_before_epoch_fired_by_hand_on_a_learner_that_never_fit_starts_its_row_at_epoch_0() -> None:
    # fastai's Recorder reads getattr(self, 'epoch', 0): the callbacks after it get the event too. learnloop's read
    # learn.epoch, which does not exist before a fit: an AttributeError that the callbacks after it never saw.
    seen = []

    class After(Callback):
        order = 60

        def before_epoch(self) -> None:
            seen.append("before_epoch")

    learn = synth_learner(cbs=After())
    learn("before_epoch")
    assert learn.recorder.log == [0] and seen == ["before_epoch"]


def test_logger_gets_one_row_per_epoch() -> None:
    learn = synth_learner()
    rows: list[list[Any]] = []
    learn.logger = rows.append
    with learn.no_bar():
        learn.fit(3)
    assert [r[0] for r in rows] == [0, 1, 2]
    assert all(r[1:3] == v for r, v in zip(rows, learn.recorder.values, strict=True))
    assert all(re.fullmatch(r"\d\d:\d\d", r[3]) for r in rows)


class CancelEpochs(Callback):
    """Cancels the given epochs at before_epoch, before the Recorder's turn (order 50)."""

    def __init__(self, *epochs: int) -> None:
        self.epochs = set(epochs)

    def before_epoch(self) -> None:
        if self.learn.epoch in self.epochs:
            raise CancelEpochException()


@pytest.mark.parametrize("add_time", [True, False])
def test_an_epoch_cancelled_before_the_recorders_first_before_epoch_fails_with_nothing_recorded(add_time: bool) -> None:
    # As fastai's: the Recorder has no row before its first before_epoch, so its after_epoch fails.
    learn = synth_learner(cbs=CancelEpochs(0))
    learn.recorder.add_time = add_time
    with learn.no_logging(), pytest.raises(AttributeError, match="'log'") as info:
        learn.fit(2)
    assert any("Recorder" in note and "after_epoch" in note for note in getattr(info.value, "__notes__", []))
    assert learn.recorder.values == []


def test_a_later_epoch_cancelled_before_the_recorder_repeats_the_row_before_it() -> None:
    # fastai's row is the last epoch's (with its time), and the time is appended to it again.
    learn = synth_learner(cbs=CancelEpochs(1))
    rows: list[list[Any]] = []
    learn.logger = lambda row: rows.append(list(row))  # the repeated row is the same list, changed in place
    with learn.no_bar():
        learn.fit(3)
    first, repeated, last = learn.recorder.values
    assert repeated[:2] == first and len(repeated) == 3 and last != first
    assert rows[1][0] == 0 and rows[1][:4] == rows[0] and len(rows[1]) == 5


def test_format_time() -> None:
    assert format_time(5.7) == "00:05"
    assert format_time(65) == "01:05"
    assert format_time(3725) == "1:02:05"


# ------------------------------------------------------------------ history per fit (fastai 2.8 behaviour)
def test_before_fit_wipes_the_history() -> None:
    # fastai 2.8's Recorder.before_fit empties lrs, iters, losses and values, so each fit starts afresh
    # (and validate/get_preds, which fire before_fit, replace them: fastai issue #4132).
    learn = synth_learner()
    learn.fit(3)
    assert len(learn.recorder.values) == 3 and len(learn.recorder.losses) == 6
    learn.fit(1)
    assert len(learn.recorder.values) == 1 and len(learn.recorder.losses) == 2 and len(learn.recorder.lrs) == 2
    assert learn.recorder.iters == [2]
    valid_loss = learn.validate()
    assert learn.recorder.values == [valid_loss] and learn.recorder.losses == []


def test_a_validate_inside_a_fit_completes_the_history_it_replaces() -> None:
    # Whoever holds the list of losses (TensorBoardCallback's unwritten points index into it) finds in it
    # every batch recorded before the validate(), also those whose smoothed loss was not computed yet.
    learn = synth_learner(n_train=64, bs=16)
    spy, held = LossSpy(), []

    def hold_the_losses() -> None:
        if learn.training and learn.iter == 0:
            held.append(learn.recorder.losses)  # computes the first one; the next three stay pending

    def validate() -> None:  # at the default order 0: before the Recorder has read the epoch's loss
        assert learn.recorder.n_losses == 4 and len(held[0]) == 1
        learn.validate()

    hold = Callback(after_batch=hold_the_losses)
    spy.order = hold.order = 51
    learn.fit(1, cbs=[spy, hold, Callback(after_train=validate)])
    assert held[0] is not learn.recorder.losses and learn.recorder.losses == []
    assert [float(t) for t in held[0]] == fastai_smoothed(spy.losses)


def test_smoothing_restarts_with_each_fit() -> None:
    learn = synth_learner()
    learn.fit(1)
    spy = LossSpy()
    learn.fit(1, cbs=spy)
    assert float(learn.recorder.losses[0]) == fastai_smoothed(spy.losses[:1])[0]
    assert float(learn.recorder.losses[0]) == pytest.approx(spy.losses[0], rel=2e-6)  # debiased: about the first loss


def test_recorded_losses_are_tensors_kept_without_syncing() -> None:
    learn = synth_learner()
    learn.fit(1)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in learn.recorder.losses)


# ------------------------------------------------------------------ logging switches
def test_no_logging_silences_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    learn = synth_learner()
    learn.logger = print
    with learn.no_logging():
        assert learn.logger is noop
        learn.fit(2)
    assert learn.logger is print
    assert capsys.readouterr().out == ""
    assert len(learn.recorder.values) == 2  # still recorded


def test_no_bar_removes_the_progress_callback(capsys: pytest.CaptureFixture[str]) -> None:
    learn = synth_learner()
    progress = learn.progress
    learn.logger = print
    with learn.no_bar() as yielded:
        assert yielded is learn  # as fastai's, the block gets the learner
        assert not any(isinstance(cb, ProgressCallback) for cb in learn.cbs) and not hasattr(learn, "progress")
        learn.fit(1)
    assert learn.progress is progress and progress in learn.cbs
    out = capsys.readouterr().out
    assert out.startswith("[0, ") and "epoch" not in out  # the bare logger prints the raw record


def test_state_dict_round_trip() -> None:
    learn = synth_learner()
    learn.fit(2)
    state = learn.recorder.state_dict()
    other = synth_learner()
    other.recorder.load_state_dict(state)
    assert other.recorder.values == learn.recorder.values and other.recorder.lrs == learn.recorder.lrs
    assert other.recorder.iters == learn.recorder.iters
    assert all(torch.equal(a, b) for a, b in zip(other.recorder.losses, learn.recorder.losses, strict=True))


@pytest.mark.parametrize("train_metrics", [False, True])
def test_row_values_put_each_value_under_its_name_when_a_phase_was_cancelled(train_metrics: bool) -> None:
    def cancel() -> None:
        if learn.epoch == 1:
            raise CancelTrainException
        if learn.epoch == 2:
            raise CancelValidException

    learn = synth_classif_learner(metrics=[accuracy])
    learn.remove_cb(learn.recorder)
    learn.add_cb(Recorder(train_metrics=train_metrics))
    learn.fit(3, cbs=Callback(before_train=lambda: learn.epoch == 1 and cancel(),
                              before_validate=lambda: learn.epoch == 2 and cancel()))
    rec, n = learn.recorder, 2 if train_metrics else 1
    full, no_train, no_valid = rec.values
    assert rec.row_values(0) == full
    assert rec.row_values(1) == [None] * n + no_train and rec.row_values(2) == no_valid + [None] * 2
    other = synth_classif_learner(metrics=[accuracy])
    other.remove_cb(other.recorder)
    other.add_cb(Recorder(train_metrics=train_metrics))
    other.recorder.metric_names = rec.metric_names
    other.recorder.load_state_dict(rec.state_dict())  # the layouts travel with the values (resuming)
    assert [other.recorder.row_values(i) for i in range(3)] == [rec.row_values(i) for i in range(3)]


def test_row_values_of_a_validate_leave_the_training_columns_empty() -> None:
    # validate() runs no training phase: its row is [valid_loss, accuracy], which row_values (and so plot_metrics)
    # laid out under train_loss and valid_loss.
    learn = synth_classif_learner(metrics=[accuracy])
    learn.fit(1)
    valid_loss, acc = learn.validate()
    assert learn.recorder.row_values(0) == [None, valid_loss, acc]
    learn.get_preds(with_loss=True)
    assert learn.recorder.row_values(0)[0] is None


def test_recorder_skips_batches_without_targets() -> None:
    x = torch.randn(4, 2)
    learn = Learner(DataLoaders([(x,)], [(x,)], device="cpu"), torch.nn.Linear(2, 1), loss_func=F.mse_loss)
    learn.logger = noop
    with pytest.warns(UserWarning, match="have no targets"):
        learn.fit(1)
    # As fastai: the smoothed loss of no batch is nan (0 / 0), the average validation loss of none is None.
    assert learn.recorder.losses == [] and len(learn.recorder.values) == 1
    train_loss, valid_loss = learn.recorder.values[0]
    assert isinstance(train_loss, float) and math.isnan(train_loss) and valid_loss is None
    assert getattr(learn, "smooth_loss", None) is None  # never set, as in fastai


def test_a_fit_without_training_batches_keeps_the_last_smooth_loss() -> None:
    learn = synth_learner()
    learn.fit(1)
    last = float(learn.smooth_loss)
    x = torch.randn(4, 2)
    learn.dls = DataLoaders([(x,)], [(x,)], device="cpu")  # targetless: no batch is recorded
    with pytest.warns(UserWarning, match="have no targets"):
        learn.fit(1)
    assert math.isnan(learn.recorder.values[0][0]) and float(learn.smooth_loss) == last
    learn.validate()
    assert float(learn.smooth_loss) == last


# ------------------------------------------------------------------ smoothed losses, computed when read
class SmoothLossReader(Callback):
    """After the Recorder, every training batch: counts the recorded losses, then reads them and learn.smooth_loss."""

    order = Recorder.order + 1

    def __init__(self) -> None:
        self.counted: list[int] = []
        self.read: list[int] = []
        self.smooth: list[float] = []

    def after_batch(self) -> None:
        if self.learn.training:
            recorder = self.learn.recorder
            self.counted.append(recorder.n_losses)
            self.read.append(len(recorder.losses))
            self.smooth.append(float(self.learn.smooth_loss))


def test_recorded_losses_are_float32_scalars_of_the_smoothed_batch_losses() -> None:
    learn = synth_learner()  # 2 training batches per epoch
    spy = LossSpy()
    learn.fit(3, cbs=spy)
    rec = learn.recorder
    assert rec.n_losses == 6  # counted without computing them
    losses = rec.losses
    assert len(losses) == 6 == len(spy.losses)
    assert all(isinstance(t, torch.Tensor) and t.shape == () and t.dtype == torch.float32 for t in losses)
    assert [float(t) for t in losses] == fastai_smoothed(spy.losses)
    assert float(learn.smooth_loss) == float(losses[-1])
    assert rec.losses is losses and rec.n_losses == len(rec.losses)


@pytest.mark.parametrize("beta", [0.5, 0.7])  # 1 - beta**n is 1.0 in float32 from batch 25 (0.5) or 49 (0.7) on
@pytest.mark.parametrize("read_mid_fit", [False, True])
def test_recorded_losses_are_fastais_past_the_batch_where_debiasing_stops(beta: float, read_mid_fit: bool) -> None:
    learn = synth_learner(n_train=64, bs=2)  # 32 training batches per epoch
    learn.recorder.smooth_loss.beta = beta
    spy = LossSpy()
    learn.fit(2, cbs=[spy, SmoothLossReader()] if read_mid_fit else spy)
    assert len(spy.losses) == 64
    assert [float(t) for t in learn.recorder.losses] == fastai_smoothed(spy.losses, beta)  # bit for bit
    assert float(learn.smooth_loss) == fastai_smoothed(spy.losses, beta)[-1]


def test_reading_the_losses_mid_fit_does_not_change_them() -> None:
    reader = SmoothLossReader()
    read = synth_learner()
    read.fit(3, cbs=reader)
    unread = synth_learner()
    unread.fit(3)
    assert reader.counted == reader.read == [1, 2, 3, 4, 5, 6]
    assert reader.smooth == [float(t) for t in read.recorder.losses]
    assert torch.equal(torch.stack(read.recorder.losses), torch.stack(unread.recorder.losses))


def test_recorded_losses_can_be_cut_in_place_or_replaced() -> None:
    learn = synth_learner()
    learn.fit(2)
    rec = learn.recorder
    first = [float(t) for t in rec.losses]
    del rec.losses[2:]
    assert [float(t) for t in rec.losses] == first[:2] and rec.n_losses == 2
    rec.losses[1:] = [torch.tensor(7.0)]
    assert [float(t) for t in rec.losses] == [first[0], 7.0]
    learn.fit(1)
    rec.losses = [torch.tensor(1.0)]  # before reading: the new fit's values not read yet are dropped too
    assert rec.n_losses == 1 and [float(t) for t in rec.losses] == [1.0]


def test_smooth_loss_is_missing_before_a_batch_is_recorded_or_without_a_recorder() -> None:
    learn = synth_learner()
    assert getattr(learn, "smooth_loss", None) is None
    learn.fit(1)
    assert isinstance(learn.smooth_loss, torch.Tensor)
    learn.remove_cbs([ProgressCallback, Recorder])
    assert getattr(learn, "smooth_loss", None) is None
    bare = synth_learner(default_cbs=False, cbs=TrainEvalCallback)
    bare.fit(1)
    assert getattr(bare, "smooth_loss", None) is None
    bare.smooth_loss = 1.0  # without a Recorder it is a plain attribute, as in fastai
    assert bare.smooth_loss == 1.0


def test_smooth_loss_is_read_from_a_recorder_subclass_under_another_name() -> None:
    class MyRecorder(Recorder):
        pass

    learn = synth_learner(default_cbs=False, cbs=[TrainEvalCallback, MyRecorder])
    learn.fit(1)
    assert float(learn.smooth_loss) == float(learn.my_recorder.losses[-1])


def test_recorder_state_from_before_the_average_was_kept_on_the_host_loads() -> None:
    learn = synth_learner()
    learn.fit(1)
    state = learn.recorder.state_dict()
    count, debiased = state["smooth_loss"]["count"], float(learn.smooth_loss)
    state["smooth_loss"] = {"count": count, "_avg": torch.tensor(debiased), "beta": 0.98}  # the old layout
    learn.recorder.load_state_dict(state)
    assert float(learn.smooth_loss) == pytest.approx(debiased, rel=1e-6)


def test_setting_smooth_loss_sets_the_recorders_average() -> None:
    learn = synth_learner()
    learn.fit(1)
    before = float(learn.smooth_loss)
    learn.smooth_loss = 2.0
    assert before != pytest.approx(2.0) and float(learn.smooth_loss) == pytest.approx(2.0, rel=1e-7)
    value = learn.recorder.smooth_loss.value
    assert value is not None and float(value) == pytest.approx(2.0, rel=1e-7)


class SetsSmoothLoss(Callback):
    """Sets learn.smooth_loss after the Recorder has recorded the first training batch."""

    order = Recorder.order + 1

    def after_batch(self) -> None:
        if self.learn.training and self.learn.train_iter == 1:
            self.learn.smooth_loss = 10.0


def test_batches_after_setting_smooth_loss_carry_on_from_the_new_value() -> None:
    beta, spy = 0.98, LossSpy()
    learn = synth_learner()
    learn.fit(2, cbs=[spy, SetsSmoothLoss()])
    val, expected = 10.0 * (1 - beta), []
    for n, x in enumerate(spy.losses[1:], start=2):
        val = beta * val + (1 - beta) * x
        expected.append(val / (1 - beta**n))
    losses = [float(t) for t in learn.recorder.losses]
    assert losses[0] == pytest.approx(spy.losses[0], rel=1e-6)  # recorded before the change: kept
    assert losses[1:] == pytest.approx(expected, rel=1e-6)


def test_smooth_loss_outlives_validate_and_the_start_of_the_next_fit() -> None:
    # As in fastai, where validate() runs before_fit (resetting the Recorder's average) but learn.smooth_loss
    # stays what the last training batch left until the next one is recorded.
    learn = synth_learner()
    learn.fit(1)
    last = float(learn.recorder.losses[-1])
    learn.validate()
    assert learn.recorder.losses == [] and float(learn.smooth_loss) == last
    seen: list[float] = []
    learn.fit(1, cbs=Callback(before_batch=lambda: seen.append(float(learn.smooth_loss))))
    assert seen[0] == last and seen[1] == float(learn.recorder.losses[0])
    learn.validate()
    learn.smooth_loss = 3.0  # nothing recorded since validate(): sets the value kept from the fit
    assert float(learn.smooth_loss) == 3.0


# ------------------------------------------------------------------ non-finite losses
class PoisonPred(Callback):
    """Multiplies the model's output by NaN from `epoch` on, in the phases given."""

    def __init__(self, epoch: int, training: bool = True, validation: bool = True) -> None:
        self.epoch, self.phases = epoch, {True: training, False: validation}

    def after_pred(self) -> None:
        learn = self.learn
        if learn.epoch >= self.epoch and self.phases[learn.training]:
            learn.pred = learn.pred * math.nan


def _non_finite(record: list[Any]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, NonFiniteLossWarning)]


def test_a_nan_training_loss_is_warned_of_once_a_fit_at_the_callers_line() -> None:
    learn = synth_learner()
    with pytest.warns(NonFiniteLossWarning) as record:
        learn.fit(3, cbs=PoisonPred(epoch=1))
    messages = _non_finite(record.list)
    assert len(messages) == 1  # not again for the validation loss, nor for epoch 2
    assert messages[0].startswith("The training loss of epoch 1 is nan: training has diverged")
    assert "Lower the learning rate" in messages[0] and "TerminateOnNaNCallback()" in messages[0]
    assert record.list[0].filename == __file__  # the warning points at the fit call, not inside learnloop
    assert math.isnan(learn.recorder.values[1][0]) and not math.isnan(learn.recorder.values[0][0])  # values as before
    with pytest.warns(NonFiniteLossWarning, match="training loss of epoch 0 is nan"):  # and again in the next fit
        learn.fit(1, cbs=PoisonPred(epoch=0))


def test_a_nan_validation_loss_is_warned_of(recwarn: pytest.WarningsRecorder) -> None:
    learn = synth_learner()
    learn.fit(1, cbs=PoisonPred(epoch=0, training=False))
    assert [m.split(":")[0] for m in _non_finite(recwarn.list)] == ["The validation loss is nan"]
    learn.validate(cbs=PoisonPred(epoch=0, training=False))
    assert len(_non_finite(recwarn.list)) == 2


def test_finite_losses_raise_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    synth_learner().fit(2)
    assert _non_finite(recwarn.list) == []


def test_no_warning_for_the_nan_of_an_epoch_without_training_batches(recwarn: pytest.WarningsRecorder) -> None:
    learn = synth_learner()
    x = torch.randn(4, 2)
    learn.dls = DataLoaders([(x,)], [(x,)], device="cpu")  # targetless: no batch is recorded
    with pytest.warns(UserWarning, match="have no targets"):
        learn.fit(1)
    assert math.isnan(learn.recorder.values[0][0])
    assert _non_finite(recwarn.list) == []


def test_an_infinite_loss_is_warned_of_too() -> None:
    learn = synth_learner()

    class Infinite(Callback):
        def after_pred(self) -> None:
            if not self.learn.training:
                self.learn.pred = self.learn.pred + math.inf

    with pytest.warns(NonFiniteLossWarning, match="The validation loss is inf: training has diverged"):
        learn.fit(1, cbs=Infinite())


class ValidateAt(Callback):
    """Calls learn.validate() at `event` of the fit (not at the same event of that validate() itself)."""

    order = 100

    def __init__(self, event: str) -> None:
        self.inside = False
        setattr(self, event, self._validate)

    def _validate(self) -> None:
        if not self.inside:
            self.inside = True
            self.learn.validate()
            self.inside = False


@pytest.mark.parametrize("event", ["after_epoch", "after_fit"])
def test_a_validate_called_inside_a_fit_does_not_warn_again(event: str, recwarn: pytest.WarningsRecorder) -> None:
    learn = synth_learner()
    learn.fit(3, cbs=[PoisonPred(epoch=0), ValidateAt(event)])
    assert [m.split(":")[0] for m in _non_finite(recwarn.list)] == ["The training loss of epoch 0 is nan"]
    learn.validate(cbs=PoisonPred(epoch=0))  # after the fit: a new run, warned of again
    assert len(_non_finite(recwarn.list)) == 2


def test_no_warning_from_lr_find_or_get_preds(recwarn: pytest.WarningsRecorder) -> None:
    learn = synth_learner(n_train=64)
    learn.lr_find(start_lr=1e-2, end_lr=1e12, num_it=20, stop_div=False, show_plot=False)  # runs into nan
    assert any(math.isnan(float(x)) for x in learn.recorder.losses)
    learn.get_preds(with_loss=True, cbs=PoisonPred(epoch=0))  # a nan loss nobody asked to be warned of
    assert _non_finite(recwarn.list) == []


def test_a_recorder_removed_by_an_earlier_callback_at_before_epoch_still_gets_that_event() -> None:
    # As in fastai: the event's list was made before the removal, so the Recorder is called without a learner.
    learn = synth_learner()

    class DropRecorder(Callback):
        def before_epoch(self) -> None:
            if learn.epoch == 1:
                learn.remove_cb(learn.recorder)

    learn.fit(2, cbs=DropRecorder())
    assert not any(isinstance(cb, Recorder) for cb in learn.cbs)


def test_a_fit_whose_training_batches_have_no_targets_warns_that_nothing_was_trained() -> None:
    # A loader over a bare tensor yields no targets: no loss, no step, a train_loss of nan and, as in fastai (which
    # records no loss for such batches either), no word of it until now. Once a fit; a loader with targets is quiet.
    dls = DataLoaders(DataLoader(torch.randn(16, 2), batch_size=4), DataLoader(torch.randn(8, 2), batch_size=4))
    learn = Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())
    learn.logger = lambda *_: None
    weight = learn.model.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"epoch 0 have no targets .* took no optimizer step") as w:
        learn.fit(2)
    assert len([x for x in w if "no targets" in str(x.message)]) == 1
    assert torch.equal(weight, learn.model.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synth_learner().fit(1)
        learn.validate()  # validation and predictions without targets are fine
