"""The learning-rate finder: a short training run with a growing lr, and suggestions read off its losses.

The suggestions (the functions ``valley``, ``slide``, ``minimum``, ``steep``..., and how lr_find reads them off
the Recorder) live in lr_suggest.py; the suggestion functions are re-exported here.

>>> learn.lr_find()                      # plots loss against lr and returns SuggestedLRs(valley=...)
>>> lr_find(learn, suggest_funcs=(minimum, steep, valley, slide))
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from ..callback import Callback
from ..distributed import world_size
from ..errors import ValueTypeError, as_scalar, to_number
from ..events import CancelFitException, CancelValidException
from ..optimizer.core import loading_own_state
from ..schedules import SchedExp, SchedLin
from .lr_suggest import (
    SuggestionFunction,
    SuggestionMethod,
    _as_funcs,
    _suggest,
    _suggestion_names,
    min_points,
    minimum,
    slide,
    steep,
    valley,
)
from .recorder import Recorder
from .schedule import ParamScheduler

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = [
    "LRFinder",
    "SuggestionFunction",
    "SuggestionMethod",
    "lr_find",
    "minimum",
    "min_points",
    "slide",
    "steep",
    "valley",
]


# ------------------------------------------------------------------------------------ the callback
#: The fewest batches a sweep runs (fastai's floor): with the last 5 dropped, the suggestions keep at least one point.
MIN_NUM_IT = 6


class LRFinder(ParamScheduler):
    """Trains with lr going from ``start_lr`` to ``end_lr`` (upwards, or downwards if lower) over ``num_it``
    batches, without validation.

    Iteration ``i`` uses ``start_lr * (end_lr/start_lr) ** (i/num_it)`` (``start_lr + (end_lr-start_lr)*i/num_it``
    when ``linear``); as in fastai, a ``num_it`` below 6 counts as 6. Training stops after ``num_it`` batches,
    or as soon as the smoothed loss exceeds 4 times its best value (or is not finite) when ``stop_div``.
    With ``restore`` (the default) the model and the optimizer are put back as they were at ``before_fit``
    in ``after_fit``: when the fit ends, is cancelled or is stopped by Ctrl-C, but not when it raises another
    exception, which skips ``after_fit`` (as in fastai): ``learn.lr_find()`` restores them even then. The loop
    counters and the other callbacks keep what the sweep left. As in fastai, the
    lrs tried are recorded in the finder's ``hps`` and in ``recorder.lrs``, but do not replace
    ``recorder.hps`` (what the last scheduled fit left).
    """

    def __init__(
        self,
        start_lr: float | Sequence[float] = 1e-7,
        end_lr: float | Sequence[float] = 10,
        num_it: int = 100,
        stop_div: bool = True,
        linear: bool = False,
        restore: bool = True,
    ) -> None:
        for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
            # One per group: a list, a tuple, or a 1-d numpy array or tensor (which fastai's schedule takes too).
            per_group = isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1
            for v in cast("Iterable[Any]", value) if per_group else [value]:
                to_number(v, name, "LRFinder")  # numbers, not strings (which numpy would read); their range below
        start, end = np.asarray(start_lr, dtype=np.float64), np.asarray(end_lr, dtype=np.float64)
        # As in fastai, end_lr may be below start_lr (a downward sweep); learning rates of 0 have no place on
        # the log-scaled plot (and a sweep from 0 could not be exponential).
        if not (np.all(np.isfinite(start)) and np.all(np.isfinite(end)) and np.all(start > 0) and np.all(end > 0)):
            raise ValueError(f"LRFinder: start_lr and end_lr must be finite and > 0, got {start_lr!r}, {end_lr!r}.")
        number = as_scalar(num_it)  # a 0-dim integer array or tensor too, as a number of epochs
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)):  # numpy ints too
            # fastai: a TypeError ("'float' object cannot be interpreted as an integer"); a ValueError here before
            raise ValueTypeError(f"LRFinder: num_it is a whole number of batches >= 1, got {num_it!r}.")
        if number < 1:
            raise ValueError(f"LRFinder: num_it is a number of batches >= 1, got {num_it!r}.")
        num_it = int(number)
        sched = SchedLin(start_lr, end_lr) if linear else SchedExp(start_lr, end_lr)
        super().__init__({"lr": sched})
        self.start_lr, self.end_lr, self.num_it = start_lr, end_lr, max(num_it, MIN_NUM_IT)
        self.stop_div, self.linear, self.restore = stop_div, linear, restore
        self.best_loss = math.inf
        self.diverged = False  # whether the last sweep stopped at a diverging loss (stop_div)
        self._snapshot: LearnerSnapshot | None = None

    def before_fit(self) -> None:
        super().before_fit()
        if not isinstance(getattr(self.learn, "recorder", None), Recorder):
            raise ValueError("LRFinder reads the smoothed loss the Recorder computes: add a Recorder callback.")
        self.best_loss, self.diverged = math.inf, False
        if not self.learn._nested_run:  # a validate() a callback runs inside the sweep: the sweep's snapshot stays
            self._snapshot = LearnerSnapshot(self.learn, callbacks=False) if self.restore else None

    def before_batch(self) -> None:
        self._update_val(self.learn.train_iter / self.num_it)

    def after_batch(self) -> None:
        super().after_batch()
        smooth = getattr(self.learn, "smooth_loss", None)
        if smooth is not None:
            loss = float(smooth)  # waits for the device: the decision to stop needs the number
            if loss < self.best_loss:
                self.best_loss = loss
            if self.stop_div and (loss > 4 * self.best_loss or not math.isfinite(loss)):
                self.diverged = True
                raise CancelFitException
        if self.learn.train_iter >= self.num_it:
            raise CancelFitException

    def before_validate(self) -> None:
        raise CancelValidException

    def after_fit(self) -> None:
        # Not ParamScheduler.after_fit: the sweep's lrs do not replace recorder.hps (fastai's finder skips it too).
        self.learn.opt.zero_grad()
        if self._snapshot is not None and not self.learn._nested_run:
            self._snapshot.restore()
            self._snapshot = None


# ------------------------------------------------------------------------------------ what lr_find restores
def _checkpointed(cb: Callback) -> bool:
    """Whether the callback keeps state that travels in checkpoints (its class defines ``state_dict``)."""
    return type(cb).state_dict is not Callback.state_dict and not isinstance(cb, Recorder)


class LearnerSnapshot:
    """A copy, in memory, of what a trial run changes in the model and the optimizer: the model's weights,
    buffers, gradients and train/eval modes, the optimizer (state and hypers, or its absence), the tensors it may
    train outside the model (a learnable loss function's parameters, which a splitter hands the optimizer); with
    ``callbacks``, also the state of the callbacks whose state travels in checkpoints (their class defines
    ``state_dict``: trackers, EMACallback, MixedPrecision, GradientAccumulation, ParamScheduler, CSVLogger),
    the Recorder excepted.

    The loop counters (``n_epoch``, ``epoch``, ``train_iter``, ``pct_train``, ``training``...), the Recorder
    and the other callbacks are not part of it: they keep what the run left, as in fastai. Nor are the random
    number generators (fastai does not restore them either).
    """

    def __init__(self, learn: Learner, callbacks: bool = True) -> None:
        self.learn = learn
        model = learn.model
        _check_no_lazy(model)
        self.model_state = copy.deepcopy(model.state_dict())
        self.modes = [m.training for m in model.modules()]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
        self.opt = learn.opt
        self.opt_state = None if learn.opt is None else copy.deepcopy(learn.opt.state_dict())
        self.outside = [
            (t, t.detach().clone(), None if t.grad is None else t.grad.detach().clone())
            for t in _trained_outside(learn)
        ]
        self.cb_states: list[tuple[Callback, dict[str, Any]]] = []
        if callbacks:
            memo = self._shared(learn)
            self.cb_states = [(cb, _copy_dict(vars(cb), memo)) for cb in learn.cbs if _checkpointed(cb)]

    @staticmethod
    def _shared(learn: Learner) -> dict[int, Any]:
        """Objects callbacks may point at that must stay themselves, never be copied."""
        shared = [learn, learn.model, learn.opt, learn.dls, learn.loss_func, *learn.cbs]
        shared += list(learn.model.modules()) + list(learn.model.parameters()) + list(learn.model.buffers())
        return {id(o): o for o in shared if o is not None}

    def restore(self) -> None:
        """Put everything back."""
        learn = self.learn
        model = learn.model
        model.load_state_dict(self.model_state)
        for module, mode in zip(model.modules(), self.modes, strict=False):
            module.training = mode
        for p, grad in zip(model.parameters(), self.grads, strict=False):
            p.grad = grad
        with torch.no_grad():
            for t, data, grad in self.outside:
                t.copy_(data)
                t.grad = grad
        learn.opt = self.opt
        if self.opt is not None and self.opt_state is not None:
            with loading_own_state():  # a hyper-parameter the sweep's fit added (the wd a fit sets) goes
                self.opt.load_state_dict(self.opt_state)
        for cb, state in self.cb_states:
            cb.__dict__.clear()
            cb.__dict__.update(state)


def _trained_outside(learn: Learner) -> list[Tensor]:
    """The tensors a sweep may change that are not the model's: the loss function's parameters and buffers (a
    learnable loss), and any other parameter the learner's optimizer (if it has one yet) holds. The model's own are put
    back with its state dict."""
    model = learn.model
    inside = {id(t) for t in itertools.chain(model.parameters(), model.buffers())}
    loss = learn.loss_func
    found = itertools.chain(
        (loss.parameters() if isinstance(loss, nn.Module) else ()),
        (loss.buffers() if isinstance(loss, nn.Module) else ()),
        (itertools.chain.from_iterable(learn.opt.param_lists) if learn.opt is not None else ()),
    )
    out: list[Tensor] = []
    for t in found:
        if id(t) not in inside:
            inside.add(id(t))
            out.append(t)
    return out


def _check_no_lazy(model: nn.Module) -> None:
    """Refuse a model with parameters or buffers not initialized yet: the sweep would give them their first
    values, and there would be none from before it to put back (torch refuses to load uninitialized ones)."""
    lazy = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if is_lazy(t)]
    if lazy:
        shown = ", ".join(lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
        raise RuntimeError(
            f"lr_find / LRFinder: the model's {shown} are not initialized yet (a lazy module, such as nn.LazyLinear, "
            "gets its shapes from its first batch), so there are no weights from before the sweep to put back "
            "after it. Run one batch through the model first (learn.model(xb)), then call lr_find."
        )


def _copy_dict(attrs: dict[str, Any], memo: dict[int, Any]) -> dict[str, Any]:
    """Deep copies of a callback's attributes; what cannot be copied (files, locks, ...) is kept as is."""
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        try:
            out[name] = copy.deepcopy(value, memo)
        except Exception:  # noqa: BLE001 - any object may refuse to be copied; then keep the object itself
            out[name] = value
    return out


# ------------------------------------------------------------------------------------ lr_find
def lr_find(
    self: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10,
    num_it: int = 100,
    stop_div: bool = True,
    show_plot: bool = True,
    suggest_funcs: Callable[..., Any] | Iterable[Callable[..., Any]] | None = (valley,),
) -> tuple[float, ...] | None:
    """Train ``num_it`` batches with the lr growing from ``start_lr`` to ``end_lr``, put the model and the
    optimizer back as they were, and return ``SuggestedLRs(valley=..., ...)``: one field per function of
    ``suggest_funcs`` (none for ``()``; ``suggest_funcs=None`` returns None, as in fastai). The lr grows
    exponentially; with ``stop_div`` the sweep stops once the smoothed loss exceeds 4 times its best value or is
    not finite. ``show_plot`` draws ``recorder.plot_lr_find()`` with the suggestions marked (needs matplotlib:
    without it, a warning).

    The model's weights, buffers, gradients and modes and the optimizer (state and hypers, or its absence) are
    restored exactly, even when the run raises, and so are a learnable loss function's parameters and the other
    parameters an existing optimizer holds outside the model (fastai's puts back the model's only); so is the state
    of the callbacks whose state travels in checkpoints (trackers, EMACallback, MixedPrecision...: a state loaded
    for the next fit is still there, an average is not fed the sweep). As in fastai, the rest keeps what the sweep
    left: the loop counters (``epoch``, ``train_iter``, ``pct_train``, ``training``...), your other callbacks (what
    they saw during the sweep), and the Recorder, whose ``lrs`` / ``losses`` are the sweep's until the next fit
    (``recorder.hps`` stays the previous fit's, unless a ``ParamScheduler`` among the learner's callbacks ran in the
    sweep: its ``after_fit`` sets them, as in fastai, while its own ``hps`` are put back). The random number
    generators are not restored either: a later fit sees different shuffles and dropout masks than without lr_find.
    When the sweep raises, every callback's ``run`` is set back to True as its ``after_fit`` would have (a callback
    sitting out the sweep runs in the next fit; fastai's stays off).

    The fit runs ``num_it // batches_per_epoch + 1`` epochs, as fastai's: with a ``num_it`` below 6 (which the
    finder counts as 6), it ends before the 6th batch when those epochs hold fewer than 6 batches (``num_it=2``
    with epochs of 1 batch: 3 batches). Suggestions that would get too few points are refused before the sweep.

    fastai differs in what it leaves of the optimizer: it creates one if there was none, and puts back the
    hyper-parameters the fit set (``learn.lr``) rather than those from before; learnloop leaves it exactly as
    it was (SPEC: "the model and optimizer are exactly as before"), and the model's train/eval mode too.
    """
    funcs = _as_funcs(suggest_funcs)
    finder = LRFinder(start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div, restore=False)
    num_it = int(num_it)  # checked by the finder: a numpy integer is taken too
    try:
        n_batches = len(self.dls.train)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("lr_find needs the number of training batches: the training data has no length.") from None
    # Each process of a distributed run reads about 1/world_size of the batches (more with split_batch): enough
    # epochs for num_it batches either way; the finder stops the fit after num_it. As in fastai, the epochs are
    # counted from num_it as given, so with a num_it below 6 and short epochs the fit can end before the 6th batch.
    per_epoch = max(n_batches // world_size(), 1)
    n_epoch = num_it // per_epoch + 1  # the last one cut short by the finder
    sweep = min(max(num_it, MIN_NUM_IT), n_epoch * per_epoch)  # the batches the sweep will run, unless it diverges
    need = max((min_points(f) for f in funcs or ()), default=0)
    usable = _usable_points(num_it, sweep)
    if funcs and usable < need:
        raise ValueError(
            f"lr_find: num_it={num_it} runs {sweep} batches ({per_epoch} an epoch), which leave "
            f"{max(usable, 0)} point{'' if usable == 1 else 's'} for the suggestions once the first num_it//10 and "
            f"the last 5 are dropped, but {_suggestion_names(funcs)} need {need}; use num_it >= "
            f"{max(_min_num_it(need), MIN_NUM_IT)}."
        )
    snapshot = LearnerSnapshot(self)
    try:
        with self.no_logging():
            self.fit(n_epoch, cbs=finder)
    except BaseException:
        self._run_back_on()  # a sweep that raises skips after_fit, which sets every callback's `run` back
        raise
    finally:
        snapshot.restore()
    return _suggest(self, funcs, num_it, sweep, show_plot, finder.diverged)


def _usable_points(num_it: int, sweep: int) -> int:
    """How many of a sweep's points the suggestions see: the first ``num_it//10`` and the last 5 are dropped."""
    return sweep - num_it // 10 - 5


def _min_num_it(points: int) -> int:
    n = 1
    while _usable_points(n, max(n, MIN_NUM_IT)) < points:  # a full sweep
        n += 1
    return n
