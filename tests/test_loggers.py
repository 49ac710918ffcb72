"""CSVLogger and TensorBoardCallback."""

from __future__ import annotations

import csv
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import debiased_ema, synth_classif_learner, synth_learner
from learnloop import Callback, CancelFitException, CancelTrainException, CancelValidException, Recorder
from learnloop.callbacks import BnFreeze, loggers
from learnloop.callbacks.loggers import CSVLogger, TensorBoardCallback, TensorBoardProjectorCallback
from learnloop.metrics import accuracy


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------------- CSV
def test_csv_logger_writes_the_header_once_and_a_row_per_epoch(tmp_path: Path) -> None:
    learn = synth_classif_learner(metrics=accuracy, path=tmp_path)
    learn.fit(3, cbs=CSVLogger())
    rows = read_rows(tmp_path / "history.csv")
    assert rows[0] == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    for row, values in zip(rows[1:], learn.recorder.values, strict=True):
        assert [float(c) for c in row[1:4]] == values  # full precision
        assert row[4].count(":") == 1


class MetricCollection:
    """A stand-in for torchmetrics' MetricCollection: its value is a dict."""

    def reset(self) -> None:
        pass

    def update(self, pred: torch.Tensor, targ: torch.Tensor) -> None:
        pass

    def compute(self) -> dict[str, float]:
        return {"acc": 0.5, "f1": 0.25}


def test_a_metric_whose_value_is_a_dict_is_one_column_quoted_in_the_file(tmp_path: Path) -> None:
    # As fastai: one column holding the dict (fastai's CSVLogger writes it bare, its commas adding columns).
    learn = synth_classif_learner(metrics=MetricCollection(), path=tmp_path)
    learn.fit(1, cbs=CSVLogger())
    assert learn.recorder.metric_names[3] == "metric_collection"
    assert learn.recorder.values[0][2] == {"acc": 0.5, "f1": 0.25}
    rows = read_rows(tmp_path / "history.csv")
    assert rows[1][3] == "{'acc': 0.5, 'f1': 0.25}" and len(rows[1]) == 5


def test_the_callbacks_path_is_the_learners_and_the_file_is_path_over_fname(tmp_path: Path) -> None:
    learn = synth_classif_learner(path=tmp_path)
    learn.add_cb(CSVLogger("logs/run.csv"))
    learn.fit(1)
    cb = learn.csv_logger
    assert cb.path == learn.path == tmp_path  # fastai's: cb.path falls through to the learner
    assert (cb.path / cb.fname).is_file() and cb.fname == Path("logs/run.csv")


