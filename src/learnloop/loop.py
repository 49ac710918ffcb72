"""The training loop: the state it keeps, and its phases from a fit's epochs down to one batch.

`Loop` is the part of the `Learner` (learner.py) that runs. A fit is `_run_fit` (the fit phase) -> `_do_fit` (an
epoch phase per epoch) -> `_do_epoch` (a training then a validation phase) -> `_all_batches` (a batch phase per
batch, with the backward and step phases inside it when training). Every phase is fired from the table in
events.py: before, the body, after_cancel when its cancel exception was raised, after. The class declares the
state the loop reads and writes; the Learner sets up what it works with (`dls`, `model`, `loss_func`, `opt`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Self

import torch
from torch import nn

from .attrs import OwnAttrs
from .callback import Callback
from .callbacks.checkpointing import CheckpointCallback
from .data import length, to_device
from .dispatch import CallbackHost
from .distributed import lost_peers_in_backward
from .errors import ValueTypeError
from .events import BACKWARD, BATCH, EPOCH, FIT, STEP, TRAIN, VALIDATE, Event, Phase
from .explain import explain_backward_error, explain_loss_error, explain_loss_result, explain_model_error
from .resume import DataOrder, ResumeState
from .warn import warn_caller

__all__ = ["Loop"]

_AFTER_PRED, _AFTER_LOSS, _AFTER_BATCH = Event.after_pred, Event.after_loss, Event.after_batch


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


class Loop(CallbackHost):
    """The training loop of a Learner: its phases, and the state they share with the callbacks."""

    # What the loop works with, set up by the Learner.
    dls: Any
    model: nn.Module
    loss_func: Callable[..., Any]
    opt: Any
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

    def __init__(self) -> None:
        super().__init__()
        self.training = False
        self._n_inp: int | None = None  # inputs per batch, when set for one run (predict); else the DataLoaders'
        # Exact resume (resume.py): the checkpoint a fit is resuming from, and the recorder of each training epoch's
        # data order (set while a CheckpointCallback is on or a fit resumes).
        self._resume: ResumeState | None = None
        self._data_order: DataOrder | None = None
        self._in_fit = False  # from a fit's before_fit to its after_fit (a validate() inside it is no new fit)
        # The fit's epoch in progress: `epoch` unless a validate() inside the fit has set that to 0 (as fastai's does).
        self._fit_epoch = 0
        # During a validate() or get_preds() run from inside a fit: its before_fit...after_fit are not the fit's, and
        # callbacks that hold state for the fit (MixedPrecision, HookCallback) leave it alone.
        self._nested_run = False
        self._attrs = OwnAttrs(self)  # for per-batch code; `_all_batches` makes a new one every phase
        self._copy_loss = False  # whether `loss` must be a copy of `loss_grad` (see _LOSS_EVENTS)
        self._unwinding = False  # after_epoch/after_fit fired by `with learn:` while an exception leaves (__exit__)
        self._warn_untrained = False  # this fit has no TrainEvalCallback and has not warned of it yet (fit)

    def _build_hooks(self) -> None:
        super()._build_hooks()
        self._copy_loss = not all(_library_hook(cb, hook) for e in _LOSS_EVENTS for cb, hook in self._hooks[e])

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
        if not b or n_inp > len(b) or n_inp < 1:  # fastai: the model's TypeError on too many or too few inputs
            raise ValueTypeError(
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
            s.n_iter = length(s.dl) or 0
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
                try:
                    s.pred = s.model(*s.xb)
                except (TypeError, RuntimeError, ValueError, AttributeError, IndexError) as e:
                    explain_model_error(e, s.xb, s.yb)
                    raise
                if h := hooks[_AFTER_PRED]:
                    run(_AFTER_PRED, h)
                if s.yb:
                    try:
                        loss_grad = s.loss_grad = s.loss_func(s.pred, *s.yb)
                    except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as e:
                        explain_loss_error(e, s.pred, s.yb, s.loss_func is None)
                        raise
                    # When no hook can change it in place (_LOSS_EVENTS): `.data`, detach()'s alias at half the cost.
                    try:
                        s.loss = loss_grad.detach().clone() if s._copy_loss else loss_grad.data
                    except AttributeError as e:  # not a tensor: a float, None
                        explain_loss_result(e, loss_grad)
                        raise
                if h := hooks[_AFTER_LOSS]:
                    run(_AFTER_LOSS, h)
                if s.training and s.yb:
                    try:
                        if h := hooks[BACKWARD.before]:
                            run(BACKWARD.before, h)
                        s.loss_grad.backward()
                    except BACKWARD.cancel:
                        self._fire(BACKWARD.after_cancel)
                    except RuntimeError as e:
                        if (lost := lost_peers_in_backward(e)) is not None:
                            raise lost from e
                        explain_backward_error(e, s.loss_grad)
                        raise
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

    def _do_epoch_train(self) -> None:
        self.dl = self.dls.train
        self._phase(TRAIN, self._all_batches)
        if self._warn_untrained and not self.training:
            self._warn_untrained = False  # once a fit
            warn_caller(
                "The learner has no TrainEvalCallback (default_cbs=False, or removed), which puts the model in "
                "training mode and sets learn.training, and nothing else set it: no batch of this training phase "
                "computed gradients or stepped the optimizer. Add it: learn.add_cb(TrainEvalCallback())."
            )

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
            self.epoch = self._fit_epoch = epoch
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
    def _device(self) -> torch.device | None:
        """Where batches go: the DataLoaders' device (None: leave batches where they are)."""
        return getattr(self.dls, "device", None)

    @property
    def x(self) -> Any:
        """The batch's input: `xb[0]` when there is one, None when there is none, else the tuple `xb`."""
        return _detuplify(self.xb)

    @property
    def y(self) -> Any:
        """The batch's target: `yb[0]` when there is one, None when there is none (a batch without targets, as
        fastai's), else the tuple `yb`."""
        return _detuplify(self.yb)

    def __enter__(self) -> Self:
        """`with learn:` fires before_fit and before_epoch, and after_epoch and after_fit at the end of the block
        (however it ends): what `validate()` does around its validation phase. When a `before_fit` or `before_epoch`
        raises, no after_fit follows, but every callback's `run` is set back to True as after_fit would."""
        try:
            self([Event.before_fit, Event.before_epoch])
        except BaseException:
            self._run_back_on()  # no __exit__ follows, so no after_fit sets `run` back
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        # Whether an exception is on its way out: a callback can skip what needs every process (the
        # DistributedTrainer's collectives, which a rank that raised alone would wait on until the timeout).
        self._unwinding = exc_type is not None
        try:
            self([Event.after_epoch, Event.after_fit])
        finally:
            self._unwinding = False


def _all_on_cpu(b: Any) -> bool:
    if isinstance(b, torch.Tensor):
        return b.is_cpu
    if isinstance(b, (tuple, list)):
        return all(_all_on_cpu(o) for o in b)
    if isinstance(b, dict):
        return all(_all_on_cpu(o) for o in b.values())
    return True


def _detuplify(b: tuple[Any, ...]) -> Any:
    return b[0] if len(b) == 1 else None if len(b) == 0 else b
