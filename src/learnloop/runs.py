"""Run directories: what `learnloop train` writes, and what `learnloop predict` and `learnloop show` read.

A run directory holds::

    config.json         every setting of the run, and the command that repeats it
    preprocessing.json  the columns, normalisation statistics and class names (learnloop.tabular)
    metrics.csv         the epoch table
    loss.png, schedule.png, lr_find.png (with --lr-find)
    model.pth           the best model's weights (lowest valid_loss), for `learnloop predict`; the last model's
                        when no valid_loss improved, none when those weights are NaN or infinite (diverged)
    checkpoints/        the last training checkpoint (end of the last epoch done, or where Ctrl-C stopped),
                        from which `learnloop train --resume RUN_DIR` carries on exactly

Only JSON and weights-only `.pth` files: nothing is pickled.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from torch import nn

from .callbacks import checkpointing
from .checkpoint import atomic_write, check_state_dict, safe_load
from .models import MLP, SimpleCNN
from .tabular import TabularPreprocessor

__all__ = [
    "Run",
    "RunError",
    "build_model",
    "format_table",
    "latest_checkpoint",
    "new_run_dir",
    "open_run",
    "read_json",
    "read_prep",
    "readable_checkpoint",
    "save_lr_find_plot",
    "save_plots",
    "write_json",
]

CONFIG, PREPROCESSING, METRICS, BEST_MODEL, CHECKPOINTS = (
    "config.json", "preprocessing.json", "metrics.csv", "model.pth", "checkpoints")


class RunError(ValueError):
    """A path that is not a usable run directory (or a model file inside one)."""


def new_run_dir(out: Path | None, root: Path = Path("runs")) -> Path:
    """`out`, created (refusing one that already holds a run), or a new `runs/<date>-<time>` directory."""
    if out is not None:
        if (out / CONFIG).exists():
            raise RunError(f"{out} already holds a run: choose another --out, or delete it first.")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # mkdir's "[Errno 17] File exists: 'out'" said no more
            # A link to nothing (which exists() denies) stands in the way as a file does.
            file = next((p for p in (out, *out.parents) if p.is_symlink() or p.exists() and not p.is_dir()), out)
            what = "a file" if file.exists() else "a link to nothing"
            raise RunError(f"--out {out}: {file} is {what}, and a run needs a directory there: choose another --out "
                           "(made if it does not exist).") from None
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RunError(f"Could not create a new run directory under {root}.")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's last training checkpoint, if it has one."""
    return checkpointing.latest_checkpoint(run_dir / CHECKPOINTS)


