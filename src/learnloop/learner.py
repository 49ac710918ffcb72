"""The Learner: a model, its data, loss and optimizer, trained by the loop with callbacks.

The class is built in three layers, each a module short enough to read in one go: the loop and the state it keeps
(`Loop`, loop.py, on the callbacks and events of `CallbackHost`, dispatch.py), the runs of the validation phase
(`Inference`: validate, get_preds, predict; inference.py), and here what sets a Learner up and drives it: the
constructor, `fit`, saving and loading, freezing, mixed precision and distributed training. The fit policies
(`fit_one_cycle`...) and `lr_find` are functions of callbacks/schedule.py and callbacks/lr_finder.py, made methods.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .callback import Callback, before_batch_cb
from .callbacks import lr_finder as _lr_finder
from .callbacks import schedule as _schedule
from .callbacks.checkpointing import resolve_resume
from .callbacks.core import SkipToEpoch, TrainEvalCallback
from .callbacks.distributed import DistributedTrainer, auto_distributed
from .callbacks.distributed import distrib_ctx as _distrib_ctx
from .callbacks.fp16 import AMPMode, MixedPrecision, exit_autocasts
from .callbacks.perf import ChannelsLast
from .callbacks.progress import ProgressCallback
from .callbacks.recorder import Recorder
from .callbacks.steps import end_skipped_steps
from .checkpoint import check_pickle_protocol, is_buffer, load_model, save_model
from .data import DataLoaders
from .dispatch import as_list
from .distributed import barrier, is_rank_zero, unwrap_model
from .errors import ArgumentError, InputError, WrongKindError, to_epochs, to_lr, to_number, to_wd
from .events import Event
from .fsdp import is_fsdp, load_sharded, save_sharded
from .inference import Inference, replacing_yield
from .learner_args import check_dls, check_funcs, check_groups, check_opt, check_train_data
from .metrics import Metric, mk_metric
from .metrics.accum import TorchMetricLike
from .optimizer import Adam, OptimWrapper
from .params import NORM_TYPES, norm_bias_params, trainable_params
from .resume import ResumeState
from .summary import PrettyString
from .summary import summary as _summary
from .warn import warn_caller

__all__ = [
    "Learner", "trainable_params", "norm_bias_params", "NORM_TYPES", "replacing_yield", "save_model", "load_model",
    "before_batch_cb",
]

DEFAULT_CALLBACKS: tuple[type[Callback], ...] = (TrainEvalCallback, Recorder, ProgressCallback)


def _no_parameters(e: ValueError) -> bool:
    """Whether `e` is an optimizer refusing an empty parameter list (learnloop's optimizers and torch's say so)."""
    return "empty parameter list" in str(e)


class Learner(Inference):
    """Trains `model` on `dls` with `loss_func` and an optimizer from `opt_func`, firing callback events.

    The arguments and defaults are fastai's:

    - `dls`: a `DataLoaders`, or a `(train, valid)` sequence of loaders (any iterables of batches).
    - `model`: the `nn.Module` to train; `loss_func` is called as `loss_func(pred, *yb)` (required: there is no data
      layer to infer it from, unless `dls` has a `loss_func`).
    - `opt_func`: called as `opt_func(param_groups, lr=lr)` to make the optimizer (`Adam`, or any factory such as
      `partial(OptimWrapper, opt=torch.optim.AdamW)`); `lr` is the learning rate `fit` uses when given none.
    - `splitter`: `splitter(model)` gives the parameters, or a list of parameter groups (for `freeze_to` and
      discriminative lrs); the default, `trainable_params`, is one group of the parameters that require a gradient.
    - `cbs`: callbacks (instances or classes) added after the default ones (`TrainEvalCallback`, `Recorder`,
      `ProgressCallback`; none of those with `default_cbs=False`).
    - `metrics`: a metric or a list of them, computed on the validation set: functions `f(pred, *yb)` (averaged
      over the batches, as `AvgMetric`), `Metric` objects (`AccumMetric`, `R2Score()`...), torchmetrics-style objects.
    - `path` (default: `dls.path`, else '.') and `model_dir` ('models'): where `save`, `load`, `export` and the
      loggers put their files (`path/model_dir/name.pth`).
    - `wd`: the weight decay every fit sets (None: the optimizer's own default); `wd_bn_bias=False` exempts the
      normalisation layers' parameters and every bias from it; `train_bn=True` keeps normalisation layers
      training in frozen groups.
    - `moms`: the (start, middle, end) momentums of `fit_one_cycle` when it is given none.

    >>> learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy)
    >>> learn.fit(3, lr=1e-3)
    """

    # Set by the Recorder: the last epoch's [train_loss, valid_loss, *metrics].
    final_record: list[Any]

    def __init__(
        self,
        dls: DataLoaders | Sequence[Iterable[Any]],
        model: nn.Module,
        loss_func: Callable[..., torch.Tensor] | None = None,
        opt_func: Callable[..., Any] = Adam,
        lr: float | slice = 1e-3,
        splitter: Callable[[nn.Module], Any] = trainable_params,
        cbs: Callback | type[Callback] | Iterable[Callback | type[Callback]] | None = None,
        metrics: Any = None,
        path: str | Path | None = None,
        model_dir: str | Path = "models",
        wd: float | None = None,
        wd_bn_bias: bool = False,
        train_bn: bool = True,
        moms: tuple[float, ...] = (0.95, 0.85, 0.95),
        default_cbs: bool = True,
    ) -> None:
        check_dls(dls)
        if not isinstance(dls, DataLoaders) and isinstance(dls, (tuple, list)):
            dls = DataLoaders(*dls)
        if not isinstance(model, nn.Module):  # fastai fails reading an attribute of it: an AttributeError too
            raise WrongKindError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        check_funcs(loss_func, opt_func, splitter)
        if loss_func is None:
            loss_func = getattr(dls, "loss_func", None) or getattr(getattr(dls, "train_ds", None), "loss_func", None)
        if loss_func is None:
            raise InputError(
                "No loss function: pass one, e.g. Learner(dls, model, loss_func=nn.CrossEntropyLoss()); "
                "it could not be inferred from the data."
            )
        lr = to_lr(lr)
        wd = to_wd(wd)
        if path is not None and not isinstance(path, (str, os.PathLike)):  # fastai: Path()'s TypeError, naming none
            raise ArgumentError(
                f"path is the folder save(), export() and the loggers write under: a str or a Path, got {path!r} "
                "(None for the data's path, or '.')."
            )
        if not isinstance(model_dir, (str, os.PathLike)):  # fastai: a TypeError from `path / model_dir` at save
            raise ArgumentError(
                f"model_dir is the folder, under path, where save() and load() keep models: a str or a Path, got "
                f"{model_dir!r} (the default is 'models')."
            )
        super().__init__()  # the loop (loop.py) and its callbacks (dispatch.py), none added yet
        self.dls = dls
        self.model = model
        self.loss_func = loss_func
        self.opt_func = opt_func
        self.lr = lr
        self.splitter = splitter
        self.path = Path(path) if path is not None else Path(getattr(dls, "path", "."))
        self.model_dir = model_dir  # as given, like fastai; joined with `path` where files are written
        self.wd = wd
        self.wd_bn_bias = wd_bn_bias
        self.train_bn = train_bn
        self.moms = moms
        self.metrics = metrics
        self.opt = None
        self.logger: Callable[[Any], None] = print
        self.create_mbar = True
        self._fit_stage: str | None = None  # which fit of fine_tune runs (for exact resume, resume.py)
        if default_cbs:
            self.add_cbs(DEFAULT_CALLBACKS)
        self.add_cbs(cbs)
        if auto_distributed() and not self._grab(DistributedTrainer):  # launched by torchrun: one env lookup
            self.add_cb(DistributedTrainer())
        self(Event.after_create)

    # ----------------------------------------------------------- what is recorded
    @property
    def metrics(self) -> list[Metric]:
        """The metrics computed on the validation set (functions are wrapped in `AvgMetric`)."""
        return self._metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        # Any iterable of metrics, as fastai's `L(metrics)` takes (a generator, fastcore's `L`); a metric itself may be
        # iterable (a torchmetrics MetricCollection yields its keys): it is one metric.
        one = value is None or callable(value) or isinstance(value, (str, Mapping, Metric, TorchMetricLike))
        items = [] if value is None else [value] if one or not isinstance(value, Iterable) else list(value)
        self._metrics = [mk_metric(m) for m in items]

    @property
    def smooth_loss(self) -> torch.Tensor:
        """The Recorder's smoothed training loss after the last batch it recorded (reading it waits on the device)."""
        recorder = self._recorder()
        value = recorder.smooth_value if recorder is not None else self.__dict__.get("_smooth_loss")
        if value is None:
            raise AttributeError("'Learner' object has no attribute 'smooth_loss': no training batch recorded yet")
        return value

    @smooth_loss.setter
    def smooth_loss(self, value: Any) -> None:
        recorder = self._recorder()
        if recorder is not None:
            recorder.smooth_value = value
        else:  # no Recorder: a plain attribute, as in fastai
            self.__dict__["_smooth_loss"] = value

    def _recorder(self) -> Recorder | None:
        recorder = self.__dict__.get("recorder")
        if isinstance(recorder, Recorder):
            return recorder
        return next((cb for cb in self.cbs if isinstance(cb, Recorder)), None)  # a subclass, under another name

    # --------------------------------------------------------------- public API
    def create_opt(self) -> None:
        """Create the optimizer from `opt_func` over the groups made by `splitter`."""
        if isinstance(self.opt_func, functools.partial) and "lr" in self.opt_func.keywords:
            self.lr = self.opt_func.keywords["lr"]
        if isinstance(self.opt_func, OptimWrapper):  # an optimizer already built: used as it is, its state cleared
            self.opt = self.opt_func
            self.opt.clear_state()
        else:
            try:
                opt = self.opt_func(check_groups(self.splitter(self.model), self.splitter), lr=self.lr)
            except ValueError as e:
                if _no_parameters(e):
                    e.add_note(
                        "learnloop: the splitter gave the optimizer no parameters: the model has none that require a "
                        "gradient (frozen: learn.unfreeze(), or p.requires_grad_(True)), or none at all."
                    )
                raise
            self.opt = check_opt(opt, self.opt_func)
        if not self.wd_bn_bias:
            for p in norm_bias_params(self.model, with_bias=True):
                self.opt.state[p]["do_wd"] = False
        if self.train_bn:
            for p in norm_bias_params(self.model, with_bias=False):
                self.opt.state[p]["force_train"] = True

    def fit(
        self,
        n_epoch: int,
        lr: float | slice | Sequence[float] | None = None,
        wd: float | None = None,
        cbs: Any = None,
        reset_opt: bool = False,
        start_epoch: int = 0,
        resume: str | Path | None = None,
    ) -> None:
        """Train for `n_epoch` epochs, validating after each one.

        `lr` (default: `learn.lr`; a slice spreads it over the parameter groups, a list gives one per group) and
        `wd` (default: `learn.wd`, else the optimizer's) are set on the optimizer, which is made first when there is
        none or `reset_opt` is True. `cbs` are added for this fit only. `start_epoch` skips the epochs before it (a
        restart of the schedule's position, as in fastai; it does not restore the optimizer or the random state:
        `resume` does).

        `resume` continues a run from a checkpoint of `CheckpointCallback` (a file, its folder, or 'latest'),
        ending exactly as the uninterrupted run would have; call it as the interrupted fit was called.
        """
        n_epoch = to_epochs(n_epoch)  # a numpy integer too
        if lr is not None:
            lr = to_lr(lr)
        wd = to_wd(wd)
        to_number(start_epoch, "start_epoch", "fit")  # a string: fastai fails at the first epoch (a TypeError)
        if not 0 <= start_epoch <= n_epoch:  # fastai trains every epoch, or none, without a word
            every = "every epoch is trained" if start_epoch < 0 else "no epoch is trained"
            warn_caller(f"fit: start_epoch={start_epoch!r} is outside the fit's {n_epoch} epochs: {every}.")
        if resume is not None and start_epoch:
            raise ValueError("fit: give resume= or start_epoch=, not both (a checkpoint knows where to resume).")
        check_train_data(self.dls)
        if n_epoch - start_epoch > 1 and isinstance(getattr(self.dls, "valid", None), Iterator):
            warn_caller(
                "The validation data is an iterator (a generator, say), which can be read once: the epochs after "
                "the first are validated on nothing. Give a list of batches or a DataLoader."
            )
        cbs = as_list(cbs)
        if start_epoch:
            cbs = [*cbs, SkipToEpoch(start_epoch)]
        with self.added_cbs(cbs):
            # Without it nothing sets learn.training unless a callback of the user's does: the loop warns (once) at
            # the end of a training phase that ran with `training` False. fastai's trains nothing either, silently.
            self._warn_untrained = not self._grab(TrainEvalCallback)
            if reset_opt or self.opt is None:
                self.create_opt()
            # Read and checked before anything changes: a wrong file fails here, before any event.
            file = resolve_resume(self, resume) if resume is not None else None
            resuming = ResumeState(self, file, n_epoch) if file is not None else None
            if wd is None:
                wd = self.wd
            # The lr first: one the optimizer refuses (a list of the wrong length) must not leave `wd` changed. Each
            # set_hypers refuses before it changes anything; a wd refused after it puts the lr back.
            old_lrs = [h["lr"] for h in self.opt.hypers]
            self.opt.set_hypers(lr=self.lr if lr is None else lr)
            if wd is not None:
                try:
                    self.opt.set_hypers(wd=wd)
                except BaseException:
                    self.opt.set_hypers(lr=old_lrs)
                    raise
            self.n_epoch = n_epoch
            if resuming is not None:
                resuming.load_model(self)
            logger = self.logger
            self._resume = resuming
            try:
                self._run_fit()
            except BaseException as e:
                # Only Ctrl-C gets after_fit; on this path a callback that swapped the logger cannot put it back,
                # and a MixedPrecision cannot leave the autocast of the batch that raised (fastai's stays in it), nor
                # forget the steps it skipped, which would hold back the next fit's schedule (one without it too).
                self.logger = logger
                exit_autocasts(self.cbs)
                end_skipped_steps(self)
                if isinstance(e, KeyboardInterrupt):
                    self._end_cleanup()
                raise
            finally:
                self._resume, self._data_order = None, None
            self._end_cleanup()
            if any(cb.ran_last_batch for cb in self._grab(TrainEvalCallback) if isinstance(cb, TrainEvalCallback)):
                self.pct_train = 1.0  # SPEC; fastai's sum can end a rounding away (0.9999999999999999 for 10 batches)

    @contextmanager
    def no_bar(self) -> Iterator[Learner]:
        """Run the block without the progress callback (`with learn.no_bar() as learn:`, as in fastai)."""
        with self.removed_cbs(ProgressCallback):
            yield self

    def _model_file(self, file: str | Path | IO[bytes]) -> Any:
        return file if is_buffer(file) else self.path / self.model_dir / f"{file}.pth"

    def save(self, file: str | Path | IO[bytes], with_opt: bool = True, pickle_protocol: int = 2) -> Any:
        """Save the model (and the optimizer's state, with `with_opt`) to `path/model_dir/file.pth`, atomically, with
        `torch.save`'s `pickle_protocol` (accepted for fastai's code: only 2, what `load` reads cleanly); returns the
        path.
        An open buffer (`io.BytesIO`) is written into and returned instead, as in fastai.

        In a distributed job, call it on every rank: rank 0 writes, and every rank waits until the
        file is complete, so any rank can load it next. A model sharded with FSDP is saved with
        torch.distributed.checkpoint instead, each rank writing its shard, to the folder `file.dcp`.
        """
        check_pickle_protocol(pickle_protocol, "learn.load")  # on every rank, before any rank writes or waits
        path = self._model_file(file)
        if is_fsdp(self.model):
            if is_buffer(path):
                raise TypeError(
                    "A model sharded with FSDP is saved to a folder, one file per rank: give a name, not a buffer."
                )
            return save_sharded(path, self.model, self.opt, with_opt=with_opt)
        if is_rank_zero():
            save_model(path, unwrap_model(self.model), self.opt, with_opt=with_opt)
        barrier()
        return path

    def load(
        self,
        file: str | Path | IO[bytes],
        device: Any = None,
        with_opt: bool = True,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> Learner:
        """Load `path/model_dir/file.pth` (written by `save`), or an open buffer from where it stands, into the
        model and optimizer. Only tensors and plain containers are read, unless `weights_only=False` (torch.load's
        argument, which fastai passes on): then anything is unpickled, for a file you trust. The tensors are read
        onto `device` (default: the device `dls` feeds); `with_opt` loads the optimizer's state too when the file
        holds one (a warning when it holds none, or one this optimizer cannot take); `strict` is
        `load_state_dict`'s: the file's weights must match the model's names and shapes exactly. Returns the learner.

        The optimizer is created first when there is none, as in fastai; a model with no parameter to train (frozen
        whole, or with buffers only) gets none, and only its weights are loaded (fastai's fails)."""
        if device is None:
            device = getattr(self.dls, "device", None)
        if self.opt is None:
            try:
                self.create_opt()
            except ValueError as e:
                if not _no_parameters(e):
                    raise
                if with_opt:
                    warn_caller(
                        "learn.load: the model has no parameter to train (frozen whole, or none at all), so there is "
                        "no optimizer to load a state into: only the weights are loaded (with_opt=False: no warning)."
                    )
        model = unwrap_model(self.model)
        if is_fsdp(model):
            if is_buffer(file):
                raise TypeError(
                    "A model sharded with FSDP is loaded from a folder, one file per rank: give a name, not a buffer."
                )
            load_sharded(self._model_file(file), model, self.opt, with_opt=with_opt)
            return self
        load_model(  # no optimizer here: the model has nothing to train, warned of above
            self._model_file(file), model, self.opt, with_opt=with_opt and self.opt is not None, device=device,
            strict=strict,
            weights_only=weights_only,
        )
        return self

    def export(
        self,
        fname: str | Path = "export.pkl",
        pickle_module: Any = None,
        pickle_protocol: int = 2,
        *,
        pickle_model: bool = True,
    ) -> Path:
        """Save the model for inference to `path/fname`, atomically, for `load_learner` (see learnloop.export).

        The file is read with torch's weights-only loader; the pickled model it also holds (unless
        `pickle_model=False`) is only unpickled by `load_learner(..., trusted=True)`. `pickle_module` (say
        cloudpickle, for a model with lambdas; default: pickle) and `pickle_protocol` pickle that model. A name
        ending in `.safetensors` writes the weights in that format.
        """
        from .export import export_learner

        return export_learner(self, fname, pickle_model, pickle_module, pickle_protocol)

    def summary(self) -> PrettyString:
        """The model's layers, output shapes and parameters on a training batch, then the optimizer, the loss
        function, the frozen state and the callbacks: fastai's text (see `learnloop.summary`)."""
        return _summary(self)

    def freeze_to(self, n: int) -> None:
        """Freeze the parameter groups before group `n` (normalisation layers keep training if `train_bn`)."""
        if isinstance(n, bool) or not hasattr(type(n), "__index__"):  # fastai: a TypeError from its comparison
            raise ArgumentError(f"freeze_to(n={n!r}): n is the index of the first parameter group to train, an int "
                                "(negative counts from the last group: freeze_to(-1) trains the last one only).")
        if self.opt is None:
            self.create_opt()
        self.opt.freeze_to(n)
        self.opt.clear_state()

    def freeze(self) -> None:
        """Freeze every parameter group but the last."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Make every parameter group trainable."""
        self.freeze_to(0)

    def __getattr__(self, name: str) -> Any:
        model = self.__dict__.get("model")
        if name.startswith("_") or model is None:
            raise AttributeError(f"'Learner' object has no attribute {name!r}")
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(f"'Learner' object has no attribute {name!r}, nor has its model") from None

    def __repr__(self) -> str:
        return f"Learner(model={type(self.model).__name__}, cbs={self.sorted_cbs()})"

    # ----------------------------------------------------------- mixed precision
    # Set by MixedPrecision: the GradScaler during fit, and the skipped-step record of callbacks/steps.py.
    scaler: Any
    opt_step_skipped: bool
    skipped_steps: int
    pct_skipped: float

    def to_fp16(self, **kwargs: Any) -> Learner:
        """Train in mixed precision with float16 and a GradScaler (`kwargs` go to `MixedPrecision`)."""
        cb = MixedPrecision(**kwargs)  # built first, so bad arguments leave the learner as it was
        return self.to_fp32().add_cb(cb)

    def to_bf16(self) -> Learner:
        """Train in mixed precision with bfloat16 (no loss scaling needed)."""
        return self.to_fp16(amp_mode="bf16")

    def to_fp32(self) -> Learner:
        """Train in full precision again: remove MixedPrecision (leaving the autocast a fit that raised left it in)."""
        exit_autocasts(self.cbs)
        return self.remove_cb(MixedPrecision)

    def to_channelslast(self, use_amp: bool = True, amp_mode: str | AMPMode = AMPMode.FP16, **kwargs: Any) -> Learner:
        """Train in channels_last memory format (`ChannelsLast`), with mixed precision in `amp_mode` too unless
        `use_amp` is False (`kwargs` go to `MixedPrecision`). As fastai's: a learner that already has either
        callback gets no new MixedPrecision, and one that has a ChannelsLast gets no second one."""
        has = {cls: any(isinstance(cb, cls) for cb in self.cbs) for cls in (ChannelsLast, MixedPrecision)}
        if use_amp and not any(has.values()):
            return self.add_cbs([ChannelsLast(), MixedPrecision(amp_mode, **kwargs)])
        return self if has[ChannelsLast] else self.add_cb(ChannelsLast())

    def to_contiguous(self, to_fp32: bool = False) -> Learner:
        """Back to the default (contiguous) memory format: the model converted, ChannelsLast removed, and
        MixedPrecision too with `to_fp32`."""
        self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch's stub lacks it
        self.remove_cb(ChannelsLast)
        return self.to_fp32() if to_fp32 else self

    # ---- fit policies and the LR finder: functions of callbacks/schedule.py and callbacks/lr_finder.py, whose first
    # parameter is the learner (named `self`, as these are its methods: `learn.fit_one_cycle(...)`)
    fit_one_cycle = _schedule.fit_one_cycle
    fit_flat_cos = _schedule.fit_flat_cos
    fit_sgdr = _schedule.fit_sgdr
    fine_tune = _schedule.fine_tune
    lr_find = _lr_finder.lr_find

    # ---- distributed training (callbacks/distributed.py)
    @contextmanager
    def distrib_ctx(
        self, split_batch: bool = False, sync_bn: bool = False, timeout: Any = None, in_notebook: bool = False,
        **kwargs: Any,
    ) -> Iterator[Learner]:
        """Train with DistributedDataParallel in the block when launched by torchrun (a no-op otherwise).

        `split_batch=True` divides the batch size between the processes; `timeout` (seconds or a timedelta)
        bounds every collective. `in_notebook=True` (fastai's, for processes started from a notebook) prints
        "Training Learner..." on rank 0; the process group is set up as without it. Other keywords go to
        `DistributedTrainer` (and on to DDP).

        >>> with learn.distrib_ctx():
        ...     learn.fit_one_cycle(3)
        """
        with _distrib_ctx(self, split_batch=split_batch, sync_bn=sync_bn, timeout=timeout, **kwargs):
            if in_notebook and is_rank_zero():
                print("Training Learner...")
            yield self
