"""Bad input that fastai rejects with a bare assert: learnloop's error says what to do, and is an AssertionError
too, so fastai code (and tests) expecting that type still catch it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synth_dls
from learnloop import (
    AccumMetric,
    Callback,
    CrossEntropyLossFlat,
    DataLoaders,
    GatherPredsCallback,
    Learner,
    SaveModelCallback,
    SchedCos,
    SchedLin,
    accuracy,
    combine_scheds,
    mae,
    top_k_accuracy,
)
from learnloop.errors import ArgumentError, InputError
from learnloop.metrics import CorpusBLEUMetric, DiceMulti, foreground_acc
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


X, Y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
SEG_X, SEG_Y = torch.randn(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long)

# Arguments torch or pathlib would refuse with a TypeError naming none of them (fastai's): the message names the
# owner and the argument. The error is still a TypeError.
ARGUMENT_CASES: list[tuple[Callable[[], Any], str]] = [
    (lambda: Learner(synth_dls(), nn.Linear(2, 1), loss_func=nn.MSELoss()).get_preds(concat_dim=1.0),
     r"get_preds: concat_dim is the dimension the batches are concatenated along, a whole number; got 1.0"),
    (lambda: GatherPredsCallback(concat_dim="1"), r"GatherPredsCallback: concat_dim is the dimension"),
    (lambda: top_k_accuracy(X, Y, k="2"), r"top_k_accuracy: k is how many of the highest scores count.*got '2'"),
    (lambda: top_k_accuracy(X, Y, k=2.0), r"top_k_accuracy: k is .*got 2.0"),
    (lambda: top_k_accuracy(X, Y, axis="1"), r"top_k_accuracy: axis is the dimension of the classes"),
    (lambda: accuracy(X, Y, axis=1.0), r"accuracy: axis is the dimension of the classes, a whole number; got 1.0"),
    (lambda: foreground_acc(SEG_X, SEG_Y, axis="1"), r"foreground_acc: axis is the dimension"),
    (lambda: foreground_acc(SEG_X, SEG_Y, bkg_idx="0"), r"foreground_acc: bkg_idx must be a number"),
    (lambda: DiceMulti(axis=None), r"DiceMulti: axis is the dimension of the classes, a whole number; got None"),
    (lambda: CorpusBLEUMetric(axis="-1"), r"CorpusBLEUMetric: axis is the dimension of the vocabulary"),
    (lambda: AccumMetric(accuracy, dim_argmax="1"), r"AccumMetric: dim_argmax is the dimension of the classes"),
    (lambda: CrossEntropyLossFlat(axis="1"), r"CrossEntropyLossFlat: axis is the dimension of the classes"),
    (lambda: DataLoaders(synth_dls().train, path=5), r"DataLoaders: path is the folder .*: a str or a Path, got 5"),
]


@pytest.mark.parametrize(("make", "match"), ARGUMENT_CASES)
def test_a_bad_argument_that_would_reach_torch_is_named(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(TypeError, match=match) as caught:
        make()
    assert isinstance(caught.value, ArgumentError)


def test_integer_arguments_take_numpy_and_tensor_integers() -> None:
    assert top_k_accuracy(X, Y, k=np.int64(2), axis=torch.tensor(-1)) == top_k_accuracy(X, Y, k=2)
    assert accuracy(X, Y, axis=np.int32(1)) == accuracy(X, Y)
    assert CrossEntropyLossFlat(axis=np.int64(1)).axis == 1
    assert AccumMetric(accuracy, dim_argmax=None).dim_argmax is None
    assert foreground_acc(SEG_X, SEG_Y, bkg_idx=1.0) == foreground_acc(SEG_X, SEG_Y, bkg_idx=1)  # fastai's too