def readable_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `learnloop train --resume` carries the run on from: its newest that can be read, as
    ``fit(resume=...)`` takes it (newer ones that are corrupt or truncated are skipped with a warning naming them);
    None when it has none, a CheckpointError (learnloop.checkpoint's, not a RunError) when none can be read."""
    folder = run_dir / CHECKPOINTS
    start_over = f"Start the run again with the command in {run_dir / CONFIG}."
    return checkpointing._latest_readable(folder, "checkpoint", folder, start_over)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically (a temporary file renamed over `path`)."""
    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def build_model(arch: str, prep: TabularPreprocessor, hidden: list[int]) -> nn.Module:
    """The model `learnloop train` trains for this preprocessing: SimpleCNN on images, MLP on features."""
    if arch == "cnn":
        if not prep.input_shape or len(prep.input_shape) != 3:
            raise RunError("--arch cnn needs images; tabular data (a CSV file) needs --arch mlp.")
        return SimpleCNN(prep.n_outputs, n_channels=prep.input_shape[0], widths=hidden)
    stats = (prep.target_mean, prep.target_std) if prep.task == "regression" else None
    return MLP(prep.n_inputs, prep.n_outputs, hidden=hidden, target_stats=stats)


def save_plots(learn: Any, run_dir: Path) -> list[str]:
    """loss.png and schedule.png from the learner's Recorder; the names written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window, even when there is a display
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    recorder = learn.recorder
    learn_plots = {
        "loss.png": lambda f: recorder.plot_loss(skip_start=min(5, len(recorder.losses) // 4), fname=f).figure,
        "schedule.png": lambda f: recorder.plot_sched(fname=f),
    }
    written = []
    for name, plot in learn_plots.items():
        plt.close(plot(run_dir / name))
        written.append(name)
    return written


def save_lr_find_plot(learn: Any, run_dir: Path, lr: float) -> bool:
    """lr_find.png: the sweep of the last `lr_find`, the chosen `lr` marked; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    recorder = learn.recorder
    lrs = [float(x) for x in recorder.lrs]
    nearest = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(lr)))
    point = (lr, float(recorder.losses[nearest]))
    plt.close(recorder.plot_lr_find(suggestions=[point], nms=[f"valley: {lr:.2e}"], fname=run_dir / "lr_find.png"))
    return True


@dataclass
class Run:
    """A run directory as `learnloop predict` and `learnloop show` read it."""

    path: Path
    config: dict[str, Any]
    model_file: Path

    @property
    def prep(self) -> TabularPreprocessor:
        """The preprocessing learnt in training."""
        return read_prep(self.path / PREPROCESSING)

    def diverged(self) -> bool:
        """Whether epochs were recorded and the valid_loss of every one is NaN or infinite."""
        rows = self.metrics()
        if not rows or "valid_loss" not in rows[0]:
            return False
        column = rows[0].index("valid_loss")
        numbers = [_number(row[column]) for row in rows[1:] if column < len(row)]
        losses = [x for x in numbers if x is not None]  # an empty cell says nothing
        return bool(losses) and not any(math.isfinite(x) for x in losses)

    def metrics(self) -> list[list[str]]:
        """metrics.csv as rows of cells, the header first (empty when training wrote none)."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return [row for row in csv.reader(f) if row]

    def load_model(self) -> nn.Module:
        """The model of the run, with the weights of `model_file`, in eval mode on the CPU."""
        if not self.model_file.is_file():
            if self.diverged():  # `learnloop train` writes the last model when none improved, unless it diverged
                raise RunError(
                    f"{self.path} has no {self.model_file.name}: its training diverged before any epoch's valid_loss "
                    f"improved, and weights that hold NaN or infinite values are not saved (`learnloop show "
                    f"{self.path}` prints its losses). Train again with a lower --lr."
                )
            raise RunError(
                f"{self.path} has no {self.model_file.name}: its training did not finish an epoch. Carry it on with "
                f"`learnloop train --resume {self.path}`, or pass one of its checkpoints/*.pth as the model."
            )
        if missing := [key for key in ("arch", "hidden") if key not in self.config]:
            raise RunError(f"{self.path / CONFIG} lacks {', '.join(missing)}, which say what model to build: it is "
                           "not a config.json that `learnloop train` wrote.")
        model = build_model(self.config["arch"], self.prep, self.config["hidden"])
        state = safe_load(self.model_file, map_location="cpu")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # with optimizer, or a checkpoint
            state = state["model"]
        check_state_dict(model, state, self.model_file)  # a CheckpointError naming the keys, not torch's traceback
        model.load_state_dict(state)
        return model.eval()


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def open_run(path: Path) -> Run:
    """The run in directory `path`, or the run a model file `path` belongs to (then that file is its model)."""
    run_dir, model_file = (path, path / BEST_MODEL) if path.is_dir() else (path.parent, path)
    if run_dir.name == CHECKPOINTS and (run_dir.parent / CONFIG).is_file():  # a checkpoint of the run, or their folder
        run_dir = run_dir.parent
        model_file = run_dir / BEST_MODEL if path.is_dir() else path
    if not (run_dir / CONFIG).is_file():
        configs = sorted(path.glob(f"*/{CONFIG}"), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
        inside = [p.parent for p in configs]
        if inside:
            raise RunError(f"{path} holds {len(inside)} runs rather than being one; the latest is {inside[-1]}.")
        raise RunError(
            f"{path} is not a run directory (no {CONFIG} in {run_dir}): give the directory `learnloop train` "
            "wrote (it prints it), or a model file inside it."
        )
    config = read_json(run_dir / CONFIG)
    if not isinstance(config, dict):
        raise RunError(f"{run_dir / CONFIG} holds a JSON {type(config).__name__}, not the object of settings that "
                       "`learnloop train` writes.")
    return Run(run_dir, config, model_file)


def read_json(path: Path) -> Any:
    """The JSON file of a run directory, with errors that say which file is missing or broken."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the run directory is incomplete.") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}).") from None


def read_prep(path: Path) -> TabularPreprocessor:
    """The preprocessing.json of a run directory, with an error that says so when it is not one."""
    state = read_json(path)
    try:
        return TabularPreprocessor.from_dict(state)
    except TypeError as e:  # not a dict, or other keys than the preprocessor's fields
        raise RunError(f"{path} is not the preprocessing that `learnloop train` writes ({e}).") from None


def format_table(rows: list[list[str]]) -> str:
    """Rows of cells as left-aligned columns."""
    if not rows:
        return ""
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) + 2 for i in range(len(rows[0]))]
    return "\n".join("".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows)
