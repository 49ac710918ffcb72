"""The recipe `learnloop train` follows: data, model, learner, lr finder, fit policy, run directory.

Every setting is a field of :class:`TrainConfig`; the defaults left as None are resolved from the data
(`resolved`), and the resolved config is what `config.json` holds, with the command line that repeats it.

>>> learn, run_dir = train(TrainConfig(data="houses.csv", target="price", epochs=20))
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import __version__, optimizer, runs
from . import distributed as D
from .callbacks import CheckpointCallback, CSVLogger, MixUp, ParamScheduler, SaveModelCallback
from .data import DataLoaders, default_device
from .datasets import DIGITS_SIZE, digits
from .finite import all_finite, first_non_finite
from .learner import Learner
from .losses import CrossEntropyLossFlat, MSELossFlat
from .metrics import AccumMetric, R2Score, accuracy, rmse
from .models import CNN_WIDTHS, MLP_HIDDEN
from .resume import read_position
from .schedules import SchedNo
from .tabular import TabularData, TabularPreprocessor, load_csv, read_csv

__all__ = ["ConfigError", "TrainConfig", "train", "OPTIMIZERS", "POLICIES"]

OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "adam": optimizer.Adam, "sgd": partial(optimizer.SGD, mom=0.9), "rmsprop": optimizer.RMSProp,
    "radam": optimizer.RAdam, "lamb": optimizer.LAMB, "ranger": optimizer.ranger}
POLICIES = ("one_cycle", "flat_cos", "sgdr", "fit")
DIGITS_EPOCHS, CSV_STEPS, CSV_EPOCHS = 8, 300, (5, 30)


class ConfigError(ValueError):
    """Settings that cannot work together, or a file that does not exist: a usage error (exit code 2)."""


@dataclass
class TrainConfig:
    """Every setting of a `learnloop train` run; None means "chosen from the data" (see `resolved`)."""

    data: str = "digits"
    target: str | None = None
    task: Literal["auto", "classification", "regression"] = "auto"
    valid_pct: float = 0.2
    drop: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    arch: Literal["auto", "cnn", "mlp"] = "auto"
    hidden: list[int] | None = None
    epochs: int | None = None
    bs: int | None = None
    lr: float = 1e-2
    lr_find: bool = False
    policy: str = "one_cycle"
    opt: str = "adam"
    wd: float | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    mixup: float | None = None
    seed: int = 42
    device: str | None = None
    out: str | None = None

    def resolved(self, data: TabularData) -> TrainConfig:
        """This config with the automatic choices made for `data`: arch, hidden, bs, epochs, task, device."""
        arch = self.arch if self.arch != "auto" else "cnn" if data.prep.input_shape else "mlp"
        if arch == "cnn" and not data.prep.input_shape:
            raise ConfigError("--arch cnn needs images; for a CSV file use --arch mlp (the default).")
        n_train, tabular = len(data.train), self.data != "digits"
        # A small CSV gets small batches, so that an epoch still makes ~10 steps.
        bs = min(self.bs or (min(64, max(8, n_train // 10)) if tabular else 64), n_train)
        epochs = self.epochs or (
            min(max(-(-CSV_STEPS * bs // n_train), CSV_EPOCHS[0]), CSV_EPOCHS[1]) if tabular else DIGITS_EPOCHS)
        hidden = self.hidden or list(CNN_WIDTHS if arch == "cnn" else MLP_HIDDEN)
        if bs == 1 and _one_value_per_channel(arch, data.prep.input_shape, hidden):
            why = "--bs 1" if self.bs == 1 else f"{n_train} training item (--valid-pct {self.valid_pct})"
            raise ConfigError(
                f"{why}: the {arch.upper()}'s batch norm layers need at least 2 items in a training batch (with one, "
                "each channel holds one value: nothing to normalise). "
                + ("Use a --bs of 2 or more." if self.bs == 1 else "Use a smaller --valid-pct, so that 2 items train.")
            )
        return dataclasses.replace(self, arch=arch, hidden=hidden, bs=bs, epochs=epochs, task=data.prep.task,
                                   device=str(_device(self.device)))

    def command(self) -> str:
        """The command line that repeats this (resolved) run."""
        words = ["learnloop", "train", *_option("--data", [self.data])]
        if self.data != "digits":
            words += [*_option("--target", [str(self.target)]), "--task", self.task]
            words += [*_option("--drop", self.drop), *_option("--categorical", self.categorical)]
        words += ["--valid-pct", str(self.valid_pct), "--arch", self.arch, "--hidden", *map(str, self.hidden or []),
                  "--epochs", str(self.epochs), "--bs", str(self.bs)]
        words += ["--lr-find"] if self.lr_find else ["--lr", str(self.lr)]
        words += ["--policy", self.policy, "--opt", self.opt, *(["--wd", str(self.wd)] if self.wd is not None else [])]
        words += [f"--{self.precision}"] if self.precision != "fp32" else []
        words += ["--mixup", str(self.mixup)] if self.mixup else []
        return shlex.join([*words, "--seed", str(self.seed), "--device", str(self.device)])


def _option(flag: str, values: list[str]) -> list[str]:
    """`flag` with `values` as command-line words; a value that starts with '-' (a column named "--out", a file
    named "-x.csv") as `flag=value`, which argparse would otherwise read as an option of its own."""
    if any(v.startswith("-") for v in values):
        return [f"{flag}={v}" for v in values]
    return [flag, *values] if values else []


def _one_value_per_channel(arch: str, input_shape: list[int] | None, hidden: list[int]) -> bool:
    """Whether the last batch norm of the model `runs.build_model` makes sees one value per channel in a batch of one
    item: always in an MLP (BatchNorm1d), in a SimpleCNN once its stride-2 blocks have shrunk the image to 1x1."""
    if arch != "cnn" or not input_shape:
        return bool(hidden)
    height, width = input_shape[1:]
    for _ in hidden[1:]:
        height, width = (height + 1) // 2, (width + 1) // 2
    return height * width == 1


def train(config: TrainConfig, log: Callable[[str], None] = print, resume: bool = False) -> tuple[Learner, Path]:
    """Train as `learnloop train` does; returns the learner (with the best model loaded) and the run directory.

    With `resume`, `config` is a run's config.json and training carries on from the last checkpoint in the run
    directory `config.out`, ending exactly as the uninterrupted run would have.

    Under torchrun (several processes), rank 0 chooses the run directory and shares it with the other ranks,
    and only rank 0 logs and writes the run's files; every rank returns once rank 0 has written them all.
    """
    if not D.is_rank_zero():
        log = _silent
    _check(config)
    if resume and not config.out:  # Path(str(None)): "None/preprocessing.json is missing: the run directory is ..."
        raise ConfigError("train(config, resume=True) carries on the run in the directory config.out, which is None: "
                          "give the run directory (and the settings of its config.json).")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    data = load_data(config)
    config = config.resolved(data)
    bs, epochs, hidden = config.bs or 64, config.epochs or 1, config.hidden or []  # set by resolved()
    dls = DataLoaders.from_dsets(data.train, data.valid, bs=bs, seed=config.seed, device=config.device)
    classification = data.prep.task == "classification"
    model = runs.build_model(config.arch, data.prep, hidden)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat() if classification else MSELossFlat(),
                    opt_func=OPTIMIZERS[config.opt], lr=config.lr, wd=config.wd,
                    metrics=accuracy if classification else _regression_metrics(),
                    cbs=MixUp(config.mixup) if config.mixup else None)
    if config.precision != "fp32":
        learn.to_fp16(amp_mode=config.precision)
    out, checkpoint = _resumable(config, data) if resume else (_new_run_dir(config), None)
    learn.path, learn.model_dir = out, Path(".")
    what = f"{len(data.prep.classes)} classes" if classification else f"regression of {data.prep.target!r}"
    log(f"data: {config.data}, {len(data.train)} train / {len(data.valid)} valid items, {data.prep.n_inputs} "
        f"features, {what}" + "".join(f"; {note}" for note in data.notes))
    if config.lr_find and not resume:  # a resumed run keeps the lr its finder chose (config.json)
        config = dataclasses.replace(config, lr=_lr_find(learn, out, config.lr, log))
    if not resume and D.is_rank_zero():
        runs.write_json(out / runs.CONFIG, {"command": config.command(), **dataclasses.asdict(config),
                                            "out": str(out), "n_train": len(data.train), "n_valid": len(data.valid),
                                            **_provenance(config)})
        runs.write_json(out / runs.PREPROCESSING, data.prep.to_dict())
    log(f"model: {type(model).__name__} {' '.join(map(str, hidden))}; {config.opt}, {config.policy}, "
        f"{epochs} epochs, bs {bs}, lr {config.lr:.3g}, {config.precision}, device {config.device}\n"
        f"run directory: {out}" + (f" (resuming from {checkpoint})" if checkpoint else ""))
    try:
        _fit(learn, config.policy, epochs, config.lr, checkpoint)
    except KeyboardInterrupt:
        checkpoint = runs.latest_checkpoint(out)
        if checkpoint is not None:
            log(f"\ninterrupted; the last checkpoint is {checkpoint}: carry on with "
                f"learnloop train --resume {shlex.quote(str(out))}")
        raise
    _finish(learn, out, log, lower_lr="a lower --lr" + (" instead of --lr-find" if config.lr_find else ""))
    D.barrier()  # the other ranks return (and exit) only once rank 0 has written every file
    return learn, out


def _check(config: TrainConfig) -> None:
    """ConfigError for settings that the command line's parser refuses, or that no parser sees (Python, resume)."""
    if config.policy not in POLICIES or config.opt not in OPTIMIZERS:
        raise ConfigError(f"policy must be one of {POLICIES} and opt one of {tuple(OPTIMIZERS)}.")
    if not 0 <= config.seed < 2**32:  # numpy's generators take no other seeds (a ValueError from inside numpy)
        raise ConfigError(f"--seed {config.seed}: a seed is a whole number from 0 to {2**32 - 1}.")
    for name in ("epochs", "bs"):  # 0 would be read as "not given", and chosen from the data
        if (value := getattr(config, name)) is not None and value < 1:
            raise ConfigError(f"--{name} {value}: must be a whole number >= 1 (None: chosen from the data).")


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _new_run_dir(config: TrainConfig) -> Path:
    """A new run directory: made by rank 0 and shared with the other ranks, which raise rank 0's error if it fails."""
    made: Path | str | None = None
    error: Exception | None = None
    if D.is_rank_zero():
        try:
            made = runs.new_run_dir(Path(config.out) if config.out else None)
        except (runs.RunError, OSError) as e:
            made, error = str(e), e
    made = D.broadcast_object(made)
    if error is not None:
        raise error
    if isinstance(made, str):
        raise runs.RunError(f"rank 0 could not make the run directory: {made}")
    if made is None:  # no process group: LEARNLOOP_AUTO_DISTRIBUTED=0
        raise runs.RunError(f"rank {D.rank()} got no run directory from rank 0: under torchrun, `learnloop train` "
                            "needs the Learner to join the process group (leave LEARNLOOP_AUTO_DISTRIBUTED unset).")
    return made


