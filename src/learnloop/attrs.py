"""Fast access to a learner's own attributes, for the code that runs every batch."""

from __future__ import annotations

from typing import Any

__all__ = ["OwnAttrs"]


class OwnAttrs:
    """The instance attributes of `obj`, as the attributes of a plain object that shares `obj.__dict__`.

    `Learner` and `Callback` define `__getattr__` (SPEC §2, §3: what a callback lacks is read from the learner,
    what the learner lacks from the model). On CPython 3.11 that alone keeps the interpreter from specialising
    any attribute access on their instances, found or not: every `learn.pred` takes the generic lookup, a few
    times the cost of a plain attribute. The batch loop and the default callbacks' per-batch hooks read and
    write the learner's state through this view instead. It shares the learner's `__dict__`, so both see the
    same attributes at once; it sees only those: not the Learner's properties and methods, nor the model's
    attributes.

    Make a new one where it is used (`Learner._all_batches` does, once per phase): a copied or unpickled
    learner has a `__dict__` of its own.
    """

    # The loop's state (annotations only, for type checkers: the values live in the shared `__dict__`).
    model: Any
    loss_func: Any
    opt: Any
    dl: Any
    training: bool
    epoch: int
    n_epoch: int
    iter: int
    n_iter: int
    train_iter: int
    pct_train: float
    xb: tuple[Any, ...]
    yb: tuple[Any, ...]
    pred: Any
    loss_grad: Any
    loss: Any
    _copy_loss: bool

    def __init__(self, obj: object) -> None:
        self.__dict__ = obj.__dict__
