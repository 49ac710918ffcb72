"""sort_callbacks: the order callbacks run in, and the error for constraints that cannot be met."""

from __future__ import annotations

import pytest

from learnloop.callback import Callback
from learnloop.sorting import sort_callbacks


class _A(Callback):
    pass


class _B(Callback):
    run_after = _A


class _Behind(Callback):
    run_after = _B  # waits for the cycle, without being part of it


def test_a_cycle_names_the_callbacks_on_it_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_A, "run_after", _B)  # _A after _B after _A
    with pytest.raises(ValueError, match=r"form a cycle among _A, _B\. Remove one"):  # was "_A, _B, _Behind"
        sort_callbacks([_Behind(), _A(), _B()])


def test_constraints_override_order_and_ties_keep_insertion() -> None:
    a, b, behind = _A(), _B(), _Behind()
    a.order, b.order, behind.order = 5, -5, -10
    assert sort_callbacks([behind, b, a]) == [a, b, behind]


class _Late(_A):
    run_after = _A  # after every _A: its own instances are _As too


def test_two_callbacks_of_one_class_are_not_constrained_by_a_class_they_both_belong_to() -> None:
    # Each _Late must run after every _A, which the other _Late is: not a cycle; they keep order, then insertion.
    first, second, plain = _Late(), _Late(), _A()
    plain.order = 1
    assert sort_callbacks([first, second, plain]) == [plain, first, second]
    second.order = -1
    assert sort_callbacks([first, second, plain]) == [plain, second, first]


def test_an_instance_constraint_between_two_callbacks_of_one_class_still_orders_them() -> None:
    # Only a constraint both callbacks satisfy towards each other is dropped; one set on one instance holds.
    first, second = _A(), _A()
    second.run_before = _A
    assert sort_callbacks([first, second]) == [second, first]
    first.run_after = _A  # the same constraint seen from the other side: still one way
    assert sort_callbacks([first, second]) == [second, first]
