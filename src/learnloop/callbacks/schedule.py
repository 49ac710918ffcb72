"""ParamScheduler and the fit policies built on it: one-cycle, flat-then-cosine, SGDR and fine-tuning.

The policies are functions taking the learner first; ``Learner.fit_one_cycle`` & co. call them.

>>> fit_one_cycle(learn, 5, lr_max=slice(1e-4, 1e-2))   # or learn.fit_one_cycle(5, slice(1e-4, 1e-2))
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..callback import Callback
from ..checkpoint import CheckpointError
from ..dispatch import NotACallbackError, as_list
from ..errors import (
    ArgumentError,
    InputError,
    ValueTypeError,
    WrongKindError,
    as_scalar,
    to_epochs,
    to_lr,
    to_number,
    to_wd,
)
from ..optimizer.core import Optimizer
from ..optimizer.foreach import resolve_builtin
from ..optimizer.lookahead import Lookahead
from ..resume import read_position
from ..schedules import SchedCos, Schedule, combine_scheds, combined_cos
from ..warn import warn_caller
from .checkpointing import resolve_resume
from .steps import schedule_pct

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["ParamScheduler", "fit_one_cycle", "fit_flat_cos", "fit_sgdr", "fine_tune"]


class ParamScheduler(Callback):
    """Sets each hyper-parameter of ``scheds`` from ``sched(pct)`` before every training batch.

    ``pct`` is ``learn.pct_train``, less the share of training whose optimizer steps were skipped
    (an fp16 overflow): a skipped step does not advance the schedule.

    A schedule may return one value, or an array with one value per parameter group. The value of the
    last group after each batch is recorded in ``self.hps`` (and in ``learn.recorder.hps`` after fit).

    >>> learn.fit(2, cbs=ParamScheduler({"lr": SchedLin(1e-3, 1e-5), "mom": SchedNo(0.9, 0.9)}))
    """

    order = 60
    run_valid = False

    def __init__(self, scheds: Mapping[str, Schedule]) -> None:
        if not isinstance(scheds, Mapping):  # fastai fails at before_fit: "'SchedCos' object has no attribute ..."
            wrap = ""
            if callable(scheds):
                wrap = " Name the hyper-parameter it schedules: ParamScheduler({'lr': schedule})."
            raise WrongKindError(
                "ParamScheduler takes a dict {hyper-parameter name: schedule}, e.g. {'lr': SchedCos(1e-3, 1e-5)}; "
                f"got {scheds!r}.{wrap}"
            )
        for name, sched in scheds.items():
            if not callable(sched):
                raise TypeError(
                    f"ParamScheduler: the schedule for {name!r} is {sched!r}, not a function of progress; "
                    "use an annealer such as SchedCos(start, end) or a function pct -> value."
                )
        self.scheds: dict[str, Schedule] = dict(scheds)
        self.hps: dict[str, list[Any]] = {name: [] for name in self.scheds}

    def before_fit(self) -> None:
        self.hps = {name: [] for name in self.scheds}
        opt = self.learn.opt
        if opt is None:  # validate() or get_preds() before the first fit: no optimizer, nothing is stepped
            return
        names = _hyper_names(opt)
        for name in self.scheds:
            if name in names:
                continue
            read, known = _names_read(opt), opt.known_hypers()
            # An unknown name close to a known one is warned of by the optimizer itself (a likely typo); one that
            # no stepper reads is set all the same, as fastai sets it (a callback of yours may read it from
            # opt.hypers), but the schedule does nothing for the step.
            typo = name not in known and difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            if read is not None and name not in read and not typo:
                warn_caller(
                    f"ParamScheduler schedules {name!r}, which no stepper of this optimizer reads (its "
                    f"hyper-parameters are {sorted(names)}): the schedule changes nothing in the optimizer step. "
                    "It is set in opt.hypers all the same, as fastai sets it, for a callback of yours that reads it."
                )
            else:  # learnloop's Optimizer takes any name (warning of a likely typo); a torch optimizer refuses it now
                opt.check_hyper_name(name)

    def before_batch(self) -> None:
        self._update_val(schedule_pct(self.learn))

    def _update_val(self, pct: float) -> None:
        """Set each hyper-parameter to its schedule's value at `pct`. fastai's name: a subclass ported from fastai
        (its LRFinder) calls it with a progress of its own, or overrides it."""
        opt = self.learn.opt
        for name, sched in self.scheds.items():
            opt.set_hyper(name, sched(pct))

    def after_batch(self) -> None:
        last = self.learn.opt.hypers[-1]
        for name, values in self.hps.items():
            values.append(last[name])

    def after_fit(self) -> None:
        recorder = getattr(self.learn, "recorder", None)
        if recorder is not None:
            recorder.hps = self.hps

    def state_dict(self) -> dict[str, Any]:
        """The hyper-parameters recorded so far (the schedule's position is the learner's ``pct_train``)."""
        return {"hps": {name: list(values) for name, values in self.hps.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hps = {name: list(values) for name, values in state.get("hps", {}).items()}


def _hyper_names(opt: Any) -> set[str]:
    """The hyper-parameters the optimizer's groups actually hold."""
    return {name for hypers in opt.hypers for name in hypers}


