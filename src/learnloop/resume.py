"""Exact resume: what a training checkpoint holds, and how a fit picks up from one.

A checkpoint is taken at one of two points of the loop (``CheckpointCallback``), and records its
*position*, where the resumed fit has to carry on:

==================================  ========================  ==========================================
saved at                            position                  the resumed fit continues with
==================================  ========================  ==========================================
``after_batch`` of training batch   ``(epoch, batch=k)``      batch ``k`` of ``epoch`` (mid-epoch)
``k-1`` (``every_n_iters``, Ctrl-C)
``after_epoch`` (``every_epoch``)   ``(epoch + 1, batch=0)``  ``before_epoch`` of ``epoch + 1``
==================================  ========================  ==========================================

It holds the model, its gradients (those not all zero, as in the middle of a gradient accumulation; the
zeroed ones by name), which parameters are frozen, the optimizer (state and hypers, and what it is made of:
:func:`optimizer_kind`), every callback's ``state_dict()``, the learner's counters
(``epoch``, ``train_iter``, ``pct_train``: the schedule's position), the states of every random generator
(:mod:`learnloop.rng`) at the save, and for a mid-epoch checkpoint the generators' states at the start of that epoch's
training, from which the epoch's batch order was drawn; and which loaders' persistent workers were running
(a resumed fit starts those before its first epoch, without drawing the seed their first pass draws).

A resumed fit (``fit(..., resume=path)``) runs the same events as any fit, minus the epochs and
batches already done:

1. ``fit`` reads the file and checks it against the learner before any event; loads the weights.
2. ``before_fit`` fires as usual (callbacks reset their per-fit state).
3. The loop (``Learner._do_fit``) calls :meth:`ResumeState.restore`: the optimizer; at an epoch
   boundary also the callbacks, counters and generators. The epochs before the position are skipped.
4. Mid-epoch: ``before_epoch`` and ``before_train`` fire, then :class:`DataOrder` puts the generators
   back as they were when the epoch's order was drawn, draws it again, skips ``k`` batches without
   running them, and restores callbacks, counters, gradients and generators as they were at the save.

So every random number after the resume point (shuffling, MixUp, dropout, augmentation) is the one the
uninterrupted run drew, and the run ends bit-identical to it (on CPU; see docs/checkpoints.md for GPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from .checkpoint import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    check_format,
    check_state_dict,
    is_checkpoint_writer,
    learnloop_version,
    safe_load,
)
from .distributed import unwrap_model
from .optimizer.chain import stepper_name
from .optimizer.core import Optimizer, loading_own_state
from .optimizer.wrapper import OptimWrapper
from .rng import get_rng_state, loader_generators, set_rng_state
from .warn import warn_caller

if TYPE_CHECKING:
    from .callback import Callback
    from .dispatch import CallbackHost
    from .learner import Learner
    from .loop import Loop

__all__ = ["Position", "DataOrder", "ResumeState", "save_training_checkpoint", "training_state", "read_position"]

# Learner attributes that travel in a checkpoint: the loop's counters and the skipped-step record. `epoch` is
# the fit's epoch unless a validate() run inside the fit set it to 0 (as fastai's does), which must hold after
# a resume too.
_LOOP_ATTRS = ("epoch", "train_iter", "pct_train", "final_record", "skipped_steps", "pct_skipped")


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a checkpoint was taken: ``batch`` training batches of ``epoch`` are done (0: none, at its start)."""

    epoch: int
    batch: int
    n_epoch: int
    n_iter: int
    train_iter: int
    stage: str | None = None  # which fit of a multi-fit policy (fine_tune) wrote it
    exact: bool = True  # False: written after an interrupt that stopped a batch midway (CheckpointCallback)
    # The training loader's length as built, which a resume checks before the fit: in a distributed fit `n_iter` is
    # the rank's share's. None in checkpoints from before it was recorded: `n_iter`.
    data_len: int | None = None

    @property
    def mid_epoch(self) -> bool:
        """Whether the checkpoint was taken inside a training epoch rather than between epochs."""
        return self.batch > 0


