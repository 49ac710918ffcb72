"""DistributedTrainer: the same training loop on several processes, with DDP (or FSDP).

Launched by ``torchrun``, a Learner adds this callback by itself (``WORLD_SIZE`` > 1 in the
environment); ``learn.distrib_ctx()`` or ``cbs=DistributedTrainer(...)`` do it explicitly. In a
single process it does nothing. During ``fit`` it:

- wraps the model in DDP at the first ``before_train`` (``learn.model`` is the plain module again
  during validation and after fit), on this rank's device; with ``fsdp=True`` it shards the model
  in place instead (:mod:`learnloop.fsdp`);
- gives each rank its share of the data (:mod:`learnloop.sharding`), the DataLoaders' copies being
  used for the fit only; ``split_batch=True`` divides the batch size between the ranks;
- makes the numbers agree (:mod:`learnloop.reductions`): validation loss and metrics are combined
  over ranks before the Recorder reads them, ``get_preds`` gathers predictions in dataset order, and
  the smoothed training loss is averaged over ranks, so the Recorder holds the same values everywhere;
- on ranks other than 0, silences the table, the progress bars and the trackers' messages;
- skips the gradient all-reduce on GradientAccumulation's micro-batches (``no_sync``);
- makes a cancel raised on one rank (early stopping, TerminateOnNaN) everyone's.

How the ranks agree on a cancel one of them raised, and where they ask: :mod:`learnloop.cancel_agreement`.

>>> learn = Learner(dls, model, loss_func, metrics=accuracy)   # under torchrun: distributed already
>>> with learn.distrib_ctx(split_batch=True):                  # or explicitly
...     learn.fit(3)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as D
from ..callback import Callback, noop
from ..cancel_agreement import CancelAgreement, CancelLevel
from ..events import Event
from ..fsdp import ShardModules, is_fsdp, reshard_optimizer, shard_model
from ..reductions import average_losses, gather_preds, hand_metrics_to_rank_zero, reduce_metrics
from ..sharding import EvenBatches, ShardSampler, is_sharded, shard_loader
from .progress import ProgressCallback
from .training import GradientAccumulation

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["DistributedTrainer", "distrib_ctx", "auto_distributed"]

AUTO_ENV = "LEARNLOOP_AUTO_DISTRIBUTED"


def auto_distributed() -> bool:
    """Whether a new Learner should add a DistributedTrainer: launched by torchrun with several processes,
    unless ``LEARNLOOP_AUTO_DISTRIBUTED=0``."""
    return D.launched_distributed() and os.environ.get(AUTO_ENV, "1") != "0"


class _DDP(DistributedDataParallel):
    """DDP whose missing attributes are read from the wrapped module (so `learn.model.reset()` still works)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("module", "buffer_hook"):  # DDP probes for these itself
                raise
            return getattr(self.module, name)


