"""Agreeing on cancels over the ranks of a distributed fit, for :class:`~learnloop.callbacks.DistributedTrainer`.

A rank that raises ``CancelTrain/Valid/Epoch/FitException`` tells the others at once (`CancelAgreement.tell`, from
its ``after_cancel_*``); the others ask (`ask`) before any collective they would otherwise wait in: before each
training backward (and before each forward when DDP broadcasts buffers or may still rebuild its gradient buckets,
which a new wrapper does once, early in each fit; or under FSDP), at the start of each epoch, and at the end of
each phase (`end_of`: ``after_train``, ``after_validate``, ``after_epoch``, ``after_fit``). A rank that learns of a
cancel raises it in turn (or, at the end of a phase, fires ``after_cancel_*`` for it), so every rank leaves the
same phase at the same batch. Each question is a one-integer all-reduce on a Gloo group on the CPU: about
0.1-0.3 ms, no wait on the GPU. Batch, backward and step cancels are not exchanged: they must be decided alike on
every rank, as GradientAccumulation and MixedPrecision do. A training-phase cancel raised on one rank only in
``before_backward``, or in ``before_batch`` while the forward is preceded by a question, by a callback of order
above the trainer's comes after the question: the ranks then end with a timeout error.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from . import distributed as D
from .events import CancelEpochException, CancelFitException, CancelTrainException, CancelValidException, Event

__all__ = ["CancelAgreement", "Phase"]


class Phase(IntEnum):
    """What a rank cancelled, exchanged as the largest over the ranks: the cancel of a bigger phase wins."""

    NONE = 0
    VALID = 1
    TRAIN = 2
    EPOCH = 3
    FIT = 4


_EXCEPTIONS: dict[Phase, type[Exception]] = {
    Phase.VALID: CancelValidException,
    Phase.TRAIN: CancelTrainException,
    Phase.EPOCH: CancelEpochException,
    Phase.FIT: CancelFitException,
}
_AFTER_CANCEL = {
    Phase.VALID: Event.after_cancel_validate,
    Phase.TRAIN: Event.after_cancel_train,
    Phase.EPOCH: Event.after_cancel_epoch,
    Phase.FIT: Event.after_cancel_fit,
}


class CancelAgreement:
    """One fit's questions and answers about cancels (see the module docs); a single process agrees with itself."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the last fit's cancels (at the start of a fit)."""
        self._agreed: set[Phase] = set()  # phases whose cancel has been agreed on in this phase instance
        self._following = Phase.NONE  # a cancel this rank raises because another rank raised it

    def ask(self) -> None:
        """Ask the other ranks whether one of them cancelled; if so, raise that cancel here too."""
        code = Phase(D.agree(Phase.NONE))
        if code != Phase.NONE:
            self._following = code
            raise _EXCEPTIONS[code]

    def end_of(self, phase: Phase, fire: Callable[[Event], Any]) -> bool:
        """The last question of `phase`: a cancel of a bigger phase elsewhere is raised here, one of this very
        phase fires its ``after_cancel_*`` event through `fire` (the learner). Returns whether the phase was
        cancelled, on any rank."""
        agreed = phase in self._agreed
        self._agreed = {p for p in self._agreed if p > phase}  # the phases inside this one are over too
        if agreed:
            return True
        code = Phase(D.agree(Phase.NONE))
        if code > phase:
            self._following = code
            raise _EXCEPTIONS[code]
        if code == phase:
            self._following = code
            fire(_AFTER_CANCEL[code])
            self._agreed.discard(phase)
            return True
        return False

    def tell(self, phase: Phase) -> None:
        """This rank cancelled `phase` (its ``after_cancel_*`` is running): tell the others, unless it did so
        because another rank had; a bigger cancel from another rank meanwhile is raised here."""
        if self._following == phase:  # raised (or fired) because of another rank: nothing to tell
            self._following = Phase.NONE
        else:
            code = Phase(D.agree(phase))  # tell the others at once; they ask before their next collective
            if code > phase:
                self._following = code
                raise _EXCEPTIONS[code]
        self._agreed.add(phase)
