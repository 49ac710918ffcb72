"""The `learnloop` command: train on digits and on CSV files, predict, show, and errors a person can act on.

Most runs call `learnloop.cli.main([...])` in-process; a few run `python -m learnloop` and the console
script to check exit codes and that no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import synth_learner
from learnloop import Callback, Learner, NonFiniteLossWarning, recipe, runs
from learnloop.checkpoint import CheckpointError
from learnloop.cli import _warning_printer, build_parser, main
from learnloop.datasets import digits
from learnloop.recipe import TrainConfig

RUN_FILES = {"config.json", "preprocessing.json", "metrics.csv", "loss.png", "schedule.png", "model.pth", "checkpoints"}


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def flowers(path: Path, n: int = 90, seed: int = 0) -> Path:
    """Three well separated classes named by strings, four numeric features (one cell missing)."""
    rng = np.random.default_rng(seed)
    centers = {"setosa": [5.0, 3.4, 1.5, 0.2], "versicolor": [5.9, 2.8, 4.3, 1.3], "virginica": [6.6, 3.0, 5.5, 2.0]}
    rows: list[list[object]] = []
    for i in range(n):
        name = list(centers)[i % 3]
        rows.append([f"{v:.2f}" for v in np.array(centers[name]) + rng.normal(0, 0.2, 4)] + [name])
    rows[5][1] = ""
    return write_csv(path, ["sepal length", "sepal width", "petal length", "petal width", "species"], rows)


def houses(path: Path, n: int = 200, seed: int = 0) -> Path:
    """Prices in the hundreds of thousands from area, rooms and a city (a string); `;`-separated, with an id."""
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    for i in range(n):
        area, rooms, city = rng.uniform(40, 250), int(rng.integers(1, 7)), ["Paris", "Lyon", "Nice"][i % 3]
        price = area * 3000 + rooms * 10000 + (100000 if city == "Paris" else 0) + rng.normal(0, 5000)
        rows.append([i, f"{area:.1f}", rooms, city, f"{price:.0f}"])
    return write_csv(path, ["id", "area", "rooms", "city", "price"], rows, delimiter=";")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------ digits (the default)
def test_default_train_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bare command's settings reach >= 97%; the run directory can be shown, predicted with and repeated."""
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--out", out_dir)
    assert code == 0, err
    assert "epoch" in out and "accuracy" in out and f"run directory: {out_dir}" in out
    assert RUN_FILES <= {p.name for p in out_dir.iterdir()}
    metrics = read_rows(out_dir / "metrics.csv")
    assert len(metrics) == 8 and float(metrics[-1]["accuracy"]) >= 0.97

    # config.json holds every setting, and its command line parses back to the same settings
    config = json.loads((out_dir / "config.json").read_text())
    assert config["arch"] == "cnn" and config["epochs"] == 8 and config["bs"] == 64 and config["lr"] == 0.01
    args = build_parser().parse_args(shlex.split(config["command"])[1:])
    for key in ("data", "arch", "hidden", "epochs", "bs", "lr", "policy", "opt", "seed", "valid_pct"):
        assert getattr(args, key) == config[key], key

    # show: the settings and the epoch table
    code, out, _ = run(capsys, "show", out_dir)
    assert code == 0 and config["command"] in out and "valid_loss" in out and len(out.splitlines()) > 20

    # predict: digits as CSV rows of 64 pixels valued 0..16, the schema of the UCI files
    _, valid = digits(seed=42)
    pixels = (valid.tensors[0].reshape(-1, 64) * 16).round().int().tolist()
    new = write_csv(tmp_path / "digits.csv", [f"pixel{i}" for i in range(64)], pixels)
    code, out, err = run(capsys, "predict", out_dir, new, "--out", tmp_path / "pred.csv")
    assert code == 0, err
    preds = [int(r["digit_pred"]) for r in read_rows(tmp_path / "pred.csv")]
    assert np.mean(np.array(preds) == valid.tensors[1].numpy()) >= 0.97


