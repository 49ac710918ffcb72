"""Bad input that fastai rejects with a bare assert: learnloop's error says what to do, and is an AssertionError
too, so fastai code (and tests) expecting that type still catch it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from conftest import synth_dls
from learnloop import Callback, Learner, SaveModelCallback, SchedCos, SchedLin, accuracy, combine_scheds, mae
from learnloop.errors import ArgumentError, InputError
from learnloop.optimizer import SGD


def no_loss_function() -> Any:
    return Learner(synth_dls(), nn.Linear(2, 1))


CASES: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (no_loss_function, ValueError, "No loss function: pass one"),
    (lambda: Callback(befor_fit=lambda: None), TypeError, "Did you mean 'before_fit'"),
    (lambda: accuracy(torch.randn(3, 2), torch.zeros(4, dtype=torch.long)), ValueError, "same number of elements"),
    (lambda: mae(torch.randn(3), torch.randn(5)), ValueError, r"shape \(3,\) and target of shape \(5,\)"),
    (lambda: combine_scheds([0.5, 0.6], [SchedLin(0, 1), SchedCos(1, 0)]), ValueError, "must add up to 1"),
    (lambda: combine_scheds([-0.5, 1.5], [SchedLin(0, 1), SchedCos(1, 0)]), ValueError, "must be >= 0"),
    (lambda: SGD([torch.zeros(1, requires_grad=True)], lr=0.1).freeze(), ValueError, "at least two parameter groups"),
    (lambda: SGD([[torch.zeros(1)], [torch.ones(1)]], lr=[0.1, 0.2, 0.3]), ValueError, "got 3 values .* 2 parameter"),
    (lambda: SaveModelCallback(every_epoch=True, at_end=True), ValueError, "cannot both be set"),
]


@pytest.mark.parametrize(("make", "kind", "match"), CASES)
def test_bad_input_fastai_asserts_on_is_an_assertion_error_too(
    make: Callable[[], Any], kind: type[Exception], match: str
) -> None:
    with pytest.raises(kind, match=match) as caught:
        make()
    assert isinstance(caught.value, AssertionError)
    assert isinstance(caught.value, InputError if kind is ValueError else ArgumentError)