def test_each_row_is_on_disk_when_its_epoch_ends(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    seen: list[int] = []
    reader = Callback(after_epoch=lambda: seen.append(len(read_rows(tmp_path / "log.csv"))))
    reader.order = 100
    learn.fit(3, cbs=[CSVLogger("log.csv"), reader])
    assert seen == [2, 3, 4]


@pytest.mark.parametrize("order", [55, 60])
@pytest.mark.parametrize("error", [CancelFitException, RuntimeError])
def test_the_last_row_is_written_when_a_callback_before_the_logger_ends_the_fit(
    tmp_path: Path, order: int, error: type[Exception]
) -> None:
    # After the Recorder (50), before the logger (60, or 60 and added first): the Recorder has logged the epoch, and
    # its row is written then, as in fastai, whether the fit is stopped or fails.
    learn = synth_learner(path=tmp_path)

    def stop() -> None:
        if learn.epoch == 1:
            raise error("stop")

    early = Callback(after_epoch=stop)
    early.order = order
    csv_logger = CSVLogger()
    if error is CancelFitException:
        learn.fit(3, cbs=[early, csv_logger])
        assert learn.recorder.row_writers == []
    else:
        with pytest.raises(RuntimeError, match="stop"):
            learn.fit(3, cbs=[early, csv_logger])
    rows = read_rows(tmp_path / "history.csv")
    assert [r[0] for r in rows[1:]] == ["0", "1"] and len(learn.recorder.values) == 2
    assert [float(r[1]) for r in rows[1:]] == [v[0] for v in learn.recorder.values]
    learn.fit(2, cbs=csv_logger)  # after a failed fit, the next one writes each row once
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0", "1"]
    assert learn.recorder.row_writers == []


def test_a_failed_fits_detached_logger_is_dropped_from_the_row_writers(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)

    def fail() -> None:
        raise RuntimeError("fail")

    with pytest.raises(RuntimeError, match="fail"):
        learn.fit(1, cbs=[Callback(after_validate=fail), CSVLogger("a.csv")])
    assert len(learn.recorder.row_writers) == 1  # no after_fit: the removed logger's writer stays
    second = CSVLogger("b.csv")
    learn.fit(1, cbs=second)
    assert learn.recorder.row_writers == []
    del learn.recorder.row_writers  # a Recorder pickled before there were any
    learn.fit(1, cbs=second)
    assert [r[0] for r in read_rows(tmp_path / "b.csv")] == ["epoch", "0"]


def test_a_row_writers_error_names_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(self: CSVLogger) -> None:
        raise OSError(28, "No space left on device")

    learn = synth_learner(path=tmp_path)
    monkeypatch.setattr(CSVLogger, "_write_row", disk_full)
    with pytest.raises(OSError) as info:
        learn.fit(1, cbs=CSVLogger("c.csv"))
    assert any("CSVLogger._write_logged_row" in note for note in info.value.__notes__)


def test_a_recorder_that_logs_its_own_way_still_gets_its_rows_written(tmp_path: Path) -> None:
    class PlainRecorder(Recorder):
        _name = "recorder"

        def after_epoch(self) -> None:  # no row writers called
            self.values.append(self.log[1:])

    learn = synth_learner(path=tmp_path)
    learn.remove_cb(learn.recorder)
    learn.add_cb(PlainRecorder(add_time=False))
    learn.fit(2, cbs=CSVLogger())
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0", "1"]

    def stop() -> None:  # after the Recorder logged epoch 1, before the logger's after_epoch
        if learn.epoch == 1:
            raise CancelFitException

    early = Callback(after_epoch=stop)
    early.order = 55
    learn.fit(3, cbs=[early, CSVLogger()])
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0", "1"]


def test_two_loggers_write_their_files_and_a_second_recorder_adds_no_row(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.fit(2, cbs=[CSVLogger("a.csv"), CSVLogger("b.csv"), Recorder()])
    for name in ("a.csv", "b.csv"):
        assert [r[0] for r in read_rows(tmp_path / name)] == ["epoch", "0", "1"]


def test_a_validate_inside_the_fit_then_a_stop_writes_no_row_for_the_unfinished_epoch(tmp_path: Path) -> None:
    # validate() gives the Recorder new lists, one row long: that row is validate's, not the fit's epoch's.
    learn = synth_learner(path=tmp_path)

    def validate_then_stop() -> None:
        learn.validate()
        raise CancelFitException

    learn.fit(2, cbs=[CSVLogger(), Callback(after_train=validate_then_stop)])
    assert read_rows(tmp_path / "history.csv") == [["epoch", "train_loss", "valid_loss", "time"]]


def test_without_a_recorder_validate_leaves_the_logger_idle(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path, cbs=CSVLogger())
    learn.remove_cb(Recorder)
    assert learn.validate() is None and not (tmp_path / "history.csv").exists()


def test_a_fit_stopped_before_the_recorder_logs_its_epoch_gets_no_row_for_it(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)

    def stop() -> None:
        if learn.epoch == 1:
            raise CancelFitException

    early = Callback(after_epoch=stop)
    early.order = 5
    learn.fit(3, cbs=[early, CSVLogger()])
    assert [r[0] for r in read_rows(tmp_path / "history.csv")[1:]] == ["0"] and len(learn.recorder.values) == 1


def test_append_writes_a_header_for_every_fit_and_read_log_reads_them_all(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.fit(2, cbs=CSVLogger())
    logger = CSVLogger(append=True)
    learn.add_cb(logger)
    learn.fit(2)
    rows = read_rows(tmp_path / "history.csv")
    assert [r[0] for r in rows] == ["epoch", "0", "1", "epoch", "0", "1"]  # as fastai: each fit its header
    assert [r["epoch"] for r in logger.read_log()] == ["0", "1", "0", "1"]
    assert all(float(r["valid_loss"]) > 0 for r in logger.read_log())
    learn.remove_cb(logger)
    learn.fit(1, cbs=CSVLogger())  # not appending: a fresh file
    assert len(read_rows(tmp_path / "history.csv")) == 2


def test_read_log_after_the_fit_reads_the_file_that_fit_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    learn = synth_learner(path=tmp_path / "run")
    logger = CSVLogger()
    learn.fit(2, cbs=logger)  # the logger leaves the learner with the fit
    monkeypatch.chdir(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,other\n7,stale\n")  # another run's file where the fit is
    assert [r["epoch"] for r in logger.read_log()] == ["0", "1"] and "valid_loss" in logger.read_log()[0]


def test_read_log_keeps_the_columns_of_two_metrics_of_the_same_name(tmp_path: Path) -> None:
    def named_accuracy() -> Any:
        def accuracy(pred: Any, targ: Any) -> Any:
            return pred.new_tensor(0.5)

        return accuracy

    learn = synth_classif_learner(path=tmp_path, metrics=[accuracy, named_accuracy()])
    logger = CSVLogger()
    learn.add_cb(logger)
    learn.fit(1)
    (row,) = logger.read_log()
    # pandas' read_csv (fastai's read_log) names the second 'accuracy.1'
    assert list(row)[3:5] == ["accuracy", "accuracy.1"]
    assert float(row["accuracy"]) == learn.recorder.values[0][2] and row["accuracy.1"] == "0.5"


def test_the_header_is_written_at_before_fit(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    seen: list[str] = []
    reader = Callback(before_epoch=lambda: seen.append((tmp_path / "history.csv").read_text()))
    reader.order = 100

    def stop() -> None:
        raise CancelFitException

    learn.fit(2, cbs=[CSVLogger(), reader, Callback(before_train=stop)])
    assert seen == ["epoch,train_loss,valid_loss,time\n"]  # fastai's line breaks: "\n"
    assert (tmp_path / "history.csv").read_text() == seen[0]  # the fit stopped before an epoch ended


def test_append_to_a_file_with_other_columns_keeps_each_fits_columns(tmp_path: Path) -> None:
    learn = synth_classif_learner(path=tmp_path)
    learn.fit(1, cbs=CSVLogger())
    learn.metrics = accuracy
    logger = CSVLogger(append=True)
    learn.add_cb(logger)
    learn.fit(1)
    first, second = logger.read_log()
    assert "accuracy" not in first and 0 <= float(second["accuracy"]) <= 1 and second["time"].count(":") == 1


def test_append_to_a_file_without_a_final_line_break(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text("old,header\n1,2")
    learn = synth_learner(path=tmp_path)
    learn.fit(1, cbs=CSVLogger(append=True))
    rows = read_rows(tmp_path / "history.csv")
    assert rows[:3] == [["old", "header"], ["1", "2"], ["epoch", "train_loss", "valid_loss", "time"]]
    assert len(rows) == 4


def test_a_resumed_run_appends_only_the_epochs_it_trains(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.fit(4, cbs=CSVLogger())
    learn.fit(4, start_epoch=2, cbs=CSVLogger(append=True))
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0", "1", "2", "3", "epoch", "2", "3"]


def test_state_written_before_the_header_moved_is_read_as_rows_under_one_header(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    logger = CSVLogger()
    learn.add_cb(logger)
    learn.fit(3)
    assert logger.state_dict() == {"lines": 4}
    logger.load_state_dict({"rows": 1})  # an older checkpoint's state: one row kept, with the header
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0"]


def test_validate_and_get_preds_write_nothing(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    logger = CSVLogger()
    learn.add_cb(logger)
    learn.validate()
    learn.get_preds()
    assert not (tmp_path / "history.csv").exists()
    learn.fit(1)
    before = (tmp_path / "history.csv").read_text()
    learn.validate()
    assert (tmp_path / "history.csv").read_text() == before
    assert [r["epoch"] for r in logger.read_log()] == ["0"]


def test_a_cancelled_validation_leaves_its_cells_empty(tmp_path: Path) -> None:
    learn = synth_classif_learner(metrics=accuracy, path=tmp_path)

    def skip_second_validation() -> None:
        if learn.epoch == 1:
            raise CancelValidException

    learn.fit(2, cbs=[CSVLogger(), Callback(before_validate=skip_second_validation)])
    rows = read_rows(tmp_path / "history.csv")
    assert rows[2][0] == "1" and rows[2][2:4] == ["", ""] and rows[2][1] and rows[2][4]


def test_a_cancelled_training_leaves_its_cells_empty(tmp_path: Path) -> None:
    learn = synth_classif_learner(metrics=accuracy, path=tmp_path)

    def skip_second_training() -> None:
        if learn.epoch == 1:
            raise CancelTrainException

    # The callback (order 0) cancels before CSVLogger's before_train: the epoch still gets its row, unshifted.
    learn.fit(3, cbs=[CSVLogger(), Callback(before_train=skip_second_training)])
    rows = read_rows(tmp_path / "history.csv")
    assert [r[0] for r in rows] == ["epoch", "0", "1", "2"]
    assert rows[2][1] == "" and all(rows[2][2:]) and len(rows[2]) == 5


@pytest.mark.parametrize("evaluate", ["validate", "get_preds"])
def test_a_validate_inside_the_fit_leaves_the_file_alone(tmp_path: Path, evaluate: str) -> None:
    learn = synth_learner(path=tmp_path)

    def evaluate_once() -> None:  # in the fit's first validation only (the inner one fires after_validate too)
        if learn.epoch == 0 and learn.create_mbar:
            getattr(learn, evaluate)()

    learn.fit(2, cbs=[CSVLogger(), Callback(after_validate=evaluate_once)])
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0", "1"]


def test_a_fit_without_the_epoch_bar_is_logged(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    with learn.no_mbar():
        learn.fit(2, cbs=CSVLogger())
    assert [r[0] for r in read_rows(tmp_path / "history.csv")] == ["epoch", "0", "1"]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers, "is_rank_zero", lambda: False)
    learn = synth_learner(path=tmp_path)
    learn.fit(1, cbs=CSVLogger())
    assert not (tmp_path / "history.csv").exists()


def test_is_rank_zero_without_distributed() -> None:
    assert loggers.is_rank_zero()


# ----------------------------------------------------------------------------------- TensorBoard
def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tags(log_dir: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc.Tags()


def test_tensorboard_logs_losses_hypers_and_epoch_values(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    learn = synth_classif_learner(metrics=accuracy, n_train=48, bs=16)
    learn.fit(2, cbs=TensorBoardCallback(tmp_path, flush_every=4))
    logged = scalars(tmp_path)
    assert [s for s, _ in logged["train_loss"]] == [1, 2, 3, 4, 5, 6]
    smooth = [float(v) for v in learn.recorder.losses]
    torch.testing.assert_close([v for _, v in logged["train_loss"]], smooth)
    assert {"lr_0", "mom_0", "wd_0", "eps_0", "sqr_mom_0"} <= set(logged)
    assert [s for s, _ in logged["valid_loss"]] == [3, 6]
    torch.testing.assert_close([v for _, v in logged["valid_loss"]], [r[1] for r in learn.recorder.values])
    torch.testing.assert_close([v for _, v in logged["accuracy"]], [r[2] for r in learn.recorder.values])
    torch.testing.assert_close([v for _, v in logged["train_loss_epoch"]], [r[0] for r in learn.recorder.values])


def test_tensorboard_reads_losses_in_batches(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    learn = synth_learner(n_train=64, bs=16)
    tb = TensorBoardCallback(tmp_path, flush_every=100)
    pending: list[int] = []
    spy = Callback(after_batch=lambda: pending.append(len(tb._losses)) if learn.training else None)
    spy.order = 100
    learn.fit(1, cbs=[tb, spy])
    assert pending == [1, 2, 3, 4]  # kept as device tensors until the epoch ends
    assert len(scalars(tmp_path)["train_loss"]) == 4


def test_a_learner_whose_tensorboard_fit_raised_can_be_pickled(tmp_path: Path) -> None:
    # The writer a fit that raised left open (a lock, a file) made pickle.dumps(learn) fail until the next fit.
    pytest.importorskip("tensorboard")
    learn = synth_learner(n_train=64, bs=16)
    tb = TensorBoardCallback(tmp_path, flush_every=100)
    learn.add_cb(tb)

    def boom() -> None:
        if learn.train_iter == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=Callback(after_batch=boom))
    assert tb.writer is not None
    copy = pickle.loads(pickle.dumps(learn))
    assert copy.tensor_board.writer is None and copy.tensor_board.flush_every == 100 and tb.writer is not None
    copy.fit(1)  # the copy's fit writes with its own writer, beside the original's
    assert tb.writer is not None and copy.tensor_board.writer is None


def test_tensorboard_preds_histogram_and_graph(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    learn = synth_classif_learner()
    learn.fit(1, cbs=TensorBoardCallback(tmp_path, trace_model=True, log_preds=True))
    found = tags(tmp_path)
    assert "valid_preds" in found["histograms"] and found["graph"]


def _image_learner(**kwargs: Any) -> Any:
    from torch import nn

    from learnloop import DataLoaders, Learner
    from learnloop.callback import noop

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    dls = DataLoaders.from_tensors(x[:24], y[:24], x[24:], y[24:], bs=6, shuffle=False, device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
                          nn.Sequential(nn.Flatten(), nn.Linear(144, 5), nn.ReLU()), nn.Linear(5, 2))
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), lr=1e-2, **kwargs)
    learn.logger = noop
    return learn, x[24:], y[24:]


def test_tensorboard_projector_writes_a_layers_validation_outputs_each_epoch(tmp_path: Path) -> None:
    # fastai's TensorBoardCallback(projector=True, layer=...): a missing keyword; fastai's files, byte for byte
    # (sprite of the inputs rescaled to [0, 1] each), on image inputs
    pytest.importorskip("tensorboard")
    learn, x_valid, y_valid = _image_learner()
    learn.fit(2, cbs=TensorBoardCallback(tmp_path, projector=True))  # fastai's default layer: model[1][1]
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "default:00004"' in config and 'tensor_name: "default:00008"' in config
    assert "single_image_dim: 8" in config and (tmp_path / "00008" / "default" / "sprite.png").exists()
    rows = (tmp_path / "00008" / "default" / "tensors.tsv").read_text().splitlines()
    model = learn.model
    with torch.no_grad():
        expected = model[1][1](model[1][0](model[0](x_valid)))
    written = torch.tensor([[float(v) for v in row.split("\t")] for row in rows])
    torch.testing.assert_close(written, expected)
    assert all(not m._forward_hooks for m in model.modules())  # the hook is on for the validation phases only
    learn.dls.vocab = ["neg", "pos"]
    learn.fit(1, cbs=TensorBoardCallback(tmp_path / "named", projector=True, layer=model[1]))
    names = (tmp_path / "named" / "00004" / "default" / "metadata.tsv").read_text().split()
    assert names == [["neg", "pos"][int(i)] for i in y_valid]


def test_tensorboard_projector_callback_writes_in_get_preds_only(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    learn, x_valid, _ = _image_learner()
    cb = TensorBoardProjectorCallback(tmp_path, layer=learn.model[1][1])
    learn.fit(1, cbs=cb)
    assert not list(tmp_path.iterdir())  # a fit writes nothing (fastai's too)
    preds, _ = learn.get_preds(cbs=cb)
    rows = (tmp_path / "00000" / "default" / "tensors.tsv").read_text().splitlines()
    assert len(rows) == len(x_valid) == len(preds) and (tmp_path / "00000" / "default" / "sprite.png").exists()
    assert all(not m._forward_hooks for m in learn.model.modules())


def test_tensorboard_projector_without_fastais_default_layer_says_to_pass_one(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    learn = synth_classif_learner()
    with pytest.raises(TypeError, match=r"model\[1\]\[1\].*pass layer="):
        learn.fit(1, cbs=TensorBoardCallback(tmp_path, projector=True))
    assert learn.train_iter == 0  # refused before the first batch


def test_tracing_does_not_change_training(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    plain = synth_classif_learner()
    plain.fit(1)
    traced = synth_classif_learner()
    traced.fit(1, cbs=TensorBoardCallback(tmp_path, trace_model=True))
    assert torch.equal(plain.model.state_dict()["weight"], traced.model.state_dict()["weight"])


def test_tracing_puts_each_module_back_in_its_own_mode(tmp_path: Path) -> None:
    # BnFreeze keeps a frozen BatchNorm in eval mode from before_train: the trace at the first batch must leave
    # it so, or its running statistics train through the first epoch.
    pytest.importorskip("tensorboard")
    learn = synth_classif_learner(n_in=4)
    learn.model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    learn.model[0].requires_grad_(False)  # frozen, as learn.freeze() leaves it with train_bn=False
    stats = learn.model[0].running_mean.clone()
    learn.fit(1, cbs=[BnFreeze(), TensorBoardCallback(tmp_path, trace_model=True)])
    assert tags(tmp_path)["graph"]
    assert torch.equal(learn.model[0].running_mean, stats)


def test_tracing_under_mixed_precision_traces_the_models_own_graph(tmp_path: Path) -> None:
    # torch.jit.trace inside bf16 autocast failed on the weights autocast casts, ending the fit with a raw
    # RuntimeError at the first batch.
    pytest.importorskip("tensorboard")
    learn = synth_classif_learner()
    learn.to_bf16()
    learn.fit(1, cbs=TensorBoardCallback(tmp_path, trace_model=True))
    assert tags(tmp_path)["graph"] and len(learn.recorder.values) == 1


@pytest.mark.parametrize("evaluate", ["validate", "get_preds"])
def test_a_validate_inside_the_fit_leaves_the_writer_and_the_epoch_to_the_fit(tmp_path: Path, evaluate: str) -> None:
    # Called before TensorBoard's after_epoch (at after_validate, by a callback of order 0), validate() and
    # get_preds() run before_fit and after_fit: they must not close the fit's writer (its epoch values lost, a
    # new event file for each epoch).
    pytest.importorskip("tensorboard")
    learn = synth_learner(n_train=64, bs=16)
    nested = Callback(after_validate=lambda: None if learn._nested_run else getattr(learn, evaluate)())
    learn.fit(2, cbs=[TensorBoardCallback(tmp_path), nested])
    assert len(list(tmp_path.iterdir())) == 1
    logged = scalars(tmp_path)
    assert len(logged["train_loss"]) == 8 and len(logged["train_loss_epoch"]) == 2


def test_tensorboard_writes_nothing_in_validate_and_on_other_ranks(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    learn = synth_learner()
    learn.add_cb(TensorBoardCallback(tmp_path / "a"))
    learn.validate()
    learn.get_preds()
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(loggers, "is_rank_zero", lambda: False)
    learn.fit(1, cbs=TensorBoardCallback(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("event", ["after_train", "after_validate", "after_epoch"])
@pytest.mark.parametrize("evaluate", ["validate", "get_preds"])
@pytest.mark.parametrize("flush_every", [3, 100])
def test_tensorboard_writes_the_points_buffered_before_a_validate_inside_the_fit(
    tmp_path: Path, event: str, evaluate: str, flush_every: int
) -> None:
    # validate() and get_preds() run before_fit: the Recorder (order 50) starts a new list of losses before
    # TensorBoard (order 51) sees the event. A callback of the default order 0 calls them before either has
    # logged the epoch: TensorBoard still has points to write, from losses the Recorder has not computed yet.
    pytest.importorskip("tensorboard")
    learn = synth_learner(n_train=64, bs=16)
    raw: list[float] = []
    spy = Callback(after_batch=lambda: raw.append(float(learn.loss)) if learn.training else None)
    spy.order = 100
    calls: list[str] = []

    def evaluate_once() -> None:  # once: the validate() fires after_validate and after_epoch too
        if not calls:
            calls.append(evaluate)
            getattr(learn, evaluate)()

    learn.fit(1, cbs=[TensorBoardCallback(tmp_path, flush_every=flush_every), Callback(**{event: evaluate_once}), spy])
    assert calls == [evaluate]
    logged = scalars(tmp_path)["train_loss"]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    # The smoothed losses are fastai's float32 ones: within a few float32 roundings of the float64 formula.
    assert [v for _, v in logged] == pytest.approx(debiased_ema(raw), rel=2e-6)
    assert learn.recorder.losses == []  # as in fastai: the Recorder's history starts again in validate()


def test_a_missing_tensorboard_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'learnloop\[tensorboard\]'"):
        TensorBoardCallback()


def test_tensorboard_writes_the_epochs_values_around_a_validate_inside_the_fit(tmp_path: Path) -> None:
    # The validate()'s before_fit closed the fit's writer and its before_epoch forgot the fit's epoch had trained:
    # no epoch values were written, and each epoch began a new event file.
    pytest.importorskip("tensorboard")
    learn = synth_classif_learner(metrics=accuracy, n_train=48, bs=16)
    validate = Callback(after_epoch=lambda self: None if self.learn._nested_run else self.learn.validate())
    learn.fit(2, cbs=[TensorBoardCallback(tmp_path), validate])
    logged = scalars(tmp_path)
    # Steps are learn.train_iter, which the validate() restarts, as fastai's (its epoch row is the validate()'s too).
    assert [s for s, _ in logged["valid_loss"]] == [0, 0]
    assert [s for s, _ in logged["train_loss"]] == [1, 2, 3, 1, 2, 3]
    assert len(list(tmp_path.iterdir())) == 1


def test_a_csv_logger_file_name_that_is_not_a_path_is_refused_when_made() -> None:
    # fastai: pathlib's "expected str, bytes or os.PathLike object, not int" at before_fit.
    with pytest.raises(TypeError, match=r"CSVLogger: fname is the file to write, a str or a Path, got 5"):
        CSVLogger(fname=5)  # type: ignore[arg-type]