# ------------------------------------------------------------------------------------ CSV files
def test_csv_classification_predict_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = flowers(tmp_path / "flowers.csv")
    code, out, err = run(capsys, "train", "--data", data, "--target", "species", "--epochs", "6", "--out",
                         tmp_path / "run")
    assert code == 0, err
    assert "3 classes" in out and "filled 1 missing feature value" in out
    prep = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert prep["task"] == "classification" and prep["classes"] == ["setosa", "versicolor", "virginica"]
    assert prep["numeric"] == ["sepal length", "sepal width", "petal length", "petal width"]
    assert float(read_rows(tmp_path / "run" / "metrics.csv")[-1]["accuracy"]) >= 0.9

    # predict to stdout, new rows without the target, columns in another order plus an extra one
    new = write_csv(tmp_path / "new.csv", ["note", "petal width", "petal length", "sepal width", "sepal length"],
                    [["a", 0.2, 1.4, 3.5, 5.1], ["b", 2.1, 5.6, 3.0, 6.7]])
    code, out, err = run(capsys, "predict", tmp_path / "run", new)
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    assert [r["species_pred"] for r in rows] == ["setosa", "virginica"]
    assert rows[0]["note"] == "a" and 0.5 < float(rows[0]["species_prob"]) <= 1
    (checkpoint,) = (tmp_path / "run" / "checkpoints").iterdir()  # the last checkpoint: a model file too
    code, out, _ = run(capsys, "predict", checkpoint, new)
    assert code == 0 and "setosa" in out


def test_a_diverged_run_is_warned_of_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = flowers(tmp_path / "flowers.csv")
    code, out, err = run(capsys, "train", "--data", data, "--target", "species", "--epochs", "2", "--lr", "1e30",
                         "--out", tmp_path / "run")
    assert code == 1 and err.endswith(f"learnloop train: error: {tmp_path / 'run'} has no model.pth: its training "
                                      "diverged (see above).\n"), err  # `train ... && predict ...` stops here
    assert "nan" in out  # the epoch table
    lines = err.splitlines()
    assert any(line.startswith("learnloop train: warning (NonFiniteLossWarning): The training loss of epoch 0 is nan")
               for line in lines), err
    assert any(line.startswith("learnloop train: warning (NonFiniteLossWarning): CheckpointCallback: no checkpoint")
               for line in lines), err
    warned = [line for line in lines if "NonFiniteLossWarning" in line]
    assert warned and all(line.endswith(" Train again with a lower --lr.") for line in warned), err
    assert "GradientClip" not in err and "TerminateOnNaNCallback" not in err  # the library's advice, in Python
    assert "sys.exit" not in err and "cli.py" not in err  # no file, line nor source of the code that warned
    # Weights of NaN would predict only NaN: no model.pth, and `predict` says why rather than "did not finish an epoch".
    assert "training diverged: the model's parameter" in out and "train again with a lower --lr" in out
    assert not (tmp_path / "run" / "model.pth").exists() and "learnloop predict" not in out  # nothing to predict with
    code, _, err = run(capsys, "predict", tmp_path / "run", data)
    assert code != 0 and "has no model.pth: its training diverged" in err and "lower --lr" in err, err


@pytest.mark.parametrize("diverged", [False, True])
def test_a_run_whose_valid_loss_never_improved_keeps_its_last_model_unless_it_diverged(
    tmp_path: Path, diverged: bool
) -> None:
    learn = synth_learner(path=tmp_path, model_dir=".")
    learn.fit_one_cycle(1)  # without SaveModelCallback: no model.pth, as when no valid_loss improved
    if diverged:
        with torch.no_grad():
            learn.model.bias.fill_(float("nan"))
    said: list[str] = []
    recipe._finish(learn, tmp_path, said.append, lower_lr="a lower --lr")
    assert (tmp_path / "model.pth").exists() is not diverged
    expected = ("training diverged: the model's parameter 'bias' holds NaN or infinite values, so no model.pth was "
                "written; train again with a lower --lr") if diverged else (
                "valid_loss never improved (is it nan?): model.pth is the last model")
    assert said[0] == expected


@pytest.mark.parametrize(("valid_losses", "diverged"), [
    (["nan", "inf", "nan"], True), (["nan", "0.5"], False), ([""], False), ([], False), (["", "nan"], True)])
def test_a_run_has_diverged_when_every_recorded_valid_loss_is_nan_or_infinite(
    tmp_path: Path, valid_losses: list[str], diverged: bool
) -> None:
    write_csv(tmp_path / "metrics.csv", ["epoch", "train_loss", "valid_loss", "time"],
              [[i, "nan", v, "00:00"] for i, v in enumerate(valid_losses)])
    assert runs.Run(tmp_path, {}, tmp_path / "model.pth").diverged() is diverged


