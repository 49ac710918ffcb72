"""Agreeing on cancels over the ranks of a distributed fit, for :class:`~learnloop.callbacks.DistributedTrainer`.

A rank that raises ``CancelTrain/Valid/Epoch/FitException`` tells the others at once (`CancelAgreement.tell`, from
its ``after_cancel_*``); the others ask (`ask`) before any collective they would otherwise wait in: before each
training backward and before each optimizer step that a callback may cancel after the backward (a rank that
cancelled after its backward pass does not step, so none may: the replicas would differ), before each forward when
DDP broadcasts buffers or may still rebuild its gradient buckets (which a new wrapper does once, early in each fit)
or under FSDP, at the start of each epoch and of each validation phase (an epoch a rank cancelled at the end of its
training phase is validated on no rank), before a shuffled training share draws its epoch's order (rank 0's,
broadcast: :class:`~learnloop.sharding.DrawnSeedSampler`), and at the end of each phase (`end_of`: ``after_train``,
``after_validate``, ``after_epoch``, ``after_fit``). A rank that learns of a cancel raises it in turn (or, at the
end of a phase, fires ``after_cancel_*`` for it), so every rank leaves the same phase at the same batch. Each
question is one all-reduce of three integers on a Gloo group on the CPU: about 0.1-0.3 ms, no wait on the GPU. Batch,
backward and step cancels are not exchanged: they must be decided alike on every rank, as GradientAccumulation and
MixedPrecision do; but a cancel that ends a batch after its step (at ``after_step``) skips ``opt.zero_grad()`` on
its rank alone, and each question also says whether this rank carries such gradients: if some rank does and
another zeroed its own, the carrier's are broadcast to all (``share_gradients``), at no extra question.
A training-phase cancel raised on one rank only in ``before_backward``, or in ``before_batch``
while the forward is preceded by a question, by a callback of order above the trainer's comes after the question:
the ranks then end with a timeout error (in ``before_step``: the other ranks step where this one does not).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from . import distributed as D
from .events import EPOCH, FIT, TRAIN, VALIDATE, Event, Phase

__all__ = ["CancelAgreement", "CancelLevel"]


class CancelLevel(IntEnum):
    """What a rank cancelled, exchanged as the largest over the ranks: the cancel of a bigger phase wins."""

    NONE = 0
    VALID = 1
    TRAIN = 2
    EPOCH = 3
    FIT = 4


# Each level's phase (events.py): the exception that cancels it and its after_cancel event.
_PHASES: dict[CancelLevel, Phase] = {
    CancelLevel.VALID: VALIDATE, CancelLevel.TRAIN: TRAIN, CancelLevel.EPOCH: EPOCH, CancelLevel.FIT: FIT
}


class CancelAgreement:
    """One fit's questions and answers about cancels (see the module docs); a single process agrees with itself."""

    def __init__(self, share_gradients: Callable[[int], Any] | None = None) -> None:
        # A cancel that ends a batch after its backward pass (CancelBatchException at after_step, a phase's cancel
        # there or at after_backward) skips opt.zero_grad(): the gradients carry into the next step, as in one
        # process. A rank whose gradients carry says so in its next question; if some other rank zeroed its own,
        # every rank takes the carried ones, `share_gradients(src)` broadcasting them from rank `src`.
        self._share_gradients = share_gradients
        self.carrying = False  # this rank's last synchronised gradients were not zeroed (set by the trainer)
        self.reset()

    def reset(self) -> None:
        """Forget the last fit's cancels (at the start of a fit)."""
        self._agreed: set[CancelLevel] = set()  # phases whose cancel has been agreed on in this phase instance
        self._following = CancelLevel.NONE  # a cancel this rank raises because another rank raised it

    def ask(self) -> None:
        """Ask the other ranks whether one of them cancelled; if so, raise that cancel here too."""
        code = self._agree(CancelLevel.NONE)
        if code != CancelLevel.NONE:
            self._following = code
            raise _PHASES[code].cancel

    def end_of(self, phase: CancelLevel, fire: Callable[[Event], Any]) -> bool:
        """The last question of `phase`: a cancel of a bigger phase elsewhere is raised here, one of this very
        phase fires its ``after_cancel_*`` event through `fire` (the learner). Returns whether the phase was
        cancelled, on any rank."""
        agreed = phase in self._agreed
        self._agreed = {p for p in self._agreed if p > phase}  # the phases inside this one are over too
        if agreed:
            return True
        code = self._agree(CancelLevel.NONE)
        if code > phase:
            self._following = code
            raise _PHASES[code].cancel
        if code == phase:
            self._following = code
            fire(_PHASES[code].after_cancel)
            self._agreed.discard(phase)
            return True
        return False

    def tell(self, phase: CancelLevel) -> bool:
        """This rank cancelled `phase` (its ``after_cancel_*`` is running): tell the others, unless it did so
        because another rank had; a bigger cancel from another rank meanwhile is raised here. Returns whether the
        cancel was this rank's own."""
        own = self._following != phase
        if not own:  # raised (or fired) because of another rank: nothing to tell
            self._following = CancelLevel.NONE
        else:
            code = self._agree(phase)  # tell the others at once; they ask before their next collective
            if code > phase:
                self._following = code
                raise _PHASES[code].cancel
        self._agreed.add(phase)
        return own

    def _agree(self, code: CancelLevel) -> CancelLevel:
        """The largest cancel of the ranks; on the way, the carried gradients of a rank everywhere (see __init__)."""
        carrier = D.rank() + 1 if self.carrying else 0
        level, carrier, zeroed = D.agree_each(code, carrier, int(not self.carrying))
        self.carrying = False
        if carrier and zeroed and self._share_gradients is not None:
            self._share_gradients(carrier - 1)
        return CancelLevel(level)