# ------------------------------------------------------------------------------------------ saving
def keyed_callbacks(learn: CallbackHost) -> list[tuple[str, Callback]]:
    """The learner's callbacks with the keys their states have in a checkpoint: the name, then ``name#2``..."""
    seen: dict[str, int] = {}
    keyed = []
    for cb in learn.cbs:
        n = seen[cb.name] = seen.get(cb.name, 0) + 1
        keyed.append((cb.name if n == 1 else f"{cb.name}#{n}", cb))
    return keyed


def training_state(learn: Learner, position: Position, epoch_rng: dict[str, Any] | None) -> dict[str, Any]:
    """Everything a fit needs to carry on exactly from ``position`` (see the module's docstring)."""
    model = unwrap_model(learn.model)  # the module itself, without a DistributedDataParallel wrapper
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    nonzero = dict(zip(grads, torch.stack([g.any() for g in grads.values()]).tolist() if grads else [], strict=True))
    callbacks = {}
    for key, cb in keyed_callbacks(learn):
        state = cb.state_dict()
        if state:
            callbacks[key] = {"class": type(cb).__qualname__, "state": state}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "learnloop_version": learnloop_version(),
        "torch_version": str(torch.__version__),
        "position": dataclasses.asdict(position),
        "model": model.state_dict(),
        # Gradients that are not all zero; the zeroed ones (zero_grad zeroes in place, as fastai's) by name only.
        "grads": {name: g for name, g in grads.items() if nonzero[name]},
        "zero_grads": [name for name in grads if not nonzero[name]],
        # What learn.freeze() (fine_tune's first fit) or the user froze: trained on, these would change.
        "frozen": [name for name, p in model.named_parameters() if not p.requires_grad],
        "frozen_idx": getattr(learn.opt, "frozen_idx", None),
        "opt": learn.opt.state_dict() if learn.opt is not None else None,
        "opt_kind": optimizer_kind(learn.opt) if learn.opt is not None else None,
        "callbacks": callbacks,
        "loop": {name: learn.__dict__[name] for name in _LOOP_ATTRS if name in learn.__dict__},
        "rng": get_rng_state(loader_generators(learn.dls)),
        "epoch_rng": epoch_rng if position.mid_epoch else None,
        "workers_running": _workers_running(learn, position),
    }


def optimizer_kind(opt: Any) -> list[str]:
    """What tells `opt` from another optimizer in a checkpoint: a learnloop Optimizer's steppers (SGD's
    ``weight_decay, sgd_step``), the class of the torch optimizer an OptimWrapper holds, after the classes of the
    optimizers wrapping them (``Lookahead``)."""
    if isinstance(opt, Optimizer):
        return [stepper_name(cb) for cb in opt.cbs]
    if isinstance(opt, OptimWrapper):
        return [f"{type(opt.opt).__module__}.{type(opt.opt).__qualname__}"]
    inner = getattr(opt, "opt", None)
    return [type(opt).__qualname__, *(optimizer_kind(inner) if inner is not None else [])]


def workers_running(dl: Any) -> bool:
    """Whether ``dl`` is a torch DataLoader whose persistent worker processes are running: its next pass reuses
    them, and draws no new base seed for them from the random generators (a first pass does)."""
    return (
        isinstance(dl, DataLoader)
        and dl.persistent_workers
        and dl.num_workers > 0
        and getattr(dl, "_iterator", None) is not None
    )


def _loaders(learn: Loop) -> list[Any]:
    """The learner's loaders, in the order a checkpoint's `workers_running` lists them."""
    return list(getattr(learn.dls, "loaders", None) or [])


def _workers_running(learn: Learner, position: Position) -> list[bool]:
    """For each of the learner's loaders, whether its persistent workers run at the save; for the training loader
    in the middle of an epoch, whether they ran when the epoch's order was drawn (DataOrder)."""
    loaders = _loaders(learn)
    running = [workers_running(dl) for dl in loaders]
    order = learn._data_order
    if position.mid_epoch and order is not None:
        running = [order.workers_ran if dl is learn.dls.train else r for dl, r in zip(loaders, running, strict=True)]
    return running