def test_the_advice_on_a_nan_loss_follows_the_lr_options(capsys: pytest.CaptureFixture[str]) -> None:
    for lr_find, advice in [(False, "Train again with a lower --lr."),
                            (True, "Train again with a lower --lr instead of --lr-find.")]:
        show = _warning_printer("learnloop train", argparse.Namespace(lr_find=lr_find))
        show(NonFiniteLossWarning("The loss is nan.", "Python advice."), NonFiniteLossWarning, "file.py", 1)
        expected = f"learnloop train: warning (NonFiniteLossWarning): The loss is nan. {advice}\n"
        assert capsys.readouterr().err == expected
    show(UserWarning("plain"), UserWarning, "file.py", 1)
    assert capsys.readouterr().err == "learnloop train: warning: plain\n"


def test_csv_regression_with_drop_and_categorical(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = houses(tmp_path / "houses.csv")
    code, out, err = run(capsys, "train", "--data", data, "--target", "price", "--drop", "id", "--categorical",
                         "city", "--epochs", "12", "--out", tmp_path / "run")
    assert code == 0, err
    assert "regression of 'price'" in out and "rmse" in out
    last = read_rows(tmp_path / "run" / "metrics.csv")[-1]
    assert float(last["r2_score"]) > 0.8 and float(last["rmse"]) < 80000  # in the target's units
    new = write_csv(tmp_path / "new.csv", ["area", "rooms", "city"], [[100, 3, "Paris"], [100, 3, "Lyon"]])
    code, out, err = run(capsys, "predict", tmp_path / "run", new)
    assert code == 0, err
    paris, lyon = (float(r["price_pred"]) for r in csv.DictReader(out.splitlines()))
    assert 250_000 < paris < 550_000 and paris > lyon


@pytest.mark.parametrize(
    "options",
    [
        ["--policy", "flat_cos", "--opt", "sgd"],
        ["--policy", "sgdr", "--epochs", "3", "--opt", "rmsprop"],
        ["--policy", "fit", "--opt", "radam", "--wd", "0.1"],
        ["--opt", "lamb", "--bf16", "--hidden", "16"],
        ["--opt", "ranger", "--fp16", "--mixup"],
        ["--lr-find", "--arch", "mlp", "--bs", "16", "--seed", "3", "--valid-pct", "0.3"],
    ],
)
def test_train_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]) -> None:
    data = flowers(tmp_path / "flowers.csv", n=45)
    argv = ["train", "--data", data, "--target", "species", "--epochs", "2", *options, "--out", tmp_path / "run"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["command"].startswith("learnloop train --data")
    assert len(read_rows(tmp_path / "run" / "metrics.csv")) == config["epochs"]
    if "--lr-find" in options:
        assert (tmp_path / "run" / "lr_find.png").is_file() and "lr_find: valley at lr" in out
        assert config["lr_find"] and config["lr"] != 0.01 and config["bs"] == 16


def test_default_run_directory_and_auto_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = flowers(tmp_path / "flowers.csv", n=60)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "--data", "flowers.csv", "--target", "species", "--epochs", "1")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"run directory: runs/{run_dir.name}" in out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["bs"] == 8 and config["arch"] == "mlp" and config["hidden"] == [200, 100]  # a small CSV
    assert config["data_path"] == str(data) and len(config["data_sha256"]) == 64
    code, _, err = run(capsys, "train", "--data", "flowers.csv", "--target", "species", "--epochs", "1", "--out",
                       run_dir)
    assert code == 1 and "already holds a run" in err


