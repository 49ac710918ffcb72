"""The Learner: the training loop, its callbacks and the state they share."""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .attrs import OwnAttrs
from .callback import Callback, before_batch_cb, noop
from .callbacks import lr_finder as _lr_finder
from .callbacks import schedule as _schedule
from .callbacks.checkpointing import CheckpointCallback, resolve_resume
from .callbacks.core import GatherPredsCallback, SkipToEpoch, TrainEvalCallback
from .callbacks.distributed import DistributedTrainer, auto_distributed
from .callbacks.distributed import distrib_ctx as _distrib_ctx
from .callbacks.progress import ProgressCallback
from .callbacks.recorder import Recorder
from .checkpoint import check_pickle_protocol, is_buffer, load_model, save_model
from .data import DataLoaders, to_detach, to_device, unshuffled
from .dispatch import CallbackHost, as_list
from .distributed import barrier, is_distributed, is_rank_zero, unwrap_model
from .errors import InputError
from .events import (
    BACKWARD,
    BATCH,
    EPOCH,
    FIT,
    STEP,
    TRAIN,
    VALIDATE,
    Event,
    Phase,
)
from .fsdp import is_fsdp, load_sharded, save_sharded
from .metrics import Metric, mk_metric
from .optimizer import Adam, OptimWrapper
from .resume import DataOrder, ResumeState
from .summary import PrettyString
from .summary import summary as _summary

__all__ = [
    "Learner", "trainable_params", "norm_bias_params", "NORM_TYPES", "replacing_yield", "save_model", "load_model",
    "before_batch_cb",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
)


