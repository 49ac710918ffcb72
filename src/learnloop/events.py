"""Events, the cancel exceptions and the phase table of the training loop."""

from __future__ import annotations

import difflib
from enum import StrEnum

from .errors import ArgumentError
from .warn import warn_caller


class Event(StrEnum):
    """The events of the loop; each value is the name of the callback method it calls.

    ```
    after_create                                     end of Learner.__init__
    fit:       before_fit                             (CancelFitException)
      for each epoch:
      epoch:   before_epoch                           (CancelEpochException)
        train: before_train                           (CancelTrainException)
          for each batch:
          batch: before_batch                         (CancelBatchException)
                 pred = model(*xb)                    -> after_pred
                 loss_grad = loss_func(pred, *yb)     -> after_loss
                 if training and yb:
                   backward: before_backward, loss_grad.backward(), after_backward
                   step:     before_step, opt.step(), after_step
                   opt.zero_grad()
                 after_batch
        after_train
        validate: before_validate  (under torch.no_grad; batches without backward/step)
        after_validate
      after_epoch
    after_fit
    ```
    A cancel exception raised in ``before_X`` or in the body of phase X fires
    ``after_cancel_X`` then ``after_X``; the enclosing phase carries on.
    """

    after_create = "after_create"
    before_fit = "before_fit"
    before_epoch = "before_epoch"
    before_train = "before_train"
    before_batch = "before_batch"
    after_pred = "after_pred"
    after_loss = "after_loss"
    before_backward = "before_backward"
    after_cancel_backward = "after_cancel_backward"
    after_backward = "after_backward"
    before_step = "before_step"
    after_cancel_step = "after_cancel_step"
    after_step = "after_step"
    after_cancel_batch = "after_cancel_batch"
    after_batch = "after_batch"
    after_cancel_train = "after_cancel_train"
    after_train = "after_train"
    before_validate = "before_validate"
    after_cancel_validate = "after_cancel_validate"
    after_validate = "after_validate"
    after_cancel_epoch = "after_cancel_epoch"
    after_epoch = "after_epoch"
    after_cancel_fit = "after_cancel_fit"
    after_fit = "after_fit"


#: fastai's name for the namespace of event names (``event.after_batch == "after_batch"``).
event = Event

#: Events that fire once per batch; `run_train` / `run_valid` apply to these only.
INNER_LOOP: frozenset[Event] = frozenset(
    {
        Event.before_batch,
        Event.after_pred,
        Event.after_loss,
        Event.before_backward,
        Event.after_cancel_backward,
        Event.after_backward,
        Event.before_step,
        Event.after_step,
        Event.after_cancel_batch,
        Event.after_batch,
    }
)

#: The names of seeds 000/001, still accepted on callbacks with a DeprecationWarning.
ALIASES: dict[str, Event] = {
    "begin_fit": Event.before_fit,
    "begin_epoch": Event.before_epoch,
    "begin_train": Event.before_train,
    "begin_batch": Event.before_batch,
    "begin_validate": Event.before_validate,
    "begin_backward": Event.before_backward,
    "begin_step": Event.before_step,
}


class CancelFitException(Exception):
    """Stop training: fires after_cancel_fit, then after_fit."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch: fires after_cancel_epoch, then after_epoch."""


class CancelTrainException(Exception):
    """Skip the rest of the training phase: fires after_cancel_train, then after_train."""


class CancelValidException(Exception):
    """Skip the rest of the validation phase: fires after_cancel_validate, then after_validate."""


class CancelBatchException(Exception):
    """Skip the rest of this batch (before zero_grad): fires after_cancel_batch, then after_batch."""


class CancelBackwardException(Exception):
    """Skip the backward pass: fires after_cancel_backward, then after_backward."""


class CancelStepException(Exception):
    """Skip the optimizer step: fires after_cancel_step, then after_step."""


CANCEL_EXCEPTIONS: tuple[type[Exception], ...] = (
    CancelFitException,
    CancelEpochException,
    CancelTrainException,
    CancelValidException,
    CancelBatchException,
    CancelBackwardException,
    CancelStepException,
)


class Phase:
    """A 'before_X, body, after_X' phase with the one cancel exception it catches."""

    __slots__ = ("name", "before", "after", "after_cancel", "cancel")

    def __init__(self, name: str, cancel: type[Exception]) -> None:
        self.name = name
        self.before = Event(f"before_{name}")
        self.after = Event(f"after_{name}")
        self.after_cancel = Event(f"after_cancel_{name}")
        self.cancel = cancel


FIT = Phase("fit", CancelFitException)
EPOCH = Phase("epoch", CancelEpochException)
TRAIN = Phase("train", CancelTrainException)
VALIDATE = Phase("validate", CancelValidException)
BATCH = Phase("batch", CancelBatchException)
BACKWARD = Phase("backward", CancelBackwardException)
STEP = Phase("step", CancelStepException)


def resolve_event(name: object) -> Event:
    """The Event called `name` (aliases included); an unknown name raises a ValueError naming it, and one that is not
    a string an ArgumentError (a TypeError, as fastai's `getattr` raises)."""
    if not isinstance(name, str):
        raise ArgumentError(f"An event is named by a string, such as 'before_fit' (or a list of them), got {name!r}.")
    try:
        return Event(name)
    except ValueError:
        pass
    if name in ALIASES:
        warn_caller(f"Event {name!r} is deprecated; use {ALIASES[name].value!r}.", DeprecationWarning)
        return ALIASES[name]
    raise ValueError(f"Unknown event {name!r}.{did_you_mean(name)} Valid events: {', '.join(Event)}.")


def did_you_mean(name: str, cutoff: float = 0.75) -> str:
    """' Did you mean 'x'?' for the closest event name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, [*(e.value for e in Event), *ALIASES], n=1, cutoff=cutoff)
    return f" Did you mean {close[0]!r}?" if close else ""