def _resumable(config: TrainConfig, data: TabularData) -> tuple[Path, Path]:
    """The run directory of a run to resume, checked (same data, epochs left), and the checkpoint to resume from: the
    newest that can be read, as fit(resume=folder) takes it (newer ones that cannot are skipped with a warning)."""
    out = Path(str(config.out))
    saved = runs.read_prep(out / runs.PREPROCESSING)
    if saved != data.prep:
        raise runs.RunError(f"{config.data} is not the data the run in {out} was trained on (it changed since); "
                            "resuming needs the same data.")
    checkpoint = runs.readable_checkpoint(out)
    if checkpoint is None:
        raise runs.RunError(f"{out} holds no checkpoint to resume from (one is written at the end of each epoch); "
                            "start it again with the command in its config.json.")
    position = read_position(checkpoint)
    if position.epoch >= position.n_epoch and not position.mid_epoch:
        raise runs.RunError(f"the run in {out} finished all its {position.n_epoch} epochs: there is nothing to "
                            "resume. `learnloop show` prints it.")
    return out, checkpoint


def _regression_metrics() -> list[Any]:
    return [AccumMetric(rmse.func, name="rmse"), R2Score()]  # fresh instances, named plainly (fastai: '_rmse')


def load_data(config: TrainConfig) -> TabularData:
    """The training and validation data of `config`: the bundled digits, or a CSV file."""
    if config.data == "digits":
        for option in ("target", "drop", "categorical"):
            if getattr(config, option):
                why = ("the digits' target is the digit in each image" if option == "target" else
                       "the digits' features are the 64 pixels of each image")
                raise ConfigError(f"--{option} is for CSV files (--data FILE.csv); {why}.")
        if config.task == "regression":
            raise ConfigError("--task regression: the digits are a classification task.")
        image = config.arch != "mlp"
        shape = (-1, 1, 8, 8) if image else (-1, 64)
        try:
            splits = digits(valid_pct=config.valid_pct, seed=config.seed)
        except ValueError:  # a fraction that rounds to no image on one side (a CSV file's split keeps one row)
            n_valid = round(DIGITS_SIZE * config.valid_pct)
            raise ConfigError(
                f"--valid-pct {config.valid_pct} splits the {DIGITS_SIZE} digits into {DIGITS_SIZE - n_valid} training "
                f"and {n_valid} validation images, and each needs at least one: use a --valid-pct from 0.001 to 0.999."
            ) from None
        train_ds, valid_ds = (TensorDataset(ds.tensors[0].reshape(shape), ds.tensors[1]) for ds in splits)
        # The schema of the UCI files (64 pixels valued 0..16), so `learnloop predict` reads digits from a CSV file.
        prep = TabularPreprocessor("digit", "classification", [f"pixel{i}" for i in range(64)], [0.0] * 64,
                                   [16.0] * 64, classes=[str(i) for i in range(10)],
                                   input_shape=[1, 8, 8] if image else None)
        return TabularData(train_ds, valid_ds, prep, [])
    path = existing_file(config.data, "--data", "'digits' or the path of a CSV file")
    if config.target is None:
        raise ConfigError(f"--data {config.data} needs --target COLUMN, the column to predict; "
                          f"the columns of {path} are: {', '.join(read_csv(path).columns)}.")
    return load_csv(path, config.target, config.valid_pct, config.seed, config.task, config.drop, config.categorical)


