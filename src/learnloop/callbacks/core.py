"""The callbacks the loop itself relies on: train/eval mode and counters, skipping epochs, gathering preds."""

from __future__ import annotations

import bisect
import itertools
import os
from pathlib import Path
from typing import Any

import torch

from ..attrs import OwnAttrs
from ..callback import Callback
from ..checkpoint import atomic_write
from ..data import to_device
from ..dispatch import as_list
from ..errors import to_int
from ..events import CancelEpochException
from ..nested import map_tensors, to_concat
from .training import batch_size

__all__ = [
    "TrainEvalCallback",
    "SkipToEpoch",
    "GatherPredsCallback",
    "CastToTensor",
    "CollectDataCallback",
    "FetchPredsCallback",
]


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

    ran_last_batch = False  # whether the fit's last training batch ran: then the fit ends with pct_train at 1.0

    def before_fit(self) -> None:
        learn = self.learn
        learn.epoch, learn.loss = 0, torch.tensor(0.0)
        learn.train_iter, learn.pct_train = 0, 0.0
        self.ran_last_batch = False
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
        n_iter, n_epoch = learn.n_iter, learn.n_epoch
        # fastai's increments, summed as it sums them, to the fit's end: a schedule gets fastai's hyper-parameters
        # bit for bit, and callbacks see fastai's numbers. The Learner sets exactly 1.0 once the fit is over.
        learn.pct_train += 1.0 / (n_iter * n_epoch)
        if learn.iter + 1 == n_iter and learn.epoch + 1 == n_epoch:
            self.ran_last_batch = True

    def before_validate(self) -> None:
        self.learn.model.eval()
        self.learn.training = False

    def state_dict(self) -> dict[str, Any]:
        # Only once the last batch ran (a checkpoint written after it): a fit resumed there still ends at 1.0.
        return {"ran_last_batch": True} if self.ran_last_batch else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ran_last_batch = bool(state.get("ran_last_batch", False))


class SkipToEpoch(Callback):
    """Cancel every epoch before `epoch` (how `fit(start_epoch=...)` resumes)."""

    order = 70

    def __init__(self, epoch: int) -> None:
        self.skip_to = epoch

    def before_epoch(self) -> None:
        if self.learn.epoch < self.skip_to:
            raise CancelEpochException


def _detach(x: Any) -> Any:
    return map_tensors(torch.Tensor.detach, x)


def _concat(items: list[Any], dim: int = 0) -> Any:
    """Concatenate a list of batches (tensors, or tuples or dicts of them) along `dim`, as fastai's `to_concat`:
    a dict of outputs (a HuggingFace model's) key by key, tensors whose other dimensions differ (sequences padded
    per batch) as one list of their items; a 1-tuple gives its element."""
    if not items:
        return None
    first = items[0]
    if isinstance(first, torch.Tensor):
        return to_concat([t if t.ndim else t[None] for t in items], dim=dim)
    if isinstance(first, (tuple, list)):
        parts = [_concat([b[i] for b in items], dim) for i in range(len(first))]
        return parts[0] if len(parts) == 1 else tuple(parts)
    if isinstance(first, dict):
        return {k: _concat([b[k] for b in items], dim) for k in first}
    return items


def _on_cpu(x: Any) -> Any:
    # Waits for the copies (non_blocking=False): torch.save reads them at once.
    return to_device(x, torch.device("cpu"), non_blocking=False)


def _fill_missing_losses(losses: list[Any]) -> list[Any]:
    """NaN per item in place of the batch sizes that stand for batches whose loss was never computed."""
    if all(isinstance(x, torch.Tensor) for x in losses):
        return losses
    like = next((x for x in losses if isinstance(x, torch.Tensor)), torch.empty(0))
    return [x if isinstance(x, torch.Tensor) else like.new_full((x, *like.shape[1:]), float("nan")) for x in losses]


