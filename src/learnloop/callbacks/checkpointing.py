"""CheckpointCallback: training checkpoints a fit can resume from exactly, and a last one on Ctrl-C.

>>> learn.fit_one_cycle(10, 1e-3, cbs=CheckpointCallback(every_n_iters=500))
>>> learn.fit_one_cycle(10, 1e-3, resume="latest")      # after a crash: picks up where the last checkpoint was

Files are ``<path>/<fname>_<seq>_epoch<e>_batch<k>.pth`` (taken inside epoch ``e`` after ``k`` batches)
or ``<fname>_<seq>_epoch<e>_end.pth`` (after epoch ``e``); ``seq`` counts up across runs in the folder.
The latest is the highest ``seq`` among exact checkpoints: one written after an interrupt that stopped a
batch midway ends in ``_inexact.pth`` and is only resumed from when named. What a checkpoint holds and
how a fit resumes: :mod:`learnloop.resume`.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from numbers import Integral
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..callback import Callback, is_side_run
from ..checkpoint import CheckpointError, CorruptFileError, is_checkpoint_writer
from ..data import length
from ..errors import as_scalar
from ..finite import all_finite, first_non_finite
from ..resume import DataOrder, Position, read_position, save_training_checkpoint
from ..warn import NON_FINITE_ADVICE, NonFiniteLossWarning, warn_caller

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["CheckpointCallback", "checkpoint_files", "latest_checkpoint", "resolve_resume"]

DEFAULT_FOLDER = "checkpoints"  # under learn.path / learn.model_dir


def _agree_before_saving(learn: Learner) -> None:
    """In a distributed fit, the job's state (smoothed losses, the gradients of an accumulation in progress) rather
    than rank 0's own in the checkpoint rank 0 writes: a collective, so every rank calls it at the same point."""
    agree = getattr(getattr(learn, "distributed_trainer", None), "agree_before_checkpoint", None)
    if callable(agree):
        agree()


def _built_train_length(learn: Learner) -> int | None:
    """The batches of the training loader as it was built, before a DistributedTrainer gave this rank its share:
    what a resume compares with the loader it is given, before its fit shards anything."""
    dl = learn.dls.train
    original = getattr(getattr(learn, "distributed_trainer", None), "original_loader", None)
    return length(original(dl) if callable(original) else dl)


def _pattern(fname: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(fname)}_(\d+)_epoch\d+_(?:batch\d+|end)(_inexact)?\.pth$")