# ------------------------------------------------------------------------------------ errors
@pytest.fixture
def files(tmp_path: Path) -> Path:
    flowers(tmp_path / "flowers.csv", n=30)
    houses(tmp_path / "houses.csv", n=30)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a link to nothing
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ("train --data nope.csv --target y", 2, r"--data nope.csv: no such file .* takes .digits. or the path"),
        ("train --data flower.csv --target y", 2, r"Did you mean .*flowers.csv\?"),
        ("train --data flowers.csv", 2, "needs --target COLUMN.* columns of .* are: sepal length, sepal width"),
        ("train --data flowers.csv --target Species", 1, r"'Species' is not a column .* Did you mean 'species'\?"),
        ("train --data houses.csv --target price", 1, "'id'|'city'"),
        ("train --data houses.csv --target price --drop id", 1, r"'city' .* not numeric: line 2 holds 'Paris'.*--drop"),
        ("train --data empty.csv --target y", 1, "empty.csv is empty"),
        ("train --data header.csv --target y", 1, "has a header .* but no data rows"),
        ("train --data flowers.csv --target species --task regression", 1, "must be numeric for regression"),
        ("train --data flowers.csv --target species --arch cnn", 2, "--arch cnn needs images"),
        ("train --epochs 0", 2, "argument --epochs: must be a whole number >= 1, got '0'"),
        ("train --epochs two", 2, "argument --epochs: must be a whole number >= 1, got 'two'"),
        ("train --bs -4", 2, "argument --bs: must be a whole number >= 1"),
        ("train --lr 0", 2, "argument --lr: must be a number > 0"),
        ("train --valid-pct 1", 2, "argument --valid-pct: must be a fraction strictly between 0 and 1"),
        ("train --valid-pct 0.0002", 2, r"splits the 1797 digits into 1797 training and 0 validation images.*0\.001"),
        ("train --valid-pct 0.9999", 2, r"into 0 training and 1797 validation images, and each needs at least one"),
        ("train --opt adamw", 2, r"invalid choice: 'adamw' \(choose from 'adam', 'sgd', 'rmsprop', 'radam'"),
        ("train --policy cosine", 2, r"invalid choice: 'cosine' \(choose from 'one_cycle', 'flat_cos', 'sgdr', 'fit'"),
        ("train --arch resnet", 2, r"invalid choice: 'resnet' \(choose from 'auto', 'cnn', 'mlp'\)"),
        ("train --fp16 --bf16", 2, "not allowed with argument"),
        ("train --device quantum", 2, "is not a device"),
        # a device torch names but cannot use was a traceback from the first callback, after making the run directory
        ("train --device meta", 2, "--device meta: a meta tensor holds no values, so nothing can train on it"),
        ("train --device xla", 2, r"--device xla: this torch cannot use it \(.*\); use --device cpu"),
        ("train --seed -1", 2, "--seed -1: a seed is a whole number from 0 to 4294967295"),  # was numpy's traceback
        ("train --seed 4294967296", 2, "--seed 4294967296: a seed is a whole number from 0 to 4294967295"),
        # a batch of one item failed in the first batch norm, with a traceback and advice about n_inp
        ("train --data flowers.csv --target species --bs 1", 2, "--bs 1: the MLP's batch norm layers need at least 2"),
        ("train --hidden 8 8 8 8 --bs 1", 2, r"--bs 1: the CNN's batch norm .* Use a --bs of 2 or more\."),
        ("train --arch mlp --valid-pct 0.9995", 2, r"1 training item \(--valid-pct 0.9995\).* a smaller --valid-pct"),
        ("train --target y", 2, r"--target is for CSV files \(--data FILE.csv\); the digits' target is the digit in"),
        ("train --drop y", 2, r"--drop is for CSV files \(--data FILE.csv\); the digits' features are the 64 pixels"),
        ("train --bogus", 2, "unrecognized arguments: --bogus"),
        # the usage and prog of `learnloop`, which list no option of the command, were printed with it
        ("train --learning-rate 0.1", 2, r"(?s)^usage: learnloop train .*\nlearnloop train: error: unrecognized "
         "arguments: --learning-rate 0.1"),
        ("predict nope flowers.csv --bogus", 2, r"^usage: learnloop predict .*\nlearnloop predict: error: unrecog"),
        ("fly", 2, "invalid choice: 'fly'"),
        ("train --out flowers.csv", 1, r"--out flowers.csv: flowers.csv is a file, and a run needs a directory there"),
        ("train --out flowers.csv/run", 1, r"--out flowers.csv/run: flowers.csv is a file, and a run needs a"),
        ("train --out gone", 1, r"--out gone: gone is a link to nothing, and a run needs a directory"),  # StopIteration
        ("predict nope flowers.csv", 2, "nope: no such run directory or model file"),
        ("predict . flowers.csv", 1, "is not a run directory"),
        ("show nope", 2, "nope: no such run directory"),
        ("show .", 1, "is not a run directory"),
    ],
)
def test_user_errors(
    files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: str, code: int,
    message: str,
) -> None:
    monkeypatch.chdir(files)
    got, out, err = run(capsys, *shlex.split(argv))
    assert got == code, err
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err + out
    assert not (files / "runs").exists()  # nothing written for a run that cannot start


