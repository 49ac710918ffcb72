"""Runs of the validation phase outside a fit's epochs: `validate`, `get_preds` and `predict`.

`Inference` is the part of the `Learner` (learner.py) that evaluates and predicts. Each run fires before_fit and
before_epoch, one validation phase of the loop (loop.py) over the data asked for, then after_epoch and after_fit
(`validation_context`), with the epoch table and bar silenced; `get_preds` gathers the batches' predictions with
`GatherPredsCallback`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from .callback import noop
from .callbacks.core import GatherPredsCallback
from .callbacks.distributed import DistributedTrainer
from .data import to_detach, unshuffled
from .dispatch import as_list
from .distributed import is_distributed
from .errors import ArgumentError, ValueTypeError, to_int
from .explain import describe
from .loop import Loop
from .warn import warn_caller

__all__ = ["Inference", "replacing_yield"]


class Inference(Loop):
    """The Learner's validate, get_preds and predict, and the context they run the validation phase in."""

    def no_logging(self) -> AbstractContextManager[None]:
        """Silence the per-epoch table for the duration of the block."""
        return replacing_yield(self, "logger", noop)

    def no_mbar(self) -> AbstractContextManager[None]:
        """Don't create the epoch progress bar in this block."""
        return replacing_yield(self, "create_mbar", False)

    @contextmanager
    def validation_context(self, cbs: Any = None, inner: bool = False) -> Iterator[None]:
        """The events around `validate()`'s and `get_preds()`'s validation phase: before_fit and before_epoch, then
        after_epoch and after_fit, those even when an exception leaves the phase (as fastai's). `inner=True` (a call
        from inside a running fit that should leave the fit's callbacks alone) fires none of them. The last batch's
        state (`xb`, `pred`, `loss`...) is left in place, as fastai leaves it."""
        with self.no_logging(), self.no_mbar(), self.added_cbs(cbs):
            if inner:
                yield
                return
            outer, self._nested_run = self._nested_run, self._in_fit
            try:
                with self:
                    yield
            finally:
                self._nested_run = outer

    def validate(self, ds_idx: int = 1, dl: Any = None, cbs: Any = None) -> list[Any] | None:
        """Evaluate on the validation set (or `dl`): `[valid_loss, *metrics]`, the Recorder's `final_record`
        (None when no Recorder ever recorded one). `ds_idx` picks `dls[ds_idx]` (0 training, 1 validation), `dl`
        any loader of batches instead; `cbs` are added for this call only."""
        _check_data_arguments(self.dls, "validate", ds_idx, dl)
        dl = self.dls[ds_idx] if dl is None else dl
        with self.validation_context(cbs):
            self._do_epoch_validate(ds_idx, dl)
        return getattr(self, "final_record", None)

    def get_preds(
        self,
        ds_idx: int = 1,
        dl: Any = None,
        with_input: bool = False,
        with_decoded: bool = False,
        with_loss: bool = False,
        act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        inner: bool = False,
        reorder: bool = True,
        cbs: Any = None,
        *,
        save_preds: str | os.PathLike[str] | None = None,
        save_targs: str | os.PathLike[str] | None = None,
        with_preds: bool = True,
        with_targs: bool = True,
        concat_dim: int = 0,
        pickle_protocol: int = 2,
    ) -> tuple[Any, ...]:
        """Predictions and targets over a dataset: `(inputs?, preds, targets, decoded?, losses?)`.

        `ds_idx` picks `dls[ds_idx]` (0 training, 1 validation), read in dataset order: unshuffled, its last
        partial batch kept. `dl`, any iterable of batches, is read instead, as it comes. Predictions go through
        `act`, else the loss function's `activation` if it has one; `with_decoded` adds the loss function's
        `decodes` of them (the predictions themselves without one), `with_loss` a loss per item (the loss function
        made unreduced after the callbacks' `before_fit` and restored before their `after_fit`, as fastai's),
        `with_input` the inputs; `cbs` are added for this call only. The signature is fastai's, keyword-only
        arguments included:

        - `with_preds=False` / `with_targs=False`: keep no predictions / targets; that place in the tuple is
          None (as are the decoded predictions when there are no predictions).
        - `concat_dim`: the dimension the batches' predictions, targets and inputs are concatenated along
          (say 1 for a model whose outputs are sequence-first); per-item losses always along 0.
        - `save_preds` / `save_targs`: a directory (made if missing) to write each batch's raw prediction (before
          `act`) / first target to, on the CPU, with `torch.save(..., pickle_protocol=pickle_protocol)`, in a file
          named after the batch's index (`0`, `1`, ...), written atomically (a write that fails leaves the file of
          an earlier run as it was; without `learn.save`'s fsync, as fastai's torch.save). They are still returned
          unless `with_preds=False` / `with_targs=False` says not to keep them.
        - `reorder` changes nothing in learnloop, and is accepted for fastai's code. Fastai puts the predictions
          back in dataset order when the loader knows the order it drew (its own DataLoader); learnloop reads
          `dls[ds_idx]` in dataset order in the first place, and reads a `dl` given as it comes, as fastai does
          a torch DataLoader: with a shuffled one, the results are in that loader's shuffled order either way.

        Only batches the model ran on count: a batch cancelled before its prediction (CancelBatchException in
        `before_batch`) is left out; one cancelled after it keeps its prediction (NaN losses if its loss was
        not computed). When the validation phase is cancelled before any batch, or no batch is left, the
        predictions, targets and inputs are None, and the losses (`with_loss`) an empty list, as fastai's (None
        when the phase was cancelled before the gathering began). Any other keyword raises TypeError, as in fastai.

        `inner=True` runs only the validation phase, without the fit and epoch events around it, for a callback
        that needs predictions in the middle of a fit (after a validation phase: the model is left in eval mode).
        Callbacks that keep the fit's records still see that phase: take them out around the call, as
        `FetchPredsCallback` does with those marked `remove_on_fetch` (the Recorder, the trackers).

        >>> probs, targets = learn.get_preds()                       # the validation set
        >>> _, targets = learn.get_preds(ds_idx=0, with_preds=False)  # the training set's targets only
        """
        _check_data_arguments(self.dls, "get_preds", ds_idx, dl)
        if act is not None and not callable(act):  # else found only once every batch has run
            raise ArgumentError(
                f"get_preds: act must be a function applied to the predictions, got {act!r}: say torch.sigmoid, "
                "or functools.partial(torch.softmax, dim=-1)."
            )
        if with_loss and self.loss_func is None:  # fastai: "the first argument must be callable", from functools
            raise ArgumentError(
                "get_preds(with_loss=True) computes each item's loss with learn.loss_func, which is None: set one "
                "(learn.loss_func = nn.CrossEntropyLoss(), say) or leave with_loss out."
            )
        concat_dim = to_int(concat_dim, "concat_dim", "get_preds", "the dimension the batches are concatenated along")
        if (concat_dim != 0 or save_preds is not None or save_targs is not None) and is_distributed() and any(
            isinstance(cb, DistributedTrainer) for cb in self.cbs
        ):
            raise NotImplementedError(
                "get_preds(concat_dim=..., save_preds=..., save_targs=...) is not supported in a distributed job: "
                "the ranks' predictions are combined along dimension 0 and each rank would write files of the "
                "same names. Leave them at their defaults and concatenate or save the result on rank 0."
            )
        dl = unshuffled(self.dls[ds_idx]) if dl is None else dl
        gather = GatherPredsCallback(
            with_input=with_input, with_loss=with_loss, save_preds=save_preds, save_targs=save_targs,
            with_preds=with_preds, with_targs=with_targs, concat_dim=concat_dim, pickle_protocol=pickle_protocol,
        )
        gather.side_run = True
        if with_loss:
            _check_reducible(self.loss_func)  # before any callback runs
        # The loss is made unreduced inside the run, after before_fit and restored before after_fit, as in fastai: a
        # callback that sets the loss function's reduction for the run does not undo the per-item losses.
        with self.validation_context([*as_list(cbs), gather], inner=inner), self._unreduced_loss(with_loss):
            self._do_epoch_validate(ds_idx, dl)
        preds = gather.preds
        if preds is not None:
            activation = act if act is not None else getattr(self.loss_func, "activation", None)
            if activation is not None:
                preds = activation(preds)
        result: list[Any] = [gather.inputs] if with_input else []
        result += [preds, gather.targets]
        if with_decoded:
            decodes = getattr(self.loss_func, "decodes", None)
            result.append(decodes(preds) if decodes is not None and preds is not None else preds)
        if with_loss:
            result.append(gather.losses)
        return tuple(result)

    def to_detach(self, b: Any, cpu: bool = True, gather: bool = True) -> Any:
        """`b` detached (see `learnloop.data.to_detach`), or as the current loader's own `to_detach` makes it."""
        dl_to_detach = getattr(getattr(self, "dl", None), "to_detach", None)  # no `dl` before the first fit
        return dl_to_detach(b, cpu, gather) if callable(dl_to_detach) else to_detach(b, cpu, gather)

    def loss_not_reduced(self) -> AbstractContextManager[None]:
        """In the block, the loss function returns one loss per item: its `reduction` attribute is 'none', or it is
        called with `reduction='none'` (a loss function that has neither is an ArgumentError, a TypeError)."""
        return self._unreduced_loss(True)

    @contextmanager
    def _unreduced_loss(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        old = self.loss_func
        if hasattr(old, "reduction"):
            reduction = old.reduction
            old.reduction = "none"
            try:
                yield
            finally:
                old.reduction = reduction
        else:
            _check_reducible(old)
            self.loss_func = functools.partial(old, reduction="none")
            try:
                yield
            finally:
                self.loss_func = old

    def predict(self, item: Any, rm_type_tfms: int | None = None, with_input: bool = False) -> tuple[Any, ...]:
        """Predict one item (an input tensor, or a tuple or list of inputs, as fastai collates them: `[0.1, 0.2]` is
        two inputs): `(decoded, decoded tensor, pred)`, with the input first when `with_input` (fastai's order).

        `rm_type_tfms` holds fastai's place in the signature: learnloop has no item transforms, so only None or 0
        (remove none) are accepted.
        Reading the item's batch draws one number from torch's global generator, as fastai's DataLoader does.
        """
        if isinstance(rm_type_tfms, bool):
            raise TypeError(
                f"predict(item, {rm_type_tfms!r}): the second argument is rm_type_tfms, as in fastai; with_input is "
                f"the third: pass with_input={rm_type_tfms!r} by keyword."
            )
        if rm_type_tfms not in (None, 0):
            raise ValueError(
                f"predict(rm_type_tfms={rm_type_tfms!r}): learnloop applies no item transforms, so there are none "
                "to remove; pass the model's input as it is, and leave rm_type_tfms out."
            )
        inputs = tuple(item) if isinstance(item, (tuple, list)) else (item,)
        try:
            batch = tuple(torch.as_tensor(x).unsqueeze(0) for x in inputs)
        except (TypeError, RuntimeError, ValueError) as e:  # None, a string, a dict: nothing the model can take
            raise ValueTypeError(
                f"predict: the item is the model's input, a tensor (or what torch.as_tensor converts: a number, a "
                f"numpy array), or a tuple or list of them, one per input (a list of numbers is one input per number: "
                f"torch.tensor([...]) is one input); got {describe(item)} ({e})."
            ) from e
        self._n_inp = len(batch)
        try:
            inp, preds, _, decoded = self.get_preds(dl=_OneBatch(batch), with_decoded=True, with_input=True)
        finally:
            self._n_inp = None
        if preds is None:  # a ValueError, as fastai's (whose unpacking of get_preds' result fails)
            raise ValueError(
                "predict: the item's batch was cancelled before the model ran (a callback raised CancelBatchException "
                "at before_batch, or cancelled the validation phase), so there is no prediction: check the callbacks "
                "that run in validation (run_valid), or remove them for predict."
            )
        dec = decoded[0]
        result = (dec.item() if dec.numel() == 1 else dec), dec, preds[0]
        if with_input:
            return (inp[0] if isinstance(inp, torch.Tensor) else tuple(x[0] for x in inp), *result)
        return result


def _check_reducible(loss_func: Any) -> None:
    """Refuse a loss function that can be made unreduced neither by its `reduction` attribute nor keyword."""
    if hasattr(loss_func, "reduction") or _takes_reduction(loss_func):
        return
    # fastai: "got an unexpected keyword argument 'reduction'" at the first batch
    name = getattr(loss_func, "__qualname__", type(loss_func).__name__)
    raise ArgumentError(
        f"The loss function {name} has no `reduction` attribute, so it is called with reduction='none' for "
        "one loss per item (get_preds(with_loss=True), loss_not_reduced()), a keyword it does not take: "
        "give it a `reduction` parameter (`def loss(pred, targ, reduction='mean')`) or use a loss that has "
        "one (nn.CrossEntropyLoss(), F.cross_entropy, CrossEntropyLossFlat())."
    )


def _takes_reduction(loss_func: Any) -> bool:
    """Whether `loss_func` can be called with `reduction='none'` (True when its signature cannot be read)."""
    func = loss_func.forward if isinstance(loss_func, torch.nn.Module) else loss_func
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == "reduction" and p.kind is not p.POSITIONAL_ONLY) for p in params)