def _reads_mom(opt: Any) -> bool:
    """Whether `opt` holds a `mom` hyper-parameter, or a stepper of its takes `mom` as an argument (one a partial binds,
    `partial(average_grad, mom=0.5)`): fastai's fit_one_cycle schedules it, and its value replaces the partial's."""
    if "mom" in _hyper_names(opt):
        return True
    arguments = getattr(opt, "stepper_arguments", None)
    return callable(arguments) and "mom" in arguments()


def _names_read(opt: Any) -> set[str] | None:
    """The hyper-parameters `opt`'s step reads, when that is known: it is learnloop's own Optimizer (or a Lookahead
    over one) and every stepper is a built-in one, which reads only the arguments it names. A stepper of your own
    may read any name through its ``**kwargs``, and a subclass's ``step`` anything: None."""
    inner = opt.opt if isinstance(opt, Lookahead) else opt
    if type(inner) is Optimizer and all(resolve_builtin(cb) is not None for cb in inner.cbs):
        return inner.stepper_arguments()
    return None


# ------------------------------------------------------------------------------------ fit policies
def _check_fraction(name: str, value: float, owner: str) -> float:
    # fastai accepts the end points: pct_start=0 is pure annealing, 1 pure warm-up. Outside them fastai's
    # combine_scheds fails an assert: an InputError is an AssertionError too. Not a number (a string, None): fastai's
    # arithmetic fails with a TypeError, which the ValueTypeError is too.
    number = to_number(value, name, owner)
    if not 0 <= number <= 1:
        raise InputError(f"{name} is the fraction of training spent warming up, in [0, 1]; got {value!r}.")
    return number


def _check_positive(name: str, value: float, owner: str, infinite_ok: bool = True) -> float:
    # An infinite div or div_final divides the lr to 0: a schedule that starts or ends at 0, as fastai's trains it.
    try:
        number = to_number(value, name, owner)  # a string or None: fastai's arithmetic fails with a TypeError, as here
    except ValueTypeError:
        raise
    except InputError:  # NaN: the message below
        number = math.nan
    if not number > 0 or (math.isinf(number) and not infinite_ok):
        finite = "a finite number" if not infinite_ok else "a number"
        raise ValueError(f"{name} divides the learning rate, so it must be {finite} > 0; got {value!r}.")
    return number


def _group_lrs(learn: Learner, lr: Any, arg: str) -> float | np.ndarray:
    """``lr`` (or ``learn.lr``) as the optimizer spreads it over its groups (creating it if needed), one per group.

    The optimizer's lr is put back: `fit` sets the lr itself once it has checked its own arguments, so a fit that
    refuses them (a wrong `wd`, `cbs` or `resume`) leaves the optimizer as it was."""
    if lr is not None:
        lr = to_lr(lr, arg)  # refused before the optimizer is made or changed
    if learn.opt is None:
        learn.create_opt()  # which may set learn.lr (an opt_func partial's lr)
    opt = learn.opt
    old = [h["lr"] for h in opt.hypers]
    opt.set_hyper("lr", to_lr(learn.lr) if lr is None else lr)  # learn.lr may have been set since it was checked
    lrs = np.array([h["lr"] for h in opt.hypers], dtype=np.float64)
    opt.set_hyper("lr", old)
    # One group: a plain float, whose schedule costs a fraction of an array's before every batch.
    return float(lrs[0]) if len(lrs) == 1 else lrs