class _Gathered:
    """What one validation phase has gathered so far (a plain object: the writes of every batch skip
    `Callback.__setattr__`'s checks)."""

    __slots__ = (
        "preds", "targets", "inputs", "losses", "last_pred", "last_loss", "xb", "extras", "pred_made", "iters", "seen"
    )

    def __init__(self, pred: Any, loss: Any, extras: bool) -> None:
        self.preds: list[Any] = []
        self.targets: list[Any] = []
        self.inputs: list[Any] = []
        self.losses: list[Any] = []  # per-item losses, or the batch size of a batch whose loss was not computed
        # The learner's `pred` and `loss` as the phase's start or the last batch gathered left them: a batch that
        # ends with the same objects was cancelled before making its own.
        self.last_pred, self.last_loss = pred, loss
        self.xb: Any = None
        self.extras = extras  # inputs, losses or files to gather too
        self.pred_made = False  # after_pred reached this callback in the current batch
        self.iters: list[int] = []  # the index in the phase of each batch gathered
        self.seen = 0  # the batches whose after_batch reached this callback


class GatherPredsCallback(Callback):
    """Collects predictions and targets during validation, optionally inputs and per-item losses (fastai's).

    After the phase, `preds`, `targets` and `inputs` hold the batches concatenated along `concat_dim`, `losses`
    along dimension 0; `all_tensors()` lists them in `get_preds` order. `with_preds=False` /
    `with_targs=False` keep no predictions / targets (None then, where fastai leaves an empty list).
    `save_preds` / `save_targs`: a directory (made if missing) where each batch's prediction, as the model made
    it, / first target is written on the CPU with `torch.save(..., pickle_protocol=pickle_protocol)`, to a file
    named after the batch's index (`0`, `1`, ...), atomically as `learn.save` writes (a write that fails leaves the
    file that was there as it was) but without its fsync; that does not stop it being kept as well.

    Only the batches the model ran on are gathered: one cancelled before its prediction (a CancelBatchException in
    before_batch) adds nothing; one cancelled after it keeps its prediction, with NaN losses if its loss was not
    computed. If a callback that runs before this one cancels the phase in before_validate, all four are None.

    For DistributedTrainer: with `keep_batches` set, the phase's batches are kept after it ends, so that
    `keep_first(n)` can cut what was gathered to its first `n` batches (a phase one rank cancelled while the others
    ran on); `forget_batches()` lets them go.
    """

    run_train = False  # it gathers validation phases only

    def __init__(
        self,
        with_input: bool = False,
        with_loss: bool = False,
        save_preds: str | os.PathLike[str] | None = None,
        save_targs: str | os.PathLike[str] | None = None,
        with_preds: bool = True,
        with_targs: bool = True,
        concat_dim: int = 0,
        pickle_protocol: int = 2,
    ) -> None:
        self.with_input, self.with_loss = with_input, with_loss
        self.with_preds, self.with_targs = with_preds, with_targs
        self.save_preds = None if save_preds is None else Path(save_preds)
        self.save_targs = None if save_targs is None else Path(save_targs)
        what = "the dimension the batches are concatenated along"
        self.concat_dim = to_int(concat_dim, "concat_dim", "GatherPredsCallback", what)
        self.pickle_protocol = pickle_protocol
        self.preds: Any = None
        self.targets: Any = None
        self.inputs: Any = None
        self.losses: Any = None
        self._gathered: _Gathered | None = None  # from before_validate to after_validate
        # keep_batches: after_validate keeps the phase's batches, for keep_first (DistributedTrainer sets it)
        self.keep_batches = False
        self._last_phase: _Gathered | None = None
        self.side_run = False  # get_preds' own gatherer: its run is no part of the training record (is_side_run)

    def before_validate(self) -> None:
        for folder in (self.save_preds, self.save_targs):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        extras = self.with_input or self.with_loss or self.save_preds is not None or self.save_targs is not None
        # The state of the batch before (none exists before a learner's first batch, as in fastai).
        learn = self.learn._attrs
        self._gathered = _Gathered(getattr(learn, "pred", None), getattr(learn, "loss", None), extras)

    def before_batch(self) -> None:
        if self.with_input:
            g = self._gathered
            assert g is not None
            g.xb = self.learn.xb

    def after_pred(self) -> None:
        g = self._gathered
        assert g is not None
        g.pred_made = True

    def after_batch(self) -> None:
        g = self._gathered
        assert g is not None
        learn = self.learn._attrs  # the learner's attributes, read at a plain object's cost (attrs.OwnAttrs)
        pred = getattr(learn, "pred", None)  # none yet: the learner's first batch was cancelled before the model ran
        # The model ran if after_pred got here, or (a callback before this one cancelled the batch at after_pred)
        # if `pred` is a new object: a model may return the same object twice (its input, a buffer of its own).
        made, g.pred_made = g.pred_made, False
        index, g.seen = g.seen, g.seen + 1
        if pred is None or (not made and pred is g.last_pred):
            return  # cancelled before the model ran: nothing of this batch to keep
        g.last_pred = pred
        g.iters.append(index)
        pred, yb = _detach(pred), learn.yb
        if self.with_preds:
            g.preds.append(pred)
        if yb and self.with_targs:
            g.targets.append(_detach(yb))
        if g.extras:
            self._gather_extras(g, learn, pred, yb)

    def _gather_extras(self, g: _Gathered, learn: OwnAttrs, pred: Any, yb: tuple[Any, ...]) -> None:
        if self.with_input:
            g.inputs.append(_detach(g.xb))
        if self.with_loss and yb:
            loss, bs = learn.loss, batch_size(yb)
            if loss is g.last_loss:  # cancelled between the prediction and the loss
                g.losses.append(bs)
            else:
                g.last_loss = loss
                if bs and loss.numel() % bs:  # fastai: a bare "shape '[16, -1]' is invalid for input of size 1"
                    raise RuntimeError(
                        f"GatherPredsCallback(with_loss=True) needs a loss per item, but the loss function gave a "
                        f"loss of shape {tuple(loss.shape)} for a batch of {bs} items (a reduced loss, in a fit): "
                        "learn.get_preds(with_loss=True) makes it unreduced for its run (inner=True from a callback)."
                    )
                g.losses.append(loss if loss.numel() == bs else loss.reshape(bs, -1).mean(1))
        if self.save_preds is not None:
            self._save(_on_cpu(pred), self.save_preds / str(learn.iter))
        if self.save_targs is not None and yb:
            self._save(_on_cpu(_detach(yb[0])), self.save_targs / str(learn.iter))

    def _save(self, obj: Any, path: Path) -> None:
        # atomically, as learn.save: a write that fails (a full disk, an object that cannot be pickled) leaves the
        # file of an earlier run as it was, not truncated. Without its fsyncs, which at every batch cost more than
        # the write (fastai's torch.save makes none).
        atomic_write(path, lambda f: torch.save(obj, f, pickle_protocol=self.pickle_protocol), sync=False)

    def after_validate(self) -> None:
        g, self._gathered = self._gathered, None
        self._last_phase = g if self.keep_batches else None
        self._join(g)

    def _join(self, g: _Gathered | None) -> None:
        if g is None:  # the phase was cancelled before this callback's before_validate
            self.preds = self.targets = self.inputs = self.losses = None
            return
        dim = self.concat_dim
        self.preds = _concat(g.preds, dim) if self.with_preds else None
        self.targets = _concat(g.targets, dim) if self.with_targs else None
        self.inputs = _concat(g.inputs, dim) if self.with_input else None
        # fastai's: no batch with targets gathered (an empty loader, say) leaves an empty list of losses
        self.losses = (_concat(_fill_missing_losses(g.losses)) if g.losses else []) if self.with_loss else None

    @property
    def batches_seen(self) -> int:
        """How many batches of the last phase reached this callback's after_batch (kept with `keep_batches`)."""
        g = self._last_phase
        return 0 if g is None else g.seen

    def keep_first(self, n_batches: int) -> None:
        """Keep what the last phase gathered from its first `n_batches` batches only, as if the phase had been
        cancelled there: a distributed phase that a rank cancelled, whose other ranks ran on (DistributedTrainer).
        Needs `keep_batches`, set before the phase ended; forgets the phase's batches."""
        g, self._last_phase = self._last_phase, None
        if g is None:
            return
        kept = bisect.bisect_left(g.iters, n_batches)  # the gathered batches that come before batch `n_batches`
        g.iters, g.seen = g.iters[:kept], min(g.seen, n_batches)
        # Targets and losses are gathered for batches with targets only: all of them or none, in practice.
        g.preds, g.targets, g.inputs, g.losses = g.preds[:kept], g.targets[:kept], g.inputs[:kept], g.losses[:kept]
        self._join(g)

    def forget_batches(self) -> None:
        """Let go of the last phase's batches that `keep_batches` kept."""
        self._last_phase = None

    def all_tensors(self) -> list[Any]:
        """What was gathered, as a list: `[inputs (with_input only), preds, targets, losses (with_loss only)]`
        (fastai's), preds / targets None when not kept."""
        res = [self.preds if self.with_preds else None, self.targets if self.with_targs else None]
        if self.with_input:
            res.insert(0, self.inputs)
        if self.with_loss:
            res.append(self.losses)
        return res


