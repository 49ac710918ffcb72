"""Mixed precision training: torch.autocast around forward and loss, and a GradScaler for float16.

Per batch (``MixedPrecision`` has order 10)::

    before_batch     enter autocast(device of the model, float16 | bfloat16)
    after_pred       learn.pred's float16/bfloat16 tensors back to float32 (float64 ones are left alone)
    after_loss       exit autocast (also at after_batch / after_cancel_batch / after_fit if still active)
    before_backward  fp16: learn.loss_grad = scaler.scale(learn.loss_grad)   (learn.loss stays unscaled)
    before_step      fp16: scaler.unscale_ the gradients (once), scaler.step(<recording stand-in>);
                     an inf/nan gradient -> the stand-in's step() never runs -> CancelStepException,
                     so opt.step() never runs: optimizer state and step counters stay put;
                     otherwise the step's loss scale is appended to ``scales`` (1.0 without loss scaling);
                     when no gradient was scaled since the last step (each backward cancelled), the step runs as is
    after_step       fp16: scaler.update(), only after a step attempt (never on accumulation micro-batches)

A skipped step is reported through :mod:`learnloop.callbacks.steps` so schedules do not advance on it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, cast

import torch

from ..callback import Callback
from ..errors import InputError, to_number, to_whole
from ..events import CancelStepException
from ..nested import map_tensors
from .steps import end_skipped_steps, record_skipped_step, reset_skipped_steps

__all__ = ["AMPMode", "MixedPrecision", "exit_autocasts", "to_float32"]


class AMPMode(StrEnum):
    """The half-precision types MixedPrecision trains in."""

    FP16 = "fp16"
    BF16 = "bf16"


_DTYPES = {AMPMode.FP16: torch.float16, AMPMode.BF16: torch.bfloat16}


def to_float32(x: Any) -> Any:
    """`x` with every float16/bfloat16 tensor in it (nested in tuples, lists, dicts) cast to float32."""
    return map_tensors(lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, x)


def exit_autocasts(cbs: Iterable[Callback]) -> None:
    """Leave the autocast that any MixedPrecision of `cbs` is still in (its fit ended by an exception), last entered
    first. For callbacks about to be removed: no later ``before_fit`` of theirs would leave it."""
    for cb in reversed(list(cbs)):
        if isinstance(cb, MixedPrecision):
            cb.exit_autocast()


# The MixedPrecision callbacks in autocast on this thread (autocast's state is per thread), in the order they entered
# it. Each context restores, when left, the state found when it was entered, so they must be left last entered first:
# two MixedPrecision callbacks of one learner enter theirs at before_batch and leave at after_loss in the same order.
_ENTERED = threading.local()


def _entered() -> list[MixedPrecision]:
    stack: list[MixedPrecision] | None = getattr(_ENTERED, "stack", None)
    if stack is None:
        stack = _ENTERED.stack = []
    return stack


class _ScalerTarget:
    """What MixedPrecision hands to ``GradScaler.step`` as the optimizer.

    GradScaler unscales the gradients of ``param_groups`` (the real optimizer's) and calls ``step()``
    only when they are all finite; this ``step()`` just records that, and the loop then runs the
    real ``opt.step()``. So any learnloop optimizer works, whatever its ``step`` does.
    """

    def __init__(self, cb: MixedPrecision) -> None:
        self.cb = cb
        self.stepped = False

    @property
    def param_groups(self) -> Any:
        return self.cb.learn.opt.param_groups

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.stepped = True


def _check_scaler_args(
    init_scale: Any, growth_factor: Any, backoff_factor: Any, growth_interval: Any
) -> tuple[int | float, int | float, int | float, int]:
    owner = "MixedPrecision"
    init_scale = to_number(init_scale, "init_scale", owner)
    growth_factor = to_number(growth_factor, "growth_factor", owner)
    backoff_factor = to_number(backoff_factor, "backoff_factor", owner)
    if not 0 < init_scale < math.inf:
        raise InputError(
            f"MixedPrecision: init_scale is the first loss scale and must be a finite number > 0, got {init_scale!r}."
        )
    if not growth_factor > 1:
        raise InputError(
            f"MixedPrecision: growth_factor multiplies the loss scale after growth_interval good steps and must be "
            f"> 1, got {growth_factor!r}."
        )
    if not 0 < backoff_factor < 1:
        raise InputError(
            f"MixedPrecision: backoff_factor shrinks the loss scale after an overflow and must be in (0, 1), "
            f"got {backoff_factor!r}."
        )
    interval = to_whole(growth_interval, "growth_interval", owner, "a number of steps")
    return init_scale, growth_factor, backoff_factor, interval


class _BatchState:
    """MixedPrecision's per-batch bookkeeping, and where the loss scale stands, on the host.

    An object of its own, with slots, because assigning an attribute of a callback goes through
    ``Callback.__setattr__``'s check for shadowed learner attributes, which costs about a microsecond, and
    these change several times a batch.

    ``scale`` lets ``scales`` record each step's loss scale without a device sync: a GradScaler changes its
    scale only in ``update()``, after an overflow (backoff) or after ``growth_interval`` good steps in a row
    (growth). ``good_steps`` counts these as the scaler does; when the scale may have changed it is
    forgotten, and the next step reads it from the scaler again.
    """

    __slots__ = ("autocast_active", "good_steps", "n_accumulated", "overflow", "scale", "unscaled")

    def __init__(self) -> None:
        self.autocast_active = False  # this callback entered its autocast context
        self.unscaled = False  # this step's gradients went through scaler.unscale_
        self.n_accumulated = 0  # training batches whose scaled gradients await the next step attempt
        self.scale: float | None = None  # the scaler's loss scale; None: read it at the next step
        self.good_steps = 0  # the scaler's growth tracker
        self.overflow: bool | None = None  # what this step's attempt found (None: no attempt seen)

    def follow(self, good_steps: int) -> None:
        """Track a scaler that is new or was just loaded, whose growth tracker is at `good_steps`."""
        self.scale, self.good_steps, self.overflow = None, good_steps, None

    def updated(self, scaler: torch.amp.GradScaler) -> None:
        """Follow ``scaler.update()``, which has just run."""
        overflow, self.overflow = self.overflow, None
        if overflow is None:  # unscaled, but cut short before MixedPrecision's step: ask the scaler (a sync, rare)
            self.follow(int(scaler.state_dict()["_growth_tracker"]))
        elif overflow:
            self.follow(0)
        else:
            self.good_steps += 1
            if self.good_steps >= scaler.get_growth_interval():
                self.follow(0)


class MixedPrecision(Callback):
    """Mixed precision training with ``torch.autocast`` and, for ``amp_mode='fp16'``, a ``GradScaler``.

    bf16 has float32's range, so it needs no loss scaling. Each fit starts a new GradScaler
    (``learn.scaler`` during fit) at ``init_scale``, as fastai does, unless a ``state_dict()`` was
    loaded since the last fit that trained: then it resumes from that. ``validate()``, ``get_preds()`` and
    ``learn.summary()`` fire ``before_fit`` too, but train nothing: they leave such a state for the next fit
    that trains (it is used at that fit's first ``before_train``), and ``scaler`` and ``state_dict()`` to the
    last fit that trained. Without loss scaling (bf16, ``enabled=False``)
    ``learn.scaler`` is a disabled GradScaler, as in fastai: its ``get_scale()`` is 1.0 and ``scale(loss)``
    the loss. ``GradScaler.step`` reads whether the gradients are finite, so an fp16 step waits on the
    device (as in torch's recipe).

    During a fit, as in fastai, ``scales`` lists the loss scale of every optimizer step that ran (1.0
    without loss scaling) and ``autocast`` is the ``torch.autocast`` context; both are None after it.
    ``kwargs`` holds the GradScaler's keyword arguments.

    An exception other than a cancel one, raised by the model or the loss, leaves ``fit`` without any
    event; ``fit`` then leaves the autocast itself (fastai's stays in it). One entered by events fired by hand
    (``learn('before_batch')``) is left by ``exit_autocast()``, the next ``before_fit`` of this callback, and
    ``learn.to_fp32()`` and ``to_fp16()`` / ``to_bf16()``, which remove it. A ``validate()`` or ``get_preds()``
    called inside a fit (``learn._nested_run``)
    leaves the fit's autocast, scaler and ``scales`` alone, however it ends.

    >>> learn.fit(1, cbs=MixedPrecision("bf16"))   # or learn.to_bf16(); learn.to_fp16() for float16
    """

    order = 10

    def __init__(
        self,
        amp_mode: str | AMPMode = AMPMode.FP16,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        try:
            mode = AMPMode(amp_mode)
        except ValueError:
            raise ValueError(
                f"MixedPrecision: unknown amp_mode {amp_mode!r}; use 'fp16' (float16 with loss scaling) or "
                "'bf16' (bfloat16, no loss scaling)."
            ) from None
        checked = _check_scaler_args(init_scale, growth_factor, backoff_factor, growth_interval)
        self.amp_mode = mode
        self.dtype = _DTYPES[mode]
        self.init_scale, self.growth_factor, self.backoff_factor, self.growth_interval = checked
        self.enabled = enabled
        self.skipped = False
        self.autocast: torch.autocast | None = None  # this fit's autocast context (fastai's attribute)
        self.scales: list[float] | None = None  # the loss scale of each step of this fit (fastai's attribute)
        self._scaler: torch.amp.GradScaler | None = None  # the scaler of the last fit that trained (or this one)
        self._fit_scaler: torch.amp.GradScaler | None = None  # made at before_fit; the fit's once it trains
        self._scaler_state: dict[str, Any] | None = None  # loaded, for the next fit that trains
        self._target = _ScalerTarget(self)
        self._state = _BatchState()

    @property
    def use_scaler(self) -> bool:
        """Whether gradients are scaled: fp16 and enabled."""
        return self.enabled and self.amp_mode is AMPMode.FP16

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler of the running fit, else of the last fit that trained (fp16 only; ``learn.scaler`` is a
        disabled one without scaling)."""
        return self._current_scaler()

    def _current_scaler(self) -> torch.amp.GradScaler | None:
        # In a fit (`_in_fit`, which validate() outside one is not), the scaler its before_fit made, trained or not.
        learn = self.learn
        if self._fit_scaler is not None and learn is not None and learn._in_fit:
            return self._fit_scaler
        return self._scaler

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The keyword arguments each fit's GradScaler is made with, read-only: ``enabled`` is ``use_scaler``."""
        return MappingProxyType(
            {
                "init_scale": self.init_scale,
                "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval,
                "enabled": self.use_scaler,
            }
        )

    # ------------------------------------------------------------------ autocast
    def _device_type(self) -> str:
        param = next(self.learn.model.parameters(), None)
        if param is not None:
            return param.device.type
        device = getattr(self.learn.dls, "device", None)
        return torch.device(device).type if device is not None else "cpu"

    def exit_autocast(self) -> None:
        """Leave autocast if this callback entered it, and first the autocasts entered after it on this thread (another
        MixedPrecision's), which would otherwise put the autocast back on when left."""
        if not self._state.autocast_active:
            return
        stack = _entered()
        if any(cb is self for cb in stack):
            while stack:
                last = stack.pop()
                last._leave_autocast()
                if last is self:
                    break
        else:  # entered on another thread
            self._leave_autocast()

    def _leave_autocast(self) -> None:
        state = self._state
        if state.autocast_active and self.autocast is not None:
            state.autocast_active = False
            self.autocast.__exit__(None, None, None)

    def before_fit(self) -> None:
        self.exit_autocast()
        if self.learn._nested_run:  # validate() or get_preds() inside a fit: the fit's autocast and scaler carry on
            return
        self._unscale_left_grads()  # those of a fit that raised (no after_fit), before the new scaler replaces its own
        device_type = self._device_type()
        if self.amp_mode is AMPMode.BF16 and device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("MixedPrecision: this GPU does not support bfloat16; use amp_mode='fp16'.")
        self.autocast = torch.autocast(device_type, dtype=self.dtype, enabled=self.enabled)
        # A fresh scaler each fit, as fastai: a scale collapsed by lr_find's divergence must not carry over.
        # Without loss scaling it is a disabled one, so that callbacks may call learn.scaler's methods as in fastai.
        scaler = torch.amp.GradScaler(device_type, **self.kwargs)
        state = self._state
        state.follow(0)
        self._fit_scaler = scaler if self.use_scaler else None
        if self._fit_scaler is not None and self._scaler_state is not None:  # loaded since the last fit that trained
            # Kept until before_train: this may be validate()'s before_fit, which must leave it to the next fit.
            scaler.load_state_dict(self._scaler_state)
            state.follow(int(self._scaler_state.get("_growth_tracker", 0)))
        self.learn.scaler = scaler
        self.scales = []
        state.unscaled, state.n_accumulated = False, 0
        reset_skipped_steps(self.learn)

    def before_train(self) -> None:
        if self.use_scaler:
            self._check_float32_params()
        # The fit trains: its scaler is the one from now on, and a loaded state it started from is used up.
        fit_scaler = self._fit_scaler
        if fit_scaler is not None and self._scaler is not fit_scaler:
            self._scaler, self._scaler_state = fit_scaler, None
            # Gradients already there (an accumulation a previous fit left unfinished, in true units since its
            # after_fit) join this fit's first step, as in float32: in this scaler's units, as the step unscales them.
            self._rescale_grads(fit_scaler, unscale=False)

    def _check_float32_params(self) -> None:
        """Refuse to train float16 parameters (a model.half()): the GradScaler cannot unscale their float16
        gradients (torch's 'Attempting to unscale FP16 gradients', at the first step)."""
        half = [name for name, p in self.learn.model.named_parameters() if p.requires_grad and p.dtype == torch.float16]
        if half:
            more = f" and {len(half) - 1} more" if len(half) > 1 else ""
            raise InputError(
                f"MixedPrecision('fp16') (to_fp16) trains float32 parameters, but the model's are float16 ({half[0]}"
                f"{more}; model.half(), say): its loss scaling needs float32 weights and gradients, while autocast "
                "runs the forward in float16. Call learn.model.float() first, or train in float16 throughout without "
                "MixedPrecision (learn.to_fp32(), and float16 inputs)."
            )

    def before_batch(self) -> None:
        self.learn.opt_step_skipped = False
        state = self._state
        if not state.autocast_active and self.autocast is not None:
            self.autocast.__enter__()
            state.autocast_active = True
            _entered().append(self)

    def after_pred(self) -> None:
        self.learn.pred = to_float32(self.learn.pred)

    def after_loss(self) -> None:
        self.exit_autocast()

    # ------------------------------------------------------------- loss scaling
    def before_backward(self) -> None:
        if self.use_scaler and self._scaler is not None:
            self._state.n_accumulated += 1
            # A new tensor: learn.loss (the logged, detached loss) is never scaled.
            self.learn.loss_grad = self._scaler.scale(self.learn.loss_grad)

    def unscale_grads(self) -> None:
        """Divide this step's gradients by the loss scale, once per step (GradientClip calls it before clipping).

        Nothing to do when no backward since the last step was scaled (each one was cancelled): the gradients
        are then as the last step left them, never multiplied by the scale."""
        state = self._state
        if self.use_scaler and self._scaler is not None and not state.unscaled and state.n_accumulated:
            self._scaler.unscale_(cast(torch.optim.Optimizer, self._target))
            state.unscaled = True

    def _unscale_left_grads(self) -> None:
        """Scaled gradients no step used (an unfinished accumulation, a cancelled batch) stay on the parameters after
        the fit, as in float32: in true units, not multiplied by the fit's loss scale for good."""
        state = self._state
        if self.use_scaler and self._scaler is not None and state.n_accumulated and not state.unscaled:
            self._rescale_grads(self._scaler, unscale=True)
        state.unscaled, state.n_accumulated = False, 0

    def _rescale_grads(self, scaler: torch.amp.GradScaler, unscale: bool) -> None:
        """Divide (``unscale``) or multiply the optimizer's gradients by the loss scale (a device sync or two).

        Unscaled gradients that overflowed are zeroed: the step they awaited would have been skipped, and its
        gradients thrown away."""
        opt = self.learn.opt
        grads = [] if opt is None else [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        scale = scaler.get_scale()
        with torch.no_grad():
            for g in grads:
                g.div_(scale) if unscale else g.mul_(scale)
            if unscale and not all(bool(torch.isfinite(g).all()) for g in grads):
                for g in grads:
                    g.zero_()

    def _has_grads(self) -> bool:
        return any(p.grad is not None for group in self._target.param_groups for p in group["params"])

    def before_step(self) -> None:
        scales, scaler = self.scales, self._scaler
        if not self.use_scaler or scaler is None:
            if scales is not None:
                scales.append(1.0)
            return
        target, state = self._target, self._state
        self.unscale_grads()
        if state.unscaled:
            target.stepped = False
            try:
                # Unscaled already, so this only checks the gradients for inf/nan and calls step() when there is none.
                scaler.step(cast(torch.optim.Optimizer, target))
            except AssertionError:
                # GradScaler found no gradient to check: the backward that was scaled was cancelled, and the
                # optimizer drops its gradients (set_to_none). Nothing overflowed: the step runs, as in float32 (a
                # no-op without gradients); the scaler forgets this step's unscale_ and keeps its scale and tracker.
                if self._has_grads():
                    raise
                scaler.update(new_scale=scaler.get_scale())
                state.unscaled, state.n_accumulated, target.stepped = False, 0, True  # nothing left to unscale
        else:  # no scaled backward since the last step: nothing to unscale or check, the step runs as in float32
            target.stepped = True
        self.skipped = state.overflow = not target.stepped
        if self.skipped:
            record_skipped_step(self.learn, state.n_accumulated)
            raise CancelStepException
        if state.scale is None:  # the fit's first step, or the scale may have changed since the last one
            state.scale = scaler.get_scale()
        if scales is not None:
            scales.append(state.scale)

    def _update_scaler(self) -> None:
        state = self._state
        if state.unscaled and self._scaler is not None:
            self._scaler.update()
            state.updated(self._scaler)
        state.unscaled, state.n_accumulated = False, 0

    def after_step(self) -> None:
        self._update_scaler()

    def after_cancel_batch(self) -> None:
        self.exit_autocast()
        if self._state.unscaled:  # the batch was cancelled inside the step phase, after unscale_
            self._update_scaler()

    def after_batch(self) -> None:
        self.exit_autocast()
        if self._state.unscaled:
            self._update_scaler()

    def after_cancel_fit(self) -> None:
        self.exit_autocast()

    def after_fit(self) -> None:
        self.exit_autocast()
        if self.learn._nested_run:  # the end of a validate() inside a fit, which goes on
            return
        self._unscale_left_grads()
        self.autocast, self.scales = None, None  # as fastai's: only a fit has them
        self.learn.scaler, self._fit_scaler = None, None
        end_skipped_steps(self.learn)  # the counts stay readable; the schedule offset must not leak into another fit

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The GradScaler's state (loss scale and growth tracker) of the running fit or the last that trained, or a
        loaded one not used yet, and how many batches' scaled gradients await the next step (a checkpoint in the
        middle of gradient accumulation)."""
        if self._scaler_state is not None:  # a running fit that has not trained yet holds the same in its scaler
            return {"scaler": dict(self._scaler_state), "n_accumulated": self._state.n_accumulated}
        scaler = self._current_scaler()
        saved = scaler.state_dict() if scaler is not None else None
        return {"scaler": saved, "n_accumulated": self._state.n_accumulated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scaler_state = state.get("scaler")
        if scaler_state is None:
            return
        fit_scaler = self._fit_scaler
        if fit_scaler is not None and self.learn is not None and self.learn._in_fit:
            # In a fit resuming from a checkpoint: this fit's scaler carries on from it; the next fit starts afresh.
            fit_scaler.load_state_dict(scaler_state)
            self._scaler, self._scaler_state = fit_scaler, None
            self._state.follow(int(scaler_state.get("_growth_tracker", 0)))
            self._state.n_accumulated = int(state.get("n_accumulated", 0))
            return
        self._scaler_state = dict(scaler_state)  # for the next fit that trains
        if self._scaler is not None:
            self._scaler.load_state_dict(scaler_state)