def fit_one_cycle(
    self: Learner,
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
    """Train with the 1cycle policy: lr warms up from ``lr_max/div`` to ``lr_max`` over ``pct_start`` of
    training (cosine), then anneals to ``lr_max/div_final``; momentum goes the opposite way through ``moms``.

    ``lr_max`` (default: ``learn.lr``) may be a slice or a list for discriminative learning rates. ``moms``
    (default: ``learn.moms``) is (start, middle, end). An optimizer without a momentum hyper-parameter (torch's
    Adagrad, say), and none of whose steppers takes ``mom``, gets only the lr schedule unless ``moms`` is given.
    ``wd``, ``cbs``, ``reset_opt`` and ``start_epoch`` are passed on to ``Learner.fit``.
    ``resume`` continues from a checkpoint (``Learner.fit``), with the same arguments as the saved run.
    """
    n_epoch = to_epochs(n_epoch, owner="fit_one_cycle")  # each argument checked before the optimizer is changed
    pct_start = _check_fraction("pct_start", pct_start, "fit_one_cycle")
    div = _check_positive("div", div, "fit_one_cycle")
    div_final = _check_positive("div_final", div_final, "fit_one_cycle")
    three_moms = _three_moms(*((self.moms, "learn.moms") if moms is None else (moms, "moms")))
    lrs = _group_lrs(self, lr_max, "lr_max")
    scheds: dict[str, Schedule] = {"lr": combined_cos(pct_start, lrs / div, lrs, lrs / div_final)}
    if moms is not None or _reads_mom(self.opt):
        scheds["mom"] = combined_cos(pct_start, *three_moms)
    self.fit(
        n_epoch,
        cbs=[ParamScheduler(scheds), *as_list(cbs)],
        reset_opt=reset_opt,
        wd=wd,
        start_epoch=start_epoch,
        resume=resume,
    )


def _three_moms(moms: Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(moms, str) or not isinstance(moms, Iterable):  # fastai: "... must be an iterable, not float"
        raise ArgumentError(
            f"fit_one_cycle: {name} must be a sequence of 3 momentums (start, middle, end), e.g. (0.95, 0.85, 0.95); "
            f"got {moms!r}."
        )
    values = tuple(moms)
    if len(values) != 3:  # fastai: a TypeError (combined_cos missing an argument, or given too many)
        raise ValueTypeError(f"fit_one_cycle: {name} is (start, middle, end) of the momentum cycle, got {moms!r}.")
    return values[0], values[1], values[2]


def fit_flat_cos(
    self: Learner,
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
    """Train at a flat ``lr`` (default: ``learn.lr``) for ``pct_start`` of training, then anneal it to
    ``lr/div_final`` (cosine). ``wd``, ``cbs``, ``reset_opt``, ``start_epoch`` and ``resume`` are passed on to
    ``Learner.fit``."""
    n_epoch = to_epochs(n_epoch, owner="fit_flat_cos")
    pct_start = _check_fraction("pct_start", pct_start, "fit_flat_cos")
    div_final = _check_positive("div_final", div_final, "fit_flat_cos")
    lrs = _group_lrs(self, lr, "lr")
    scheds: dict[str, Schedule] = {"lr": combined_cos(pct_start, lrs, lrs, lrs / div_final)}
    self.fit(
        n_epoch,
        cbs=[ParamScheduler(scheds), *as_list(cbs)],
        reset_opt=reset_opt,
        wd=wd,
        start_epoch=start_epoch,
        resume=resume,
    )


def sgdr_epochs(n_cycles: int, cycle_len: int, cycle_mult: int = 2) -> int:
    """Epochs of ``n_cycles`` SGDR cycles, the first ``cycle_len`` long, each ``cycle_mult`` times the last."""
    if cycle_mult == 1:  # the limit of the geometric sum (fastai divides by zero here)
        return cycle_len * n_cycles
    return cycle_len * (cycle_mult**n_cycles - 1) // (cycle_mult - 1)


def fit_sgdr(
    self: Learner,
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
    """Train with warm restarts (SGDR): ``n_cycles`` cosine annealings from ``lr_max`` (default: ``learn.lr``) to 0,
    the first one ``cycle_len`` epochs long, each next one ``cycle_mult`` times longer. ``cbs``, ``reset_opt``,
    ``wd``, ``start_epoch`` and ``resume`` are passed on to ``Learner.fit``."""
    for name, value, low in (("n_cycles", n_cycles, 1), ("cycle_len", cycle_len, 1), ("cycle_mult", cycle_mult, 1)):
        # numpy integers too, as fastai's arithmetic takes them. fastai's combine_scheds asserts on the fractions a
        # fractional or zero cycle_len or cycle_mult makes, and its arithmetic fails on a string or a fractional
        # n_cycles with a TypeError: an InputError is an AssertionError, a ValueTypeError one and a TypeError too.
        number = as_scalar(value)  # a 0-dim integer array or tensor too, which fastai's range() takes
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
            raise ValueTypeError(f"fit_sgdr: {name} must be a whole number >= {low}, got {value!r}.")
        if number < low:
            raise InputError(f"fit_sgdr: {name} must be a whole number >= {low}, got {value!r}.")
    n_cycles, cycle_len, cycle_mult = int(n_cycles), int(cycle_len), int(cycle_mult)
    lrs = _group_lrs(self, lr_max, "lr_max")
    n_epoch = sgdr_epochs(n_cycles, cycle_len, cycle_mult)
    pcts = [cycle_len * cycle_mult**i / n_epoch for i in range(n_cycles)]
    scheds: dict[str, Schedule] = {"lr": combine_scheds(pcts, [SchedCos(lrs, 0.0) for _ in range(n_cycles)])}
    self.fit(
        n_epoch,
        cbs=[ParamScheduler(scheds), *as_list(cbs)],
        reset_opt=reset_opt,
        wd=wd,
        start_epoch=start_epoch,
        resume=resume,
    )


def fine_tune(
    self: Learner,
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
    """Transfer learning: ``freeze_epochs`` of one-cycle on the last parameter group only, then ``epochs``
    of one-cycle on the whole model with learning rates from ``base_lr/2/lr_mult`` to ``base_lr/2``.

    ``kwargs`` go to both ``fit_one_cycle`` calls (``wd``, ``moms``, ``cbs``, ``div_final``, ...); what follows
    ``div`` is keyword-only, as in fastai. ``resume`` continues from a checkpoint taken during either fit (the
    frozen one is skipped when the checkpoint is from the second).
    """
    if isinstance(base_lr, (slice, list, tuple)):
        raise ArgumentError(
            f"fine_tune: base_lr is one number, got {base_lr!r}; fine_tune spreads it over the parameter groups "
            f"itself (from base_lr/lr_mult to base_lr). For your own lrs per group, use fit_one_cycle."
        )
    base_lr = to_lr(base_lr, "base_lr", "fine_tune")
    # Both fits' lengths checked before the first one trains: a wrong `epochs` must not leave a trained, frozen model.
    epochs = to_epochs(epochs, "epochs", "fine_tune")
    freeze_epochs = to_epochs(freeze_epochs, "freeze_epochs", "fine_tune")
    _three_moms(*((kwargs["moms"], "moms") if kwargs.get("moms") is not None else (self.moms, "learn.moms")))
    if "cbs" in kwargs:  # read once, for the checks and both fits: a generator would be spent by the first reading
        kwargs["cbs"] = as_list(kwargs["cbs"])
    _check_fit_kwargs(kwargs)  # and what fit_one_cycle and fit would refuse only once the model is frozen
    lr_mult = _check_positive("lr_mult", lr_mult, "fine_tune", infinite_ok=False)  # fastai's slice(0, lr): lr/10
    pct_start = _check_fraction("pct_start", pct_start, "fine_tune")
    div = _check_positive("div", div, "fine_tune")
    file = resolve_resume(self, resume, as_list(kwargs.get("cbs"))) if resume is not None else None
    stage = read_position(file).stage if file is not None else None
    if file is not None and stage not in (FROZEN, UNFROZEN):
        raise CheckpointError(
            f"{file} was not taken during fine_tune (it is from a plain fit): resume it with the fit method that "
            "wrote it."
        )
    self.freeze()
    if stage != UNFROZEN:
        with _fit_stage(self, FROZEN):
            fit_one_cycle(self, freeze_epochs, slice(base_lr), pct_start=0.99, resume=file, **kwargs)
    base_lr /= 2
    self.unfreeze()
    with _fit_stage(self, UNFROZEN):
        fit_one_cycle(
            self,
            epochs,
            slice(base_lr / lr_mult, base_lr),
            pct_start=pct_start,
            div=div,
            resume=file if stage == UNFROZEN else None,
            **kwargs,
        )


_FINE_TUNE_KWARGS = ("div_final", "wd", "moms", "cbs", "reset_opt", "start_epoch")


def _check_fit_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse, before fine_tune freezes the model, what its fits would refuse: an argument fit_one_cycle does not
    take, a `wd`, `div_final` or `start_epoch` that is not one, a `cbs` item that is not a callback."""
    unknown = [k for k in kwargs if k not in _FINE_TUNE_KWARGS]
    if unknown:  # fastai: fit_one_cycle's TypeError, once the model is frozen
        raise ArgumentError(
            f"fine_tune got unexpected argument(s) {', '.join(map(repr, unknown))}: it passes on to fit_one_cycle "
            f"only {', '.join(_FINE_TUNE_KWARGS)}."
        )
    to_wd(kwargs.get("wd"), "wd", "fine_tune")
    to_number(kwargs.get("start_epoch", 0), "start_epoch", "fine_tune")
    if "div_final" in kwargs:
        _check_positive("div_final", kwargs["div_final"], "fine_tune")
    for cb in as_list(kwargs.get("cbs")):
        if not (isinstance(cb, Callback) or (isinstance(cb, type) and issubclass(cb, Callback))):
            raise NotACallbackError(
                f"fine_tune: {cb!r} is not a Callback: pass an instance or subclass of learnloop.Callback (its event "
                "methods are named before_fit, after_batch, ...)."
            )


# The two fits of fine_tune, as recorded in their checkpoints.
FROZEN, UNFROZEN = "fine_tune:frozen", "fine_tune:unfrozen"


@contextmanager
def _fit_stage(learn: Learner, stage: str) -> Iterator[None]:
    old, learn._fit_stage = learn._fit_stage, stage
    try:
        yield
    finally:
        learn._fit_stage = old