def trainable_params(m: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model `m` that require a gradient (the default splitter: one group)."""
    return [p for p in m.parameters() if p.requires_grad]


def norm_bias_params(m: nn.Module, with_bias: bool = True) -> list[nn.Parameter]:
    """Parameters of the normalisation layers in the model `m`, and biases of other layers when `with_bias`."""
    if isinstance(m, NORM_TYPES):
        return list(m.parameters())
    params = [p for child in m.children() for p in norm_bias_params(child, with_bias)]
    bias = getattr(m, "bias", None)
    if with_bias and isinstance(bias, nn.Parameter):
        params.append(bias)
    return params



_AFTER_PRED, _AFTER_LOSS, _AFTER_BATCH = Event.after_pred, Event.after_loss, Event.after_batch

DEFAULT_CALLBACKS: tuple[type[Callback], ...] = (TrainEvalCallback, Recorder, ProgressCallback)

# `learn.loss` is a copy of `loss_grad` taken before after_loss: a hook that changes `loss_grad` in place
# (`learn.loss_grad += penalty`, as fastai's RNNRegularizer does) changes the gradients, not the logged loss.
# Hooks run between the loss and the Recorder's read of it at these events. When the only hooks there are
# learnloop's own callback methods (which never change `loss` or `loss_grad` in place: keep it so), nothing
# can change either, and the copy is an alias that shares the storage, at a third of the cost.
_LOSS_EVENTS = (
    Event.after_loss,
    Event.before_backward,
    Event.after_cancel_backward,
    Event.after_backward,
    Event.before_step,
    Event.after_cancel_step,
    Event.after_step,
    Event.after_cancel_batch,
    Event.after_batch,
)


def _library_hook(cb: Callback, hook: Callable[[], Any]) -> bool:
    """Whether `hook` is a method of `cb` written in learnloop (not a user's override or function)."""
    func = getattr(hook, "__func__", None)
    return getattr(hook, "__self__", None) is cb and getattr(func, "__module__", "").startswith("learnloop.")


class Learner(CallbackHost):
    """Trains `model` on `dls` with `loss_func` and an optimizer from `opt_func`, firing callback events.

    >>> learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy)
    >>> learn.fit(3, lr=1e-3)
    """

    # Set by the Recorder: the last epoch's [train_loss, valid_loss, *metrics].
    final_record: list[Any]
    # The loop's state. As in fastai, none exists on a new Learner: `n_epoch` comes with TrainEvalCallback's
    # after_create, `epoch`, `loss`, `train_iter` and `pct_train` with its before_fit, `dl` and `n_iter` with each
    # phase, `iter`, `xb` and `yb` with each batch, `pred`, `loss_grad` and `loss` as the batch computes them.
    n_epoch: int
    epoch: int
    n_iter: int
    iter: int
    train_iter: int
    pct_train: float
    dl: Any
    xb: tuple[Any, ...]
    yb: tuple[Any, ...]
    pred: Any
    loss_grad: Any
    loss: Any

    def __init__(
        self,
        dls: DataLoaders | Sequence[Iterable[Any]],
        model: nn.Module,
        loss_func: Callable[..., torch.Tensor] | None = None,
        opt_func: Callable[..., Any] = Adam,
        lr: float | slice = 1e-3,
        splitter: Callable[[nn.Module], Any] = trainable_params,
        cbs: Callback | type[Callback] | Iterable[Callback | type[Callback]] | None = None,
        metrics: Any = None,
        path: str | Path | None = None,
        model_dir: str | Path = "models",
        wd: float | None = None,
        wd_bn_bias: bool = False,
        train_bn: bool = True,
        moms: tuple[float, ...] = (0.95, 0.85, 0.95),
        default_cbs: bool = True,
    ) -> None:
        if not isinstance(dls, DataLoaders) and isinstance(dls, (tuple, list)):
            dls = DataLoaders(*dls)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if loss_func is None:
            loss_func = getattr(dls, "loss_func", None) or getattr(getattr(dls, "train_ds", None), "loss_func", None)
        if loss_func is None:
            raise InputError(
                "No loss function: pass one, e.g. Learner(dls, model, loss_func=nn.CrossEntropyLoss()); "
                "it could not be inferred from the data."
            )
        _check_lr(lr)
        self.dls: Any = dls
        self.model = model
        self.loss_func = loss_func
        self.opt_func = opt_func
        self.lr = lr
        self.splitter = splitter
        self.path = Path(path) if path is not None else Path(getattr(dls, "path", "."))
        self.model_dir = model_dir  # as given, like fastai; joined with `path` where files are written
        self.wd = wd
        self.wd_bn_bias = wd_bn_bias
        self.train_bn = train_bn
        self.moms = moms
        self.metrics = metrics
        self.opt: Any = None
        self.training = False
        self.logger: Callable[[Any], None] = print
        self.create_mbar = True
        self._n_inp: int | None = None
        # Exact resume (resume.py): the checkpoint a fit is resuming from, the recorder of each training epoch's
        # data order (set while a CheckpointCallback is on or a fit resumes), and which fit of fine_tune runs.
        self._resume: ResumeState | None = None
        self._data_order: DataOrder | None = None
        self._fit_stage: str | None = None
        self._in_fit = False  # from a fit's before_fit to its after_fit (a validate() inside it is no new fit)
        # During a validate() or get_preds() run from inside a fit: its before_fit...after_fit are not the fit's, and
        # callbacks that hold state for the fit (MixedPrecision, HookCallback) leave it alone.
        self._nested_run = False
        self._attrs = OwnAttrs(self)  # for per-batch code; `_all_batches` makes a new one every phase
        self._copy_loss = False  # whether `loss` must be a copy of `loss_grad` (see _LOSS_EVENTS)
        self._unwinding = False  # after_epoch/after_fit fired by `with learn:` while an exception leaves (__exit__)
        CallbackHost.__init__(self)
        if default_cbs:
            self.add_cbs(DEFAULT_CALLBACKS)
        self.add_cbs(cbs)
        if auto_distributed() and not self._grab(DistributedTrainer):  # launched by torchrun: one env lookup
            self.add_cb(DistributedTrainer())
        self(Event.after_create)

    # ----------------------------------------------------------------- callbacks
    @property
    def metrics(self) -> list[Metric]:
        """The metrics computed on the validation set (functions are wrapped in `AvgMetric`)."""
        return self._metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        items = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
        self._metrics = [mk_metric(m) for m in items]

    def _build_hooks(self) -> None:
        super()._build_hooks()
        self._copy_loss = not all(_library_hook(cb, hook) for e in _LOSS_EVENTS for cb, hook in self._hooks[e])

    # ------------------------------------------------------------------ the loop
    def _phase(self, phase: Phase, body: Callable[[], Any]) -> None:
        try:
            self._fire(phase.before)
            body()
        except phase.cancel:
            self._fire(phase.after_cancel)
        self._fire(phase.after)

    def _split(self, b: Any, n_inp: int | None = None) -> None:
        """Set `xb` (the first `n_inp` elements of the batch) and `yb` (the rest), as tuples. `n_inp` defaults to the
        learner's, or its DataLoaders' (`learn._split(b)`, as fastai's notebooks call it); without one, all
        but the last element are inputs."""
        if n_inp is None:
            n_inp = self._batch_n_inp()
        if not isinstance(b, (tuple, list)):
            self.xb, self.yb = (b,), ()
            return
        if n_inp is None:
            n_inp = 1 if len(b) == 1 else len(b) - 1
        if not b or n_inp > len(b) or n_inp < 1:
            raise ValueError(
                f"Cannot split a batch of {len(b)} elements into {n_inp} input(s) and targets: "
                "batches should be (input, ..., target) tuples; set DataLoaders(n_inp=...) to say how many "
                "elements are inputs."
            )
        self.xb, self.yb = tuple(b[:n_inp]), tuple(b[n_inp:])

    def _batch_n_inp(self) -> int | None:
        return self._n_inp if self._n_inp is not None else getattr(self.dls, "n_inp", None)

    def all_batches(self) -> None:
        """Run every batch of `learn.dl` (its batch phase, with backward and step when training), as the loop
        does within a training or validation phase (fastai's method, for driving the loop by hand)."""
        self._all_batches()

    def one_batch(self, i: int, b: Any) -> None:
        """Run batch `b` as the loop's `i`-th: split it into `xb`/`yb`, then its batch phase, with backward and
        step when training (fastai's method, for driving the loop by hand; `n_iter` is left as it is)."""
        self._all_batches([(i, b)])

    def _all_batches(self, batches: Iterable[tuple[int, Any]] | None = None) -> None:
        """Every batch of `self.dl` (or the numbered `batches`): split into `xb`/`yb`, then the batch phase, with
        the backward and step phases inside it when training.

        The loop's hot path: the three inner phases are written out here rather than run through `_phase`, and an
        event without hooks costs one dict lookup. Same events and cancel rules as everywhere (`events.Event`).
        `self._hooks` is one dict for the learner's life, updated in place when callbacks change, so holding it
        in a local sees every change at once. The loop's state is read and written through `s`, the learner's
        own attributes without its `__getattr__` (`attrs.OwnAttrs`): the same values, at a plain object's cost.
        """
        s = self._attrs = OwnAttrs(self)
        if batches is None:
            s.n_iter = len(s.dl) if hasattr(s.dl, "__len__") else 0
            batches = self._batches()
        device = self._device
        n_inp = self._batch_n_inp()
        one_input = n_inp is None or n_inp == 1
        hooks, run = self._hooks, self._run_hooks
        for i, b in batches:
            if i == 0 and device is not None and device.type == "cpu" and _all_on_cpu(b):
                device = None  # a CPU loader's batches are already in place: skip the per-batch walk
            s.iter = i
            if device is not None:
                b = to_device(b, device)
            if one_input and type(b) is tuple and len(b) == 2:  # (input, target), the usual batch
                s.xb, s.yb = (b[0],), (b[1],)
            else:
                self._split(b, n_inp)
            try:
                if h := hooks[BATCH.before]:
                    run(BATCH.before, h)
                s.pred = s.model(*s.xb)
                if h := hooks[_AFTER_PRED]:
                    run(_AFTER_PRED, h)
                if s.yb:
                    try:
                        loss_grad = s.loss_grad = s.loss_func(s.pred, *s.yb)
                    except (RuntimeError, ValueError, IndexError) as e:
                        self._explain_loss_error(e)
                        raise
                    # When no hook can change it in place (_LOSS_EVENTS): `.data`, detach()'s alias at half the cost.
                    s.loss = loss_grad.detach().clone() if s._copy_loss else loss_grad.data
                if h := hooks[_AFTER_LOSS]:
                    run(_AFTER_LOSS, h)
                if s.training and s.yb:
                    try:
                        if h := hooks[BACKWARD.before]:
                            run(BACKWARD.before, h)
                        s.loss_grad.backward()
                    except BACKWARD.cancel:
                        self._fire(BACKWARD.after_cancel)
                    if h := hooks[BACKWARD.after]:
                        run(BACKWARD.after, h)
                    try:
                        if h := hooks[STEP.before]:
                            run(STEP.before, h)
                        s.opt.step()
                    except STEP.cancel:
                        self._fire(STEP.after_cancel)
                    if h := hooks[STEP.after]:
                        run(STEP.after, h)
                    s.opt.zero_grad()
            except BATCH.cancel:
                self._fire(BATCH.after_cancel)
            if h := hooks[_AFTER_BATCH]:
                run(_AFTER_BATCH, h)

    def _batches(self) -> Iterable[tuple[int, Any]]:
        # While checkpointing or resuming, a training epoch's batches come through DataOrder, which records the
        # random state the epoch's order is drawn from and, resuming mid-epoch, re-creates that order and skips
        # the batches already done (resume.py). Once per epoch: nothing per batch.
        if self._data_order is not None and self.training:
            return self._data_order.batches(self)
        return enumerate(self.dl)

    def _explain_loss_error(self, e: BaseException) -> None:
        targets = ", ".join(_shape(y) for y in self.yb)
        e.add_note(
            f"learnloop: the loss function rejected the model's output of shape {_shape(self.pred)} "
            f"with target(s) of shape {targets}; check that the model's last layer and the targets "
            "match what the loss function expects."
        )

    def _do_epoch_train(self) -> None:
        self.dl = self.dls.train
        self._phase(TRAIN, self._all_batches)

    def _do_epoch_validate(self, ds_idx: int = 1, dl: Any = None) -> None:
        self.dl = self.dls[ds_idx] if dl is None else dl
        with torch.no_grad():
            self._phase(VALIDATE, self._all_batches)

    def _do_epoch(self) -> None:
        self._do_epoch_train()
        self._do_epoch_validate()

    def _do_fit(self) -> None:
        first = 0
        if self._resume is not None:  # fit(resume=...): now that before_fit has run, put the saved state back
            first = self._resume.restore(self)
        for epoch in range(first, self.n_epoch):
            self.epoch = epoch
            self._phase(EPOCH, self._do_epoch)

    def _run_fit(self) -> None:
        """The fit phase. Ctrl-C (KeyboardInterrupt) is no cancel exception, but unlike other exceptions it still
        gets after_fit's cleanup (weights, loss function and progress bars put back) before it goes on, and
        a CheckpointCallback writes a last checkpoint first."""
        outer = self._in_fit
        try:
            try:
                self._fire(FIT.before)
                self._in_fit = True  # from here to after_fit, a validate() a callback calls is part of this fit
                self._do_fit()
            except FIT.cancel:
                self._fire(FIT.after_cancel)
            except KeyboardInterrupt:
                for cb in self._grab(CheckpointCallback):  # a last checkpoint, unless written at a deferred Ctrl-C
                    cb.save_on_interrupt()
                self._fire(FIT.after)
                raise
            self._fire(FIT.after)
        finally:
            self._in_fit = outer

    def _end_cleanup(self) -> None:
        # As fastai's: `loss_grad` stays, the last batch's loss (with its graph if backward never ran on it).
        self.dl, self.xb, self.yb, self.pred, self.loss = None, (None,), (None,), None, None

    @property
    def smooth_loss(self) -> torch.Tensor:
        """The Recorder's smoothed training loss after the last batch it recorded (reading it waits on the device)."""
        recorder = self._recorder()
        value = recorder.smooth_value if recorder is not None else self.__dict__.get("_smooth_loss")
        if value is None:
            raise AttributeError("'Learner' object has no attribute 'smooth_loss': no training batch recorded yet")
        return value

    @smooth_loss.setter
    def smooth_loss(self, value: Any) -> None:
        recorder = self._recorder()
        if recorder is not None:
            recorder.smooth_value = value
        else:  # no Recorder: a plain attribute, as in fastai
            self.__dict__["_smooth_loss"] = value

    def _recorder(self) -> Recorder | None:
        recorder = self.__dict__.get("recorder")
        if isinstance(recorder, Recorder):
            return recorder
        return next((cb for cb in self.cbs if isinstance(cb, Recorder)), None)  # a subclass, under another name

    @property
    def _device(self) -> torch.device | None:
        """Where batches go: the DataLoaders' device (None: leave batches where they are)."""
        return getattr(self.dls, "device", None)

    # --------------------------------------------------------------- public API
    def create_opt(self) -> None:
        """Create the optimizer from `opt_func` over the groups made by `splitter`."""
        if isinstance(self.opt_func, functools.partial) and "lr" in self.opt_func.keywords:
            self.lr = self.opt_func.keywords["lr"]
        if isinstance(self.opt_func, OptimWrapper):  # an optimizer already built: used as it is, its state cleared
            self.opt = self.opt_func
            self.opt.clear_state()
        else:
            self.opt = self.opt_func(self.splitter(self.model), lr=self.lr)
        if not self.wd_bn_bias:
            for p in norm_bias_params(self.model, with_bias=True):
                self.opt.state[p]["do_wd"] = False
        if self.train_bn:
            for p in norm_bias_params(self.model, with_bias=False):
                self.opt.state[p]["force_train"] = True

    def fit(
        self,
        n_epoch: int,
        lr: float | slice | Sequence[float] | None = None,
        wd: float | None = None,
        cbs: Any = None,
        reset_opt: bool = False,
        start_epoch: int = 0,
        resume: str | Path | None = None,
    ) -> None:
        """Train for `n_epoch` epochs, validating after each one.

        `resume` continues a run from a checkpoint of `CheckpointCallback` (a file, its folder, or 'latest'),
        ending exactly as the uninterrupted run would have; call it as the interrupted fit was called.
        """
        if isinstance(n_epoch, bool) or not isinstance(n_epoch, numbers.Integral) or n_epoch < 0:
            raise ValueError(f"n_epoch must be a whole number of epochs >= 0, got {n_epoch!r}.")
        n_epoch = int(n_epoch)  # a numpy integer too
        if lr is not None:
            _check_lr(lr)
        if resume is not None and start_epoch:
            raise ValueError("fit: give resume= or start_epoch=, not both (a checkpoint knows where to resume).")
        self._check_train_data()
        cbs = as_list(cbs)
        if start_epoch:
            cbs = [*cbs, SkipToEpoch(start_epoch)]
        with self.added_cbs(cbs):
            if reset_opt or self.opt is None:
                self.create_opt()
            # Read and checked before anything changes: a wrong file fails here, before any event.
            file = resolve_resume(self, resume) if resume is not None else None
            resuming = ResumeState(self, file, n_epoch) if file is not None else None
            if wd is None:
                wd = self.wd
            if wd is not None:
                self.opt.set_hypers(wd=wd)
            self.opt.set_hypers(lr=self.lr if lr is None else lr)
            self.n_epoch = n_epoch
            if resuming is not None:
                resuming.load_model(self)
            logger = self.logger
            self._resume = resuming
            try:
                self._run_fit()
            except BaseException as e:
                # Only Ctrl-C gets after_fit; on this path a callback that swapped the logger cannot put it back.
                self.logger = logger
                if isinstance(e, KeyboardInterrupt):
                    self._end_cleanup()
                raise
            finally:
                self._resume, self._data_order = None, None
            self._end_cleanup()

    def _check_train_data(self) -> None:
        train = self.dls.train
        try:
            n = len(train)
        except TypeError:
            raise TypeError(
                f"The training data ({type(train).__name__}) has no length; learnloop needs the number of "
                "batches per epoch to schedule training: give it a __len__."
            ) from None
        if n == 0:
            dataset: Any = getattr(train, "dataset", None)
            facts = [f"a dataset of {len(dataset)} items"] if hasattr(dataset, "__len__") else []
            # A torch DataLoader given a batch_sampler has batch_size None: the sampler's settings are the ones used.
            sampler = getattr(train, "batch_sampler", None) if getattr(train, "batch_size", 0) is None else None
            source = sampler if sampler is not None else train
            keys = [key for key in ("batch_size", "drop_last") if hasattr(source, key)]
            settings = [f"{key}={getattr(source, key)!r}" for key in keys]
            if settings and sampler is not None:
                settings = [f"a batch_sampler with {', '.join(settings)}"]
            facts += settings
            raise ValueError(
                "The training DataLoader is empty: it yields no batches"
                + (f" ({', '.join(facts)}). Use a smaller batch size, drop_last=False, or more data." if facts else
                   ". Give DataLoaders a training set with at least one batch.")
            )

    def no_logging(self) -> AbstractContextManager[None]:
        """Silence the per-epoch table for the duration of the block."""
        return replacing_yield(self, "logger", noop)

    def no_mbar(self) -> AbstractContextManager[None]:
        """Don't create the epoch progress bar in this block."""
        return replacing_yield(self, "create_mbar", False)

    @contextmanager
    def no_bar(self) -> Iterator[Learner]:
        """Run the block without the progress callback (`with learn.no_bar() as learn:`, as in fastai)."""
        with self.removed_cbs(ProgressCallback):
            yield self

    @contextmanager
    def validation_context(self, cbs: Any = None, inner: bool = False) -> Iterator[None]:
        """The events around `validate()`'s and `get_preds()`'s validation phase: before_fit and before_epoch, then
        after_epoch and after_fit, those even when an exception leaves the phase (as fastai's). `inner=True` (a call
        from inside a running fit that should leave the fit's callbacks alone) fires none of them. The last batch's
        state (`xb`, `pred`, `loss`...) is left in place, as fastai leaves it."""
        with self.no_logging(), self.no_mbar(), self.added_cbs(cbs):
            if inner:
                yield
                return
            outer, self._nested_run = self._nested_run, self._in_fit
            try:
                with self:
                    yield
            finally:
                self._nested_run = outer

    def validate(self, ds_idx: int = 1, dl: Any = None, cbs: Any = None) -> list[Any] | None:
        """Evaluate on the validation set (or `dl`): `[valid_loss, *metrics]`, the Recorder's `final_record`
        (None when no Recorder ever recorded one)."""
        dl = self.dls[ds_idx] if dl is None else dl
        with self.validation_context(cbs):
            self._do_epoch_validate(ds_idx, dl)
        return getattr(self, "final_record", None)

    def get_preds(
        self,
        ds_idx: int = 1,
        dl: Any = None,
        with_input: bool = False,
        with_decoded: bool = False,
        with_loss: bool = False,
        act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        inner: bool = False,
        reorder: bool = True,
        cbs: Any = None,
        *,
        save_preds: str | os.PathLike[str] | None = None,
        save_targs: str | os.PathLike[str] | None = None,
        with_preds: bool = True,
        with_targs: bool = True,
        concat_dim: int = 0,
        pickle_protocol: int = 2,
    ) -> tuple[Any, ...]:
        """Predictions and targets over a dataset: `(inputs?, preds, targets, decoded?, losses?)`.

        `ds_idx` picks `dls[ds_idx]` (0 training, 1 validation), read in dataset order: unshuffled, its last
        partial batch kept. `dl`, any iterable of batches, is read instead, as it comes. Predictions go through
        `act`, else the loss function's `activation` if it has one; `with_decoded` adds the loss function's
        `decodes` of them (the predictions themselves without one), `with_loss` a loss per item, `with_input`
        the inputs. The signature is fastai's, keyword-only arguments included:

        - `with_preds=False` / `with_targs=False`: keep no predictions / targets; that place in the tuple is
          None (as are the decoded predictions when there are no predictions).
        - `concat_dim`: the dimension the batches' predictions, targets and inputs are concatenated along
          (say 1 for a model whose outputs are sequence-first); per-item losses always along 0.
        - `save_preds` / `save_targs`: a directory (made if missing) to write each batch's raw prediction (before
          `act`) / first target to, on the CPU, with `torch.save(..., pickle_protocol=pickle_protocol)`, in a file
          named after the batch's index (`0`, `1`, ...). They are still returned unless `with_preds=False` /
          `with_targs=False` says not to keep them.
        - `reorder` changes nothing in learnloop, and is accepted for fastai's code. Fastai puts the predictions
          back in dataset order when the loader knows the order it drew (its own DataLoader); learnloop reads
          `dls[ds_idx]` in dataset order in the first place, and reads a `dl` given as it comes, as fastai does
          a torch DataLoader: with a shuffled one, the results are in that loader's shuffled order either way.

        Only batches the model ran on count: a batch cancelled before its prediction (CancelBatchException in
        `before_batch`) is left out; one cancelled after it keeps its prediction (NaN losses if its loss was
        not computed). When the validation phase is cancelled before any batch, or no batch is left, the
        predictions, targets and the rest are None. Any other keyword raises TypeError, as in fastai.

        `inner=True` runs only the validation phase, without the fit and epoch events around it, for a callback
        that needs predictions in the middle of a fit (after a validation phase: the model is left in eval mode).
        Callbacks that keep the fit's records still see that phase: take them out around the call, as
        `FetchPredsCallback` does with those marked `remove_on_fetch` (the Recorder, the trackers).

        >>> probs, targets = learn.get_preds()                       # the validation set
        >>> _, targets = learn.get_preds(ds_idx=0, with_preds=False)  # the training set's targets only
        """
        if (concat_dim != 0 or save_preds is not None or save_targs is not None) and is_distributed() and any(
            isinstance(cb, DistributedTrainer) for cb in self.cbs
        ):
            raise NotImplementedError(
                "get_preds(concat_dim=..., save_preds=..., save_targs=...) is not supported in a distributed job: "
                "the ranks' predictions are combined along dimension 0 and each rank would write files of the "
                "same names. Leave them at their defaults and concatenate or save the result on rank 0."
            )
        dl = unshuffled(self.dls[ds_idx]) if dl is None else dl
        gather = GatherPredsCallback(
            with_input=with_input, with_loss=with_loss, save_preds=save_preds, save_targs=save_targs,
            with_preds=with_preds, with_targs=with_targs, concat_dim=concat_dim, pickle_protocol=pickle_protocol,
        )
        with self._unreduced_loss(with_loss), self.validation_context([*as_list(cbs), gather], inner=inner):
            self._do_epoch_validate(ds_idx, dl)
        preds = gather.preds
        if preds is not None:
            activation = act if act is not None else getattr(self.loss_func, "activation", None)
            if activation is not None:
                preds = activation(preds)
        result: list[Any] = [gather.inputs] if with_input else []
        result += [preds, gather.targets]
        if with_decoded:
            decodes = getattr(self.loss_func, "decodes", None)
            result.append(decodes(preds) if decodes is not None and preds is not None else preds)
        if with_loss:
            result.append(gather.losses)
        return tuple(result)

    def to_detach(self, b: Any, cpu: bool = True, gather: bool = True) -> Any:
        """`b` detached (see `learnloop.data.to_detach`), or as the current loader's own `to_detach` makes it."""
        dl_to_detach = getattr(self.dl, "to_detach", None)
        return dl_to_detach(b, cpu, gather) if callable(dl_to_detach) else to_detach(b, cpu, gather)

    def loss_not_reduced(self) -> AbstractContextManager[None]:
        """In the block, the loss function returns one loss per item (`reduction='none'`)."""
        return self._unreduced_loss(True)

    @contextmanager
    def _unreduced_loss(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        old = self.loss_func
        if hasattr(old, "reduction"):
            reduction = old.reduction
            old.reduction = "none"
            try:
                yield
            finally:
                old.reduction = reduction
        else:
            self.loss_func = functools.partial(old, reduction="none")
            try:
                yield
            finally:
                self.loss_func = old

    def predict(self, item: Any, rm_type_tfms: int | None = None, with_input: bool = False) -> tuple[Any, ...]:
        """Predict one item (an input tensor, or a tuple of inputs): `(decoded, decoded tensor, pred)`, with the
        input first when `with_input` (fastai's order).

        `rm_type_tfms` holds fastai's place in the signature: learnloop has no item transforms, so only None or 0
        (remove none) are accepted.
        """
        if isinstance(rm_type_tfms, bool):
            raise TypeError(
                f"predict(item, {rm_type_tfms!r}): the second argument is rm_type_tfms, as in fastai; with_input is "
                f"the third: pass with_input={rm_type_tfms!r} by keyword."
            )
        if rm_type_tfms not in (None, 0):
            raise ValueError(
                f"predict(rm_type_tfms={rm_type_tfms!r}): learnloop applies no item transforms, so there are none "
                "to remove; pass the model's input as it is, and leave rm_type_tfms out."
            )
        inputs = tuple(item) if isinstance(item, (tuple, list)) else (item,)
        batch = tuple(torch.as_tensor(x).unsqueeze(0) for x in inputs)
        self._n_inp = len(batch)
        try:
            inp, preds, _, decoded = self.get_preds(dl=[batch], with_decoded=True, with_input=True)
        finally:
            self._n_inp = None
        if preds is None:  # a ValueError, as fastai's (whose unpacking of get_preds' result fails)
            raise ValueError(
                "predict: the item's batch was cancelled before the model ran (a callback raised CancelBatchException "
                "at before_batch, or cancelled the validation phase), so there is no prediction: check the callbacks "
                "that run in validation (run_valid), or remove them for predict."
            )
        dec = decoded[0]
        result = (dec.item() if dec.numel() == 1 else dec), dec, preds[0]
        if with_input:
            return (inp[0] if isinstance(inp, torch.Tensor) else tuple(x[0] for x in inp), *result)
        return result

    def _model_file(self, file: str | Path | IO[bytes]) -> Any:
        return file if is_buffer(file) else self.path / self.model_dir / f"{file}.pth"

    def save(self, file: str | Path | IO[bytes], with_opt: bool = True, pickle_protocol: int = 2) -> Any:
        """Save the model (and optimizer) to `path/model_dir/file.pth`, atomically, with `torch.save`'s
        `pickle_protocol` (accepted for fastai's code: only 2, what `load` reads cleanly); returns the path.
        An open buffer (`io.BytesIO`) is written into and returned instead, as in fastai.

        In a distributed job, call it on every rank: rank 0 writes, and every rank waits until the
        file is complete, so any rank can load it next. A model sharded with FSDP is saved with
        torch.distributed.checkpoint instead, each rank writing its shard, to the folder `file.dcp`.
        """
        check_pickle_protocol(pickle_protocol, "learn.load")  # on every rank, before any rank writes or waits
        path = self._model_file(file)
        if is_fsdp(self.model):
            if is_buffer(path):
                raise TypeError(
                    "A model sharded with FSDP is saved to a folder, one file per rank: give a name, not a buffer."
                )
            return save_sharded(path, self.model, self.opt, with_opt=with_opt)
        if is_rank_zero():
            save_model(path, unwrap_model(self.model), self.opt, with_opt=with_opt)
        barrier()
        return path

    def load(
        self, file: str | Path | IO[bytes], device: Any = None, with_opt: bool = True, strict: bool = True
    ) -> Learner:
        """Load `path/model_dir/file.pth` (written by `save`), or an open buffer from where it stands, into the
        model and optimizer."""
        if device is None:
            device = getattr(self.dls, "device", None)
        if self.opt is None:
            self.create_opt()
        model = unwrap_model(self.model)
        if is_fsdp(model):
            if is_buffer(file):
                raise TypeError(
                    "A model sharded with FSDP is loaded from a folder, one file per rank: give a name, not a buffer."
                )
            load_sharded(self._model_file(file), model, self.opt, with_opt=with_opt)
            return self
        load_model(self._model_file(file), model, self.opt, with_opt=with_opt, device=device, strict=strict)
        return self

    def export(
        self,
        fname: str | Path = "export.pkl",
        pickle_module: Any = None,
        pickle_protocol: int = 2,
        *,
        pickle_model: bool = True,
    ) -> Path:
        """Save the model for inference to `path/fname`, atomically, for `load_learner` (see learnloop.export).

        The file is read with torch's weights-only loader; the pickled model it also holds (unless
        `pickle_model=False`) is only unpickled by `load_learner(..., trusted=True)`. `pickle_module` (say
        cloudpickle, for a model with lambdas; default: pickle) and `pickle_protocol` pickle that model. A name
        ending in `.safetensors` writes the weights in that format.
        """
        from .export import export_learner

        return export_learner(self, fname, pickle_model, pickle_module, pickle_protocol)

    def summary(self) -> PrettyString:
        """The model's layers, output shapes and parameters on a training batch, then the optimizer, the loss
        function, the frozen state and the callbacks: fastai's text (see `learnloop.summary`)."""
        return _summary(self)

    def freeze_to(self, n: int) -> None:
        """Freeze the parameter groups before group `n` (normalisation layers keep training if `train_bn`)."""
        if self.opt is None:
            self.create_opt()
        self.opt.freeze_to(n)
        self.opt.clear_state()

    def freeze(self) -> None:
        """Freeze every parameter group but the last."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Make every parameter group trainable."""
        self.freeze_to(0)

    @property
    def x(self) -> Any:
        """The batch's input: `xb[0]` when there is one, else the tuple `xb`."""
        return self.xb[0] if len(self.xb) == 1 else self.xb

    @property
    def y(self) -> Any:
        """The batch's target: `yb[0]` when there is one, else the tuple `yb`."""
        return self.yb[0] if len(self.yb) == 1 else self.yb

    def __enter__(self) -> Learner:
        """`with learn:` fires before_fit and before_epoch, and after_epoch and after_fit at the end of the block
        (however it ends): what `validate()` does around its validation phase."""
        self([Event.before_fit, Event.before_epoch])
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        # Whether an exception is on its way out: a callback can skip what needs every process (the
        # DistributedTrainer's collectives, which a rank that raised alone would wait on until the timeout).
        self._unwinding = exc_type is not None
        try:
            self([Event.after_epoch, Event.after_fit])
        finally:
            self._unwinding = False

    def __getattr__(self, name: str) -> Any:
        model = self.__dict__.get("model")
        if name.startswith("_") or model is None:
            raise AttributeError(f"'Learner' object has no attribute {name!r}")
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(f"'Learner' object has no attribute {name!r}, nor has its model") from None

    def __repr__(self) -> str:
        return f"Learner(model={type(self.model).__name__}, cbs={self.sorted_cbs()})"

    # ----------------------------------------------------------- mixed precision
    # Set by MixedPrecision: the GradScaler during fit, and the skipped-step record of callbacks/steps.py.
    scaler: Any
    opt_step_skipped: bool
    skipped_steps: int
    pct_skipped: float

    def to_fp16(self, **kwargs: Any) -> Learner:
        """Train in mixed precision with float16 and a GradScaler (`kwargs` go to `MixedPrecision`)."""
        from .callbacks.fp16 import MixedPrecision

        cb = MixedPrecision(**kwargs)  # built first, so bad arguments leave the learner as it was
        self.remove_cb(MixedPrecision)
        return self.add_cb(cb)

    def to_bf16(self) -> Learner:
        """Train in mixed precision with bfloat16 (no loss scaling needed)."""
        return self.to_fp16(amp_mode="bf16")

    def to_fp32(self) -> Learner:
        """Train in full precision again: remove MixedPrecision."""
        from .callbacks.fp16 import MixedPrecision

        return self.remove_cb(MixedPrecision)

    # ---- fit policies and the LR finder
    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: float | slice | Sequence[float] | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        wd: float | None = None,
        moms: Sequence[float] | None = None,
        cbs: Any = None,
        reset_opt: bool = False,
        start_epoch: int = 0,
        resume: str | Path | None = None,
    ) -> None:
        """Train with the 1cycle policy (lr warm-up then cosine annealing, momentum the other way)."""
        _schedule.fit_one_cycle(
            self, n_epoch, lr_max, div, div_final, pct_start, wd, moms, cbs, reset_opt, start_epoch, resume
        )

    def fit_flat_cos(
        self,
        n_epoch: int,
        lr: float | slice | Sequence[float] | None = None,
        div_final: float = 1e5,
        pct_start: float = 0.75,
        wd: float | None = None,
        cbs: Any = None,
        reset_opt: bool = False,
        start_epoch: int = 0,
        resume: str | Path | None = None,
    ) -> None:
        """Train at a flat `lr` for `pct_start` of training, then anneal it with a cosine."""
        _schedule.fit_flat_cos(self, n_epoch, lr, div_final, pct_start, wd, cbs, reset_opt, start_epoch, resume)

    def fit_sgdr(
        self,
        n_cycles: int,
        cycle_len: int,
        lr_max: float | slice | Sequence[float] | None = None,
        cycle_mult: int = 2,
        cbs: Any = None,
        reset_opt: bool = False,
        wd: float | None = None,
        start_epoch: int = 0,
        resume: str | Path | None = None,
    ) -> None:
        """Train with SGDR: `n_cycles` cosine annealings of `cycle_len * cycle_mult**i` epochs."""
        _schedule.fit_sgdr(
            self, n_cycles, cycle_len, lr_max, cycle_mult, cbs, reset_opt, wd, start_epoch, resume
        )

    def fine_tune(
        self,
        epochs: int,
        base_lr: float = 2e-3,
        freeze_epochs: int = 1,
        lr_mult: float = 100,
        pct_start: float = 0.3,
        div: float = 5.0,
        *,
        resume: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        """Train the last group frozen for `freeze_epochs`, then everything with discriminative lrs (what follows
        `div` is keyword-only, as in fastai)."""
        _schedule.fine_tune(self, epochs, base_lr, freeze_epochs, lr_mult, pct_start, div, resume, **kwargs)

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10,
        num_it: int = 100,
        stop_div: bool = True,
        show_plot: bool = True,
        suggest_funcs: Callable[..., Any] | Iterable[Callable[..., Any]] | None = (_lr_finder.valley,),
    ) -> tuple[float, ...] | None:
        """Sweep the lr upwards for `num_it` batches, put the model and the optimizer back as they were, return
        `SuggestedLRs(...)` (see `callbacks.lr_finder.lr_find` for what else is restored)."""
        return _lr_finder.lr_find(self, start_lr, end_lr, num_it, stop_div, show_plot, suggest_funcs)

    # ---- distributed training (callbacks/distributed.py)
    @contextmanager
    def distrib_ctx(
        self, split_batch: bool = False, sync_bn: bool = False, timeout: Any = None, **kwargs: Any
    ) -> Iterator[Learner]:
        """Train with DistributedDataParallel in the block when launched by torchrun (a no-op otherwise).

        `split_batch=True` divides the batch size between the processes; `timeout` (seconds or a timedelta)
        bounds every collective. Other keywords go to `DistributedTrainer` (and on to DDP).

        >>> with learn.distrib_ctx():
        ...     learn.fit_one_cycle(3)
        """
        with _distrib_ctx(self, split_batch=split_batch, sync_bn=sync_bn, timeout=timeout, **kwargs):
            yield self


@contextmanager
def replacing_yield(obj: Any, attr: str, value: Any) -> Iterator[None]:
    """Set `obj.<attr>` to `value` for the duration of the block, then put the old value back (fastai's name)."""
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _all_on_cpu(b: Any) -> bool:
    if isinstance(b, torch.Tensor):
        return b.is_cpu
    if isinstance(b, (tuple, list)):
        return all(_all_on_cpu(o) for o in b)
    if isinstance(b, dict):
        return all(_all_on_cpu(o) for o in b.values())
    return True


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_lr(lr: Any) -> None:
    values = [lr.start, lr.stop] if isinstance(lr, slice) else list(lr) if isinstance(lr, (list, tuple)) else [lr]
    for v in values:
        if v is None and isinstance(lr, slice):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"lr must be a number, a slice or a list of numbers, got {lr!r}.")
        if v < 0 or v != v:
            raise ValueError(f"lr must be a non-negative number, got {lr!r}.")
