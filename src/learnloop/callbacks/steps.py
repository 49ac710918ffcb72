"""Skipped optimizer steps: how a callback that skips a step tells the ones that must not advance.

Which optimizer steps really ran is a fact of the loop's events: a batch's ``opt.step()`` ran
iff its step phase finished without being cancelled, i.e. ``after_step`` fired and
``after_cancel_step`` did not fire before it in that batch. Gradient-accumulation micro-batches
never finish it (GradientAccumulation cancels the batch in ``before_step``: no ``after_step``).
A callback that must count real steps (the weight EMA) watches those two events; a
cancelled step never touches the optimizer, so its state and ``step`` counters stay put.

A *skipped* step is one that should have run but could not: MixedPrecision skips a step whose
fp16 gradients overflowed, and the gradients of every batch accumulated into it are thrown away.
Such a step must not advance the hyper-parameter schedule either. The schedule's clock is
``learn.pct_train`` (fastai's: the share of training batches consumed), so the callback that skips
reports how much of it was wasted, with :func:`record_skipped_step`, in three learner attributes:

=========================  =====================================================================
``learn.opt_step_skipped``  whether the step attempted in the current batch was skipped
``learn.skipped_steps``     how many steps were skipped since ``before_fit``
``learn.pct_skipped``       the share of the fit (in ``pct_train`` units) spent on batches whose
                            gradients a skipped step threw away
=========================  =====================================================================

A schedule reads :func:`schedule_pct` (``pct_train - pct_skipped``) instead of ``pct_train``: after
a skipped step the next real step gets the hyper-parameters the skipped one would have had.
Without a skipping callback the attributes are absent and ``schedule_pct`` is ``pct_train``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["end_skipped_steps", "record_skipped_step", "reset_skipped_steps", "schedule_pct"]


def reset_skipped_steps(learn: Learner) -> None:
    """Start counting skipped steps from zero (at ``before_fit``, and at ``after_fit`` so nothing goes stale)."""
    learn.opt_step_skipped = False
    learn.skipped_steps = 0
    learn.pct_skipped = 0.0


def end_skipped_steps(learn: Learner) -> None:
    """The end of a fit: the schedule's offset must not carry over into the next fit, which may have no skipping
    callback to reset it (``fit(cbs=MixedPrecision())``); ``skipped_steps`` stays readable. A no-op on a learner
    without the attributes."""
    if "pct_skipped" in learn.__dict__:
        learn.opt_step_skipped = False
        learn.pct_skipped = 0.0


def record_skipped_step(learn: Learner, n_batches: int) -> None:
    """Record that this batch's step was skipped, discarding the gradients of `n_batches` training batches."""
    learn.opt_step_skipped = True
    learn.skipped_steps = getattr(learn, "skipped_steps", 0) + 1
    total = learn.n_epoch * learn.n_iter
    if total > 0:
        learn.pct_skipped = getattr(learn, "pct_skipped", 0.0) + n_batches / total


def schedule_pct(learn: Learner) -> float:
    """The schedule's clock: ``pct_train`` less the share of the fit wasted on skipped steps."""
    # Read from the instance dict: a missing attribute would fall through to the model, slowly, every batch.
    return max(0.0, float(learn.pct_train) - learn.__dict__.get("pct_skipped", 0.0))
