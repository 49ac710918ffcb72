"""Checks of the arguments a Learner is built and trained with, before anything is kept: a wrong value fails at
once, with what is wrong and how to fix it, instead of deep in the first fit (or in every later one)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ArgumentError, WrongKindError
from .explain import describe
from .optimizer import OptimWrapper
from .params import trainable_params

__all__ = ["check_dls", "check_funcs", "check_groups", "check_opt", "check_train_data"]


def check_dls(dls: Any) -> None:
    """Refuse what is plainly not a DataLoaders: a single torch DataLoader, or tensors in place of loaders."""
    if isinstance(dls, torch.utils.data.DataLoader):
        raise WrongKindError(
            "dls must be a DataLoaders (a training and a validation loader), got a torch DataLoader: "
            "pass DataLoaders(train_dl, valid_dl), or DataLoaders(train_dl) without validation."
        )
    if isinstance(dls, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in dls):  # fastai: an AttributeError
        raise WrongKindError(
            f"dls must be a DataLoaders or a (train, valid) pair of loaders, got a {type(dls).__name__} of tensors: "
            "for in-memory tensors use DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, bs=64)."
        )
    if dls is not None and not isinstance(dls, (tuple, list)) and not hasattr(dls, "train"):  # a path, a number...
        raise WrongKindError(  # fastai: an AttributeError reading `dls.train` at the first fit
            f"dls must be a DataLoaders (a training and a validation loader), got {describe(dls)}: pass "
            "DataLoaders(train_dl, valid_dl) of torch DataLoaders, or DataLoaders.from_tensors(...) for tensors."
        )


def check_funcs(loss_func: Any, opt_func: Any, splitter: Any = trainable_params) -> None:
    """Refuse a loss function, an optimizer factory or a splitter that cannot be called as the Learner calls them."""
    if isinstance(loss_func, type):
        raise ArgumentError(
            f"loss_func is the class {loss_func.__name__}; pass an instance: loss_func={loss_func.__name__}()."
        )
    if loss_func is not None and not callable(loss_func):
        raise ArgumentError(f"loss_func must be callable as loss_func(pred, target), got {loss_func!r}.")
    if isinstance(opt_func, type) and issubclass(opt_func, torch.optim.Optimizer):
        raise WrongKindError(
            f"opt_func is torch.optim.{opt_func.__name__}, a torch optimizer: wrap it, "
            f"opt_func=partial(OptimWrapper, opt=torch.optim.{opt_func.__name__}), or use learnloop's own "
            "(Adam, SGD, RMSProp...)."
        )
    if not callable(opt_func) and not isinstance(opt_func, OptimWrapper):  # an optimizer already built is used as it is
        raise ArgumentError(f"opt_func must be callable as opt_func(params, lr=...), got {opt_func!r}.")
    if not callable(splitter):  # fastai: "'int' object is not callable" at the first fit, and for None
        raise ArgumentError(
            f"splitter must be a function model -> parameter groups (such as trainable_params), got {splitter!r}."
        )


def check_groups(groups: Any, splitter: Any) -> Any:
    """`groups`, what `splitter` returned for the model, when an optimizer can take it: an iterable of parameters or
    of parameter groups (the optimizer checks what is inside). fastai's fails with an IndexError on None."""
    if groups is None or isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        name = getattr(splitter, "__name__", type(splitter).__name__)
        raise ArgumentError(
            f"The splitter {name} returned {groups!r}, not parameter groups: it must return the model's parameters "
            "(list(model.parameters())) or a list of groups ([params(m[0]), params(m[1])]); does it lack a return?"
        )
    return groups


def check_opt(opt: Any, opt_func: Any) -> Any:
    """`opt`, what `opt_func` returned, when the Learner can drive it (it sets hyper-parameters through `set_hypers`);
    anything else is refused at once, where fastai fails reading an attribute of it (an AttributeError, which the
    `WrongKindError` is too)."""
    if isinstance(opt, torch.optim.Optimizer):
        raise WrongKindError(
            f"opt_func returned the torch optimizer {type(opt).__name__}, which has no learnloop hyper-parameters: "
            f"return OptimWrapper(params, opt=torch.optim.{type(opt).__name__}, ...) instead, or use learnloop's own "
            "(Adam, SGD, RMSProp...)."
        )
    if not hasattr(opt, "set_hypers") or not hasattr(opt, "state"):
        name = getattr(opt_func, "__name__", repr(opt_func))
        got = "None" if opt is None else describe(opt)
        raise WrongKindError(
            f"opt_func {name} returned {got}, not an optimizer: it is called as opt_func(params, lr=lr) and "
            "must return one (learnloop's Optimizer, Adam, SGD..., or an OptimWrapper); does it lack a return?"
        )
    return opt


def check_train_data(dls: Any) -> None:
    """Refuse training data the loop cannot train on: none, one without a length, or one with no batch."""
    if dls is None:
        raise WrongKindError("The learner has no data to train on (dls=None): give Learner a DataLoaders.")
    train = dls.train
    if train is None:  # fastai: "object of type 'NoneType' has no len()", in ProgressCallback
        raise ArgumentError("The DataLoaders has no training loader (None): give it one, DataLoaders(train_dl, "
                            "valid_dl), to fit.")
    try:
        n = len(train)
    except TypeError:
        raise TypeError(
            f"The training data ({type(train).__name__}) has no length; learnloop needs the number of "
            "batches per epoch to schedule training: give it a __len__."
        ) from None
    if n == 0:
        dataset: Any = getattr(train, "dataset", None)
        facts = [f"a dataset of {len(dataset)} items"] if hasattr(dataset, "__len__") else []
        # A torch DataLoader given a batch_sampler has batch_size None: the sampler's settings are the ones used.
        sampler = getattr(train, "batch_sampler", None) if getattr(train, "batch_size", 0) is None else None
        source = sampler if sampler is not None else train
        keys = [key for key in ("batch_size", "drop_last") if hasattr(source, key)]
        settings = [f"{key}={getattr(source, key)!r}" for key in keys]
        if settings and sampler is not None:
            settings = [f"a batch_sampler with {', '.join(settings)}"]
        facts += settings
        raise ValueError(
            "The training DataLoader is empty: it yields no batches"
            + (f" ({', '.join(facts)}). Use a smaller batch size, drop_last=False, or more data." if facts else
               ". Give DataLoaders a training set with at least one batch.")
        )
