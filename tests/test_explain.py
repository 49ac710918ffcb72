"""The notes the loop adds to an error of the model, the loss function or the backward pass (explain.py): the
exception itself goes through unchanged (type and message), as fastai lets it through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnloop import CrossEntropyLossFlat, DataLoaders, Learner
from learnloop.explain import describe, explain_loss_error, explain_model_error


def _learner(batches: list[tuple[object, ...]], model: nn.Module, loss_func: nn.Module) -> Learner:
    learn = Learner(DataLoaders(batches, device="cpu"), model, loss_func=loss_func)
    learn.logger = lambda *_: None
    return learn


def _notes(info: pytest.ExceptionInfo[BaseException]) -> str:
    return " ".join(getattr(info.value, "__notes__", []))


def test_a_model_that_fails_on_the_batch_is_told_what_it_was_called_with() -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learn = _learner([(x, x, y)], nn.Linear(4, 2), nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match=r"takes 2 positional arguments but 3 were given") as info:
        learn.fit(1)
    assert "called with 2 input(s): (8, 4) float32, (8, 4) float32 (the batch's 1 other element(s): its target(s))" \
        in _notes(info) and "DataLoaders(n_inp=...)" in _notes(info)
    learn = _learner([(x.numpy(), y)], nn.Linear(4, 2), nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="must be Tensor, not numpy.ndarray") as info:
        learn.fit(1)
    assert "1 input(s): a numpy.ndarray" in _notes(info) and "batches should hold tensors" in _notes(info)


def test_a_loss_that_fails_gets_the_shapes_dtypes_and_the_usual_cause() -> None:
    x = torch.randn(8, 4)
    learn = _learner([(x, torch.rand(8))], nn.Linear(4, 2), nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match="expected target dtype to be Long") as info:  # torch's message, kept
        learn.fit(1)
    assert "output (8, 2) float32 with target(s) (8,) float32" in _notes(info)
    assert "class indices must be integers: y.long()" in _notes(info)
    learn = _learner([(x, torch.tensor([0, 1, 5, 6, 1, 0, 1, 0]))], nn.Linear(4, 2), nn.CrossEntropyLoss())
    with pytest.raises(IndexError, match="Target 5 is out of bounds") as info:
        learn.fit(1)
    assert "the targets go from 0 to 6, but the output has 2 classes per item, 0 to 1" in _notes(info)


def test_the_class_range_hint_reads_the_classes_of_a_sequence_output_on_their_axis() -> None:
    # (batch, time, classes) scores under CrossEntropyLossFlat (axis=-1): the classes are the last dimension, not
    # dimension 1 (the time steps: the note said 3 classes, or said nothing when there were more steps than classes).
    x = torch.randint(0, 10, (8, 3))
    y = torch.tensor([[0, 1, 4]] * 8)
    learn = _learner([(x, y)], nn.Embedding(10, 4), CrossEntropyLossFlat())
    with pytest.raises(IndexError, match="Target 4 is out of bounds") as info:
        learn.fit(1)
    assert "the targets go from 0 to 4, but the output has 4 classes per item, 0 to 3" in _notes(info)
    learn = _learner([(x, y)], nn.Sequential(nn.Embedding(10, 4), Transpose()), nn.CrossEntropyLoss())
    with pytest.raises(IndexError, match="Target 4 is out of bounds") as info:  # (batch, classes, time): torch's
        learn.fit(1)
    assert "the targets go from 0 to 4, but the output has 4 classes per item, 0 to 3" in _notes(info)


class Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def test_one_output_per_item_and_targets_without_that_dimension_get_the_shape_hint() -> None:
    x = torch.randn(8, 4)
    learn = _learner([(x, torch.rand(8))], nn.Linear(4, 1), nn.BCEWithLogitsLoss())
    with pytest.raises(ValueError, match="must be the same as input size") as info:
        learn.fit(1)
    assert "one output per item: give the targets its shape, y.unsqueeze(1)" in _notes(info)
    assert "y.long()" not in _notes(info)


def test_one_output_per_item_and_class_index_targets_get_the_class_hint_not_the_shape_one() -> None:
    # Class indices 0/1 against a 1-output model: unsqueezing the targets, as the shape hint said, fails again in
    # cross-entropy (multi-target) and in BCE (integer targets); the fix is one output per class, or float targets.
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    y[0] = 1
    for loss_func, error in ((nn.CrossEntropyLoss(), IndexError), (nn.BCEWithLogitsLoss(), ValueError)):
        learn = _learner([(x, y)], nn.Linear(4, 1), loss_func)
        with pytest.raises(error) as info:
            learn.fit(1)
        assert "integer targets up to 1: class indices, as cross-entropy takes them, need one output per class " \
            "(2 here)" in _notes(info) and "y.float().unsqueeze(1)" in _notes(info)
        assert "give the targets its shape, y.unsqueeze(1)" not in _notes(info)


def test_a_note_that_cannot_be_worked_out_leaves_the_error_as_it_is() -> None:
    error = RuntimeError("the loss failed")
    explain_loss_error(error, torch.randn(3, 2), (torch.tensor([0, 1, 2]).to_sparse(),))  # min() fails on sparse
    assert str(error) == "the loss failed"
    oom = torch.OutOfMemoryError("out of memory")
    explain_model_error(oom, (torch.zeros(2),), ())
    assert not getattr(oom, "__notes__", [])  # how the batch was split is beside the point


def test_a_backward_through_a_frozen_model_says_so() -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learn = _learner([(x, y)], nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), nn.CrossEntropyLoss())
    learn.create_opt()
    learn.model.requires_grad_(False)  # everything frozen after the optimizer was made
    with pytest.raises(RuntimeError, match="does not require grad") as info:
        learn.fit(1)
    assert "the whole model is frozen (learn.unfreeze()" in _notes(info)


def test_describe() -> None:
    assert describe(torch.zeros(2, 3, dtype=torch.int64)) == "(2, 3) int64"
    assert describe({"x": 1}) == "a dict" and describe(torch.zeros(1).numpy()) == "a numpy.ndarray"


def test_a_loss_that_is_not_a_tensor_or_not_one_number_is_explained() -> None:
    # fastai lets these through bare ("'float' object has no attribute 'clone'", "grad can be implicitly created only
    # for scalar outputs"); the type and message stay torch's/Python's, the note says what the loss function returned.
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learn = _learner([(x, y)], nn.Linear(4, 2), lambda pred, targ: 1.0)
    with pytest.raises(AttributeError) as info:
        learn.fit(1)
    assert "the loss function returned a float, not a tensor" in _notes(info)
    learn = _learner([(x, y)], nn.Linear(4, 2), nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(RuntimeError, match="only for scalar outputs") as info:
        learn.fit(1)
    assert "the loss has shape (8,), but backward needs a single number" in _notes(info)


def test_a_missing_loss_function_or_targets_that_are_not_tensors_are_explained() -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    learn = _learner([(x, y)], nn.Linear(4, 2), nn.CrossEntropyLoss())
    learn.loss_func = None
    with pytest.raises(TypeError, match="not callable") as info:
        learn.validate(dl=[(x, y)])
    assert "learn.loss_func is None" in _notes(info)
    learn = _learner([(x, None)], nn.Linear(4, 2), CrossEntropyLossFlat())
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute") as info:  # fastai's error, kept
        learn.fit(1)
    assert "with target(s) a NoneType" in _notes(info) and "targets should be tensors" in _notes(info)
    learn = _learner([(x.unsqueeze(1), y)], nn.LSTM(4, 2, batch_first=True), CrossEntropyLossFlat())
    with pytest.raises(AttributeError, match="'tuple' object has no attribute") as info:
        learn.fit(1)
    assert "the model's output a tuple" in _notes(info) and "LSTM's (output, state)" in _notes(info)


def test_a_metric_that_fails_or_returns_no_number_is_named_with_what_it_got() -> None:
    # fastai's message: "Exception occured in `Recorder` when calling event `after_batch`" and the bare error; the
    # Recorder was all learnloop's note named too. The type and message stay fastai's (Python's or torch's).
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))

    def wrong_arity(pred: torch.Tensor) -> torch.Tensor:
        return pred.mean()

    learn = _learner([(x, y)], nn.Linear(4, 2), nn.CrossEntropyLoss())
    learn.metrics = wrong_arity
    with pytest.raises(TypeError, match="takes 1 positional argument") as info:
        learn.validate(dl=[(x, y)])
    assert "in the metric wrong_arity, called as wrong_arity(pred, *yb) with the model's output (8, 2) float32 and " \
           "target(s) (8,) int64" in _notes(info)
    learn.metrics = lambda pred, targ: "high"
    with pytest.raises(TypeError) as info:
        learn.validate(dl=[(x, y)])
    assert "it returned a str; a metric returns a number or a tensor" in _notes(info)
