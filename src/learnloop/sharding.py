"""Giving each rank its share of a DataLoader, and putting the shares of predictions back in order.

Training loaders get a :class:`torch.utils.data.distributed.DistributedSampler`: every rank gets the same number of
batches (DDP needs every rank in every gradient all-reduce), so the last items are repeated when the dataset does
not split evenly, and shuffling is seeded the same on every rank and changes with ``set_epoch`` (or, with
:class:`DrawnSeedSampler`, is drawn anew each time the loader is read, as a shuffling loader in one process draws
its order). Evaluation loaders get a :class:`ShardSampler` instead: rank ``r`` of ``W`` reads items ``r, r+W, r+2W,
...`` with no padding, so no item is counted twice in a metric, and :func:`interleave` rebuilds dataset order from
the shares.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from .distributed import DistributedError
from .nested import map_tensors

__all__ = ["DrawnSeedSampler", "EvenBatches", "ShardSampler", "interleave", "is_sharded", "shard_loader"]


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world_size, ...`` of a dataset of `n` items, in order, without padding."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: rank {rank} is outside 0..{world_size - 1}.")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class DrawnSeedSampler(DistributedSampler):  # type: ignore[type-arg]
    """A shuffling DistributedSampler that draws its seed each time it is iterated (every epoch), from
    `generator` (torch's global generator when None), where and as a shuffling sampler in one process draws its
    order: two fits read the data in different orders, and a fit resumed from a checkpoint, which puts the random
    state back, in the saved run's order. Every rank draws, and `agree(seed)` returns the seed all ranks use
    (rank 0's: a collective, see DistributedTrainer).
    """

    def __init__(
        self, dataset: Any, num_replicas: int, rank: int, generator: torch.Generator | None,
        agree: Callable[[int], int],
    ) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=True)
        self.generator, self.agree = generator, agree

    def __iter__(self) -> Iterator[Any]:
        self.seed = self.agree(int(torch.randint(0, 2**31 - 1, (), generator=self.generator).item()))
        return super().__iter__()


def is_sharded(dl: Any) -> bool:
    """Whether `dl` is a DataLoader that already reads only this rank's share."""
    return isinstance(dl, DataLoader) and isinstance(dl.sampler, (DistributedSampler, ShardSampler))


def _describe_sampler(dl: DataLoader[Any]) -> str:
    if not isinstance(dl.batch_sampler, BatchSampler) or dl.batch_size is None:
        return f"a custom batch sampler ({type(dl.batch_sampler).__name__})"
    return f"a {type(dl.sampler).__name__}"


def shard_loader(
    dl: Any,
    rank: int,
    world_size: int,
    *,
    train: bool,
    seed: int = 0,
    split_batch: bool = False,
    agree_seed: Callable[[int], int] | None = None,
) -> DataLoader[Any]:
    """A copy of the DataLoader `dl` that reads rank `rank`'s share of its dataset: a DataLoader of `dl`'s class (a
    subclass is made with DataLoader's arguments, then given the attributes of its own that `dl` has).

    `train`: a DistributedSampler (same number of batches on every rank; shuffled with `seed` when
    `dl` shuffles, or with `agree_seed` given, with a seed drawn each epoch: :class:`DrawnSeedSampler`),
    else a :class:`ShardSampler`, over the items one process evaluates (with ``drop_last``, those of the full
    batches of `dl`), none of which a rank drops: each rank's share of a last partial batch would differ, and
    the shares would no longer interleave. `split_batch`: `dl.batch_size` is the global batch, divided between
    the ranks, instead of each rank's.
    """
    role = "training" if train else "evaluation"
    if not isinstance(dl, DataLoader):
        raise DistributedError(
            f"The {role} data is a {type(dl).__name__}, not a torch DataLoader, so learnloop cannot give each "
            "rank its share of it. Use a torch.utils.data.DataLoader over a map-style dataset, or shard the data "
            "yourself (each rank reading its own part, the same number of batches on every rank) and pass "
            "DistributedTrainer(shard_data=False)."
        )
    if isinstance(dl.dataset, IterableDataset):
        raise DistributedError(
            f"The {role} DataLoader reads an IterableDataset, which learnloop cannot split between ranks: make "
            "each rank's dataset yield only its share (torch.distributed.get_rank()), the same number of batches "
            "on every rank, and pass DistributedTrainer(shard_data=False)."
        )
    sampler = dl.sampler
    custom_batches = not isinstance(dl.batch_sampler, BatchSampler) or dl.batch_size is None
    known = (RandomSampler, SequentialSampler, DistributedSampler, ShardSampler)
    if custom_batches or not isinstance(sampler, known) or _random_with_replacement(sampler):
        raise DistributedError(
            f"The {role} DataLoader has {_describe_sampler(dl)}, which does not know about the other ranks: "
            "every rank would read the same items. Use shuffle=True/False (learnloop then splits the data), a "
            f"DistributedSampler(num_replicas={world_size}, rank=<rank>), or shard the data yourself and pass "
            "DistributedTrainer(shard_data=False)."
        )
    if isinstance(sampler, DistributedSampler) and (sampler.num_replicas, sampler.rank) != (world_size, rank):
        raise DistributedError(
            f"The {role} DataLoader's DistributedSampler is for rank {sampler.rank} of {sampler.num_replicas}, "
            f"but this is rank {rank} of {world_size}."
        )
    batch_size = int(dl.batch_size)  # type: ignore[arg-type]  # checked above: a plain BatchSampler
    if split_batch:
        if batch_size % world_size:
            raise DistributedError(
                f"The {role} batch size {batch_size} cannot be split evenly over {world_size} processes "
                f"(split_batch=True): use a multiple of {world_size}, or split_batch=False to give each process "
                f"batches of {batch_size}."
            )
        batch_size //= world_size
    new_sampler: Sampler[int]
    if train:
        if isinstance(sampler, DistributedSampler):
            new_sampler = sampler
        else:
            if isinstance(sampler, RandomSampler) and agree_seed is not None:
                new_sampler = DrawnSeedSampler(dl.dataset, world_size, rank, sampler.generator, agree_seed)
            else:
                shuffle = isinstance(sampler, RandomSampler)
                new_sampler = DistributedSampler(dl.dataset, world_size, rank, shuffle=shuffle, seed=seed)
    else:
        n = len(dl.dataset)  # type: ignore[arg-type]
        if dl.drop_last:  # the items of the full batches, those one process evaluates; each rank reads all its own
            n -= n % int(dl.batch_size)  # type: ignore[arg-type]
        new_sampler = ShardSampler(n, rank, world_size)
    return _rebuild(dl, new_sampler, batch_size, drop_last=train and dl.drop_last, role=role)


def _random_with_replacement(sampler: Sampler[Any]) -> bool:
    return isinstance(sampler, RandomSampler) and (
        sampler.replacement or sampler.num_samples != len(sampler.data_source)  # type: ignore[arg-type]
    )


def _rebuild(
    dl: DataLoader[Any], sampler: Sampler[int], batch_size: int, drop_last: bool, role: str
) -> DataLoader[Any]:
    kwargs: dict[str, Any] = {
        "num_workers": dl.num_workers,
        "collate_fn": dl.collate_fn,
        "pin_memory": dl.pin_memory,
        "drop_last": drop_last,
        "timeout": dl.timeout,
        "worker_init_fn": dl.worker_init_fn,
        "multiprocessing_context": dl.multiprocessing_context,
        "generator": dl.generator,
        "persistent_workers": dl.persistent_workers,
        "pin_memory_device": dl.pin_memory_device,
    }
    if dl.num_workers:
        kwargs["prefetch_factor"] = dl.prefetch_factor
    if hasattr(dl, "in_order"):
        kwargs["in_order"] = dl.in_order
    try:
        return same_kind_loader(dl, dl.dataset, batch_size=batch_size, sampler=sampler, **kwargs)
    except LoaderSubclassError as e:
        raise DistributedError(
            f"The {role} DataLoader is a {e.cls}, whose __init__ does not take DataLoader's arguments ({e}), so "
            f"learnloop cannot make the {e.cls} that reads this rank's share of the data (a plain DataLoader would "
            "lose what the subclass does). Give its __init__ defaults for its own arguments and pass the rest on to "
            "DataLoader (**kwargs), or shard the data yourself (a DistributedSampler) and pass "
            "DistributedTrainer(shard_data=False)."
        ) from e


class LoaderSubclassError(TypeError):
    """A DataLoader subclass whose ``__init__`` does not take DataLoader's arguments (``cls``: its name)."""

    def __init__(self, cls: type, reason: TypeError) -> None:
        super().__init__(str(reason))
        self.cls = cls.__qualname__


def same_kind_loader(dl: DataLoader[Any], dataset: Any, **kwargs: Any) -> DataLoader[Any]:
    """A DataLoader of `dl`'s class over `dataset` with DataLoader's `kwargs`: a subclass is made again as itself, so
    that what it overrides (an ``__iter__`` adding a field, say) still runs, and is given the attributes of its own
    that `dl` has (set after ``__init__`` too); :class:`LoaderSubclassError` when its ``__init__`` cannot take
    them (an argument of its own without a default)."""
    cls = type(dl)
    if cls is DataLoader:
        return DataLoader(dataset, **kwargs)
    try:
        inspect.signature(cls).bind(dataset, **kwargs)
    except TypeError as e:
        raise LoaderSubclassError(cls, e) from e
    except ValueError:  # no signature to read: tried as it is
        pass
    new = cls(dataset, **kwargs)
    for name, value in vars(dl).items():
        if name not in _data_loader_attributes():
            setattr(new, name, value)
    return new


@functools.cache
def _data_loader_attributes() -> frozenset[str]:
    """The attributes a torch DataLoader sets on itself (the version installed)."""
    nothing: Any = []
    return frozenset(vars(DataLoader(nothing)))


def interleave(shares: Sequence[Any]) -> Any:
    """Dataset order from each rank's share (rank ``r`` held items ``r, r+W, ...``): tensors, or tuples, lists and
    dicts of them (nested), which keep their type (a namedtuple too).

    A rank with nothing to share passes None.
    """
    present = [s for s in shares if s is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):  # was read as an iterable of its keys
        return {k: interleave([None if s is None else s[k] for s in shares]) for k in first}
    if isinstance(first, (tuple, list)):
        parts = [interleave([None if s is None else s[i] for s in shares]) for i in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)  # a namedtuple takes fields
    if not isinstance(first, torch.Tensor):
        return [x for s in present for x in s]
    world = len(shares)
    n = sum(int(s.shape[0]) for s in present)
    out = first.new_empty((n, *first.shape[1:]))
    for r, s in enumerate(shares):
        if s is not None and s.shape[0]:
            out[r::world] = s
    return out


class EvenBatches:
    """An evaluation shard followed by empty batches, up to the number of batches of the largest shard.

    With FSDP every forward pass gathers parameters from all ranks, so every rank must run as many
    as the others; the empty batches (every tensor cut to 0 rows) cost nothing and add nothing.
    `real_batches` is the number of batches that hold data.
    """

    def __init__(self, dl: DataLoader[Any]) -> None:
        sampler = dl.sampler
        if not isinstance(sampler, ShardSampler) or dl.batch_size is None:
            raise TypeError("EvenBatches pads the DataLoaders made by shard_loader(train=False).")
        self.dl, self.dataset, self.sampler, self.batch_size = dl, dl.dataset, sampler, dl.batch_size
        largest = len(range(0, sampler.n, sampler.world_size))
        self.n_batches = largest // dl.batch_size if dl.drop_last else math.ceil(largest / dl.batch_size)
        self.real_batches = len(dl)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[Any]:
        first = None
        for b in self.dl:
            first = b if first is None else first
            yield b
        if self.real_batches < self.n_batches:
            if first is None:  # this rank's share is empty: shape an empty batch on the first item
                first = self.dl.collate_fn([self.dl.dataset[0]])  # type: ignore[misc]
            empty = map_tensors(lambda t: t[:0], first)  # each tensor with no rows
            for _ in range(self.n_batches - self.real_batches):
                yield empty