def checkpoint_files(folder: str | Path, fname: str = "checkpoint") -> list[Path]:
    """The checkpoints in ``folder``, oldest first (by sequence number); temporary files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _pattern(fname)
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path, fname: str = "checkpoint", exact: bool = True) -> Path | None:
    """The newest checkpoint in ``folder`` (with ``exact``, the newest that resumes bit-identically), or None."""
    files = checkpoint_files(folder, fname)
    if exact:
        files = [f for f in files if not f.name.endswith("_inexact.pth")]
    return files[-1] if files else None


class CheckpointCallback(Callback):
    """Saves training checkpoints every ``every_n_iters`` training batches and/or at the end of every epoch.

    A checkpoint holds everything a fit needs to resume exactly (``fit(..., resume=path_or_'latest')``):
    model, gradients, optimizer, callback states, loop counters, random states and the epoch's data
    order. Only the newest ``keep_last`` exact checkpoints are kept (None: all), and the inexact ones (below) newer
    than the oldest of them. ``path`` is the folder, relative to
    ``learn.path`` (default ``learn.path / learn.model_dir / 'checkpoints'``). Saves are atomic.

    Ctrl-C during a fit (in the main thread) does not stop it at once: the current training batch (or
    the validation in progress) is finished, a last checkpoint is written there, and then
    KeyboardInterrupt is raised (the learner runs the after_fit cleanup). A second Ctrl-C stops at once,
    without a new checkpoint. A KeyboardInterrupt that cannot be deferred so (raised by code, or Ctrl-C
    outside the main thread) in a training batch still gets a last checkpoint, at the batches finished so
    far, but marked ``exact=False`` (``..._inexact.pth``): the callbacks that had not yet seen the interrupted
    batch's ``after_batch`` (the Recorder, say) miss it, so resuming from it is not guaranteed bit-identical;
    ``resume='latest'`` takes the newest exact checkpoint instead.

    It runs after every other callback (``order``), so what it saves includes their updates for the batch or
    epoch; it sits out ``lr_find`` and ``get_preds``.
    """

    order = 1000
    run_valid = False

    def __init__(
        self,
        every_n_iters: int | None = None,
        every_epoch: bool = True,
        keep_last: int | None = 3,
        path: str | Path | None = None,
        fname: str = "checkpoint",
    ) -> None:
        for name, value in (("every_n_iters", every_n_iters), ("keep_last", keep_last)):
            # numpy integers too (np.int64(500) was refused as not "a whole number"), and 0-dim integer arrays
            number = as_scalar(value)
            if value is not None and (isinstance(number, (bool, np.bool_)) or not isinstance(number, Integral)
                                      or number < 1):
                raise ValueError(f"CheckpointCallback: {name} must be a whole number >= 1 or None, got {value!r}.")
        every_n_iters = None if every_n_iters is None else int(as_scalar(every_n_iters))
        keep_last = None if keep_last is None else int(as_scalar(keep_last))
        if not isinstance(every_epoch, (bool, np.bool_)):  # not SaveModelCallback's every_epoch=n (every n epochs)
            raise ValueError(
                f"CheckpointCallback: every_epoch is True or False (a checkpoint at the end of every epoch, or none), "
                f"got {every_epoch!r}; for checkpoints less often, count batches: every_n_iters=n * len(dls.train)."
            )
        if isinstance(fname, os.PathLike):
            fname = os.fspath(fname)
        if not isinstance(fname, str):  # `"/" in fname` said "argument of type 'int' is not iterable"
            raise TypeError(f"CheckpointCallback: fname is a file name prefix, a str; got {type(fname).__name__} "
                            f"{fname!r}.")
        if not fname or "/" in fname or os.sep in fname:
            raise ValueError(f"CheckpointCallback: fname is a file name prefix without folders, got {fname!r}.")
        self.every_n_iters, self.every_epoch, self.keep_last = every_n_iters, bool(every_epoch), keep_last
        self.path = None if path is None else Path(path)
        self.fname = fname
        self.last_saved: Path | None = None
        self._fit_started = False
        self._epoch_trained = False
        self._epoch = 0  # the fit's epoch in progress
        self._interrupted = False  # Ctrl-C seen, not acted on yet
        self._interrupt_saved = False  # the last checkpoint of an interrupted fit is written
        self._warned_diverged = False  # this fit has warned that it writes no checkpoint of non-finite weights
        self._old_handler: Any = None

    # ------------------------------------------------------------------ where
    def folder(self, learn: Learner | None = None) -> Path:
        """The folder checkpoints are written to."""
        learn = learn or self.learn
        if self.path is not None and self.path.is_absolute():
            return self.path
        if learn is None:
            raise ValueError("CheckpointCallback.folder() needs a learner for a relative path.")
        return learn.path / (self.path if self.path is not None else Path(learn.model_dir) / DEFAULT_FOLDER)

    def _file(self, position: Position) -> Path:
        latest = latest_checkpoint(self.folder(), self.fname, exact=False)
        match = _pattern(self.fname).match(latest.name) if latest is not None else None
        seq = int(match.group(1)) + 1 if match is not None else 1
        if position.mid_epoch:
            where = f"epoch{position.epoch}_batch{position.batch}"
        else:
            where = f"epoch{position.epoch - 1}_end"
        return self.folder() / f"{self.fname}_{seq:06d}_{where}{'' if position.exact else '_inexact'}.pth"

    # ------------------------------------------------------------------ events
    def before_fit(self) -> None:
        learn = self.learn
        # lr_find, get_preds and a validate() inside a fit sit out (after_fit turns `run` back on): the fit's epoch,
        # its Ctrl-C handling and its warnings carry on.
        self.run = not is_side_run(learn) and not learn._nested_run
        if not self.run:
            return
        self._fit_started = self._interrupted = self._interrupt_saved = self._warned_diverged = False

    def before_epoch(self) -> None:
        self._epoch_trained = False
        # The fit's epoch, from the loop: a validate() a callback runs inside the fit sets learn.epoch to 0, as
        # fastai's, and one run at before_epoch by a callback before this one already has.
        self._epoch = self.learn._fit_epoch

    def before_train(self) -> None:
        self._epoch_trained = True
        if not self._fit_started:  # the first training phase of a fit (validate() has none)
            self._fit_started = True
            if self.learn._data_order is None:
                self.learn._data_order = DataOrder()  # from now on the loop records each epoch's random state
            self._catch_ctrl_c()

    def after_batch(self) -> None:
        learn = self.learn
        periodic = self.every_n_iters is not None and learn.train_iter % self.every_n_iters == 0
        if periodic:  # every rank of a distributed fit is here at the same batch
            _agree_before_saving(learn)
        if self._interrupted or periodic:
            self.save(self._position(epoch=self._epoch, batch=learn.iter + 1))
        if self._interrupted:
            self._stop()

    def after_epoch(self) -> None:
        if not self._epoch_trained:
            return  # validate(), or an epoch skipped by start_epoch
        if self.every_epoch:  # every rank of a distributed fit is here
            _agree_before_saving(self.learn)
        if self.every_epoch or self._interrupted:
            self.save(self._position(epoch=self._epoch + 1, batch=0))
        if self._interrupted:
            self._stop()

    def after_fit(self) -> None:
        self._restore_ctrl_c()
        if self._interrupted:  # Ctrl-C after the last epoch ended: the fit is complete, but the user wants out
            self._interrupted = False
            raise KeyboardInterrupt

    def _stop(self) -> None:
        """Raise the deferred Ctrl-C, now that its checkpoint is written."""
        self._interrupted, self._interrupt_saved = False, True
        raise KeyboardInterrupt

    def save_on_interrupt(self) -> None:
        """Called by the learner when a KeyboardInterrupt leaves the loop, before after_fit: a last checkpoint
        when the interrupt could not be deferred to the end of a batch and came in a training batch."""
        learn = self.learn
        if self._interrupt_saved or self._interrupted or not (self.run and self._fit_started):
            return  # written at the deferred point; or a second Ctrl-C: stop now; or nothing trained
        if not (learn.training and self._epoch_trained):
            return  # between phases the last periodic checkpoint is the state to resume from
        self._interrupt_saved = True
        try:
            self.save(self._position(epoch=self._epoch, batch=_batches_done(learn), exact=False))
        except Exception as e:  # noqa: BLE001 - the interrupt and after_fit's cleanup come first
            warn_caller(f"CheckpointCallback: the last checkpoint could not be written ({e}).")

    # ------------------------------------------------------------------ saving
    def _position(self, epoch: int, batch: int, exact: bool = True) -> Position:
        learn = self.learn
        return Position(
            epoch=epoch,
            batch=batch,
            n_epoch=learn.n_epoch,
            n_iter=learn.n_iter if learn.training else len(learn.dls.train),
            train_iter=learn.train_iter,
            stage=getattr(learn, "_fit_stage", None),
            exact=exact,
            data_len=_built_train_length(learn),
        )

    def save(self, position: Position) -> Path | None:
        """Write a checkpoint for ``position`` now, then delete the ones beyond ``keep_last``.

        Not when a parameter of the model holds NaN or infinite values, or a buffer NaN (training has diverged): a
        checkpoint of them is of no use to resume from, and it would push out the good ones, which are kept.
        """
        if is_checkpoint_writer() and not all_finite(self.learn.model):
            self._skip_diverged(position)
            return None
        order = self.learn._data_order
        epoch_rng = order.epoch_rng if order is not None else None
        path = save_training_checkpoint(self.learn, self._file(position), position, epoch_rng)
        if path is None:
            return None
        self.last_saved = path
        if self.keep_last is not None and position.exact:  # an inexact checkpoint never pushes out an exact one
            for old in _beyond(checkpoint_files(self.folder(), self.fname), self.keep_last):
                old.unlink(missing_ok=True)
        return path

    def _skip_diverged(self, position: Position) -> None:
        if self._warned_diverged:
            return
        self._warned_diverged = True
        if position.mid_epoch:
            where = f"{position.batch} batch{'es' if position.batch > 1 else ''} of epoch {position.epoch}"
        else:
            where = f"epoch {position.epoch - 1}"
        last = latest_checkpoint(self.folder(), self.fname)
        kept = f"The checkpoints already written are kept, the last: {last}." if last is not None else (
            "No checkpoint was written before.")
        warn_caller(
            NonFiniteLossWarning(
                f"CheckpointCallback: no checkpoint after {where}, nor after any later point of this fit: the "
                f"model's {first_non_finite(self.learn.model)} holds NaN or infinite values (training has "
                f"diverged). {kept}",
                NON_FINITE_ADVICE,
            )
        )

    # ------------------------------------------------------------------ Ctrl-C
    def _catch_ctrl_c(self) -> None:
        # A handler left behind by a fit that ended in an exception (no after_fit), this one's or another's.
        self._restore_ctrl_c()
        owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
        if isinstance(owner, CheckpointCallback):
            owner._restore_ctrl_c()
        # Only where Python delivers signals, and only over Python's own handler (never over someone else's).
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        self._old_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum: int, frame: FrameType | None) -> None:
        self._restore_ctrl_c()  # a second Ctrl-C raises KeyboardInterrupt at once
        learn = self.learn
        if learn is None or learn._data_order is None:  # no fit running (it ended in an exception): plain Ctrl-C
            raise KeyboardInterrupt
        self._interrupted = True
        # os.write: a signal handler may run in the middle of a print to the same stream.
        os.write(2, b"\nlearnloop: interrupted: finishing the current batch to write a checkpoint "
                    b"(Ctrl-C again to stop now)\n")

    def _restore_ctrl_c(self) -> None:
        if self._old_handler is not None:
            if signal.getsignal(signal.SIGINT) == self._on_ctrl_c:
                signal.signal(signal.SIGINT, self._old_handler)
            self._old_handler = None

    def __repr__(self) -> str:
        return f"CheckpointCallback(every_n_iters={self.every_n_iters}, every_epoch={self.every_epoch})"


def _beyond(files: list[Path], keep_last: int) -> list[Path]:
    """Of `files` (oldest first), those beyond the newest `keep_last` exact checkpoints: the older exact ones, and the
    inexact ones older than every exact one kept (an inexact one takes no place among those kept)."""
    exact = [f for f in files if not f.name.endswith("_inexact.pth")]
    if len(exact) <= keep_last:
        return []
    oldest_kept = files.index(exact[-keep_last])
    return files[:oldest_kept]


def _inexact_hint(folder: Path, fname: str) -> str:
    inexact = latest_checkpoint(folder, fname, exact=False)
    if inexact is None:
        return ""
    return f" to resume from exactly (only {inexact.name}, written after an interrupt: pass its path to use it)"


def _batches_done(learn: Learner) -> int:
    """Training batches of the current epoch whose after_batch has counted them (TrainEvalCallback's
    ``pct_train``, advanced by ``1 / (n_iter * n_epoch)`` per batch, says how many, to the nearest batch); the batch
    in progress when it has not."""
    n_iter, n_epoch = learn.n_iter, learn.n_epoch
    if n_iter and n_epoch and getattr(learn, "train_eval", None) is not None:
        return max(0, min(n_iter, round((learn.pct_train * n_epoch - learn.epoch) * n_iter)))
    return learn.iter


def _latest_readable(
    folder: Path,
    fname: str,
    resume: str | os.PathLike[str],
    start_over: str = "Start from scratch without resume=, or pass a checkpoint file from elsewhere.",
) -> Path | None:
    """The newest exact checkpoint in `folder` that can be read, or None when there is none. Newer ones that are
    corrupt or truncated are skipped with a warning naming them (then older ones, for keep_last); when every one is, a
    CheckpointError names them, and ends with the advice `start_over`."""
    files = [f for f in checkpoint_files(folder, fname) if not f.name.endswith("_inexact.pth")]
    corrupt: list[tuple[Path, CorruptFileError]] = []
    for file in reversed(files):
        try:
            read_position(file)  # the file's pickle and layout, not its tensors
        except CorruptFileError as e:
            corrupt.append((file, e))
            continue
        if corrupt:
            warn_caller(
                f"resume={str(resume)!r}: skipping {_names(corrupt)}, which cannot be read: {corrupt[0][1]} Resuming "
                f"from {file}, the newest checkpoint that can be; the unreadable files now count as older checkpoints, "
                "which keep_last prunes."
            )
        return file
    if corrupt:
        raise CheckpointError(
            f"resume={str(resume)!r}: no checkpoint in {folder} can be read ({_names(corrupt)}): {corrupt[0][1]} "
            + start_over
        )
    return None


def _names(files: list[tuple[Path, CorruptFileError]]) -> str:
    return ", ".join(f.name for f, _ in files)


def resolve_resume(learn: Learner, resume: str | Path, cbs: list[Any] | None = None) -> Path | None:
    """The checkpoint file ``resume`` names: a file, a folder (its latest checkpoint), or ``'latest'``.

    ``'latest'`` looks in the folder of the learner's CheckpointCallback (or one in ``cbs``), else in the
    default ``learn.path / learn.model_dir / 'checkpoints'``, for the newest exact checkpoint; when there is
    none, a warning says so and None is returned (the fit starts from scratch). A folder must hold an exact
    checkpoint; a file is taken as it is (an ``_inexact`` one too). A file or folder that does not exist is
    an error. With ``'latest'`` or a folder, newer checkpoints that are corrupt or truncated are skipped with a
    warning naming them; when none can be read, it is an error.
    """
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(
            f"resume must be a checkpoint file, its folder, or 'latest'; got {resume!r} ({type(resume).__name__})."
        )
    checkpointers = [cb for cb in [*learn.cbs, *(cbs or [])] if isinstance(cb, CheckpointCallback)]
    fname = checkpointers[0].fname if checkpointers else "checkpoint"
    if isinstance(resume, str) and resume == "latest":
        folder = checkpointers[0].folder(learn) if checkpointers else learn.path / learn.model_dir / DEFAULT_FOLDER
        found = _latest_readable(folder, fname, resume)
        if found is None:
            warn_caller(
                f"resume='latest': no checkpoint in {folder}{_inexact_hint(folder, fname)}; training starts from "
                "scratch."
            )
        return found
    path = Path(resume)
    if path.is_dir():
        found = _latest_readable(path, fname, resume)
        if found is None:
            raise CheckpointError(
                f"resume={str(resume)!r}: the folder holds no {fname}_*.pth checkpoint{_inexact_hint(path, fname)}."
            )
        return found
    if not path.exists():
        raise FileNotFoundError(
            f"resume={str(resume)!r}: no such checkpoint file or folder. Pass a checkpoint written by "
            "CheckpointCallback, its folder, or 'latest'."
        )
    return path
