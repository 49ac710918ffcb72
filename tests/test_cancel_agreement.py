"""CancelAgreement on its own: the other ranks' answers are scripted (tests/test_distributed.py runs it for real)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from learnloop import distributed as D
from learnloop.cancel_agreement import CancelAgreement, CancelLevel
from learnloop.events import CancelEpochException, CancelFitException, CancelTrainException, Event


class Ranks:
    """Stands in for `distributed.agree_each`: records the cancel this rank passes, answers the largest of that and
    the code the other ranks are scripted to pass next (and of the gradient codes, those of `gradients`)."""

    def __init__(self) -> None:
        self.told: list[int] = []
        self.others: list[int] = []
        self.gradients = (0, 0)  # the other ranks': the largest carrier (rank + 1), whether one zeroed its gradients

    def agree_each(self, code: int, *more: int) -> tuple[int, ...]:
        self.told.append(int(code))
        return max(code, self.others.pop(0) if self.others else 0), *map(max, more, self.gradients)


@pytest.fixture
def ranks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ranks]:
    r = Ranks()
    monkeypatch.setattr(D, "agree_each", r.agree_each)
    yield r


def test_ask_raises_the_cancel_another_rank_raised_and_tell_then_says_nothing(ranks: Ranks) -> None:
    agreement = CancelAgreement()
    agreement.ask()  # nobody cancelled
    ranks.others = [CancelLevel.TRAIN]
    with pytest.raises(CancelTrainException):
        agreement.ask()
    agreement.tell(CancelLevel.TRAIN)  # this rank's after_cancel_train, fired by the raise above: nothing to tell
    assert ranks.told == [0, 0]
    assert agreement.end_of(CancelLevel.TRAIN, fire=lambda e: pytest.fail(f"fired {e}"))  # agreed: no question asked
    assert ranks.told == [0, 0]


def test_tell_tells_the_others_and_the_phase_ends_cancelled_without_another_question(ranks: Ranks) -> None:
    agreement = CancelAgreement()
    agreement.tell(CancelLevel.EPOCH)
    assert ranks.told == [CancelLevel.EPOCH]
    assert agreement.end_of(CancelLevel.EPOCH, fire=lambda e: pytest.fail(f"fired {e}"))
    assert not agreement.end_of(CancelLevel.FIT, fire=lambda e: pytest.fail(f"fired {e}"))  # the next phase asks anew
    assert ranks.told == [CancelLevel.EPOCH, 0]


def test_end_of_a_phase_another_rank_cancelled_fires_its_after_cancel(ranks: Ranks) -> None:
    agreement, fired = CancelAgreement(), []
    assert not agreement.end_of(CancelLevel.VALID, fire=fired.append)
    ranks.others = [CancelLevel.EPOCH]
    assert agreement.end_of(CancelLevel.EPOCH, fire=fired.append)
    assert fired == [Event.after_cancel_epoch]
    agreement.tell(CancelLevel.EPOCH)  # the after_cancel_epoch just fired reaches the trainer: nothing to tell
    assert ranks.told == [0, 0]


def test_a_bigger_cancel_elsewhere_is_raised_at_the_end_of_a_phase_or_when_telling(ranks: Ranks) -> None:
    agreement = CancelAgreement()
    ranks.others = [CancelLevel.FIT]
    with pytest.raises(CancelFitException):
        agreement.end_of(CancelLevel.TRAIN, fire=lambda e: pytest.fail(f"fired {e}"))
    ranks.others = [CancelLevel.EPOCH]
    with pytest.raises(CancelEpochException):
        CancelAgreement().tell(CancelLevel.VALID)


def test_reset_forgets_the_cancels_of_the_last_fit(ranks: Ranks) -> None:
    agreement = CancelAgreement()
    agreement.tell(CancelLevel.FIT)
    agreement.reset()
    assert not agreement.end_of(CancelLevel.FIT, fire=lambda e: pytest.fail(f"fired {e}"))  # asked again
    assert ranks.told == [CancelLevel.FIT, 0]


@pytest.mark.parametrize(("carrying", "others", "shared"), [
    (True, (0, 1), [0]),  # this rank (0) carries its gradients, another zeroed its own: this rank's everywhere
    (False, (2, 0), [1]),  # rank 1 carries them: its gradients here too
    (True, (2, 0), []),  # every rank carries them: nothing to share
    (False, (0, 1), []),  # none does
])
def test_gradients_a_rank_carries_past_a_cancel_are_shared_at_the_next_question(
    ranks: Ranks, carrying: bool, others: tuple[int, int], shared: list[int]
) -> None:
    sources: list[int] = []
    agreement = CancelAgreement(sources.append)
    agreement.carrying, ranks.gradients = carrying, others
    ranks.others = [CancelLevel.TRAIN]
    with pytest.raises(CancelTrainException):  # shared before the cancel is raised: every rank shares
        agreement.ask()
    assert sources == shared and not agreement.carrying
