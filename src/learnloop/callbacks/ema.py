"""Weight EMA: an exponential moving average of the model's weights, used for validation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..callback import Callback
from ..errors import ArgumentError, InputError, to_number
from ..warn import warn_caller

__all__ = ["EMACallback"]


class EMACallback(Callback):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every real optimizer step; validates with it.

    A step cancelled in its step phase (an fp16 overflow skipped by MixedPrecision, any
    CancelStepException) fires ``after_cancel_step`` and does not update the average; gradient
    accumulation micro-batches never reach the step phase. The averaged weights are copied into the
    model at ``before_validate`` and the training weights back at ``after_validate`` (which also fires
    when validation is cancelled; ``after_fit`` and the next ``before_fit``/``before_train`` restore
    them too). So while this callback is on the learner, ``validate()`` and ``get_preds()`` use the
    average; after fit the model holds the training weights, unless ``replace_weights=True`` (at the end of the fit:
    a ``validate()`` run inside the fit gives the fit its training weights back).
    An exception other than a cancel one, raised during validation, leaves ``fit`` with the averaged
    weights in the model: ``restore_training_weights()`` puts the training ones back.

    Only one EMACallback of a learner can validate its average: two with ``validate_ema=True`` are a ValueError at
    ``before_fit``.

    With ``ema_buffers`` floating-point buffers (BatchNorm running statistics) are averaged too and
    swapped with the weights; integer buffers (BatchNorm's batch counter) are left alone. The average
    starts from the weights at a ``before_fit`` and, once a step has updated it, carries over between fits, following
    the model to another device or dtype (``reset()`` starts again); until then each ``before_fit`` outside a fit (a
    ``validate()``'s or ``get_preds()``'s too) takes the weights again, so weights loaded after a ``validate()`` are
    the ones validated and averaged from; given another model (the callback added to a new learner,
    or ``learn.model`` replaced), it starts again from that model's weights. It travels in ``state_dict()``.

    >>> learn.fit(5, cbs=EMACallback(decay=0.999))
    """

    def __init__(
        self,
        decay: float = 0.999,
        ema_buffers: bool = True,
        validate_ema: bool = True,
        replace_weights: bool = False,
    ) -> None:
        # Numbers as the other callbacks take them (to_number): numpy scalars and 0-dim arrays and tensors too.
        try:
            number = float(to_number(decay, "decay", "EMACallback"))
        except (ArgumentError, InputError):  # a bool, a string, NaN: the message below
            number = math.nan
        if not 0 < number < 1:
            raise ValueError(
                f"EMACallback: decay must be a number in (0, 1) (the weight of the old average at each step, "
                f"e.g. 0.999), got {decay!r}."
            )
        self.decay = number
        self.ema_buffers, self.validate_ema, self.replace_weights = ema_buffers, validate_ema, replace_weights
        self.n_updates = 0
        self._ema: list[Tensor] | None = None  # averaged params, then averaged floating buffers
        self._pending: dict[str, Any] | None = None  # loaded before the model was seen
        self._backup: list[Tensor] | None = None  # training weights while the average is swapped in
        self._model_tensors: list[Tensor] = []  # the model tensors averaged, gathered once per fit
        self._step_cancelled = False
        self._unstepped = False  # the average is a copy of the weights taken at a before_fit, never updated since

    # ------------------------------------------------------------------ tensors
    def _params(self) -> list[Tensor]:
        return list(self.learn.model.parameters())

    def _float_buffers(self) -> list[Tensor]:
        return [b for b in self.learn.model.buffers() if b.is_floating_point()] if self.ema_buffers else []

    def _tracked(self) -> list[Tensor]:
        """The model tensors averaged, in the order of the average: parameters, then floating buffers."""
        return self._params() + self._float_buffers()

    @property
    def averaged(self) -> list[Tensor]:
        """The averaged parameters then floating buffers (empty before the first ``before_fit``)."""
        return list(self._ema) if self._ema is not None else []

    def reset(self) -> None:
        """Start the average again from the model's current weights (at the next ``before_fit``)."""
        self._ema, self._pending, self.n_updates = None, None, 0

    def _ensure_average(self) -> None:
        previous, tracked = self._model_tensors, self._tracked()
        self._model_tensors = tracked
        if self._pending is not None:
            saved = list(self._pending["ema"])
            _check_shapes(saved, tracked, "the loaded state")
            with torch.no_grad():
                self._ema = [
                    s.detach().to(device=t.device, dtype=t.dtype, copy=True)
                    for s, t in zip(saved, tracked, strict=True)
                ]
            self.n_updates = int(self._pending.get("n_updates", 0))
            self._pending, self._unstepped = None, False
            return
        # An average no step has updated is only the weights of an earlier validate() or get_preds(): taken again, so
        # that weights loaded since (learn.load) are the ones validated and averaged from. Not in a validate() inside a
        # fit, whose average is the fit's (and its buffers' statistics, which move without a step, stay as they were).
        if self._ema is not None and not (self._unstepped and not self.learn._nested_run):
            try:
                _check_shapes(self._ema, tracked, "the average")
            except ValueError as e:
                warn_caller(f"{e} Starting the average again from the current weights.")
            else:
                # Of the same shapes, it may still be another model's average (the callback given to a new learner, or
                # learn.model replaced), which means nothing for this one: that one's starts from its own weights.
                if _same_parameters(previous, self._params()):
                    # The model may have moved to another device or dtype since the last fit: the average follows it.
                    self._ema = [e.to(device=t.device, dtype=t.dtype) for e, t in zip(self._ema, tracked, strict=True)]
                    return
        with torch.no_grad():
            self._ema = [t.detach().clone() for t in tracked]
        self.n_updates, self._unstepped = 0, True

    # ------------------------------------------------------------------- events
    def before_fit(self) -> None:
        self.restore_training_weights()
        if self.validate_ema:
            _check_one_validated(self.learn.cbs)
        self._ensure_average()
        self._step_cancelled = False

    def before_train(self) -> None:
        self.restore_training_weights()

    def after_cancel_step(self) -> None:
        self._step_cancelled = True

    def after_step(self) -> None:
        cancelled, self._step_cancelled = self._step_cancelled, False
        if not cancelled and self._ema is not None:
            self._update()

    def _update(self) -> None:
        assert self._ema is not None
        if self._ema:  # torch's _foreach ops refuse empty lists (a model without parameters)
            with torch.no_grad():
                torch._foreach_lerp_(self._ema, self._model_tensors, 1.0 - self.decay)
        self.n_updates += 1
        self._unstepped = False

    def before_validate(self) -> None:
        if self.validate_ema:
            self._swap_in()

    def after_cancel_validate(self) -> None:
        self.restore_training_weights()

    def after_validate(self) -> None:
        self.restore_training_weights()

    def after_cancel_fit(self) -> None:
        self.restore_training_weights()

    def after_fit(self) -> None:
        self.restore_training_weights()
        if self.learn._nested_run:  # the end of a validate() inside a fit, which goes on with its training weights
            return
        self._backup = None
        # Only at the end of a fit: a validate(), get_preds(), predict() or summary() (`_in_fit` False) must leave the
        # model's weights as they are, which may be others than the average by now (learn.load, say).
        if self.replace_weights and self._ema and self.learn._in_fit:
            with torch.no_grad():
                torch._foreach_copy_(self._model_tensors, self._ema)

    # ----------------------------------------------------------------- swapping
    def _swap_in(self) -> None:
        if self._backup is not None or not self._ema:  # nothing to swap in a model without parameters or buffers
            return
        tracked = self._model_tensors
        with torch.no_grad():
            backup = [torch.empty_like(t) for t in tracked]
            torch._foreach_copy_(backup, tracked)
            torch._foreach_copy_(tracked, self._ema)
        self._backup = backup

    def restore_training_weights(self) -> None:
        """Put the training weights back if the average is swapped into the model (a no-op otherwise)."""
        if self._backup is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self._model_tensors, self._backup)
        self._backup = None

    @property
    def swapped(self) -> bool:
        """Whether the model currently holds the averaged weights."""
        return self._backup is not None

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The average (tensors shared, not copied, like torch's) and the number of updates."""
        if self._pending is not None:
            return dict(self._pending)
        return {"decay": self.decay, "n_updates": self.n_updates, "ema": list(self._ema or [])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("ema"):
            self.reset()
            return
        self._pending = {
            "decay": state.get("decay", self.decay),
            "n_updates": state.get("n_updates", 0),
            "ema": list(state["ema"]),
        }
        if self.learn is not None and self._backup is None:
            self._ensure_average()

    def __repr__(self) -> str:
        return f"EMACallback(decay={self.decay})"


def _check_one_validated(cbs: list[Callback]) -> None:
    """Refuse several EMACallbacks swapping their averages in for validation: each backs up what the model holds when
    its turn comes, the average of the one before it, and the last puts that back after validation in place of the
    training weights, so the training would go on from an average."""
    validated: list[EMACallback] = []
    for cb in cbs:  # one instance added twice is the learner's to warn of (it runs twice at each event)
        if isinstance(cb, EMACallback) and cb.validate_ema and not any(cb is v for v in validated):
            validated.append(cb)
    if len(validated) > 1:
        raise ValueError(
            f"{len(validated)} EMACallbacks with validate_ema=True ({', '.join(map(repr, validated))}) would each swap "
            "their average into the model for validation, and the training weights would not come back: validate "
            "with one of them, and make the others with validate_ema=False."
        )


def _same_parameters(previous: list[Tensor], params: list[Tensor]) -> bool:
    """Whether `params` are the parameters the average was last following (the first of `previous`, the tensors
    gathered then): the same objects, which a move to another device or dtype (`model.to`, `model.double()`) keeps."""
    return len(previous) >= len(params) and all(a is b for a, b in zip(previous, params, strict=False))


def _check_shapes(saved: list[Tensor], tracked: list[Tensor], what: str) -> None:
    if len(saved) != len(tracked) or any(s.shape != t.shape for s, t in zip(saved, tracked, strict=True)):
        raise ValueError(
            f"EMACallback: {what} holds {len(saved)} tensors of shapes {[tuple(s.shape) for s in saved][:4]}..., "
            f"but the model has {len(tracked)} (parameters, then floating buffers when ema_buffers=True) of shapes "
            f"{[tuple(t.shape) for t in tracked][:4]}...; was it saved from another model or another ema_buffers?"
        )