@pytest.mark.parametrize(("field", "value"), [("epochs", 0), ("bs", 0), ("seed", -3)])
def test_train_config_refuses_what_the_parser_would(field: str, value: int) -> None:
    # epochs=0 and bs=0 were taken as "not given" (chosen from the data) and trained all the same
    with pytest.raises(recipe.ConfigError, match=f"--{field} {value}: "):
        recipe.train(TrainConfig(**{field: value}), log=lambda _: None)


def test_resuming_without_a_run_directory_says_so() -> None:
    # it read Path("None"): "None/preprocessing.json is missing: the run directory is incomplete."
    with pytest.raises(recipe.ConfigError, match=r"resume=True\) carries on the run in the directory config.out, which "
                       "is None"):
        recipe.train(TrainConfig(epochs=1), log=lambda _: None, resume=True)


def test_the_recorded_command_parses_back_when_a_value_starts_with_a_dash() -> None:
    """A column named like an option ("--out") or a file named "-x.csv": config.json's command still repeats the run
    (`--target --out` was read by argparse as a --target without its value)."""
    config = TrainConfig(data="-x.csv", target="--out", drop=["id", "-note"], categorical=["-c"], arch="mlp",
                         hidden=[8], epochs=1, bs=8, device="cpu")
    args = build_parser().parse_args(shlex.split(config.command())[1:])
    assert (args.data, args.target, args.drop, args.categorical) == ("-x.csv", "--out", ["id", "-note"], ["-c"])
    plain = TrainConfig(data="a.csv", target="y", drop=["id"], hidden=[8], epochs=1, bs=8, device="cpu").command()
    assert "--data a.csv --target y --task auto --drop id --valid-pct" in plain


def test_predict_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--data", flowers(tmp_path / "f.csv", n=30), "--target", "species", "--epochs",
                       "1", "--out", tmp_path / "run")
    assert code == 0, err
    wrong = write_csv(tmp_path / "wrong.csv", ["sepal length", "x"], [[1, 2]])
    code, _, err = run(capsys, "predict", tmp_path / "run", wrong)
    assert code == 1 and "lacks the column(s) 'sepal width', 'petal length', 'petal width'" in err
    text = write_csv(tmp_path / "text.csv", ["sepal length", "sepal width", "petal length", "petal width"],
                     [[1, 2, 3, 4], [1, 2, "big", 4]])
    code, _, err = run(capsys, "predict", tmp_path / "run", text)
    assert code == 1 and "'petal length'" in err and "line 3 holds 'big'" in err
    code, _, err = run(capsys, "predict", tmp_path / "run", tmp_path / "nope.csv")
    assert code == 2 and "INPUT" in err and "no such file" in err
    code, _, err = run(capsys, "predict", tmp_path / "run", tmp_path / "f.csv", "--out", tmp_path)  # was "[Errno 21]"
    assert code == 2 and f"--out {tmp_path}: is a directory; --out takes the CSV file to write, such as " in err


def test_predict_writes_a_row_for_every_row_even_one_whose_cells_are_all_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", "--data", flowers(tmp_path / "f.csv", n=30), "--target", "species", "--epochs",
                       "1", "--out", tmp_path / "run")
    assert code == 0, err
    new = tmp_path / "new.csv"  # the middle row has every cell missing; the blank line before the last is no row
    new.write_text("sepal length,sepal width,petal length,petal width\n5.1,3.5,1.4,0.2\n,,,\n\n6.6,3.0,5.5,2.0\n")
    code, out, err = run(capsys, "predict", tmp_path / "run", new)
    assert code == 0 and err == ""
    rows = list(csv.DictReader(out.splitlines()))
    assert [r["sepal length"] for r in rows] == ["5.1", "", "6.6"]  # 3 rows in, 3 out, in order
    assert rows[1]["species_pred"] in {"setosa", "versicolor", "virginica"} and float(rows[1]["species_prob"]) > 0
    # filled as any missing cell (the training mean): the same prediction as a row of the means' "NA"s
    na = write_csv(tmp_path / "na.csv", ["sepal length", "sepal width", "petal length", "petal width"], [["NA"] * 4])
    code, out, _ = run(capsys, "predict", tmp_path / "run", na)
    assert code == 0 and next(csv.DictReader(out.splitlines()))["species_prob"] == rows[1]["species_prob"]


