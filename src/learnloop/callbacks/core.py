"""The callbacks the loop itself relies on: train/eval mode and counters, skipping epochs, gathering preds."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from ..callback import Callback
from ..dispatch import as_list
from ..events import CancelEpochException

__all__ = ["TrainEvalCallback", "SkipToEpoch", "GatherPredsCallback", "CastToTensor", "FetchPredsCallback"]


def _to_device(module: torch.nn.Module, device: torch.device | str) -> None:
    """`module.to(device)`, unless every parameter and buffer is on `device` already: `to` rebuilds the
    whole module tree even then, which costs about as much as a few batches of a small model."""
    device = torch.device(device)
    if any(t.device != device for t in itertools.chain(module.parameters(), module.buffers())):
        module.to(device)


class TrainEvalCallback(Callback):
    """Sets train/eval mode and `learn.training`, counts `train_iter` and `pct_train`, moves the model."""

    order = -10
    run_valid = False

    def after_create(self) -> None:
        self.learn.n_epoch = 1

    def before_fit(self) -> None:
        learn = self.learn
        learn.epoch, learn.loss = 0, torch.tensor(0.0)
        learn.train_iter, learn.pct_train = 0, 0.0
        device = getattr(learn.dls, "device", None)
        if device is not None:
            _to_device(learn.model, device)
            if isinstance(learn.loss_func, torch.nn.Module):
                _to_device(learn.loss_func, device)
        reset = getattr(learn.model, "reset", None)
        if callable(reset):
            reset()

    def before_train(self) -> None:
        learn = self.learn
        learn.pct_train = learn.epoch / learn.n_epoch
        learn.model.train()
        learn.training = True

    def after_batch(self) -> None:
        learn = self.learn._attrs  # the learner's attributes, read at a plain object's cost (attrs.OwnAttrs)
        learn.train_iter += 1
        # From the epoch and the batch index rather than summed increments, so it ends at exactly 1.0.
        learn.pct_train = (learn.epoch + (learn.iter + 1) / learn.n_iter) / learn.n_epoch

    def before_validate(self) -> None:
        self.learn.model.eval()
        self.learn.training = False


class SkipToEpoch(Callback):
    """Cancel every epoch before `epoch` (how `fit(start_epoch=...)` resumes)."""

    order = 70

    def __init__(self, epoch: int) -> None:
        self.skip_to = epoch

    def before_epoch(self) -> None:
        if self.learn.epoch < self.skip_to:
            raise CancelEpochException


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(o) for o in x)
    return x


def _concat(items: list[Any]) -> Any:
    """Concatenate a list of batches (tensors, or tuples of tensors) along the first dimension."""
    if not items:
        return None
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([t if t.ndim else t[None] for t in items])
    if isinstance(first, (tuple, list)):
        parts = [_concat([b[i] for b in items]) for i in range(len(first))]
        return parts[0] if len(parts) == 1 else tuple(parts)
    return items


class GatherPredsCallback(Callback):
    """Collects predictions, targets and optionally inputs and per-item losses during validation."""

    def __init__(self, with_input: bool = False, with_loss: bool = False) -> None:
        self.with_input, self.with_loss = with_input, with_loss
        self.preds: Any = None
        self.targets: Any = None
        self.inputs: Any = None
        self.losses: Any = None

    def before_validate(self) -> None:
        self._preds: list[Any] = []
        self._targets: list[Any] = []
        self._inputs: list[Any] = []
        self._losses: list[Any] = []

    def before_batch(self) -> None:
        if self.with_input:
            self._inputs.append(_detach(self.learn.xb))

    def after_batch(self) -> None:
        learn = self.learn
        self._preds.append(_detach(learn.pred))
        if learn.yb:
            self._targets.append(_detach(learn.yb))
        if self.with_loss and learn.yb:
            loss = learn.loss
            bs = learn.yb[0].shape[0] if isinstance(learn.yb[0], torch.Tensor) else len(learn.yb[0])
            self._losses.append(loss if loss.numel() == bs else loss.reshape(bs, -1).mean(1))

    def after_validate(self) -> None:
        self.preds = _concat(self._preds)
        self.targets = _concat(self._targets)
        self.inputs = _concat(self._inputs) if self.with_input else None
        self.losses = _concat(self._losses) if self.with_loss else None


def _plain_tensors(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x if type(x) is torch.Tensor else x.as_subclass(torch.Tensor)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple takes its fields as arguments
        return type(x)(*(_plain_tensors(o) for o in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_plain_tensors(o) for o in x)
    return x


class CastToTensor(Callback):
    """Makes the batch's tensor subclasses plain `torch.Tensor`s before the model sees them (fastai's callback of
    that name, which fastai adds by default for its own tensor types; learnloop has none, so it is not a default:
    add it when a Dataset yields tensor subclasses that slow down or confuse the model, `torch.compile` say)."""

    order = 9

    def before_batch(self) -> None:
        learn = self.learn
        learn.xb, learn.yb = _plain_tensors(learn.xb), _plain_tensors(learn.yb)


class FetchPredsCallback(Callback):
    """Fetches predictions in the middle of a fit, after each validation phase, into `self.preds` (fastai's).

    It calls `get_preds(inner=True)` (the validation phase alone, no fit or epoch events) with the callbacks that keep
    the fit's records taken out for the while (those with `remove_on_fetch`: the Recorder, the trackers), and the
    callbacks given as `cbs` too.
    """

    remove_on_fetch = True

    def __init__(
        self, ds_idx: int = 1, dl: Any = None, with_input: bool = False, with_decoded: bool = False, cbs: Any = None
    ) -> None:
        self.ds_idx, self.dl, self.with_input, self.with_decoded = ds_idx, dl, with_input, with_decoded
        self.cbs = as_list(cbs)
        self.preds: Any = None

    def after_validate(self) -> None:
        learn = self.learn
        out = [cb for cb in learn.cbs if getattr(cb, "remove_on_fetch", False) or cb in self.cbs]
        with learn.removed_cbs(out):
            self.preds = learn.get_preds(
                ds_idx=self.ds_idx, dl=self.dl, with_input=self.with_input, with_decoded=self.with_decoded, inner=True
            )
