"""Notes for the errors a training loop meets when the data, the model and the loss function do not fit together.

The loop adds one of these to an exception raised by the model, the loss function or the backward pass, and
re-raises it unchanged (same type, same message, as fastai's loop lets it through): the note says what the loop
handed over, in shapes and dtypes, and what usually fixes it. Only the failing batch pays for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "explain_backward_error", "explain_loss_error", "explain_loss_result", "explain_metric_error",
    "explain_model_error",
]


def _never_fails(explain: Callable[..., None]) -> Callable[..., None]:
    """`explain`, made unable to raise: a note that cannot be worked out (a sparse target, a device in a failed
    state) must never replace the error it was meant to explain."""

    @functools.wraps(explain)
    def safe(*args: Any) -> None:
        try:
            explain(*args)
        except Exception:  # noqa: BLE001, S110 - the original error goes on, without a note
            pass

    return safe


def describe(x: Any) -> str:
    """`x` in a few words: a tensor's shape and dtype, else its type."""
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    return f"a {type(x).__module__ + '.' if type(x).__module__ not in ('builtins',) else ''}{type(x).__name__}"


@_never_fails
def explain_model_error(e: BaseException, xb: tuple[Any, ...], yb: tuple[Any, ...]) -> None:
    """The model failed on `xb`: say what it was called with and how a batch is split into inputs and targets."""
    if isinstance(e, torch.OutOfMemoryError):
        return  # the batch is too big for the device: how it was split is beside the point
    inputs = ", ".join(describe(x) for x in xb)
    hints = []
    if any(not isinstance(x, torch.Tensor) for x in xb):
        hints.append("batches should hold tensors (a dict or a numpy array is passed to the model as it is)")
    hints.append(
        "if the model takes other inputs, set DataLoaders(n_inp=...) (how many of a batch's elements are inputs), "
        "or give predict() the input alone, not a dataset item with its target"
    )
    targets = f" (the batch's {len(yb)} other element(s): its target(s))" if yb else ""
    e.add_note(f"learnloop: the model was called with {len(xb)} input(s): {inputs}{targets}; {'; '.join(hints)}.")


@_never_fails
def explain_loss_error(e: BaseException, pred: Any, yb: tuple[Any, ...], no_loss_func: bool = False) -> None:
    """The loss function rejected `pred` and `yb`: their shapes and dtypes, and the usual mismatches (or there is
    no loss function: `no_loss_func`)."""
    if no_loss_func:  # set to None after the Learner was made (learn.loss_func = None)
        e.add_note("learnloop: learn.loss_func is None, so there is no loss to compute for a batch with targets: "
                   "set one, learn.loss_func = nn.CrossEntropyLoss() say.")
        return
    targets = ", ".join(describe(y) for y in yb)
    note = (
        f"learnloop: the loss function rejected the model's output {describe(pred)} with target(s) {targets}; "
        "check that the model's last layer and the targets match what the loss function expects"
    )
    if not isinstance(pred, torch.Tensor):
        note += (" (the model's output is not a tensor: a model that returns a tuple, as an LSTM's (output, state), "
                 "needs its forward to return the output alone, or a loss function that takes the tuple)")
    if any(not isinstance(y, torch.Tensor) for y in yb):
        note += " (targets should be tensors: a Dataset's items as (x, y) tensor pairs, with no None)"
    target = yb[0] if len(yb) == 1 and isinstance(yb[0], torch.Tensor) else None
    if isinstance(pred, torch.Tensor) and target is not None and pred.ndim == target.ndim + 1:
        if pred.shape[-1] == 1 and pred.ndim == 2:  # one output per item (binary, regression): a shape mismatch
            if target.is_floating_point() or target.is_complex() or not target.numel() or int(target.max()) < 1:
                note += " (one output per item: give the targets its shape, y.unsqueeze(1), or squeeze the output)"
            else:  # integer targets beyond 0: class indices (cross-entropy), or 0/1 labels (floats for a binary loss)
                high = int(target.max())
                note += (
                    f" (one output per item, and integer targets up to {high}: class indices, as cross-entropy takes "
                    f"them, need one output per class ({high + 1} here); a binary or regression loss takes float "
                    "targets of the output's shape, y.float().unsqueeze(1))"
                )
        # Otherwise the shapes of class scores and class indices (cross-entropy): the usual causes are the dtype and
        # the range.
        elif target.is_floating_point():
            note += " (class indices must be integers: y.long(); float targets of the output's shape are probabilities)"
        elif not target.is_complex() and target.numel():
            low, high = int(target.min()), int(target.max())
            n_classes = pred.shape[_class_axis(pred.shape, target.shape)]
            if low < 0 or high >= n_classes:
                note += (
                    f" (the targets go from {low} to {high}, but the output has {n_classes} classes per item, "
                    f"0 to {n_classes - 1}: give the last layer one output per class)"
                )
    e.add_note(note + ".")


def _class_axis(pred_shape: torch.Size, target_shape: torch.Size) -> int:
    """The output's class axis: the one without which its shape is the target's. Dimension 1 (torch's) when it
    is one of them or none is; a sequence's `(batch, time, classes)` under a flattened loss (`axis=-1`) gives 2."""
    fits = [a for a in range(1, len(pred_shape)) if pred_shape[:a] + pred_shape[a + 1 :] == target_shape]
    return fits[0] if fits and 1 not in fits else 1


@_never_fails
def explain_loss_result(e: BaseException, loss: Any) -> None:
    """The loss function returned something that is not a tensor, which the loop cannot log or differentiate."""
    e.add_note(
        f"learnloop: the loss function returned {describe(loss)}, not a tensor: it must return the loss as a tensor "
        "computed from the model's output (a 0-dim one, as torch's loss functions return), so that backward can "
        "reach the weights."
    )


@_never_fails
def explain_metric_error(
    e: BaseException, name: str, pred: Any, yb: tuple[Any, ...], returned: bool = False, value: Any = None
) -> None:
    """A metric function failed on the batch, or `returned` a `value` that cannot be averaged."""
    call = f"learnloop: in the metric {name}, called as {name}(pred, *yb) with the model's output {describe(pred)} "
    call += f"and target(s) {', '.join(describe(y) for y in yb) or 'none'}"
    if returned and not isinstance(value, (torch.Tensor, int, float)):
        e.add_note(f"{call}: it returned {describe(value)}; a metric returns a number or a tensor, averaged over "
                   "the batches weighted by their size.")
    else:
        e.add_note(f"{call}: a metric takes the output and the targets, as the loss function does.")


@_never_fails
def explain_backward_error(e: BaseException, loss: Any) -> None:
    """The backward pass failed: a loss that needs no gradient means nothing it came from is trained, and one of
    several values has no implicit gradient."""
    if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() != 1:
        e.add_note(
            f"learnloop: the loss has shape {tuple(loss.shape)}, but backward needs a single number: make the loss "
            "function reduce it (reduction='mean', or .mean() at its end)."
        )
    if isinstance(loss, torch.Tensor) and not loss.requires_grad:
        e.add_note(
            "learnloop: the loss does not depend on any parameter that requires a gradient: the whole model is "
            "frozen (learn.unfreeze(), or freeze_to() a smaller number of groups), or the output was computed "
            "without autograd (torch.no_grad() or .detach() in the model's forward)."
        )