def start_workers(dl: DataLoader[Any], generators: list[torch.Generator]) -> None:
    """Start the persistent workers of ``dl`` without changing any random generator: its first pass draws their
    base seed (and the indices it prefetches), which the saved run drew in a pass before the checkpoint."""
    state = get_rng_state(generators)
    iter(dl)
    set_rng_state(state, generators)


def save_training_checkpoint(
    learn: Learner, path: str | Path, position: Position, epoch_rng: dict[str, Any] | None
) -> Path | None:
    """Write a training checkpoint to ``path`` atomically; None (nothing written) on processes that do not save."""
    if not is_checkpoint_writer():
        return None
    return atomic_save(training_state(learn, position, epoch_rng), path)


def read_position(path: str | Path) -> Position:
    """The position of the checkpoint at ``path`` (the file is checked, its tensors are not read)."""
    return _position(_load(path, mmap=True), path)


def _position(ckpt: dict[str, Any], path: str | Path) -> Position:
    """The checkpoint's position; a CheckpointError for one this learnloop cannot read (a TypeError was raised)."""
    saved = ckpt.get("position")
    if isinstance(saved, dict):
        # Fields are added without a new format version (data_len was), so a newer learnloop's may be unknown here.
        unknown = sorted(map(str, set(saved) - {f.name for f in dataclasses.fields(Position)}))
        if unknown:
            raise CheckpointError(
                f"{path} was written by learnloop {ckpt.get('learnloop_version', '?')}, whose checkpoints record where "
                f"they were taken with fields this learnloop ({learnloop_version()}) does not know "
                f"({', '.join(unknown)}): upgrade learnloop to resume from it."
            )
        try:
            return Position(**saved)
        except TypeError:  # a required field missing
            pass
    raise CheckpointError(f"{path} holds no valid position ({saved!r}): it was not written by a CheckpointCallback.")


_NOT_A_CHECKPOINT = (
    "A CheckpointCallback's checkpoints hold tensors and plain containers only, so this is not one: pass resume= a "
    "file a CheckpointCallback wrote (models/checkpoints/*.pth), or the folder that holds them."
)


