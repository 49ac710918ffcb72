"""SaveModelCallback: a tracker that saves the model in each epoch that improves `monitor` and loads the best at the
end (or saves every n epochs, or once at the end), with `learn.save` and `learn.load`. What it monitors and when it
judges an epoch are every tracker's (tracker.py, where its base `TrackerCallback` is); what it adds is which weights
are saved (those that were validated, EMACallback's average while it is swapped in) and the files' names.

>>> learn.fit(20, cbs=SaveModelCallback(monitor='accuracy'))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError, InputError, to_number
from .tracker import Comparison, TrackerCallback

__all__ = ["SaveModelCallback"]


class SaveModelCallback(TrackerCallback):
    """Saves the model (`learn.save(fname)`) in each epoch that improves `monitor`, and loads the best at the end.

    `every_epoch=True` saves every epoch as `f'{fname}_{epoch}'` instead (a whole number `n`, 2 or 2.0: every n
    epochs; False or 0: off, as in fastai); `at_end=True` saves once, at the end of training. In both cases
    nothing is reloaded. `every_epoch` saves each epoch of the fit whose training phase began, also when that
    phase was cancelled (CancelTrainException, even at before_train, as fastai's saves it); not the epochs skipped
    by ``fit(start_epoch=...)`` or cancelled (CancelEpochException) before training began, which fastai's saves.

    What is saved in an epoch is the weights that were validated: when a callback validates other
    weights than the training ones (EMACallback's average, which reports `swapped` while it is in
    the model), those are saved, since the monitored value is theirs; so the model loaded at the
    end is the one that scored best.
    """

    order = TrackerCallback.order + 1

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        fname: str = "model",
        every_epoch: bool | int | float = False,
        at_end: bool = False,
        with_opt: bool = False,
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor=monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        every_epoch = _check_every_epoch(every_epoch)  # first: a wrong type is reported as such
        if every_epoch and at_end:
            raise InputError("SaveModelCallback: every_epoch and at_end cannot both be set; choose one.")
        self.fname, self.every_epoch, self.at_end, self.with_opt = fname, every_epoch, at_end, with_opt
        self.last_saved_path: Any = None
        self._holds_best = False  # the file `fname` holds the model that scored `best`
        self._validated: list[torch.Tensor] | None = None  # weights swapped in for validation, if any

    def start_fit(self) -> None:
        if self.reset_on_fit or self.best is None:
            self._holds_best = False
        super().start_fit()

    def before_epoch(self) -> None:
        self._validated = None

    def before_validate(self) -> None:
        # Runs after the swapping callbacks (order 60+ > their 0), so the model holds what is validated.
        if any(getattr(cb, "swapped", False) is True for cb in self.learn.cbs):
            self._validated = _snapshot(self.learn.model)

    def _save(self, name: str) -> None:
        validated, model = self._validated, self.learn.model
        if validated is None:
            self.last_saved_path = self.learn.save(name, with_opt=self.with_opt)
            return
        training = _snapshot(model)
        _copy_into(model, validated)
        try:
            self.last_saved_path = self.learn.save(name, with_opt=self.with_opt)
        finally:
            _copy_into(model, training)

    def after_epoch(self) -> None:
        if self.every_epoch:
            if self._epoch_trained and self.learn.epoch % self.every_epoch == 0:
                self._save(f"{self.fname}_{self.learn.epoch}")
            return
        super().after_epoch()
        if self.new_best:
            self.say(f"Better model found at epoch {self.learn.epoch} with {self.monitor} value: {self.best}.")
            self._save(self.fname)
            self._holds_best = True

    def after_fit(self) -> None:
        self._validated = None
        learn = self.learn
        # A fit, trained or not (fit(0), every epoch skipped or cancelled); not validate() or get_preds().
        if not (self._fit_started or (learn._in_fit and not learn._nested_run)):
            return
        if self.at_end:
            self._save(self.fname)
        elif not self.every_epoch and self._holds_best:
            self.learn.load(self.fname, with_opt=self.with_opt)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "holds_best": self._holds_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._holds_best = bool(state.get("holds_best", False))


def _check_every_epoch(every_epoch: Any) -> bool | int:
    """`every_epoch` as a bool, or a whole number of epochs >= 0 read as `to_number` reads numbers."""
    # fastai tests every_epoch for truth (0 is off) and saves when `epoch % every_epoch == 0`, so 2.0 works as 2;
    # a negative n passes that test too (every epoch for -1), by accident rather than design: refused here.
    if isinstance(every_epoch, (bool, np.bool_)):
        return bool(every_epoch)
    not_whole = InputError(
        f"SaveModelCallback: every_epoch must be True/False or a whole number of epochs >= 1 (0 turns it off), "
        f"got {every_epoch!r}."
    )
    try:
        n = to_number(every_epoch, "every_epoch", "SaveModelCallback")
    except ArgumentError:
        raise ArgumentError(
            f"SaveModelCallback: every_epoch must be True/False or a whole number of epochs, got "
            f"{type(every_epoch).__name__} {every_epoch!r}."
        ) from None
    except InputError:  # NaN
        raise not_whole from None
    if not (math.isfinite(n) and float(n).is_integer() and n >= 0):
        raise not_whole
    return int(n)


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _copy_into(model: nn.Module, tensors: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for t, src in zip(model.state_dict().values(), tensors, strict=True):
            t.copy_(src)
