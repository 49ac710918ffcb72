"""Trackers: EarlyStopping, SaveModel, ReduceLROnPlateau; when they act, what they save, their state."""

from __future__ import annotations

import operator
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import learnloop.callbacks.save_model as save_model_module
import learnloop.callbacks.tracker as tracker_module
from conftest import synth_classif_learner, synth_learner
from learnloop import Callback, CancelEpochException, CancelTrainException, CancelValidException, Learner, Recorder
from learnloop.callbacks.tracker import (
    EarlyStoppingCallback,
    ReduceLROnPlateau,
    SaveModelCallback,
    TrackerCallback,
    UnrecordedMonitorError,
)
from learnloop.errors import ArgumentError, InputError
from learnloop.metrics import accuracy


class Script(Callback):
    """Overwrites the monitored value the Recorder just recorded with scripted values, epoch by epoch."""

    order = 55  # after the Recorder (50), before the trackers (60+)

    def __init__(self, values: list[float], idx: int = 1) -> None:
        self.values, self.idx = values, idx

    def after_epoch(self) -> None:
        row = self.learn.recorder.values[-1]
        if len(row) > self.idx:
            row[self.idx] = self.values[self.learn.epoch]


class EpochsRun(Callback):
    order = 100

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.lrs: list[float] = []

    def after_epoch(self) -> None:
        self.epochs.append(self.learn.epoch)
        self.lrs.append(self.learn.opt.hypers[-1]["lr"])


def spy_saves(learn: Learner) -> list[tuple[int, str, dict[str, torch.Tensor]]]:
    """Record every learn.save: the epoch, the name, and a copy of the model's weights at that moment."""
    saves: list[tuple[int, str, dict[str, torch.Tensor]]] = []
    save = learn.save

    def spy(name: Any, with_opt: bool = True) -> Path:
        saves.append((learn.epoch, str(name), {k: v.clone() for k, v in learn.model.state_dict().items()}))
        return save(name, with_opt=with_opt)

    learn.save = spy  # type: ignore[method-assign,assignment]
    return saves


def late(**hooks: Any) -> Callback:
    """A callback running after every tracker."""
    cb = Callback(**hooks)
    cb.order = 100
    return cb