class DistributedTrainer(Callback):
    """Train over the ranks of a torch.distributed job with DDP, or FSDP (see the module docs).

    `split_batch`: the DataLoaders' batch size is the global batch, divided between the ranks (it
    must divide evenly); by default each rank takes batches of that size (fastai's behaviour).
    `shard_data=False`: the loaders already give each rank its own share; they are used as they are.
    `sync_bn`: convert BatchNorm layers to SyncBatchNorm (GPU only; the conversion is permanent).
    `fsdp`: shard the model with ``fully_shard`` (:mod:`learnloop.fsdp`) instead of replicating it;
    True, or a dict of ``fully_shard`` keywords; `shard_modules` picks the submodules sharded on
    their own (default: the model's direct children).
    `timeout`: for the process group, when this callback sets it up. Other keywords go to DDP.
    After each training phase rank 0's buffers (BatchNorm statistics) are copied to every rank, so that validation
    sees the job's, unless DDP is told not to sync them (``broadcast_buffers=False``, or torch's newer
    ``forward_sync_buffers=False``): each rank then keeps its own, as DDP does.
    """

    order = 4  # after GatherPredsCallback (0); before GradientAccumulation (6), MixedPrecision (10), Recorder (50)

    def __init__(
        self,
        split_batch: bool = False,
        shard_data: bool = True,
        sync_bn: bool = False,
        fsdp: bool | dict[str, Any] = False,
        shard_modules: ShardModules = None,
        timeout: timedelta | float | None = None,
        **ddp_kwargs: Any,
    ) -> None:
        self.split_batch, self.shard_data, self.sync_bn = split_batch, shard_data, sync_bn
        self.fsdp, self.shard_modules = fsdp, shard_modules
        self.timeout, self.ddp_kwargs = timeout, ddp_kwargs
        self.ddp: DistributedDataParallel | None = None
        self._wrapped = False  # the model is ready for distributed training (DDP wrapper made, or sharded)
        self._active = False
        self._depth = 0  # fits in progress: validate() inside a fit nests one
        self._epoch_begun = False  # an epoch of the fit in progress began (so the loop's `_in_fit` is up)
        self._cancels = CancelAgreement(self._share_gradients)
        self._synced = False  # this training batch's backward pass all-reduces the gradients (DDP)
        self._shards: list[tuple[Any, Any]] = []  # (original loader, this rank's copy), for this fit
        self._eval_sharded = False  # the loader being evaluated holds only this rank's share
        self._valid_cancelled_here = False  # this rank raised the cancel of the validation phase in progress
        self._saved: dict[str, Any] = {}
        self._no_sync = ExitStack()
        self._loss_mark = 0  # recorder.losses before this index have been averaged over ranks
        self._batch_split = 1  # ranks sharing each training batch: the world size once split_batch split the loader
        self._grad_sync: bool | None = None  # FSDP's gradient reduction switch, as last set
        self._sharded = False  # the model is sharded with fully_shard (fsdp=True, or by you before the fit)
        self._seed_due = False  # the loop's next read of the training share agrees on the epoch's shuffling seed
        self._seed = 0  # the seed agreed on for this epoch
        self._warned: set[str] = set()

    @property
    def batch_split(self) -> int:
        """How many ranks share each training batch: the world size while a fit reads a training loader this trainer
        split (``split_batch=True``), else 1. GradientAccumulation multiplies a batch's size by it, so that ``n_acc``
        counts the samples of the global batch, as in one process."""
        return self._batch_split

    # --------------------------------------------------------------- lifecycle
    def after_create(self) -> None:
        if D.launched_distributed():
            D.setup(timeout=self.timeout)  # at once, so rank checks (saving, logging) are right from the start
            if self.fsdp:
                self._shard_model()  # before the optimizer is made, so it is made on the shards

    def before_fit(self) -> None:
        learn = self.learn
        # A fit that raised left its state behind: restore it for a new fit, or for a validate() or get_preds()
        # called after it (not inside a fit, whose epochs had begun: the loop is no longer in a fit).
        if self._depth and (learn.create_mbar or (self._epoch_begun and not getattr(learn, "_in_fit", False))):
            self.restore()
        self._depth += 1
        if self._depth > 1:
            return
        self._epoch_begun = False
        if D.launched_distributed():
            D.setup(timeout=self.timeout)
        self._active = D.is_distributed()
        if not self._active:
            return
        self._loss_mark = 0
        self._cancels.reset()
        self._fix_device()
        if self.fsdp:
            self._shard_model()
        self._sharded = is_fsdp(learn.model)  # one you sharded yourself is trained as with fsdp=True, not wrapped
        if not D.is_rank_zero():
            self._saved["logger"] = learn.logger
            learn.logger = noop
            for cb in learn.cbs:
                if isinstance(cb, ProgressCallback):
                    cb.run = False  # the learner sets it back at after_fit

    def after_fit(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth or not self._active:
            return
        # validate()/get_preds() fire after_fit while an exception leaves them: no collective then (this rank may be
        # the only one that raised; the others would never answer).
        if not getattr(self.learn, "_unwinding", False) and self._end_of(CancelLevel.FIT) and self._wrapped:
            self._loss_mark = average_losses(self.learn, self._loss_mark)  # of an epoch a cancel cut short
        self.restore()

    def restore(self) -> None:
        """Put back what the fit changed: the plain model (an FSDP model stays sharded), the DataLoaders,
        the logger, the device."""
        self._no_sync.close()
        learn = self.learn
        if self._grad_sync is False:
            model: Any = learn.model
            model.set_requires_gradient_sync(True)
        self._grad_sync = None
        if self.ddp is not None and learn.model is self.ddp:
            learn.model = self.ddp.module
        self.ddp, self._wrapped = None, False
        dls = learn.dls
        loaders = getattr(dls, "loaders", None)
        if loaders is not None:
            for i, dl in enumerate(loaders):
                for original, copy in self._shards:
                    if dl is copy:
                        loaders[i] = original
        self._shards, self._batch_split = [], 1
        if "logger" in self._saved:
            learn.logger = self._saved.pop("logger")
        if "device" in self._saved:
            dls.device = self._saved.pop("device")
        self._depth, self._epoch_begun = 0, False

    def _fix_device(self) -> None:
        dls, device = self.learn.dls, D.rank_device()
        current = getattr(dls, "device", None)
        if isinstance(current, torch.device) and current.type == "cuda" and current != device:
            self._saved["device"] = current
            dls.device = device
            self.learn.model.to(device)

    def _shard_model(self) -> None:
        """FSDP: shard the model in place, once; an optimizer made before moves onto the shards."""
        learn = self.learn
        if is_fsdp(learn.model):
            return
        old_opt = learn.opt
        old_params = [p for plist in old_opt.param_lists for p in plist] if old_opt is not None else []
        kwargs = self.fsdp if isinstance(self.fsdp, dict) else {}
        shard_model(learn.model.to(D.rank_device()), self.shard_modules, **kwargs)
        if old_opt is not None:
            learn.create_opt()
            reshard_optimizer(old_opt, learn.opt, old_params)

    # ------------------------------------------------------------------ training
    def before_epoch(self) -> None:
        self._epoch_begun = True
        if self._active:
            self._cancels.ask()  # a cancel raised at the end of the last epoch (a tracker) stops every rank here

    def before_train(self) -> None:
        if not self._active:
            return
        learn = self.learn
        if not self._wrapped:
            self._cancels.ask()  # every rank must be here before the collectives of wrapping
            self._wrap()
        if self.ddp is not None:
            learn.model = self.ddp
        learn.dl = self._shard(learn.dl, train=True)
        sampler = getattr(learn.dl, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(learn.epoch)  # type: ignore[union-attr]
        recorder = getattr(learn, "recorder", None)
        self._loss_mark = len(recorder.losses) if recorder is not None else 0
        self._seed_due = True

    def _wrap(self) -> None:
        learn = self.learn
        if not self._sharded:
            model = learn.model
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            if self.sync_bn:
                batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
                if batchnorm and device.type != "cuda":  # checked before converting, which is permanent
                    raise D.DistributedError(
                        f"sync_bn=True converts BatchNorm layers to SyncBatchNorm, which runs on GPUs only, but the "
                        f"model is on {device}: use sync_bn=False (each process then keeps its own BatchNorm "
                        "statistics, rank 0's being broadcast after each training phase)."
                    )
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            device_ids = [device.index] if device.type == "cuda" else None
            self.ddp = _DDP(model, device_ids=device_ids, **self.ddp_kwargs)
        self._wrapped = True
        if not self.shard_data:
            return
        dls = learn.dls
        train = dls.train
        loaders = getattr(dls, "loaders", None)
        copy = self._shard(train, train=True)
        _check_share_has_batches(train, copy, self.split_batch)
        if loaders is not None:  # swapped in for the fit, so len(dls.train) is this rank's number of batches
            loaders[:] = [copy if i == 0 else self._shard(dl, train=False) for i, dl in enumerate(loaders)]

    def _shard(self, dl: Any, train: bool) -> Any:
        """This rank's copy of `dl` (made once per fit), or `dl` itself when it needs none."""
        if dl is None or not self.shard_data or isinstance(dl, EvenBatches):
            return dl
        # An evaluation loader over a DistributedSampler gets a ShardSampler in its place: the one pads the
        # shares with repeated items (counted twice in the metrics) and may shuffle them, and gather_preds puts
        # the shares back in dataset order as the other lays them out.
        if is_sharded(dl) and (train or isinstance(dl.sampler, ShardSampler)):
            return dl
        for original, copy in self._shards:
            if dl is original or dl is copy:
                return copy
        if not train and not isinstance(dl, torch.utils.data.DataLoader):
            return dl  # batches given by hand (predict): every rank evaluates them all
        # A loader made again from one of this fit's copies (get_preds inside a fit reads unshuffled(dls[i])) has
        # this rank's batch size already: split_batch must not divide it a second time.
        remade = isinstance(dl, torch.utils.data.DataLoader) and any(
            dl.dataset is c.dataset and dl.batch_size == c.batch_size for _, c in self._shards
        )
        copy = shard_loader(dl, D.rank(), D.world_size(), train=train, split_batch=self.split_batch and not remade,
                            agree_seed=self._agree_seed)
        if train and self.split_batch and not remade:
            self._batch_split = D.world_size()
        self._shards.append((dl, copy))
        return copy

    def _agree_seed(self, seed: int) -> int:
        """Rank 0's `seed` for this epoch's shuffling (DrawnSeedSampler), when the loop first reads the training
        share; a read of one rank's own later in the epoch (a callback's) gets the epoch's seed again, asking none."""
        if not self._seed_due:
            return self._seed
        self._seed_due = False
        self._cancels.ask()  # a rank that cancelled its training phase before reading any batch reads no seed
        self._seed = int(D.broadcast_object(seed))
        return self._seed

    def original_loader(self, dl: Any) -> Any:
        """The loader this rank's copy `dl` was made from in this fit (the one you built), else `dl` itself."""
        for original, copy in self._shards:
            if dl is copy:
                return original
        return dl

    def agree_before_checkpoint(self) -> None:
        """Make what rank 0 is about to save the job's: CheckpointCallback calls it on every rank before a checkpoint
        at a batch or at the end of an epoch. A cancel another rank raised is raised here (as before any collective);
        the smoothed training losses recorded since the last average are averaged over the ranks, and so are the
        gradients of an accumulation in progress (each rank's own until the step's all-reduce, which then gives what
        it would have given); rank 0 takes over the running totals of the training metrics (the other ranks carry on
        from none, and so do they on a resume). Every rank resumes from rank 0's checkpoint, so it must not hold
        rank 0's own values."""
        if not (self._active and self._wrapped):
            return
        self._cancels.ask()
        if self.learn.training:
            self._loss_mark = average_losses(self.learn, self._loss_mark)
            recorder = getattr(self.learn, "recorder", None)
            if recorder is not None and recorder.train_metrics and not recorder.cancel_train:
                hand_metrics_to_rank_zero(self.learn.metrics)
        accumulation = getattr(self.learn, "gradient_accumulation", None)
        if self.ddp is not None and isinstance(accumulation, GradientAccumulation) and accumulation.count:
            grads = [p.grad for p in self.ddp.module.parameters() if p.grad is not None]
            if grads:
                total = D.all_reduce_sum(torch.cat([g.detach().reshape(-1).double() for g in grads]))
                for g, mean in zip(grads, (total / D.world_size()).split([g.numel() for g in grads]), strict=True):
                    g.copy_(mean.view_as(g))

    def before_batch(self) -> None:
        self._synced = False
        if not self._active:
            return
        learn = self.learn
        if self._sharded:
            self._cancels.ask()  # every forward pass gathers the parameters from all ranks
            if not learn.training:
                if isinstance(learn.dl, EvenBatches) and learn.iter >= learn.dl.real_batches:
                    learn.yb = ()  # an empty batch that keeps this rank in step: no loss, no metrics
                return
        if not learn.training or not self._wrapped:
            return
        self._no_sync.close()
        if self.ddp is not None and (self.ddp.will_sync_module_buffers() or _may_rebuild_buckets(self.ddp)):
            self._cancels.ask()  # the forward broadcasts rank 0's buffers, or DDP's new bucket layout
        accumulation = getattr(learn, "gradient_accumulation", None)
        sync = not isinstance(accumulation, GradientAccumulation) or accumulation.will_step()
        self._synced = sync and self.ddp is not None
        if self.ddp is not None and not sync:
            self._no_sync.enter_context(self.ddp.no_sync())
        elif self._sharded and sync != self._grad_sync:
            model: Any = learn.model
            model.set_requires_gradient_sync(sync)  # FSDP's no_sync: gradients stay unreduced until the step
            self._grad_sync = sync

    def before_backward(self) -> None:
        if self._active:
            self._cancels.ask()  # the backward pass all-reduces the gradients

    def before_step(self) -> None:
        if self._active and self._runs_between_backward_and_step():
            self._cancels.ask()  # a rank that cancelled after the backward pass does not step: none may

    def _runs_between_backward_and_step(self) -> bool:
        """Whether a callback runs after the backward's question and before this one, and so may cancel there:
        one at after_backward (or after_cancel_backward), or at before_step ahead of this trainer. Without one (the
        default callbacks), no question: it would cost an all-reduce per step to learn nothing."""
        hooks = self.learn._hooks
        if hooks[Event.after_backward] or hooks[Event.after_cancel_backward]:
            return True
        at_step = hooks[Event.before_step]
        return not at_step or at_step[0][0] is not self

    def after_batch(self) -> None:
        self._no_sync.close()
        self._synced = False  # opt.zero_grad() ran, or after_cancel_batch took note that it did not

    def after_train(self) -> None:
        if not self._active:
            return
        self._no_sync.close()
        self._end_of(CancelLevel.TRAIN)
        self._loss_mark = average_losses(self.learn, self._loss_mark)  # the Recorder (order 50) logs the last one
        recorder = getattr(self.learn, "recorder", None)
        if recorder is not None and recorder.train_metrics and not recorder.cancel_train:
            reduce_metrics(self.learn.metrics, self._warned)
        if self._wrapped and (self.ddp is None or self.ddp.broadcast_buffers):
            self._broadcast_buffers()

    # ---------------------------------------------------------------- validation
    def before_validate(self) -> None:
        if not self._active:
            return
        learn = self.learn
        if self.ddp is not None and learn.model is self.ddp:
            learn.model = self.ddp.module  # a forward pass needs no DDP, and DDP's could wait on other ranks
        dl = self._shard(learn.dl, train=False)
        self._eval_sharded = is_sharded(dl) or isinstance(dl, EvenBatches) or not self.shard_data
        if self._sharded and isinstance(dl, torch.utils.data.DataLoader) and isinstance(dl.sampler, ShardSampler):
            dl = EvenBatches(dl)
        learn.dl = dl
        self._valid_cancelled_here = False
        gather = getattr(learn, "gather_preds", None)
        if gather is not None and self._eval_sharded:
            gather.keep_batches = True  # a phase a rank cancels keeps the batches every rank got through
        self._cancels.ask()  # an epoch or fit a rank cancelled after its training phase: no rank validates

    def after_validate(self) -> None:
        if not self._active:
            return
        learn = self.learn
        if self.ddp is not None and learn.model is self.ddp.module:
            learn.model = self.ddp
        cancelled = self._end_of(CancelLevel.VALID)  # on any rank
        if not self._eval_sharded:
            return  # every rank saw all of it
        recorder = getattr(learn, "recorder", None)
        gather = getattr(learn, "gather_preds", None)
        if gather is not None:
            if cancelled:
                self._cut_cancelled(gather)
            gather.keep_batches = False
            gather.forget_batches()
            gather_preds(gather, in_order=self.shard_data)
        if not cancelled and recorder is not None and recorder.valid_metrics:
            reduce_metrics([recorder.loss, *learn.metrics], self._warned)

    def _cut_cancelled(self, gather: Any) -> None:
        """Cut the predictions of a validation phase a rank cancelled (a callback's CancelValidException) to the
        batches before the one where it did (the first such rank's), on every rank: the other ranks, which learnt
        of the cancel at the phase's end only, ran on through their shares. Each rank's share then holds the same
        batches, as one process cancelled at that batch gathers, and they interleave."""
        own = gather.batches_seen if self._valid_cancelled_here else None
        reached = [n for n in D.all_gather_objects(own) if n is not None]
        gather.keep_first(min(reached, default=gather.batches_seen))

    def after_epoch(self) -> None:
        if not self._active or getattr(self.learn, "_unwinding", False):
            return
        if self._end_of(CancelLevel.EPOCH) and self._wrapped:
            self._loss_mark = average_losses(self.learn, self._loss_mark)  # of a training phase a cancel cut short

    # ----------------------------------------------------------- cancels (cancel_agreement.py)
    def _end_of(self, phase: CancelLevel) -> bool:
        return self._cancels.end_of(phase, self.learn)

    def after_cancel_batch(self) -> None:
        self._carry_gradients()

    def _carry_gradients(self) -> None:
        """A cancel ended this training batch after its backward pass all-reduced the gradients, before
        opt.zero_grad(): they carry into the next step (SPEC §1), and must on every rank (cancel_agreement.py)."""
        if self._synced and self.learn.training:
            self._cancels.carrying = True
        self._synced = False

    def after_cancel_train(self) -> None:
        self._no_sync.close()
        if self._active:
            self._carry_gradients()
            self._cancels.tell(CancelLevel.TRAIN)

    def after_cancel_validate(self) -> None:
        if self._active:
            self._valid_cancelled_here = self._cancels.tell(CancelLevel.VALID)

    def after_cancel_epoch(self) -> None:
        if self._active:
            self._carry_gradients()
            self._cancels.tell(CancelLevel.EPOCH)

    def after_cancel_fit(self) -> None:
        if self._active:
            self._carry_gradients()
            self._cancels.tell(CancelLevel.FIT)

    def _share_gradients(self, src: int) -> None:
        """Rank `src`'s gradients everywhere: those it carries into the next step, which the other ranks zeroed (the
        same on every rank, as DDP's all-reduce left them)."""
        module = self.ddp.module if self.ddp is not None else self.learn.model
        for p in module.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.broadcast(p.grad, src=src)

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere, as DDP's next forward would make them (not with DDP's
        ``broadcast_buffers=False``/``forward_sync_buffers=False``: each rank then keeps its own, as under DDP)."""
        module = self.ddp.module if self.ddp is not None else self.learn.model
        for buf in module.buffers():
            torch.distributed.broadcast(buf, src=0)


def _may_rebuild_buckets(ddp: DistributedDataParallel) -> bool:
    """Whether DDP's next training forward may rebuild its gradient buckets, a collective. A wrapper does it
    once, in a forward after a backward that synchronised the gradients (the second one with ``static_graph``);
    never with ``find_unused_parameters`` (without ``static_graph``), a Python reducer or a delayed all-reduce."""
    if getattr(ddp, "_has_rebuilt_buckets", False):
        return False
    if getattr(ddp, "_use_python_reducer", False) or getattr(ddp, "_delay_all_reduce_all_params", False):
        return False
    return bool(getattr(ddp, "static_graph", False)) or not getattr(ddp, "find_unused_parameters", False)


@contextmanager
def distrib_ctx(learn: Learner, timeout: timedelta | float | None = None, **kwargs: Any) -> Iterator[Learner]:
    """Train `learn` with a DistributedTrainer(**kwargs) in this block; a no-op in a single process.

    Sets the process group up if needed (and tears it down at the end if it did), and replaces for
    the block any DistributedTrainer the learner already has. `timeout` bounds the collectives of the
    block, also in a process group set up before it (:func:`~learnloop.distributed.set_timeout`).
    """
    if not (D.launched_distributed() or D.is_distributed()):
        yield learn
        return
    created = D.setup(timeout=timeout)
    previous = D.set_timeout(timeout) if timeout is not None and not created else None  # a group up already
    others = [cb for cb in learn.cbs if isinstance(cb, DistributedTrainer)]
    learn.remove_cbs(others)
    trainer = DistributedTrainer(timeout=timeout, **kwargs)
    learn.add_cb(trainer)
    try:
        yield learn
    finally:
        trainer.restore()
        learn.remove_cb(trainer)
        learn.add_cbs(others)
        if created:
            D.teardown()
        elif timeout is not None:
            D.set_timeout(previous)


def _check_share_has_batches(train: Any, share: Any, split_batch: bool) -> None:
    """Refuse a rank's share of the training data that yields no batch (the loader as built has some): the fit would
    train nothing and say nothing. Every rank's share has the same number of batches, so every rank raises here."""
    if share is train or not isinstance(share, torch.utils.data.DataLoader) or len(share) or not len(train):
        return
    items, per_rank = len(share.dataset), len(share.sampler)  # type: ignore[arg-type]
    raise D.DistributedError(
        f"This rank's share of the training data yields no batch: {items} items over {D.world_size()} ranks are "
        f"{per_rank} per rank, fewer than batch_size={share.batch_size} with drop_last={share.drop_last}, where one "
        f"process would read {len(train)} batch(es). Use a smaller batch size, drop_last=False or more data"
        + ("." if split_batch else ", or DistributedTrainer(split_batch=True) to divide each batch between the ranks.")
    )