def _plain_tensors(x: Any) -> Any:
    return map_tensors(lambda t: t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor), x)


class CastToTensor(Callback):
    """Makes the batch's tensor subclasses plain `torch.Tensor`s before the model sees them (fastai's callback of
    that name, which fastai adds by default for its own tensor types; learnloop has none, so it is not a default:
    add it when a Dataset yields tensor subclasses that slow down or confuse the model, `torch.compile` say)."""

    order = 9

    def before_batch(self) -> None:
        learn = self.learn
        learn.xb, learn.yb = _plain_tensors(learn.xb), _plain_tensors(learn.yb)


class CollectDataCallback(Callback):
    """Keeps every batch of each fit, training and validation, as `(xb, yb, pred, loss)` detached on the CPU in
    `self.data` (fastai's callback of that name, for looking at what the loop computed: in tests, say). The list
    starts afresh at each before_fit; a batch cancelled before the model ran keeps the previous batch's pred."""

    def before_fit(self) -> None:
        self.data: list[tuple[Any, ...]] = []

    def after_batch(self) -> None:
        learn = self.learn
        self.data.append(learn.to_detach((learn.xb, learn.yb, learn.pred, learn.loss)))


class FetchPredsCallback(Callback):
    """Fetches predictions in the middle of a fit, after each validation phase, into `self.preds` (fastai's).

    It calls `get_preds(inner=True)` (the validation phase alone, no fit or epoch events) with the callbacks that keep
    the fit's records taken out for the while (those with `remove_on_fetch`: the Recorder, the trackers), the
    GatherPredsCallbacks already on the learner (`get_preds`' own, when it runs in one), and the callbacks given as
    `cbs` too (instances, or classes: all their instances). `reorder` is passed on to
    `get_preds`, where it changes nothing (see there).
    """

    remove_on_fetch = True

    def __init__(
        self,
        ds_idx: int = 1,
        dl: Any = None,
        with_input: bool = False,
        with_decoded: bool = False,
        cbs: Any = None,
        reorder: bool = True,
    ) -> None:
        self.ds_idx, self.dl, self.with_input, self.with_decoded = ds_idx, dl, with_input, with_decoded
        self.cbs = as_list(cbs)
        self.reorder = reorder
        self.preds: Any = None

    def after_validate(self) -> None:
        learn = self.learn
        # `cbs` may hold classes, as removed_cbs takes them: every instance of one is taken out (and put back). So are
        # the gatherers already on the learner (get_preds' own, when this callback runs in it): the fetch's phase
        # would start them afresh, and what they gathered of the phase that just ended would be lost.
        classes = (*(c for c in self.cbs if isinstance(c, type)), GatherPredsCallback)
        out = [
            cb for cb in learn.cbs
            if getattr(cb, "remove_on_fetch", False) or isinstance(cb, classes) or any(cb is c for c in self.cbs)
        ]
        with learn.removed_cbs(out):
            self.preds = learn.get_preds(
                ds_idx=self.ds_idx,
                dl=self.dl,
                with_input=self.with_input,
                with_decoded=self.with_decoded,
                inner=True,
                reorder=self.reorder,
            )