def _load(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    if mmap:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - safe_load below says what is wrong with the file
            ckpt = safe_load(path, map_location="cpu", refused_advice=_NOT_A_CHECKPOINT)
    else:
        ckpt = safe_load(path, map_location="cpu", refused_advice=_NOT_A_CHECKPOINT)
    check_format(ckpt, path, CHECKPOINT_FORMAT, " Weights saved by learn.save are loaded with learn.load.")
    return ckpt


# ------------------------------------------------------------------------------------------ data order
class DataOrder:
    """Hands the loop each training epoch's batches, recording the random state its order is drawn from.

    The Learner's loop goes through it (``Learner._batches``) while a CheckpointCallback is on the learner or a
    fit resumes. At the start of a training epoch it records the generators' states (``epoch_rng``), just
    before the loader draws the epoch's order: a torch DataLoader draws a base seed, then its sampler draws
    the permutation, from the loader's ``generator`` or, without one, from torch's global generator.
    When a mid-epoch checkpoint is being resumed, it re-creates that order instead and skips the batches
    the checkpoint had done.
    """

    def __init__(self) -> None:
        self.epoch_rng: dict[str, Any] | None = None
        self.resume: ResumeState | None = None
        self.workers_ran = False  # the training loader's persistent workers ran before this epoch's order was drawn

    def batches(self, learn: Loop) -> Iterable[tuple[int, Any]]:
        """``(index, batch)`` pairs of the current training epoch."""
        resume, self.resume = self.resume, None
        generators = loader_generators(learn.dls)
        self.workers_ran = workers_running(learn.dl)
        # The fit's epoch: `learn.epoch` is 0 after a validate() run inside the fit (at before_epoch, say).
        if resume is None or resume.position.epoch != learn._fit_epoch:
            self.epoch_rng = get_rng_state(generators)
            return enumerate(learn.dl)
        skip = resume.position.batch
        self.epoch_rng = resume.ckpt["epoch_rng"]
        set_rng_state(resume.ckpt["epoch_rng"], generators)
        batches = iter(learn.dl)
        skip_batches(learn.dl, batches, skip)
        resume.restore_state(learn)  # everything as at the save, the generators included
        return enumerate(batches, start=skip)


def skip_batches(dl: Any, batches: Iterator[Any], n: int) -> None:
    """Advance ``batches`` (a fresh iterator over ``dl``) by ``n`` batches.

    A single-process torch DataLoader over a map-style dataset skips indices: its sampler yields (and draws
    random numbers for) the same indices, but no item is loaded or collated. Any other loader (worker
    processes, iterable datasets, plain iterables) loads the ``n`` batches and drops them, so that workers
    see the same indices, in the same order, as in the saved run.
    """
    sampler_iter = getattr(batches, "_sampler_iter", None)  # torch's private iterator state (stable since 1.x)
    if (
        isinstance(dl, DataLoader)
        and dl.num_workers == 0
        and not isinstance(dl.dataset, IterableDataset)
        and sampler_iter is not None
        and hasattr(batches, "_num_yielded")
    ):
        for _ in range(n):
            next(sampler_iter)
        batches._num_yielded += n  # type: ignore[attr-defined]
        return
    for _ in range(n):
        next(batches)


# ------------------------------------------------------------------------------------------ resuming
class ResumeState:
    """A training checkpoint read back and checked against the learner, then put back into a fit.

    Reading it checks everything that can be checked before training starts, so a wrong file fails before
    any event fires and before anything on the learner changes: the format and version, the model's keys
    and shapes, the optimizer's kind, groups and hyper-parameters, the data loaders' generators, the callbacks, the
    batches per epoch.
    """

    def __init__(self, learn: Learner, path: str | Path, n_epoch: int) -> None:
        self.path = Path(path)
        ckpt = _load(path)
        self.ckpt = ckpt
        self.position = _position(ckpt, path)
        self._check_stage(learn)
        check_state_dict(unwrap_model(learn.model), ckpt["model"], path)
        self._check_devices()
        self._check_generators(learn)
        self._check_data(learn)
        self._check_opt(learn)
        self._check_callbacks(learn)
        if self.position.mid_epoch and self.position.epoch >= n_epoch:
            # The loop never reached the epoch, so nothing but the weights and the optimizer came back (the warning
            # below said that training carried on).
            raise CheckpointError(
                f"{path} was taken in epoch {self.position.epoch} of a fit of {self.position.n_epoch} epochs, but this "
                f"fit has {n_epoch}: it ends before that epoch, so nothing is left to train. Resume with the fit's "
                f"{self.position.n_epoch} epochs."
            )
        if n_epoch != self.position.n_epoch:
            warn_caller(
                f"{path} was taken in a fit of {self.position.n_epoch} epochs and this fit has {n_epoch}: training "
                "carries on, but the schedule (which depends on the number of epochs) differs from the saved run's."
            )

    def _check_stage(self, learn: Learner) -> None:
        # fine_tune refuses a plain fit's checkpoint; a plain fit took one of fine_tune's without a word, and trained
        # on with its own schedule.
        saved, now = self.position.stage, getattr(learn, "_fit_stage", None)
        if saved is not None and now is None:
            raise CheckpointError(
                f"{self.path} was taken during fine_tune (its {saved.rsplit(':', 1)[-1]} fit), not in a plain fit: "
                "resume it with fine_tune(..., resume=...), called as the interrupted run called it."
            )

    def _check_devices(self) -> None:
        saved = len(self.ckpt["rng"].get("cuda") or [])
        if saved and torch.cuda.is_available() and saved != torch.cuda.device_count():
            raise CheckpointError(
                f"{self.path} holds the random states of {saved} GPU(s) but {torch.cuda.device_count()} are visible: "
                "make the same number visible (CUDA_VISIBLE_DEVICES) to resume the run exactly."
            )

    def _check_generators(self, learn: Learner) -> None:
        saved, now = len(self.ckpt["rng"].get("generators") or []), len(loader_generators(learn.dls))
        if saved != now:
            raise CheckpointError(
                f"{self.path} holds the random states of {saved} data loader generator(s) but this learner's data "
                f"loaders have {now}: build the DataLoaders as in the run that was saved (the same seed= argument, "
                "or generator= of the torch DataLoaders) to resume it exactly."
            )

    def _check_data(self, learn: Learner) -> None:
        n_iter, pos = len(learn.dls.train), self.position
        saved = pos.n_iter if pos.data_len is None else pos.data_len
        if n_iter == saved:
            return
        message = (
            f"{self.path} was taken with {saved} training batches per epoch, but the training data now "
            f"has {n_iter}"
        )
        if pos.mid_epoch:
            raise CheckpointError(
                f"{message}: the checkpoint is in the middle of epoch {pos.epoch}, so the batches done cannot be "
                "matched. Use the same data and batch size, or resume from a checkpoint taken at the end of an epoch."
            )
        warn_caller(f"{message}; training carries on from epoch {pos.epoch}.")

    def _check_opt(self, learn: Learner) -> None:
        saved = self.ckpt["opt"]
        if learn.opt is None or not isinstance(saved, dict):
            return
        # learnloop's Optimizer saves 'hypers' and 'group_sizes'; an OptimWrapper torch's 'param_groups'.
        now = learn.opt.state_dict()
        saved_torch, now_torch = "param_groups" in saved, "param_groups" in now
        if saved_torch != now_torch:
            kinds = ("a torch.optim optimizer (OptimWrapper)", "a learnloop Optimizer")
            raise CheckpointError(
                f"{self.path} holds the state of {kinds[not saved_torch]}, but this learner's optimizer is "
                f"{kinds[not now_torch]} ({type(learn.opt).__name__}): use the same opt_func as the saved run."
            )
        saved_kind, now_kind = self.ckpt.get("opt_kind"), optimizer_kind(learn.opt)
        if saved_kind is not None and list(saved_kind) != now_kind:  # checkpoints from before it was saved lack it
            raise CheckpointError(
                f"{self.path} was saved from an optimizer made of {', '.join(saved_kind)}, but this learner's "
                f"{type(learn.opt).__name__} is made of {', '.join(now_kind)}: use the same opt_func as the saved run."
            )
        if saved_torch:
            sizes: Any = [len(g.get("params", ())) for g in saved["param_groups"]]
        else:
            sizes = saved.get("group_sizes")
        current = [len(g) for g in learn.opt.param_lists]
        if sizes is not None and list(sizes) != current:
            raise CheckpointError(
                f"{self.path} holds an optimizer with parameter groups of {list(sizes)} parameters, but this "
                f"learner's optimizer has {current}: use the same splitter (and model) as the saved run."
            )
        # Another learnloop optimizer (SGD's state into Adam) only warned in the optimizer's load_state_dict, after
        # before_fit and the weights, and trained on without the hypers it lacks. A schedule adds the hypers it sets
        # (ParamScheduler({'foo': ...})) but none goes away: this optimizer's must all be in the saved one's. (A torch
        # optimizer's groups gain keys from one torch version to the next: not compared.)
        saved_hypers, now_hypers = saved.get("hypers"), now.get("hypers")
        if not saved_torch and saved_hypers and now_hypers and not set(now_hypers[0]) <= set(saved_hypers[0]):
            raise CheckpointError(
                f"{self.path} holds an optimizer with the hyper-parameters {', '.join(saved_hypers[0])}, but this "
                f"learner's {type(learn.opt).__name__} has {', '.join(now_hypers[0])}: use the same opt_func as "
                "the saved run."
            )

    def _is_own_state(self, learn: Loop) -> bool:
        """Whether the saved optimizer state is known to be this optimizer's kind (the checkpoint says so, checked
        before the fit), or its hyper-parameters beyond this one's are all set by this fit's schedules (a
        ParamScheduler({'foo': ...}) adds 'foo'), so that they are no sign of another optimizer's state."""
        if self.ckpt.get("opt_kind") is not None:
            return True
        saved, now = self.ckpt["opt"].get("hypers"), learn.opt.state_dict().get("hypers")
        if not saved or not now:
            return False
        scheduled = {name for cb in learn.cbs for name in getattr(cb, "scheds", None) or ()}
        return set(saved[0]) - set(now[0]) <= scheduled

    def _check_callbacks(self, learn: Learner) -> None:
        current = dict(keyed_callbacks(learn))
        missing = []
        for key, saved in self.ckpt["callbacks"].items():
            cb = current.get(key)
            if cb is None:
                missing.append(f"{key} ({saved['class']})")
            elif type(cb).__qualname__ != saved["class"]:
                raise CheckpointError(
                    f"{self.path} holds the state of a {saved['class']} under {key!r}, but this learner's {key!r} "
                    f"is a {type(cb).__qualname__}: give the resumed fit the same callbacks as the saved run."
                )
            else:
                check = getattr(cb, "check_state_dict", None)  # a callback that can tell a state it cannot take
                problem = check(saved["state"]) if callable(check) else None
                if problem:
                    raise CheckpointError(f"{self.path} cannot be resumed into this learner's {key!r}: {problem}")
        if missing:
            warn_caller(
                f"{self.path} holds the state of callbacks this learner does not have, which is dropped: "
                f"{', '.join(missing)}. Add them to resume the run exactly."
            )

    # The three steps of a resumed fit, in the order the loop runs them.
    def load_model(self, learn: Learner) -> None:
        """Before ``before_fit``: the weights, so that callbacks reading them there (EMA) see the saved ones, and
        which parameters were frozen (``requires_grad``, and the optimizer's ``frozen_idx``)."""
        model = unwrap_model(learn.model)
        model.load_state_dict(self.ckpt["model"])
        if self.ckpt.get("frozen") is None:  # a checkpoint from before it was recorded: the learner's as it is
            return
        frozen = set(self.ckpt["frozen"])
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
        frozen_idx = self.ckpt.get("frozen_idx")
        if frozen_idx is not None and learn.opt is not None:
            learn.opt.frozen_idx = frozen_idx

    def restore(self, learn: Loop) -> int:
        """Right after ``before_fit``: the optimizer, and at an epoch boundary everything else; returns the
        first epoch to run. A mid-epoch checkpoint is handed to the loop's DataOrder, which restores the rest
        at the start of the epoch's first batch."""
        if self.ckpt["opt"] is not None and learn.opt is not None:
            # Unless the state is known to be this kind of optimizer's, it asks if it was another one's.
            with loading_own_state() if self._is_own_state(learn) else contextlib.nullcontext():
                learn.opt.load_state_dict(self.ckpt["opt"])
        # Persistent workers that ran in the saved run run here too before the resumed epoch: otherwise their first
        # pass would draw a base seed the saved run did not draw there, and shift the random numbers after it.
        generators = loader_generators(learn.dls)
        for dl, ran in zip(_loaders(learn), self.ckpt.get("workers_running") or [], strict=False):
            if ran and not workers_running(dl):
                start_workers(dl, generators)
        if self.position.mid_epoch:
            order = learn._data_order or DataOrder()
            order.resume = self
            learn._data_order = order
        else:
            # The epoch that ended at the save (what the fit ends with when no epoch is left to run); the
            # checkpoint's own learn.epoch, restored next, replaces it (files written before it was saved lack it).
            learn.epoch = self.position.epoch - 1
            self.restore_state(learn)
        return self.position.epoch

    def restore_state(self, learn: Loop) -> None:
        """Callbacks, the learner's counters, the gradients and the random generators, as at the save."""
        ckpt = self.ckpt
        current = dict(keyed_callbacks(learn))
        for key, saved in ckpt["callbacks"].items():
            cb = current.get(key)
            if cb is not None:
                cb.load_state_dict(saved["state"])
        for name, value in ckpt["loop"].items():
            setattr(learn, name, value)
        grads, zeroed = ckpt["grads"], set(ckpt.get("zero_grads", ()))
        for name, p in unwrap_model(learn.model).named_parameters():
            grad = grads.get(name)
            if grad is not None:
                p.grad = grad.to(device=p.device, dtype=p.dtype)
            else:  # a zeroed gradient is still stepped (weight decay on a frozen parameter): it comes back as zeros
                p.grad = torch.zeros_like(p) if name in zeroed else None
        set_rng_state(ckpt["rng"], loader_generators(learn.dls))