def test_predict_with_a_model_file_that_does_not_fit_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", "--data", flowers(tmp_path / "f.csv", n=30), "--target", "species", "--epochs",
                       "1", "--hidden", "8", "--out", tmp_path / "run")
    assert code == 0, err
    new = write_csv(tmp_path / "new.csv", ["sepal length", "sepal width", "petal length", "petal width"],
                    [[5.1, 3.5, 1.4, 0.2]])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "hidden": [16]}))  # not the saved model
    code, _, err = run(capsys, "predict", tmp_path / "run", new)
    assert code == 1 and "different model" in err and "size mismatch" in err
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    (tmp_path / "run" / "model.pth").unlink()  # as after a run stopped in its first epoch
    code, _, err = run(capsys, "predict", tmp_path / "run", new)
    assert code == 1 and "has no model.pth" in err and "--resume" in err


def test_run_files_that_learnloop_did_not_write_are_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each was a TypeError, KeyError or ValueError traceback (from_dict, config["arch"], max() of no settings).
    code, _, err = run(capsys, "train", "--data", flowers(tmp_path / "f.csv", n=30), "--target", "species", "--epochs",
                       "2", "--out", tmp_path / "run")
    assert code == 0, err
    new = tmp_path / "f.csv"
    saved = {name: (tmp_path / "run" / name).read_text() for name in ("config.json", "preprocessing.json")}
    cases = [
        ("preprocessing.json", "{}", ["predict"], r"preprocessing.json is not the preprocessing that `learnloop train` "
                                                 r"writes \(.*missing 5 required"),
        ("preprocessing.json", "[1]", ["predict"], "preprocessing.json is not the preprocessing .* must be a mapping"),
        ("config.json", "[]", ["predict", "show"], "config.json holds a JSON list, not the object of settings"),
        ("config.json", '{"command": "x"}', ["predict"], "config.json lacks arch, hidden, which say what model"),
        ("config.json", '{"command": "x"}', ["train --resume"], r"does not say what data the run trained on"),
    ]
    for name, text, commands, message in cases:
        (tmp_path / "run" / name).write_text(text)
        for command in commands:
            argv = [*command.split(), tmp_path / "run", *([new] if command == "predict" else [])]
            code, out, err = run(capsys, *argv)
            assert code == 1 and __import__("re").search(message, err), (name, command, err)
        (tmp_path / "run" / name).write_text(saved[name])
    (tmp_path / "run" / "preprocessing.json").unlink()
    (tmp_path / "run" / "config.json").write_text('{"command": "x"}')  # a run with no settings to list
    code, out, err = run(capsys, "show", tmp_path / "run")
    assert code == 0 and "command: x" in out and "epoch" in out, err
    # stopped in its first epoch: metrics.csv holds the header alone, which was printed as an empty table
    (tmp_path / "run" / "metrics.csv").write_text("epoch,train_loss,valid_loss,accuracy,time\n")
    code, out, err = run(capsys, "show", tmp_path / "run")
    assert code == 0 and out.splitlines()[-1] == "(no epoch finished)" and "train_loss" not in out, err