class _OneBatch:
    """`predict`'s loader: its one batch. Reading it draws a DataLoader's base seed from torch's global generator, as
    the DataLoader fastai's `predict` reads does, so that the fits after a `predict` shuffle and drop out as fastai's.
    """

    def __init__(self, batch: tuple[torch.Tensor, ...]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        torch.empty((), dtype=torch.int64).random_()  # what starting a DataLoader's iterator draws
        yield self.batch


def _check_data_arguments(dls: Any, method: str, ds_idx: int, dl: Any) -> None:
    """Refuse what validate / get_preds would otherwise fail on obscurely, or run on silently but wrongly."""
    if dl is None:
        n = len(dls) if hasattr(dls, "__len__") else None
        if n is not None and isinstance(ds_idx, int) and not -n <= ds_idx < n:  # the type fastai's raises
            raise IndexError(
                f"{method}(ds_idx={ds_idx}): dls has {n} loaders (0 the training one, 1 the validation one); to "
                f"{'evaluate' if method == 'validate' else 'predict'} on other data, pass {method}(dl=...), a "
                "DataLoader over it."
            )
        if n is not None and not hasattr(type(ds_idx), "__index__"):  # fastai: "list indices must be integers"
            raise ArgumentError(f"{method}(ds_idx={ds_idx!r}): ds_idx is the index of a loader in dls, 0 the training "
                                "one, 1 the validation one.")
    elif isinstance(dl, torch.Tensor):  # its rows would each go through the model as a batch (fastai: a TypeError)
        raise ArgumentError(f"{method}(dl=<a tensor of shape {tuple(dl.shape)}>): dl must be a loader of batches, not "
                            f"a tensor; for inputs x pass [(x,)] (one batch) or DataLoader(TensorDataset(x), "
                            "batch_size=...).")
    elif isinstance(dl, (str, bytes)) or not (isinstance(dl, Iterable) or hasattr(dl, "__getitem__")):
        # fastai: a TypeError (not iterable), or a string's characters run through the model
        raise ArgumentError(f"{method}(dl={dl!r}): dl must be a loader of batches, such as a torch DataLoader "
                            "(DataLoader(ds, batch_size=...)), or a list of batches.")
    elif isinstance(dl, Dataset) and not isinstance(dl, IterableDataset):
        # Iterating a map-style dataset gives single items, each run through the model as if it were a batch, as
        # in fastai (which fails on it, or not, depending on the items' shapes): rarely what was meant.
        warn_caller(
            f"{method}(dl=...): dl is a Dataset ({type(dl).__name__}), not a loader of batches: each of its items "
            f"goes through the model as a batch. Pass {method}(dl=DataLoader(ds, batch_size=...)) for batches."
        )


def _replacing(obj: Any, attr: str, value: Any) -> Generator[None, None, None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


class _Replacing(AbstractContextManager[None], Iterator[None]):
    """`replacing_yield`'s result: a context manager, and also the generator fastai's function returns, so that
    fastai's idiom ``@contextmanager def f(self): return replacing_yield(self, 'a', v)`` works too."""

    def __init__(self, obj: Any, attr: str, value: Any) -> None:
        self._gen = _replacing(obj, attr, value)

    def __next__(self) -> None:
        return next(self._gen)

    def send(self, value: None) -> None:
        return self._gen.send(value)

    def throw(self, *args: Any) -> None:
        return self._gen.throw(*args)

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> None:
        next(self._gen)

    def __exit__(self, *exc_info: object) -> None:
        self._gen.close()  # runs the `finally` that puts the old value back; an exception goes on unchanged


def replacing_yield(obj: Any, attr: str, value: Any) -> _Replacing:
    """Set `obj.<attr>` to `value` for the duration of the block, then put the old value back (fastai's name).

    Use it as a context manager (``with replacing_yield(learn, 'lr', 0.5): ...``), or return it from a
    ``@contextmanager`` function as in fastai, whose `replacing_yield` is a generator."""
    return _Replacing(obj, attr, value)
