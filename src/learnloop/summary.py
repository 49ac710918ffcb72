"""`learn.summary()`: the model's layers, output shapes and parameters on a training batch, then the optimizer, the
loss function, the frozen state and the callbacks, as fastai's text.

>>> print(learn.summary())
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .callbacks.core import CollectDataCallback, GatherPredsCallback
from .callbacks.hook import HookCallback
from .callbacks.progress import ProgressCallback
from .hooks import Hooks, flatten_model
from .metrics import find_bs
from .rng import get_rng_state, loader_generators, set_rng_state

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["PrettyString", "layer_info", "module_summary", "summary", "total_params"]


class PrettyString(str):
    """A str whose repr is the text itself, so that a notebook shows `learn.summary()` laid out."""

    def __repr__(self) -> str:
        return str(self)


def total_params(m: nn.Module) -> tuple[int, bool]:
    """The number of parameters of `m`, and whether they train (its first parameter's `requires_grad`)."""
    params = list(m.parameters())
    return sum(p.numel() for p in params), (params[0].requires_grad if params else False)


def _shapes(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.shape
    if isinstance(o, list):
        return [_shapes(x) for x in o]
    if isinstance(o, tuple):
        return tuple(_shapes(x) for x in o)
    if isinstance(o, Mapping):
        return {k: _shapes(v) for k, v in o.items()}
    return None


def _keeps_shape(inputs: Any, output: Any) -> bool:
    """fastai's test: an input's shape without its batch dimension is the shape of the output's first item."""
    outs = output if isinstance(output, (tuple, list)) else output if isinstance(output, torch.Tensor) else ()
    if isinstance(outs, torch.Tensor):
        outs = outs.unbind(0) if outs.dim() else ()
    return any(
        isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape[1:] == y.shape
        for x, y in zip(inputs, outs)  # noqa: B905 (fastai pairs them as far as both go)
    )


def _track(m: nn.Module, i: Any, o: Any) -> tuple[str, int | str, bool | str, Any, bool]:
    params, trainable = total_params(m) if hasattr(m, "weight") else ("", "")
    return type(m).__name__, params, trainable, _shapes(o), _keeps_shape(i, o)


@contextmanager
def _same_random_state(learn: Learner) -> Iterator[None]:
    """Put the random generators (the global ones and the loaders') back as they were, however the block ends."""
    state = get_rng_state(loader_generators(learn.dls))
    try:
        yield
    finally:
        set_rng_state(state, loader_generators(learn.dls))


# Besides the callbacks marked `remove_on_fetch`, which FetchPredsCallback takes out too (fastai's keep these two in
# a fetch: their records then include its batches).
_OUT_OF_SUMMARY = (ProgressCallback, CollectDataCallback, GatherPredsCallback)


@contextmanager
def _left_as_it_was(learn: Learner) -> Iterator[None]:
    """Put back, however the block ends, the random state, each module's train/eval mode, and the callbacks
    with their order; in it, those that keep the fit's records (`remove_on_fetch`, and the batches of a
    CollectDataCallback or a GatherPredsCallback of the learner's, which the pass would start over) and the
    progress bar are out."""
    modes = [(m, m.training) for m in learn.model.modules()]
    cbs = list(learn.cbs)
    out = [cb for cb in cbs if getattr(cb, "remove_on_fetch", False) or isinstance(cb, _OUT_OF_SUMMARY)]
    # The hooks of those taken out (ActivationStats') stay on the model but do nothing in the pass: called from a
    # fit's before_fit, where the fit is not yet under way, the pass would otherwise take them off for good.
    paused = [cb for cb in out if isinstance(cb, HookCallback)]
    try:
        for cb in paused:
            cb.__dict__["_paused"] = True
        with _same_random_state(learn), learn.removed_cbs(out):
            yield
    finally:
        for cb in paused:
            cb.__dict__["_paused"] = False
        learn.cbs = cbs  # removed_cbs puts them back at the end
        for m, mode in modes:
            m.training = mode


def layer_info(learn: Learner, *xb: Any) -> list[Any]:
    """Per leaf module of `learn.model` (see `HookCallback`): `(type name, params, trainable, output shape,
    input shape kept)`, from a validation pass of the learner on the first item of `xb` (batch-first inputs);
    None for a module the pass did not call. Mode, random state and records are left as they were."""
    batch = tuple(x[:1] if isinstance(x, torch.Tensor) else x for x in xb)
    with _left_as_it_was(learn), Hooks(flatten_model(learn.model), _track) as hooks:
        old_n_inp, learn._n_inp = learn._n_inp, len(batch)  # the batch is all inputs, no target (as predict)
        try:
            learn.get_preds(dl=[batch], reorder=False)
        except Exception as e:
            e.add_note(
                f"learnloop: summary ran {type(learn.model).__name__} on the first item of a batch: "
                f"input(s) of shape {_describe(batch)} (the batch's: {_describe(xb)}); check that the model takes "
                "inputs of the training data's shape."
            )
            raise
        finally:
            learn._n_inp = old_n_inp
        return hooks.stored


def _describe(xb: tuple[Any, ...]) -> str:
    return ", ".join(str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in xb)


def _shape_text(shape: Any, bs: int) -> str:
    first = next(iter(shape.values())) if isinstance(shape, Mapping) else shape
    return " x ".join([str(bs), *(str(t) for t in first[1:])])


def _print_shapes(shapes: Any, bs: int) -> str:
    if isinstance(shapes, torch.Size):
        return _shape_text(shapes, bs)
    if isinstance(shapes, tuple):
        return _shape_text(shapes[0], bs)
    items = shapes.values() if isinstance(shapes, Mapping) else shapes
    return str([_print_shapes(x, bs) for x in items])


def module_summary(learn: Learner, *xb: Any) -> PrettyString:
    """The layer table of `learn.model` on `xb` (fastai's text): output shapes, parameters and whether they train,
    with the totals. Parameters a module holds beside its children are not counted (as in fastai); a parameter
    several modules share (tied weights) is counted once in the totals (fastai's counts it in each)."""
    # flatten_model lists the modules in the order layer_info hooked them (those it makes for lone parameters,
    # never called, have None): the totals count each parameter once, however many modules hold it (tied weights).
    infos = zip(flatten_model(learn.model), layer_info(learn, *xb), strict=True)
    rows = [(module, info) for module, info in infos if info is not None]
    counted: set[int] = set()
    n, bs = 76, find_bs(xb)
    res = f"{type(learn.model).__name__} (Input shape: {_print_shapes(_shapes(tuple(xb)), bs)})\n"
    res += "=" * n + "\n"
    res += f"{'Layer (type)':<20} {'Output Shape':<20} {'Param #':<10} {'Trainable':<10}\n"
    res += "=" * n
    total, trainable, prev_shape, first = 0, 0, None, True
    for module, (typ, n_params, trains, shape, kept) in rows:
        if shape is None:
            continue
        if first:
            res += f'\n{"":<20} {_print_shapes(shape, bs)[:19]:<20}'
        elif not kept and prev_shape != shape:  # a new block of the table where the output's shape changes
            res += "\n" + "_" * n + "\n" + f'{"":<20} {_print_shapes(shape, bs)[:19]:<20}'
        first = False
        res += f"\n{typ:<20} {'':<20} {n_params:<10} {trains!s:<10}"
        if n_params != "":
            new = sum(p.numel() for p in module.parameters() if id(p) not in counted)
            counted.update(id(p) for p in module.parameters())
            total += new
            trainable += new if trains else 0
        prev_shape = shape
    res += "\n" + "_" * n + "\n"
    res += f"\nTotal params: {total:,}\n"
    res += f"Total trainable params: {trainable:,}\n"
    res += f"Total non-trainable params: {total - trainable:,}\n\n"
    return PrettyString(res)


def _first_batch(learn: Learner) -> Any:
    one_batch = getattr(learn.dls, "one_batch", None)
    if callable(one_batch):  # learnloop's DataLoaders: the training loader's first batch, on the device
        return one_batch()
    for b in learn.dls.train:
        return b
    raise ValueError("The training loader does not contain any batches, so there is no batch to summarise with.")


def summary(learn: Learner) -> PrettyString:
    """`learn.summary()`: the layer table of the model on a training batch, the optimizer, the loss function, the
    frozen state and the callbacks, as fastai's text. The model's train/eval mode, its weights, the random
    state and the fit's records (Recorder, trackers, ActivationStats, CollectDataCallback's batches, the
    predictions of a GatherPredsCallback of the learner's) are left as they were."""
    with _same_random_state(learn):  # a shuffled loader's first batch draws from the random generators
        b = _first_batch(learn)
    if isinstance(b, (tuple, list)):
        n_inp = getattr(learn.dls, "n_inp", None) or (1 if len(b) == 1 else len(b) - 1)
        xb = tuple(b[:n_inp])
    else:
        xb = (b,)
    res = str(module_summary(learn, *xb))
    res += f"Optimizer used: {learn.opt_func}\nLoss function: {learn.loss_func}\n\n"
    if learn.opt is not None:
        frozen_idx = getattr(learn.opt, "frozen_idx", 0)
        res += "Model " + ("unfrozen\n\n" if frozen_idx == 0 else f"frozen up to parameter group #{frozen_idx}\n\n")
    res += "Callbacks:\n" + "\n".join(f"  - {cb}" for cb in learn.sorted_cbs())
    return PrettyString(res)