def test_the_checkpoints_folder_of_a_run_stands_for_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # It was taken as the run with checkpoints/model.pth as its model: "has no model.pth: its training did not finish
    # an epoch", of a run that finished.
    code, _, err = run(capsys, "train", "--data", flowers(tmp_path / "f.csv", n=30), "--target", "species", "--epochs",
                       "1", "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = run(capsys, "predict", tmp_path / "run" / "checkpoints", tmp_path / "f.csv")
    assert code == 0, err
    assert out == run(capsys, "predict", tmp_path / "run", tmp_path / "f.csv")[1]
    assert runs.open_run(tmp_path / "run" / "checkpoints").model_file == tmp_path / "run" / "model.pth"


def test_help_explains_defaults_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for text in ("digits", "--target", "at most 20 distinct values", "--lr-find", "exit codes", "130 stopped by"):
        assert text in " ".join(out.split()), text


# ------------------------------------------------------------------------------------ real processes
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def test_python_m_learnloop_exit_codes_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    usage = subprocess.run([sys.executable, "-m", "learnloop", "train", "--epochs", "0"], capture_output=True,
                           text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert usage.returncode == 2 and "--epochs" in usage.stderr and "Traceback" not in usage.stderr
    failure = subprocess.run([sys.executable, "-m", "learnloop", "train", "--data", "empty.csv", "--target", "y"],
                             capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert failure.returncode == 1 and "empty.csv is empty" in failure.stderr
    assert "Traceback" not in failure.stderr


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    # `learnloop show RUN | head -1`: a command still printing when its reader exits stops with 141 (128 + SIGPIPE,
    # as a shell reports for cat), no error message and no "Exception ignored" at exit.
    program = (
        "import sys\n"
        "from learnloop import cli\n"
        "cli.COMMANDS['show'] = lambda args: [print('row', i) for i in range(10**6)]\n"
        "sys.exit(cli.main(['show', 'run']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"row 0\n"
    proc.stdout.close()  # the reader is gone
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""


def test_a_broken_pipe_that_is_not_the_output_is_a_failure(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from learnloop import cli\n"
        "def show(args):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')  # a pipe of its own, say; stdout is fine\n"
        "cli.COMMANDS['show'] = show\n"
        "sys.exit(cli.main(['show', 'run']))\n"
    )
    with (tmp_path / "out.txt").open("w") as out:
        done = subprocess.run([sys.executable, "-c", program], stdout=out, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, env=_env(), timeout=120)
    assert done.returncode == 1 and "learnloop show: error: [Errno 32] Broken pipe" in done.stderr


def test_console_script_trains_a_csv(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("learnloop")
    if not script.exists():
        pytest.skip("the learnloop console script is not installed next to this Python")
    flowers(tmp_path / "flowers.csv", n=30)
    done = subprocess.run([str(script), "train", "--data", "flowers.csv", "--target", "species", "--epochs", "2",
                           "--out", "run"], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train_loss" in done.stdout and (tmp_path / "run" / "model.pth").is_file()


def test_train_under_torchrun_writes_one_run_from_rank_zero(tmp_path: Path) -> None:
    launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in _env().items() if k not in launch and not k.startswith("TORCHELASTIC")}
    env["LEARNLOOP_DIST_TIMEOUT"] = "30"  # a rank left waiting fails instead of hanging
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "learnloop", "train", "--epochs", "1", "--out", "run"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # one run directory, the one rank 0 chose
    assert {"config.json", "metrics.csv", "model.pth"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert done.stdout.count("train_loss") == 1 and done.stdout.count("run directory: run") == 1
    assert done.stdout.count("wrote config.json") == 1


# ------------------------------------------------------------------------------------ resume
class CtrlCInEpoch2(Callback):
    """A Ctrl-C in the middle of epoch 2, as if the user pressed it then (no state: nothing of it is saved)."""

    def after_batch(self) -> None:
        if self.learn.training and self.learn.epoch == 2 and self.learn.iter == 1:
            signal.raise_signal(signal.SIGINT)


def learner_with_ctrl_c(*args: Any, **kwargs: Any) -> Learner:
    return Learner(*args, **kwargs).add_cb(CtrlCInEpoch2())


def test_resume_after_ctrl_c_ends_as_the_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = flowers(tmp_path / "flowers.csv", n=60)
    argv = ["train", "--data", data, "--target", "species", "--epochs", "4", "--mixup", "--out"]
    assert run(capsys, *argv, tmp_path / "whole")[0] == 0

    with monkeypatch.context() as patch:
        patch.setattr(recipe, "Learner", learner_with_ctrl_c)
        code, out, err = run(capsys, *argv, tmp_path / "cut")
    assert code == 130 and "interrupted" in err
    assert f"learnloop train --resume {tmp_path / 'cut'}" in out
    assert len(read_rows(tmp_path / "cut" / "metrics.csv")) == 2

    code, out, err = run(capsys, "train", "--resume", tmp_path / "cut")
    assert code == 0, err
    assert "resuming from" in out
    whole, cut = (read_rows(tmp_path / d / "metrics.csv") for d in ("whole", "cut"))
    assert [{**r, "time": ""} for r in whole] == [{**r, "time": ""} for r in cut]  # bit-identical values
    best = [torch.load(tmp_path / d / "model.pth", weights_only=True) for d in ("whole", "cut")]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])

    code, _, err = run(capsys, "train", "--resume", tmp_path / "cut")
    assert code == 1 and "finished all its 4 epochs" in err
    code, _, err = run(capsys, "train", "--resume", tmp_path / "cut", "--epochs", "9", "--fp16")
    assert code == 2 and "leave out --epochs, --fp16" in err
    code, _, err = run(capsys, "train", "--resume", tmp_path / "nope")
    assert code == 2 and "no such run directory" in err
    # a model or checkpoint file was "no such run directory"
    for file in (tmp_path / "cut" / "model.pth", *(tmp_path / "cut" / "checkpoints").iterdir()):
        code, _, err = run(capsys, "train", "--resume", file)
        assert code == 2 and f"--resume {file}: is a file; --resume takes a run directory" in err, err
        assert f"({tmp_path / 'cut'} for this file)" in err


def test_resume_skips_a_corrupt_newest_checkpoint_as_fit_resume_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `fit(resume=folder)` falls back to the newest checkpoint that can be read, with a warning; --resume stopped with
    # "... is corrupt or truncated" and exit code 1 instead.
    data = flowers(tmp_path / "flowers.csv", n=30)
    with monkeypatch.context() as patch:
        patch.setattr(recipe, "Learner", learner_with_ctrl_c)
        code, _, err = run(capsys, "train", "--data", data, "--target", "species", "--epochs", "4", "--out",
                           tmp_path / "cut")
    assert code == 130, err
    folder = tmp_path / "cut" / "checkpoints"
    (good,) = folder.iterdir()
    (folder / "checkpoint_000099_epoch3_end.pth").write_bytes(good.read_bytes()[:1000])  # newer, truncated
    code, out, err = run(capsys, "train", "--resume", tmp_path / "cut")
    assert code == 0, err
    assert "warning: resume=" in err and "skipping checkpoint_000099_epoch3_end.pth, which cannot be read" in err
    assert f"(resuming from {good})" in out
    assert [r["epoch"] for r in read_rows(tmp_path / "cut" / "metrics.csv")] == ["0", "1", "2", "3"]
    assert [f.name for f in folder.iterdir()] == ["checkpoint_000101_epoch3_end.pth"]  # keep_last=1 pruned the rest

    for file in folder.iterdir():  # every checkpoint unreadable: an error, in the command's terms
        file.write_bytes(b"garbage")
    code, _, err = run(capsys, "train", "--resume", tmp_path / "cut")
    assert code == 1 and "can be read" in err and "Start the run again with the command in" in err, err
    assert "resume=," not in err
    with pytest.raises(CheckpointError, match="Start the run again"):  # what runs.readable_checkpoint says it raises
        runs.readable_checkpoint(tmp_path / "cut")


def test_parser_defaults_are_train_config_defaults() -> None:
    args = build_parser().parse_args(["train"])
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("precision", "out"):
            assert getattr(args, field.name) == getattr(defaults, field.name), field.name


def test_resume_from_another_directory_reads_the_file_the_run_trained_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # config.json's `data` is relative to where the run trained, and --resume takes no --data: from anywhere else the
    # run could not be carried on ("--data f.csv: no such file", an option the user had not given).
    (tmp_path / "data").mkdir()
    flowers(tmp_path / "data" / "f.csv", n=30)
    monkeypatch.chdir(tmp_path / "data")
    with monkeypatch.context() as patch:
        patch.setattr(recipe, "Learner", learner_with_ctrl_c)
        code, _, err = run(capsys, "train", "--data", "f.csv", "--target", "species", "--epochs", "3", "--out", "cut")
    assert code == 130, err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "f.csv").rename(tmp_path / "g.csv")  # neither where it was nor from here as written: gone
    code, _, err = run(capsys, "train", "--resume", tmp_path / "data" / "cut")
    assert code == 2 and "trained on f.csv, which is not a file from" in err and "--data" not in err, err
    (tmp_path / "g.csv").rename(tmp_path / "data" / "f.csv")
    code, out, err = run(capsys, "train", "--resume", tmp_path / "data" / "cut")
    assert code == 0 and "resuming from" in out, err
    assert len(read_rows(tmp_path / "data" / "cut" / "metrics.csv")) == 3