def weights(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


# ---------------------------------------------------------------------------------- the base
def test_tracker_order_runs_after_the_recorder() -> None:
    assert TrackerCallback.order == 60
    assert (SaveModelCallback.order, ReduceLROnPlateau.order, EarlyStoppingCallback.order) == (61, 62, 63)


def test_comparison_defaults_from_the_monitor_name() -> None:
    assert TrackerCallback("valid_loss").comp is np.less
    assert TrackerCallback("error_rate").comp is np.less
    assert TrackerCallback("accuracy").comp is np.greater
    assert TrackerCallback("valid_loss", min_delta=0.1).min_delta == -0.1
    assert TrackerCallback("accuracy", min_delta=0.1).min_delta == 0.1


def test_min_delta_keeps_its_sign_and_is_negated_when_lower_is_better() -> None:
    # fastai's rule (`min_delta *= -1` for np.less), so a negative min_delta is a tolerance, not a margin.
    assert TrackerCallback("valid_loss", min_delta=-0.05).min_delta == 0.05
    assert TrackerCallback("accuracy", min_delta=-0.05).min_delta == -0.05
    assert TrackerCallback("valid_loss", comp=np.greater, min_delta=-0.05).min_delta == -0.05
    assert TrackerCallback("accuracy", comp=np.less, min_delta=0.05).min_delta == -0.05
    # Other comparisons have their direction inferred, and the same rule applied.
    assert TrackerCallback("valid_loss", comp=operator.lt, min_delta=0.06).min_delta == -0.06
    assert TrackerCallback("valid_loss", comp=operator.lt, min_delta=-0.06).min_delta == 0.06
    assert TrackerCallback("accuracy", comp=operator.gt, min_delta=-0.06).min_delta == -0.06
    assert str(TrackerCallback("valid_loss").min_delta) == "-0.0"  # fastai's 0. * -1
    assert str(TrackerCallback("accuracy").min_delta) == "0.0"


@pytest.mark.parametrize("comp, values, epochs, stopped_at", [
    # fastai's numbers: with a tolerance of 0.05 slightly worse values count as improvements (and become the best).
    (np.less, [0.5, 0.3, 0.32, 0.34, 0.2, 0.1], 6, None),
    (np.greater, [0.1, 0.3, 0.28, 0.25, 0.4, 0.1], 6, 4),
])
def test_a_negative_min_delta_is_a_tolerance(
    comp: Any, values: list[float], epochs: int, stopped_at: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    learn = synth_learner()
    learn.fit(6, cbs=[Script(values), EarlyStoppingCallback(comp=comp, min_delta=-0.05)])
    assert len(learn.recorder.values) == epochs
    out = capsys.readouterr().out
    assert out == ("" if stopped_at is None else f"No improvement since epoch {stopped_at}: early stopping\n")


def test_tracker_keeps_the_best_and_flags_new_bests() -> None:
    learn = synth_learner()
    tracker = TrackerCallback()
    flags: list[bool] = []
    learn.fit(4, cbs=[Script([1.0, 0.5, 0.7, 0.4]), tracker,
                      late(after_epoch=lambda: flags.append(tracker.new_best))])
    assert flags == [True, True, False, True]
    assert tracker.best == 0.4


def test_min_delta_asks_for_a_big_enough_improvement() -> None:
    learn = synth_learner()
    tracker = TrackerCallback(min_delta=0.1)
    flags: list[bool] = []
    learn.fit(4, cbs=[Script([1.0, 0.95, 0.85, 0.7]), tracker,
                      late(after_epoch=lambda: flags.append(tracker.new_best))])
    assert flags == [True, False, True, True]


def test_a_custom_comparison_sets_the_direction() -> None:
    learn = synth_learner()
    tracker = TrackerCallback(monitor="valid_loss", comp=operator.gt)
    learn.fit(3, cbs=[Script([1.0, 0.5, 2.0]), tracker])
    assert tracker.best == 2.0


def test_monitoring_a_metric_reads_its_column() -> None:
    learn = synth_classif_learner(metrics=accuracy)
    tracker = TrackerCallback(monitor="accuracy")
    learn.fit(3, cbs=[Script([0.5, 0.9, 0.8], idx=2), tracker])
    assert tracker.idx == 2 and tracker.best == 0.9


@pytest.mark.parametrize("cls", [TrackerCallback, EarlyStoppingCallback, SaveModelCallback, ReduceLROnPlateau])
def test_a_comparison_that_is_not_a_function_is_refused_when_made(cls: type[TrackerCallback]) -> None:
    # fastai stores it and fails at the first epoch with "'str' object is not callable"; a TypeError here too.
    with pytest.raises(ArgumentError, match=rf"{cls.__name__}: comp must be a function.*np.less.*got 'less'"):
        cls(comp="less")


@pytest.mark.parametrize("monitor", ["valid_los", "time", "epoch", "accuracy"])
def test_an_unrecorded_monitor_is_a_clear_error_before_any_batch(monitor: str) -> None:
    learn = synth_learner()
    batches: list[int] = []
    w = weights(learn)
    with pytest.raises(ValueError, match=rf"monitors '{monitor}', which is not recorded; the recorded values are "
                                         r"\['train_loss', 'valid_loss'\]"):
        learn.fit(1, cbs=[EarlyStoppingCallback(monitor=monitor), Callback(before_batch=lambda: batches.append(1))])
    assert batches == [] and all(torch.equal(w[k], v) for k, v in weights(learn).items())


@pytest.mark.parametrize("cls", [EarlyStoppingCallback, ReduceLROnPlateau])
def test_a_metric_the_recorder_never_records_is_a_clear_error(cls: type[TrackerCallback]) -> None:
    # Under Recorder(valid_metrics=False) 'accuracy' is in metric_names but in no row: the tracker would never act.
    learn = synth_classif_learner(metrics=[accuracy])
    learn.remove_cb(learn.recorder)
    learn.add_cb(Recorder(valid_metrics=False))
    # Refused where fastai's fails reading it (an IndexError), at the first epoch's end: a fit that stops before
    # (a NaN loss, TerminateOnNaN) ends as fastai's.
    batches: list[int] = []
    with pytest.raises(UnrecordedMonitorError, match=rf"{cls.__name__} monitors 'accuracy', which the Recorder never "
                                                     r"records.*valid_metrics=False.*\['train_loss'\]"):
        learn.fit(2, cbs=[cls(monitor="accuracy"), Callback(after_batch=lambda: batches.append(1))])
    assert len(batches) == len(learn.dls.train) + len(learn.dls.valid)  # the first epoch ran
    assert issubclass(UnrecordedMonitorError, IndexError) and issubclass(UnrecordedMonitorError, ValueError)
    learn.remove_cb(learn.recorder)
    learn.add_cb(Recorder(valid_metrics=False, train_metrics=True))  # the training phase records it
    es = EarlyStoppingCallback(monitor="accuracy")
    learn.fit(1, cbs=es)
    assert es.best == learn.recorder.values[0][1]


def test_the_state_is_reset_at_before_fit() -> None:
    learn = synth_learner()
    es = EarlyStoppingCallback(patience=5)
    seen: list[tuple[Any, ...]] = []
    learn.add_cbs([es, late(before_fit=lambda: seen.append((es.best, es.wait, hasattr(es, "new_best"))))])
    learn.fit(2, cbs=Script([1.0, 2.0]))
    assert (es.best, es.wait, es.new_best) == (1.0, 1, False)
    learn.fit(1, cbs=Script([3.0]))
    # As fastai's: best and wait are reset by before_fit itself, not later; new_best is only set by after_epoch.
    assert seen == [(float("inf"), 0, False), (float("inf"), 0, True)]
    assert es.best == 3.0 and es.new_best is True  # 3.0 beats the reset best, not the previous fit's 1.0


def test_trackers_are_reset_but_do_not_judge_in_validate_and_get_preds() -> None:
    learn = synth_learner()
    es, kept = EarlyStoppingCallback(patience=3), EarlyStoppingCallback(patience=3, reset_on_fit=False)
    learn.add_cbs([es, kept])
    learn.fit(2, cbs=Script([1.0, 2.0]))
    assert (es.best, es.wait, kept.best, kept.wait) == (1.0, 1, 1.0, 1)
    for run in (learn.validate, learn.get_preds):
        run()
        # before_fit resets them as in a fit (wait always, best with reset_on_fit); the epoch is not judged.
        assert (es.best, es.wait, kept.best, kept.wait) == (float("inf"), 0, 1.0, 0)


def cancel_at(learn: Learner, event: str, exc: type[Exception], epoch: int = 1) -> Callback:
    """A callback running before the Recorder and the trackers that raises `exc` at `event` of `epoch`."""

    def cancel() -> None:
        if learn.epoch == epoch:
            raise exc

    cb = Callback(**{event: cancel})
    cb.order = 5
    return cb


def test_an_epoch_whose_validation_is_cancelled_is_judged_on_train_loss() -> None:
    # As fastai's: the train loss is in the row, so the epoch counts (learnloop used to skip it).
    learn = synth_learner()
    tracker = TrackerCallback(monitor="train_loss")
    flags: list[bool] = []
    learn.fit(3, cbs=[Script([1.0, 0.5, 0.7], idx=0), cancel_at(learn, "before_validate", CancelValidException),
                      tracker, late(after_epoch=lambda: flags.append(tracker.new_best))])
    assert [len(row) for row in learn.recorder.values] == [2, 1, 2]
    assert flags == [True, True, False] and tracker.best == 0.5


def test_an_epoch_whose_training_is_cancelled_is_judged_on_valid_loss() -> None:
    # The row is [valid_loss] alone: its value is read under its own name (fastai's reads past the row's end).
    # Script leaves that row alone (it has no index 1): epoch 1 is judged on its real valid loss.
    learn = synth_learner()
    tracker = TrackerCallback()
    flags: list[bool] = []
    learn.fit(3, cbs=[Script([100.0, 0.0, 90.0]), cancel_at(learn, "before_train", CancelTrainException),
                      tracker, late(after_epoch=lambda: flags.append(tracker.new_best))])
    valid_loss = learn.recorder.values[1]
    assert len(valid_loss) == 1 and valid_loss[0] < 90.0
    assert flags == [True, True, False] and tracker.best == valid_loss[0]


def test_an_epoch_cancelled_during_validation_is_judged_on_train_loss_only() -> None:
    learn = synth_learner()
    on_train, on_valid = TrackerCallback(monitor="train_loss"), EarlyStoppingCallback(patience=1)
    flags: list[tuple[bool, Any]] = []
    learn.fit(3, cbs=[Script([1.0, 0.5, 0.7], idx=0), cancel_at(learn, "before_validate", CancelEpochException),
                      on_train, on_valid, late(after_epoch=lambda: flags.append((on_train.new_best, on_valid.wait)))])
    assert [len(row) for row in learn.recorder.values] == [2, 1, 2]
    assert flags[1] == (True, 0) and on_train.best == 0.5  # valid_loss has no value in epoch 1: not counted


@pytest.mark.parametrize("order, row", [(55, [2, 2, 2]), (5, [2, 1, 2])])
def test_an_epoch_cancelled_at_after_validate_is_judged_on_what_the_recorder_recorded(
    order: int, row: list[int]
) -> None:
    # After the Recorder (order 55), the row is complete and the epoch is judged on both losses, as in fastai;
    # before it (order 5), the Recorder's after_validate is skipped: the row holds train_loss alone.
    learn = synth_learner()
    on_train, on_valid = TrackerCallback(monitor="train_loss"), TrackerCallback()
    flags: list[tuple[bool, bool]] = []
    cancel = cancel_at(learn, "after_validate", CancelEpochException)
    cancel.order = order
    learn.fit(3, cbs=[Script([1.0, 0.5, 0.7], idx=0), cancel, on_train, on_valid,
                      late(after_epoch=lambda: flags.append((on_train.new_best, on_valid.new_best)))])
    assert [len(r) for r in learn.recorder.values] == row
    assert flags[1][0] and on_train.best == 0.5  # train_loss: judged either way
    valid_losses = [r[1] for r in learn.recorder.values if len(r) == 2]
    assert on_valid.best == min(valid_losses)  # valid_loss: judged where the row holds it
    assert flags[1][1] == (order == 55 and learn.recorder.values[1][1] < learn.recorder.values[0][1])


@pytest.mark.parametrize("cancel, monitor, at", [
    (CancelTrainException, "valid_accuracy", 1), (CancelValidException, "train_accuracy", 1),
    (CancelTrainException, "train_accuracy", None), (CancelValidException, "valid_loss", None),
])
def test_a_cancelled_phase_with_train_metrics(cancel: type[Exception], monitor: str, at: int | None) -> None:
    # Recorder(train_metrics=True) rows: train_loss, train_accuracy, valid_loss, valid_accuracy, less a cancelled
    # phase's values; the monitored one is found under its name, or the epoch is skipped.
    learn = synth_classif_learner(metrics=accuracy)
    learn.recorder.train_metrics = True
    event = "before_train" if cancel is CancelTrainException else "before_validate"
    tracker = TrackerCallback(monitor=monitor)
    learn.fit(1, cbs=[cancel_at(learn, event, cancel, epoch=0), tracker])
    row = learn.recorder.values[0]
    assert len(row) == 2
    worst = float("inf") if monitor.endswith("loss") else -float("inf")
    assert tracker.best == (worst if at is None else row[at])


@pytest.mark.parametrize("add_time", [True, False])
def test_an_epoch_cancelled_before_it_starts_is_not_judged(tmp_path: Path, add_time: bool) -> None:
    # Cancelled at before_epoch before the Recorder ran, the epoch's row repeats the last one's values (fastai's
    # trackers count it as no improvement); learnloop's skip it, whatever the row holds.
    learn = synth_learner(path=tmp_path)
    learn.recorder.add_time = add_time
    saves = spy_saves(learn)
    es, run = EarlyStoppingCallback(patience=1), EpochsRun()
    learn.fit(3, cbs=[Script([1.0, 2.0, 0.5]), cancel_at(learn, "before_epoch", CancelEpochException), es,
                      SaveModelCallback(every_epoch=True), run])
    assert run.epochs == [0, 1, 2] and es.best == 0.5
    assert [e for e, _, _ in saves] == [0, 2]  # every_epoch writes only the epochs trained


@pytest.mark.parametrize("event, exc, saved", [
    ("before_train", CancelTrainException, [0, 1, 2]),  # as fastai's: the epoch's training phase began
    ("after_batch", CancelTrainException, [0, 1, 2]),
    ("after_batch", CancelEpochException, [0, 1, 2]),
    ("before_train", CancelEpochException, [0, 2]),  # ahead of the tracker: its training never began (fastai: saved)
    ("before_epoch", CancelEpochException, [0, 2]),
])
def test_every_epoch_saves_the_epochs_whose_training_began(
    tmp_path: Path, event: str, exc: type[Exception], saved: list[int]
) -> None:
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    cancel = cancel_at(learn, event, exc)
    cancel.run_valid = False  # after_batch: training batches only
    learn.fit(3, cbs=[cancel, SaveModelCallback(every_epoch=True)])
    assert [(e, n) for e, n, _ in saves] == [(e, f"model_{e}") for e in saved]


@pytest.mark.parametrize("at_end", [False, True])
def test_a_fit_whose_training_is_cancelled_at_once_saves_or_loads_at_its_end(tmp_path: Path, at_end: bool) -> None:
    # Every epoch's training is cancelled at before_train, ahead of the tracker: the epochs count as trained (as
    # for every_epoch), so the fit's end saves (at_end) or loads the best back, as fastai's after_fit always does.
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    loads: list[str] = []
    load = learn.load

    def spy_load(name: Any, **kwargs: Any) -> Any:
        loads.append(str(name))
        return load(name, **kwargs)

    learn.load = spy_load  # type: ignore[method-assign]
    cancel = cancel_at(learn, "before_train", CancelTrainException, epoch=0)
    learn.fit(2, cbs=[Script([1.0, 2.0]), cancel, cancel_at(learn, "before_train", CancelTrainException, epoch=1),
                      SaveModelCallback(at_end=at_end)])
    assert [len(row) for row in learn.recorder.values] == [1, 1]  # no training ran: valid_loss alone
    assert [(e, n) for e, n, _ in saves] == ([(0, "model"), (1, "model")] if at_end else [(0, "model")])
    assert loads == ([] if at_end else ["model"])


def test_epochs_with_a_cancelled_validation_are_not_judged() -> None:
    learn = synth_learner()
    es = EarlyStoppingCallback(patience=1)

    def cancel_valid() -> None:
        if learn.epoch == 1:
            raise CancelValidException

    run = EpochsRun()
    learn.fit(3, cbs=[Script([1.0, 9.0, 0.5]), Callback(before_validate=cancel_valid), es, run])
    assert run.epochs == [0, 1, 2] and es.best == 0.5


# ----------------------------------------------------------------------------------- EarlyStopping
def test_early_stopping_stops_after_patience_epochs_without_improvement() -> None:
    learn = synth_learner()
    run, events = EpochsRun(), []
    learn.fit(10, cbs=[Script([1.0, 0.8, 0.9, 0.85, 0.81, 0.7, 0.6, 0.5, 0.4, 0.3]),
                       EarlyStoppingCallback(patience=3), run,
                       Callback(after_cancel_fit=lambda: events.append("after_cancel_fit"))])
    assert run.epochs == [0, 1, 2, 3]  # epoch 4 is the third without improvement: after_epoch stops the fit there
    assert len(learn.recorder.values) == 5 and events == ["after_cancel_fit"]


def test_early_stopping_patience_one_and_a_recovery_resets_the_wait() -> None:
    learn = synth_learner()
    es = EarlyStoppingCallback(patience=2)
    waits: list[int] = []
    learn.fit(6, cbs=[Script([1.0, 1.1, 0.9, 1.0, 1.2, 0.1]), es, late(after_epoch=lambda: waits.append(es.wait))])
    assert len(learn.recorder.values) == 5 and es.wait == 2


def test_early_stopping_on_accuracy() -> None:
    learn = synth_classif_learner(metrics=accuracy)
    learn.fit(10, cbs=[Script([0.5, 0.6, 0.6, 0.55] + [0.9] * 6, idx=2),
                       EarlyStoppingCallback(monitor="accuracy", patience=2)])
    assert len(learn.recorder.values) == 4


def test_reset_on_fit_false_carries_the_best_between_fits() -> None:
    learn = synth_learner()
    es = EarlyStoppingCallback(patience=1, reset_on_fit=False)
    learn.fit(1, cbs=[Script([0.5]), es])
    learn.fit(3, cbs=[Script([0.6, 0.1, 0.1]), es])
    assert len(learn.recorder.values) == 1 and es.best == 0.5
    es2 = EarlyStoppingCallback(patience=1)
    learn.fit(1, cbs=[Script([0.5]), es2])
    learn.fit(3, cbs=[Script([0.6, 0.1, 0.1]), es2])
    assert len(learn.recorder.values) == 3 and es2.best == 0.1


# -------------------------------------------------------------------------------------- SaveModel
def test_save_model_saves_in_the_improving_epoch_and_reloads_the_best(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    mtimes: dict[int, float] = {}
    file = tmp_path / "models" / "best.pth"

    def note_mtime() -> None:
        mtimes[learn.epoch] = os.stat(file).st_mtime_ns if file.exists() else 0
        time.sleep(0.01)

    learn.fit(4, cbs=[Script([1.0, 0.7, 0.9, 0.8]), SaveModelCallback(fname="best"),
                      late(after_epoch=note_mtime)])
    assert [(e, n) for e, n, _ in saves] == [(0, "best"), (1, "best")]
    assert mtimes[0] < mtimes[1] == mtimes[2] == mtimes[3]  # written in epochs 0 and 1, not later
    best = saves[1][2]
    final = weights(learn)
    assert all(torch.equal(final[k], best[k]) for k in best)


def test_save_model_with_opt(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.fit(2, cbs=SaveModelCallback(with_opt=True))
    state = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert set(state) == {"model", "opt"}
    learn.fit(1, cbs=SaveModelCallback(fname="plain"))
    assert "weight" in torch.load(tmp_path / "models" / "plain.pth", weights_only=True)


@pytest.mark.parametrize("every, names", [(True, ["m_0", "m_1", "m_2", "m_3"]), (2, ["m_0", "m_2"]),
                                          (2.0, ["m_0", "m_2"]), (np.int64(3), ["m_0", "m_3"])])
def test_save_every_epoch_and_no_reload(tmp_path: Path, every: bool | float, names: list[str]) -> None:
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    trained: list[dict[str, torch.Tensor]] = []
    learn.fit(4, cbs=[Script([1.0, 0.7, 0.9, 0.8]), SaveModelCallback(fname="m", every_epoch=every),
                      late(after_epoch=lambda: trained.append(weights(learn)))])
    assert [n for _, n, _ in saves] == names
    assert sorted(p.stem for p in (tmp_path / "models").glob("*.pth")) == names
    assert all(torch.equal(trained[-1][k], v) for k, v in weights(learn).items())  # nothing reloaded


def test_save_at_end_saves_once_and_does_not_reload(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    learn.fit(3, cbs=[Script([1.0, 0.5, 0.9]), SaveModelCallback(at_end=True)])
    # As fastai: the best is saved as it improves (a crash leaves the best so far), then the final
    # model overwrites it, and nothing is reloaded.
    assert [(e, n) for e, n, _ in saves] == [(0, "model"), (1, "model"), (2, "model")]
    final = weights(learn)
    assert all(torch.equal(final[k], v) for k, v in saves[-1][2].items())
    assert any(not torch.equal(final[k], v) for k, v in saves[1][2].items())


def test_save_at_end_saves_after_a_fit_of_no_epochs_but_not_after_validate_or_get_preds(tmp_path: Path) -> None:
    # As fastai's after_fit: a fit of no epochs (fine_tune(freeze_epochs=0) runs one) still ends with a save.
    learn = synth_learner(path=tmp_path, cbs=SaveModelCallback(at_end=True))
    saves = spy_saves(learn)
    learn.validate()
    learn.get_preds()
    assert saves == []
    learn.fit(0)
    assert [n for _, n, _ in saves] == ["model"]


def test_a_fit_of_no_epochs_loads_back_the_best_model_an_earlier_fit_saved(tmp_path: Path) -> None:
    # As fastai's after_fit, which loads the best model at the end of every fit (reset_on_fit=False keeps it).
    learn = synth_learner(path=tmp_path, cbs=SaveModelCallback(reset_on_fit=False))
    learn.fit(2)
    best = weights(learn)
    with torch.no_grad():
        for p in learn.model.parameters():
            p.fill_(7.0)
    learn.fit(0)
    assert all(torch.equal(best[k], v) for k, v in weights(learn).items())


def test_every_epoch_and_at_end_together_are_refused() -> None:
    with pytest.raises(ValueError, match="every_epoch and at_end cannot both be set"):
        SaveModelCallback(every_epoch=True, at_end=True)
    SaveModelCallback(every_epoch=0, at_end=True)  # 0 is off, as fastai's


@pytest.mark.parametrize("every", [-1, -2, 2.5, float("inf"), float("nan")])
def test_every_epoch_must_be_a_whole_number_of_epochs(every: float) -> None:
    # fastai's -1 saves every epoch (`epoch % -1 == 0`) by accident; learnloop refuses what is not a whole number >= 0.
    with pytest.raises(InputError, match=r"every_epoch must be True/False or a whole number of epochs >= 1 "
                                         r"\(0 turns it off\), got"):
        SaveModelCallback(every_epoch=every)


def test_every_epoch_must_be_a_number() -> None:
    with pytest.raises(ArgumentError, match="every_epoch must be True/False or a whole number of epochs, got str '2'"):
        SaveModelCallback(every_epoch="2")  # type: ignore[arg-type]


@pytest.mark.parametrize("every, expected", [
    (torch.tensor(2), 2), (torch.tensor(2.0), 2), (np.float32(3.0), 3), (torch.tensor(0), 0),
    (np.bool_(True), True), (np.bool_(False), False),
])
def test_every_epoch_takes_what_to_number_takes(every: Any, expected: bool | int) -> None:
    # As the other callbacks' numbers: 0-dim tensors and numpy scalars, read once; numpy's bools as bools (fastai's
    # truth test and `epoch % every_epoch` take them all).
    cb = SaveModelCallback(every_epoch=every)
    assert cb.every_epoch == expected and type(cb.every_epoch) is type(expected)


@pytest.mark.parametrize("every", [torch.tensor(-1), torch.tensor(1.5), torch.ones(2), np.array([1, 2])])
def test_every_epoch_tensors_are_checked_as_numbers(every: Any) -> None:
    kind = ArgumentError if getattr(every, "ndim", 0) else InputError
    with pytest.raises(kind, match="SaveModelCallback: every_epoch must be True/False or a whole number of epochs"):
        SaveModelCallback(every_epoch=every)


@pytest.mark.parametrize("every, kind", [("2", ArgumentError), (np.array([1, 2]), ArgumentError), (-1, InputError)])
def test_every_epoch_is_checked_before_at_end(every: Any, kind: type[Exception]) -> None:
    # A wrong every_epoch is reported as such, not as "cannot both be set" (nor numpy's ambiguous truth value).
    with pytest.raises(kind, match="every_epoch must be True/False or a whole number of epochs"):
        SaveModelCallback(every_epoch=every, at_end=True)


@pytest.mark.parametrize("off", [0, 0.0])
def test_every_epoch_zero_saves_the_best_as_without_it(tmp_path: Path, off: float) -> None:
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    learn.fit(4, cbs=[Script([1.0, 0.7, 0.9, 0.8]), SaveModelCallback(fname="m", every_epoch=off)])
    assert [(e, n) for e, n, _ in saves] == [(0, "m"), (1, "m")]
    assert all(torch.equal(weights(learn)[k], v) for k, v in saves[1][2].items())  # the best is loaded back


def test_save_model_neither_saves_nor_loads_in_validate(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.add_cb(SaveModelCallback())
    learn.fit(1)
    saves = spy_saves(learn)
    loads: list[str] = []
    load = learn.load

    def spy_load(name: Any, **kw: Any) -> Learner:
        loads.append(name)
        return load(name, **kw)

    learn.load = spy_load  # type: ignore[method-assign,assignment]
    learn.validate()
    learn.get_preds()
    assert saves == [] and loads == []


def test_save_model_does_not_load_a_file_it_never_wrote(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.fit(2, cbs=[Script([float("nan"), float("nan")]), SaveModelCallback()])
    assert not (tmp_path / "models" / "model.pth").exists()


def test_save_model_stopped_early_still_reloads_the_best(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    saves = spy_saves(learn)
    learn.fit(10, cbs=[Script([1.0, 0.5, 0.6, 0.7] + [0.1] * 6), SaveModelCallback(),
                       EarlyStoppingCallback(patience=2)])
    assert len(learn.recorder.values) == 4 and [e for e, _, _ in saves] == [0, 1]
    assert all(torch.equal(weights(learn)[k], v) for k, v in saves[1][2].items())


# ----------------------------------------------------------------------------------- ReduceLROnPlateau
def test_reduce_lr_on_plateau_divides_the_lr_after_patience_epochs() -> None:
    learn = synth_learner(lr=1e-2)
    run = EpochsRun()
    learn.fit(6, cbs=[Script([1.0, 1.1, 1.2, 0.5, 0.6, 0.7]), ReduceLROnPlateau(patience=1, factor=10), run])
    torch.testing.assert_close(run.lrs, [1e-2, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6])


def test_reduce_lr_on_plateau_patience_two_and_min_lr() -> None:
    learn = synth_learner(lr=1e-2)
    run = EpochsRun()
    learn.fit(6, cbs=[Script([1.0] * 6), ReduceLROnPlateau(patience=2, factor=4, min_lr=1e-3), run])
    torch.testing.assert_close(run.lrs, [1e-2, 1e-2, 2.5e-3, 2.5e-3, 1e-3, 1e-3])


def test_reduce_lr_on_plateau_acts_on_every_group() -> None:
    learn = synth_learner(lr=1e-2, splitter=lambda m: [[m.weight], [m.bias]])
    learn.fit(2, lr=[1e-2, 1e-1], cbs=[Script([1.0, 1.0]), ReduceLROnPlateau(patience=1)])
    torch.testing.assert_close([h["lr"] for h in learn.opt.hypers], [1e-3, 1e-2])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_lr": [1e-3, 1e-2]}, r"min_lr must be a number .*got \[0.001, 0.01\]"),
    ({"factor": "2"}, r"factor must be a number .*got '2'"),
])
def test_reduce_lr_on_plateau_refuses_a_factor_or_min_lr_that_is_not_a_number(kwargs: Any, match: str) -> None:
    # fastai takes them, and fails with a TypeError at the first plateau, epochs into the fit.
    with pytest.raises(TypeError, match=rf"ReduceLROnPlateau: {match}"):
        ReduceLROnPlateau(**kwargs)


def test_the_lowered_lr_is_what_the_optimizer_uses() -> None:
    learn = synth_learner(lr=1e-2)
    steps: list[float] = []
    learn.fit(2, cbs=[Script([1.0, 1.0]), ReduceLROnPlateau(patience=1, factor=2),
                      Callback(before_step=lambda: steps.append(learn.opt.hypers[0]["lr"]))])
    assert steps == [1e-2, 1e-2, 1e-2, 1e-2]  # lowered after the last epoch
    learn2 = synth_learner(lr=1e-2)
    learn2.fit(3, cbs=[Script([1.0, 1.0, 1.0]), ReduceLROnPlateau(patience=1, factor=2),
                       Callback(before_step=lambda: steps.append(learn2.opt.hypers[0]["lr"]))])
    assert steps[4:] == [1e-2, 1e-2, 1e-2, 1e-2, 5e-3, 5e-3]


# ------------------------------------------------------------------------------------ checkpoints
def test_state_dicts_round_trip_through_the_weights_only_loader(tmp_path: Path) -> None:
    learn = synth_learner()
    es, rl, sm = EarlyStoppingCallback(patience=5), ReduceLROnPlateau(patience=5), SaveModelCallback()
    learn.path = tmp_path
    learn.fit(3, cbs=[Script([1.0, 0.5, 0.8]), es, rl, sm])
    torch.save({"es": es.state_dict(), "rl": rl.state_dict(), "sm": sm.state_dict()}, tmp_path / "cbs.pth")
    state = torch.load(tmp_path / "cbs.pth", weights_only=True)
    assert state["es"] == {"best": 0.5, "wait": 1} and state["rl"] == {"best": 0.5, "wait": 1}
    assert state["sm"] == {"best": 0.5, "holds_best": True}


def test_loaded_state_is_kept_by_the_next_fit_even_after_validate() -> None:
    learn = synth_learner()
    es = EarlyStoppingCallback(patience=2)
    es.load_state_dict({"best": 0.5, "wait": 1})
    learn.add_cb(es)
    learn.validate()
    learn.fit(3, cbs=Script([0.6, 0.1, 0.1]))
    assert len(learn.recorder.values) == 1  # the loaded wait of 1 plus one more epoch reaches patience 2
    learn.fit(5, cbs=Script([0.6, 0.7, 0.8, 0.9, 1.0]))
    assert len(learn.recorder.values) == 3  # a fresh fit starts again from scratch


def test_resume_with_start_epoch_carries_the_tracker_on() -> None:
    values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9]
    full = synth_learner()
    full_run = EpochsRun()
    full.fit(6, cbs=[Script(values), EarlyStoppingCallback(patience=3), full_run])
    es = EarlyStoppingCallback(patience=3)
    first = synth_learner()
    first.fit(2, cbs=[Script(values), es])
    resumed = EarlyStoppingCallback(patience=3)
    resumed.load_state_dict(es.state_dict())
    second = synth_learner()
    run = EpochsRun()
    second.fit(6, start_epoch=2, cbs=[Script(values), resumed, run])
    assert run.epochs[-1] == full_run.epochs[-1] == 3 and resumed.wait == 3


# ------------------------------------------------------------------------------------ combinations
def test_ema_with_save_model_and_early_stopping(tmp_path: Path) -> None:
    ema_module = pytest.importorskip("learnloop.callbacks.ema")
    learn = synth_learner(path=tmp_path, lr=0.1)
    ema = ema_module.EMACallback(decay=0.5)
    saves = spy_saves(learn)
    averages: list[list[torch.Tensor]] = []
    trained: list[dict[str, torch.Tensor]] = []

    def note() -> None:
        averages.append([t.clone() for t in ema.averaged])
        trained.append(weights(learn))

    learn.fit(10, cbs=[Script([1.0, 0.5, 0.6, 0.7] + [0.1] * 6), ema, SaveModelCallback(),
                       EarlyStoppingCallback(patience=2), late(after_epoch=note)])
    assert len(learn.recorder.values) == 4  # stopped after two epochs without improvement
    assert [e for e, _, _ in saves] == [0, 1]  # saved in the improving epochs
    # What was saved is what was validated, the EMA average, not the training weights of that epoch.
    saved = saves[1][2]
    torch.testing.assert_close([saved["weight"], saved["bias"]], averages[1])
    assert not torch.equal(saved["weight"], trained[1]["weight"])
    # At the end the best validated weights are back in the model; EMA has put its swap back first.
    assert not ema.swapped
    final = weights(learn)
    assert all(torch.equal(final[k], v) for k, v in saved.items())


def test_messages_are_printed_even_when_the_table_is_silenced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # As fastai's: the messages are plain prints, which learn.no_logging() (a silent logger) does not silence.
    learn = synth_learner(path=tmp_path)  # its logger is a no-op
    cbs = [Script([1.0, 0.5, 0.6, 0.7]), SaveModelCallback(), ReduceLROnPlateau(patience=1),
           EarlyStoppingCallback(patience=2)]
    with learn.no_logging():
        learn.fit(4, cbs=cbs)
    out = capsys.readouterr().out.splitlines()
    assert out == ["Better model found at epoch 0 with valid_loss value: 1.0.",
                   "Better model found at epoch 1 with valid_loss value: 0.5.",
                   "Epoch 2: reducing lr to 0.001", "Epoch 3: reducing lr to 0.0001",
                   "No improvement since epoch 1: early stopping"]


def test_messages_are_printed_by_rank_0_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracker_module, "is_rank_zero", lambda: False)
    learn = synth_learner(path=tmp_path)
    learn.fit(4, cbs=[Script([1.0, 0.5, 0.6, 0.7]), SaveModelCallback(), EarlyStoppingCallback(patience=2)])
    assert len(learn.recorder.values) == 4 and capsys.readouterr().out == ""


def test_save_model_callback_is_still_reachable_from_the_tracker_module() -> None:
    # It moved to save_model.py; the old path (imports, and pickles of learners that name it) gives the same class.
    assert SaveModelCallback is tracker_module.SaveModelCallback is save_model_module.SaveModelCallback
    assert "SaveModelCallback" in tracker_module.__all__ and "SaveModelCallback" in dir(tracker_module)
    old_path = pickle.dumps(SaveModelCallback, protocol=0).replace(b"callbacks.save_model", b"callbacks.tracker")
    assert b"callbacks.tracker" in old_path and pickle.loads(old_path) is save_model_module.SaveModelCallback


@pytest.mark.parametrize("cls", [EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback])
def test_a_min_delta_that_is_not_a_number_is_refused_when_made(cls: type[TrackerCallback]) -> None:
    # fastai's fails at the end of the first epoch (a TypeError), after training it: nothing trains here.
    with pytest.raises(ArgumentError, match=rf"{cls.__name__}: min_delta must be a number .*got 'x'"):
        cls(min_delta="x")  # type: ignore[arg-type]
    assert cls(min_delta=np.float32(0.5)).min_delta == -0.5


@pytest.mark.parametrize("cls", [EarlyStoppingCallback, ReduceLROnPlateau])
def test_a_patience_that_is_not_a_number_is_refused_when_made(cls: type[TrackerCallback]) -> None:
    with pytest.raises(ArgumentError, match=rf"{cls.__name__}: patience must be a number .*got '2'"):
        cls(patience="2")  # type: ignore[call-arg]


def test_a_get_preds_refused_at_before_fit_leaves_the_trackers_running(tmp_path: Path, capsys: Any) -> None:
    # A tracker sits out get_preds (`run` False from its before_fit, back to True at after_fit). When its before_fit
    # refused the monitor, no after_fit followed, and the SaveModelCallback sat out every later fit, silently: once the
    # metric was added, the fit saved nothing and loaded no best model.
    learn = synth_classif_learner(path=tmp_path)
    save = SaveModelCallback(monitor="accuracy")
    learn.add_cb(save)
    with pytest.raises(ValueError, match="monitors 'accuracy', which is not recorded"):
        learn.get_preds()
    assert save.run
    learn.metrics = [accuracy]
    learn.fit(1)
    assert "Better model found at epoch 0 with accuracy value" in capsys.readouterr().out
    assert (tmp_path / "models" / "model.pth").exists()