def existing_file(name: str | Path, option: str, takes: str) -> Path:
    """`name` as a Path if it is a file; else a ConfigError saying what `option` takes, with a close match."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"{option} {name}: is a directory; {option} takes {takes}.")
    import difflib

    siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.8)
    hint = f" Did you mean {path.parent / close[0]}?" if close else ""
    raise ConfigError(f"{option} {name}: no such file (from {Path.cwd()}).{hint} {option} takes {takes}.")


def _device(name: str | None) -> torch.device:
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda, cuda:1, mps, ...") from None
    available: dict[str, Callable[[], bool]] = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ConfigError(f"--device {name}: this machine has no {device.type.upper()} device; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                          "from 0; use --device cuda (the first one) or another index.")
    if device.type == "meta":
        raise ConfigError(f"--device {name}: a meta tensor holds no values, so nothing can train on it; use --device "
                          "cpu or a GPU.")
    if device.type not in ("cpu", *available):  # xpu, hpu, xla...: a traceback in before_fit if torch cannot use it
        try:
            torch.empty(0, device=device)
        except Exception as e:  # RuntimeError, AssertionError ("not compiled with"), ImportError (no torch.hpu)...
            reason = str(e).split(". ")[0]  # the first sentence: XLA's goes on to list every backend
            raise ConfigError(f"--device {name}: this torch cannot use it ({reason}); use --device cpu.") from None
    return device


def _lr_find(learn: Learner, out: Path, default: float, log: Callable[[str], None]) -> float:
    suggestion = learn.lr_find(show_plot=False)
    lr = float(suggestion[0]) if suggestion else float("nan")
    if not lr > 0:
        log(f"lr_find: the loss diverged before it could suggest an lr; using --lr {default}")
        return default
    plotted = runs.save_lr_find_plot(learn, out, lr) if D.is_rank_zero() else False
    log(f"lr_find: valley at lr {lr:.3g}" + (" (plot: lr_find.png)" if plotted else ""))
    return lr


class QuietSaveModel(SaveModelCallback):
    """SaveModelCallback without its "Better model found" line between the rows of the table."""

    def say(self, message: str) -> None:
        pass


def _fit(learn: Learner, policy: str, epochs: int, lr: float, resume: Path | None) -> None:
    # The checkpoint at the end of each epoch (and on Ctrl-C) is the run's last checkpoint, for --resume.
    checkpoints = CheckpointCallback(every_epoch=True, keep_last=1, path=runs.CHECKPOINTS)
    cbs = [CSVLogger(runs.METRICS, append=resume is not None), QuietSaveModel(fname="model"), checkpoints]
    kwargs: dict[str, Any] = {"cbs": cbs, "resume": resume}
    if policy == "one_cycle":
        learn.fit_one_cycle(epochs, lr, **kwargs)
    elif policy == "flat_cos":
        learn.fit_flat_cos(epochs, lr, **kwargs)
    elif policy == "sgdr":
        # Cycles 1, 2, 4, ... units long (cycle_mult 2): as many cycles as fit --epochs exactly.
        n_cycles = max(n for n in range(1, 8) if epochs % (2**n - 1) == 0)
        learn.fit_sgdr(n_cycles, epochs // (2**n_cycles - 1), lr, **kwargs)
    else:  # a flat schedule: the same as a plain fit, and schedule.png shows the lr
        kwargs["cbs"] = [*cbs, ParamScheduler({"lr": SchedNo(lr, lr)})]
        learn.fit(epochs, lr, **kwargs)


def _finish(learn: Learner, out: Path, log: Callable[[str], None], lower_lr: str) -> None:
    names = learn.recorder.metric_names[1:-1]  # without epoch and time
    rows = [v for v in learn.recorder.values if len(v) == len(names)]
    losses = [float(v[1]) for v in rows]
    if not (out / runs.BEST_MODEL).exists():
        # No epoch's valid_loss improved on the best so far (the first one's does unless it is NaN or +inf): the
        # last model is the best there is, unless its weights diverged, which would predict only NaN.
        if all_finite(learn.model):
            learn.save("model", with_opt=False)
            log("valid_loss never improved (is it nan?): model.pth is the last model")
        else:
            log(f"training diverged: the model's {first_non_finite(learn.model)} holds NaN or infinite values, "
                f"so no model.pth was written; train again with {lower_lr}")
    elif losses:
        best = int(np.nanargmin(losses))
        scores = ", ".join(f"{n} {float(v):.6f}" for n, v in zip(names[1:], rows[best][1:], strict=True))
        log(f"best epoch: {best} ({scores}), saved as model.pth")
    plots = runs.save_plots(learn, out) if D.is_rank_zero() else []
    files = [runs.CONFIG, runs.PREPROCESSING, runs.METRICS, *plots]
    files += [f for f in ("lr_find.png", runs.BEST_MODEL) if (out / f).exists()]
    checkpoint = runs.latest_checkpoint(out)
    files += [str(checkpoint.relative_to(out))] if checkpoint is not None else []
    run = shlex.quote(str(out))
    predict = f"  |  learnloop predict {run} NEW_ROWS.csv" if (out / runs.BEST_MODEL).exists() else ""
    log(f"wrote {', '.join(files)} in {out}\nnext: learnloop show {run}{predict}")


def _provenance(config: TrainConfig) -> dict[str, Any]:
    info: dict[str, Any] = {"learnloop": __version__, "torch": torch.__version__,
                            "created": datetime.now().isoformat(timespec="seconds")}
    if config.data != "digits":
        path = Path(config.data)
        info |= {"data_path": str(path.resolve()), "data_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return info
