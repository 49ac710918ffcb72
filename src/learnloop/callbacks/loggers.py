"""Loggers: the epoch table to a CSV file, and training curves to TensorBoard.

Both write on rank 0 only in a distributed job (`learnloop.distributed.is_rank_zero`), and only in `fit` (not in
`validate()`, `get_preds()` or `lr_find()`, nor for epochs skipped by `fit(start_epoch=...)`).

>>> learn.fit(5, cbs=[CSVLogger(), TensorBoardCallback('runs/exp1')])
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..callback import Callback, is_side_run
from ..checkpoint import atomic_write
from ..distributed import is_rank_zero, unwrap_model
from ..errors import ArgumentError
from ..hooks import Hook, hook_output
from .recorder import Recorder

__all__ = ["CSVLogger", "TensorBoardCallback", "TensorBoardProjectorCallback", "is_rank_zero"]


def epoch_row(recorder: Recorder) -> list[Any]:
    """The Recorder's row for the epoch that just ended, aligned with `metric_names`.

    The Recorder leaves out the values of a cancelled training or validation phase; their cells
    are left empty here so that every value stays under its name.
    """
    row, names = list(recorder.log), recorder.metric_names
    missing = len(names) - len(row)
    if missing <= 0:
        return row
    at = 1 if recorder.cancel_train and not recorder.cancel_valid else len(row) - int(recorder.add_time)
    return [*row[:at], *[""] * missing, *row[at:]]


class CSVLogger(Callback):
    """Writes the epoch table (`recorder.metric_names`, then one row per epoch) to `learn.path/fname`.

    As fastai's: the header is written at `before_fit` (a fit stopped before its first epoch ends leaves a file with
    the header only), with `append=True` at the end of the existing file, so every fit appends its own header;
    otherwise each fit starts the file afresh. Each row is written and flushed to disk as the Recorder logs it
    (`recorder.row_writers`), so the file is complete up to the last finished epoch even if training dies, or a
    callback that runs after the Recorder but before this one (of order 50 to 60) stops the fit or fails at
    after_epoch, as in fastai. An epoch whose training or validation was cancelled gets its row, with the missing
    values' cells empty (every value stays under its name; fastai shifts them left). `read_log()` reads every
    fit's rows back under their own header. A fit resumed from a checkpoint (`fit(resume=...)`) carries the file
    on from the lines the checkpoint had seen, dropping any line written after it.

    Only `fit` writes: `validate()` and `get_preds()` leave the file alone (fastai's `validate()`
    empties it), and so do `lr_find()` and the epochs skipped by `fit(start_epoch=...)`.
    """

    order = 60

    def __init__(self, fname: str | Path = "history.csv", append: bool = False) -> None:
        if not isinstance(fname, (str, os.PathLike)):  # fastai: pathlib's TypeError at before_fit
            raise ArgumentError(f"CSVLogger: fname is the file to write, a str or a Path, got {fname!r}.")
        self.fname, self.append = Path(fname), append
        self._epoch_trained = False
        # The Recorder's rows (`values`, the list and its length) at this epoch's start, until its row is written: it
        # has logged the epoch when the same list has more (a validate() inside the fit, or a resumed fit, gives the
        # Recorder new lists).
        self._values: list[Any] | None = None
        self._rows_before = 0
        # In validate() or get_preds() (no training phase), or a fit under no_mbar() until its first training phase.
        self._deferred = False
        self._header_due = False  # the header is written with the first row (a resumed fit without state)
        self._lines: int | None = None  # lines in the file after this fit's last write
        self._logged = False  # this epoch's row was written as the Recorder logged it
        self._resume_lines: int | None = None  # loaded from a checkpoint before the fit
        self._written: Path | None = None  # the file the last fit wrote, read by read_log() once off the learner

    @property
    def _file(self) -> Path:
        """The file written: `learn.path / fname` (`fname` when it is absolute). `self.path` is the learner's, as in
        fastai, where the file is `cb.path / cb.fname`. Off the learner (after `fit(cbs=CSVLogger())`), the file the
        last fit wrote."""
        if self.learn is not None:
            return self.learn.path / self.fname
        written = getattr(self, "_written", None)  # none on a logger pickled before there was one
        return written if written is not None else self.fname

    def before_fit(self) -> None:
        learn = self.learn
        self.run = not is_side_run(learn) and is_rank_zero()
        if not self.run:
            return
        if not learn.create_mbar:
            # validate() or get_preds() (perhaps inside a fit, whose file this must leave alone), or a fit run
            # under no_mbar(): only the latter has a training phase, where it starts.
            self._deferred = True
            return
        self._start()

    def _start(self) -> None:
        self._header_due, self._lines = False, None
        recorder = self.learn.recorder
        # A fit that fails gets no after_fit: its CSVLoggers' writers stay. Drop those of loggers no longer on this
        # learner (a `fit(cbs=CSVLogger())` that failed), so the Recorder does not keep them, and pickle them, forever.
        recorder.row_writers = [
            w for w in getattr(recorder, "row_writers", [])  # none on a Recorder pickled before there were any
            if not isinstance(owner := getattr(w, "__self__", None), CSVLogger) or owner.learn is self.learn
        ]
        if self._write_logged_row not in recorder.row_writers:  # else left there by a fit that failed
            recorder.row_writers.append(self._write_logged_row)
        if self._resume_lines is not None:
            self._keep_lines(self._resume_lines)
        elif getattr(self.learn, "_resume", None) is not None:
            self._header_due = True  # the checkpoint's state (load_state_dict) puts the file back as it was
        else:
            self._write_header()

    def before_epoch(self) -> None:
        if not self._deferred:  # a validate() inside the fit leaves the fit's epoch alone
            self._epoch_trained = False
            recorder = getattr(self.learn, "recorder", None)
            self._values = recorder.values if recorder is not None else None
            self._rows_before = len(self._values) if self._values is not None else 0
            self._logged = False

    def before_train(self) -> None:
        if not is_rank_zero():  # again here: a validate() inside the fit sets `run` back to True at its after_fit
            self.run = False
            return
        if self._deferred:
            self._deferred = False
            self._start()
        self._epoch_trained = True

    def after_train(self) -> None:
        self._epoch_trained = True  # also when a callback before this one cancelled the training at before_train

    def _write_logged_row(self) -> None:
        """The Recorder is logging a row (`recorder.row_writers`): write it when it is this fit's epoch's."""
        values = getattr(getattr(self.learn, "recorder", None), "values", None)
        # Not a validate()'s row (the Recorder's lists are new ones then), nor any row after a failed fit.
        if not self._logged and values is self._values and values is not None and len(values) > self._rows_before:
            self._logged = True
            self._write_row()

    def after_epoch(self) -> None:
        if self._deferred:  # a validate() inside the fit: the fit's epoch is left alone
            return
        if not self._logged:  # the Recorder did not call its row writers (a subclass's own after_epoch)
            self._write_row()
        self._logged, self._values = False, None  # written: nothing left for after_fit

    def after_fit(self) -> None:
        if not self._deferred:
            # A Recorder that does not call its row writers, and a callback of order 50 to 60 that stopped the fit at
            # after_epoch: the Recorder logged the epoch, this logger's after_epoch never came.
            self._write_logged_row()
            writers = getattr(getattr(self.learn, "recorder", None), "row_writers", [])
            if self._write_logged_row in writers:
                writers.remove(self._write_logged_row)
        self._deferred = False  # validate() or get_preds(): no training phase came

    def _write_row(self) -> None:
        if self._deferred or not self._epoch_trained:
            return
        if self._header_due:
            self._write_header()
        self._write([[str(v) for v in epoch_row(self.learn.recorder)]], "a")

    def _write_header(self) -> None:
        """Start this fit's table: the header, at the end of the file with `append`, else in a new file."""
        self._header_due = False
        path, lines = self._file, [list(self.learn.recorder.metric_names)]
        if not (self.append and path.is_file() and path.stat().st_size):
            self._lines = 0
            self._write(lines, "w")
            return
        with path.open(newline="") as f:
            self._lines = sum(1 for _ in csv.reader(f))
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) not in (b"\n", b"\r"):  # a last line without its line break: end it first
                lines.insert(0, [])
                self._lines -= 1
        self._write(lines, "a")

    def _write(self, lines: list[list[str]], mode: str) -> None:
        path = self._file
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open(mode, newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(lines)
            f.flush()
            os.fsync(f.fileno())
        self._lines = (self._lines or 0) + len(lines)
        self._written = path

    def state_dict(self) -> dict[str, Any]:
        """How many lines the file holds, so a resumed fit carries it on from there."""
        return {} if self._lines is None else {"lines": self._lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lines" in state:
            lines = int(state["lines"])
        elif "rows" in state:  # written by learnloop before the header moved to before_fit: rows under one header
            lines = int(state["rows"]) + 1
        else:
            return
        if self.learn is None:
            self._resume_lines = lines  # applied by the next fit
        elif self.run:
            self._keep_lines(lines)

    def _keep_lines(self, n: int) -> None:
        """Cut the file back to its first `n` lines; the next rows are appended to them."""
        self._resume_lines, self._header_due = None, False
        path = self._file
        if not path.is_file():
            self._header_due = True
            return
        with path.open(newline="") as f:
            lines = list(csv.reader(f))[:n]
        atomic_write(path, lambda f: f.write(_csv_bytes(lines)))
        self._lines = len(lines)

    def read_log(self) -> list[dict[str, str]]:
        """The rows written so far, as dicts from column name to cell: each row under the header of its fit (the
        file's first line, and every later line that starts with 'epoch'). A name that repeats one before it (two
        metrics of the same name) gets a suffix, as pandas' `read_csv` (fastai's) gives it: 'accuracy.1'."""
        with self._file.open(newline="") as f:
            lines = list(csv.reader(f))
        if not lines:
            return []
        header, rows = _unique(lines[0]), []
        for line in lines[1:]:
            if line[:1] == ["epoch"]:
                header = _unique(line)
            elif line:
                rows.append(dict(zip(header, line, strict=False)))
        return rows


def _unique(names: list[str]) -> list[str]:
    """`names`, each that repeats an earlier one suffixed `.1`, `.2`... (pandas' rule), so none is lost in a dict."""
    seen: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 0
        while unique in seen:
            n += 1
            unique = f"{name}.{n}"
        seen.add(unique)
        out.append(unique)
    return out


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "TensorBoardCallback needs the tensorboard package: pip install 'learnloop[tensorboard]'"
        ) from e
    return SummaryWriter


class TensorBoardCallback(Callback):
    """Logs training curves to TensorBoard (`log_dir`, or torch's default `runs/<date>_<host>`).

    - each training batch: the smoothed training loss ('train_loss') and every numeric
      hyper-parameter of every group (`'{name}_{group}'`, e.g. 'lr_0');
    - each epoch: every value the Recorder keeps, under its name (the epoch's training loss as
      'train_loss_epoch', not to mix with the per-batch curve);
    - `log_preds=True`: a histogram of the predictions (after the loss's activation) on the first
      validation batch of each epoch; `trace_model=True`: the model's graph, traced on the first
      training batch;
    - `projector=True`: each epoch, the outputs of `layer` on the validation set, for TensorBoard's
      projector (`add_embedding`), with the inputs as thumbnails when they are images (`(n, 1 or 3, H, W)`,
      each rescaled to [0, 1]) and the targets' class names when you set `learn.dls.vocab`. `layer` defaults
      to fastai's `model[1][1]` (a `vision_learner` model's pooling layer).

    Steps are `learn.train_iter`. The Recorder's smoothed losses are read `flush_every` batches at a
    time, so logging costs no host-device synchronisation per batch. The points not written yet are
    kept with the list of losses they come from: a `validate()` inside the fit, which starts the
    Recorder's lists afresh, does not lose them.
    """

    order = Recorder.order + 1

    def __init__(
        self, log_dir: str | Path | None = None, trace_model: bool = False, log_preds: bool = False,
        flush_every: int = 50, projector: bool = False, layer: nn.Module | None = None,
    ) -> None:
        self._writer_class = _summary_writer_class()  # fail when created, not in the middle of a fit
        self.log_dir, self.trace_model, self.log_preds = log_dir, trace_model, log_preds
        self.projector, self.layer = projector, layer
        self._hook: Hook | None = None  # on the projected layer while a validation phase of the fit runs
        self._embedding: list[tuple[torch.Tensor, torch.Tensor | None, Any]] = []  # (features, images, targets)
        self.flush_every = max(1, flush_every)
        self.writer: Any = None
        self._losses: list[tuple[int, int]] = []  # (step, index in `_history`) not written yet
        self._history: list[torch.Tensor] = []  # the Recorder's `losses` those points come from
        self._preds: torch.Tensor | None = None
        self._traced = False
        self._epoch_trained = False

    def before_fit(self) -> None:
        if self.learn._nested_run:  # validate() or get_preds() inside the fit: its writer and epoch carry on
            self.run = False  # it sits out that run, until the run's end sets `run` back
            return
        self._close()  # a fit that raised left its writer open
        self.run = not is_side_run(self.learn) and is_rank_zero()
        self._traced = False
        if self.run and self.projector:
            self._projected_layer()  # a model without fastai's default layer fails here, not after an epoch

    def _projected_layer(self) -> nn.Module:
        if self.layer is not None:
            return self.layer
        try:
            layer = unwrap_model(self.learn.model)[1][1]  # type: ignore[index]  # fastai's: a vision_learner pooling layer
        except (TypeError, IndexError, KeyError, AttributeError, NotImplementedError):
            layer = None
        if not isinstance(layer, nn.Module):
            raise ArgumentError(
                "TensorBoardCallback(projector=True) projects the outputs of `layer`, by default fastai's model[1][1] "
                f"(a vision_learner model's pooling layer), which this {type(self.learn.model).__name__} does not "
                "have: pass layer=<the module whose outputs to project>."
            )
        return layer

    def before_validate(self) -> None:
        if self.projector and self.writer is not None:
            self._embedding = []
            self._hook = hook_output(self._projected_layer(), cpu=True)

    def after_pred(self) -> None:
        hook, learn = self._hook, self.learn
        if hook is None or learn.training or not isinstance(hook.stored, torch.Tensor):
            return
        feats = hook.stored.reshape(len(hook.stored), -1).float()
        x = learn.xb[0] if learn.xb else None
        images = None
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] in (1, 3) and len(x) == len(feats):
            flat = x.detach().float().cpu().reshape(len(x), -1)
            flat = flat - flat.min(1, keepdim=True)[0]
            images = (flat / flat.max(1, keepdim=True)[0].clamp_min(1e-12)).reshape(x.shape)
        y = learn.yb[0] if learn.yb else None
        self._embedding.append((feats, images, y.detach().cpu() if isinstance(y, torch.Tensor) else None))

    def after_validate(self) -> None:
        if self._hook is None:
            return
        self._hook.remove()
        self._hook = None
        parts, self._embedding = self._embedding, []
        if not parts or self.writer is None:
            return
        images = [p[1] for p in parts]
        label_img = torch.cat(images) if all(i is not None for i in images) else None  # type: ignore[arg-type]
        self.writer.add_embedding(
            torch.cat([p[0] for p in parts]), metadata=self._class_names([p[2] for p in parts]), label_img=label_img,
            global_step=self.learn.train_iter,
        )

    def _class_names(self, targets: list[Any]) -> list[Any] | None:
        """The targets' names in `learn.dls.vocab` (the last of a list of lists) when set and they are class indices."""
        vocab = getattr(self.learn.dls, "vocab", None)
        if not vocab or any(not isinstance(t, torch.Tensor) or t.ndim != 1 or t.is_floating_point() for t in targets):
            return None
        if isinstance(vocab[0], (list, tuple)):
            vocab = vocab[-1]
        idxs = torch.cat(targets).tolist()
        return [str(vocab[i]) if 0 <= i < len(vocab) else str(i) for i in idxs]

    def before_epoch(self) -> None:
        self._epoch_trained = False
        self._preds = None

    def before_train(self) -> None:
        if not is_rank_zero():  # again here: a validate() inside the fit sets `run` back to True at its after_fit
            self.run = False
            return
        self._epoch_trained = True
        if self.writer is None:
            self.writer = self._writer_class(log_dir=None if self.log_dir is None else str(self.log_dir))

    def before_batch(self) -> None:
        if self.trace_model and not self._traced and self.learn.training:
            self._traced = True
            model = self.learn.model
            # Traced in eval mode, without gradients and on a forked RNG: tracing runs the model, and
            # must not update normalisation statistics or shift the random stream of training. Each module's
            # mode is put back after, as it was (BatchNorm layers BnFreeze keeps in eval mode stay so).
            modes = [(m, m.training) for m in model.modules()]
            # Outside mixed precision's autocast, which torch.jit.trace cannot trace through (it fails on the
            # weights autocast casts): the graph is the model's own.
            param = next(model.parameters(), None)
            no_autocast = torch.autocast(param.device.type if param is not None else "cpu", enabled=False)
            model.eval()
            try:
                with torch.no_grad(), torch.random.fork_rng(), no_autocast, warnings.catch_warnings():
                    # SummaryWriter.add_graph traces with torch.jit.trace, deprecated in recent torch.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.writer.add_graph(model, list(self.learn.xb))
            finally:
                for m, mode in modes:
                    m.training = mode

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training:
            if self.log_preds and learn.iter == 0 and isinstance(learn.pred, torch.Tensor):
                activation = getattr(learn.loss_func, "activation", None)
                pred = learn.pred.detach()
                self._preds = activation(pred) if activation is not None else pred
            return
        step = learn.train_iter
        recorder = getattr(learn, "recorder", None)
        if isinstance(recorder, Recorder) and recorder.n_losses:
            if recorder._losses is not self._history:  # a new list: the fit's first batch, or after a validate()
                self._write_losses()
                self._history = recorder.losses  # read, so that the Recorder completes it before replacing it
            self._losses.append((step, recorder.n_losses - 1))  # the value is read when written, `flush_every` at once
        for i, hypers in enumerate(learn.opt.hypers):
            for name, value in hypers.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{name}_{i}", value, step)
        if len(self._losses) >= self.flush_every:
            self._write_losses()

    def _write_losses(self) -> None:
        if not self._losses:
            return
        history, recorder = self._history, getattr(self.learn, "recorder", None)
        if isinstance(recorder, Recorder) and recorder._losses is history:
            history = recorder.losses  # the same list, the pending losses computed: one device sync for all
        for step, i in self._losses:
            if i < len(history):  # else `recorder.losses` was set to another list before they were computed
                self.writer.add_scalar("train_loss", float(history[i]), step)
        self._losses = []

    def after_epoch(self) -> None:
        if not self._epoch_trained or self.writer is None:
            return
        self._write_losses()
        recorder = self.learn.recorder
        step = self.learn.train_iter
        names = recorder.metric_names[1 : len(recorder.metric_names) - int(recorder.add_time)]
        for name, value in zip(names, epoch_row(recorder)[1:], strict=False):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar("train_loss_epoch" if name == "train_loss" else name, value, step)
        if self._preds is not None:
            self.writer.add_histogram("valid_preds", self._preds.float().cpu(), step)
        self.writer.flush()

    def after_fit(self) -> None:
        self._close()

    def __getstate__(self) -> dict[str, Any]:
        # A copy (pickle.dumps(learn), copy.deepcopy(learn)) keeps the settings. The writer a fit that raised left
        # open (it holds a lock and a file) and its hook are not copied, nor the points only that writer was to
        # write: the copy's next fit opens its own.
        state = self.__dict__.copy()
        state.update(writer=None, _hook=None, _losses=[], _history=[], _embedding=[], _preds=None)
        return state

    def _close(self) -> None:
        if self._hook is not None:  # a fit that raised in its validation phase
            self._hook.remove()
            self._hook = None
        if self.writer is not None:
            self._write_losses()
            self.writer.close()
            self.writer = None
        self._losses, self._history = [], []


class TensorBoardProjectorCallback(TensorBoardCallback):
    """fastai's: in `get_preds`, the outputs of `layer` on the loader for TensorBoard's projector, written as
    `TensorBoardCallback(projector=True)` writes them (at step 0); it sits out `fit`, `validate()` and `lr_find()`.

    >>> learn.get_preds(dl=test_dl, cbs=TensorBoardProjectorCallback("runs/emb", layer=learn.model[1]))
    """

    def __init__(self, log_dir: str | Path | None = None, layer: nn.Module | None = None) -> None:
        super().__init__(log_dir, projector=True, layer=layer)

    def before_fit(self) -> None:
        self._close()
        gather = getattr(self.learn, "gather_preds", None)
        self.run = gather is not None and getattr(gather, "side_run", True) and not hasattr(self.learn, "lr_finder")
        self.run = self.run and is_rank_zero()
        if self.run:
            self._projected_layer()
            self.writer = self._writer_class(log_dir=None if self.log_dir is None else str(self.log_dir))
