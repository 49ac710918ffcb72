"""DataLoaders: the training and validation loaders a Learner iterates, and the device they feed."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from .distributed import is_distributed, world_size
from .errors import ArgumentError, InputError, ValueTypeError, to_path, to_whole
from .nested import map_tensors
from .sharding import LoaderSubclassError, ShardSampler, same_kind_loader
from .warn import warn_caller

__all__ = ["DataLoaders", "DeviceUnavailableError", "default_device", "to_detach", "to_device", "unshuffled"]


class DeviceUnavailableError(RuntimeError, AssertionError):
    """A DataLoaders given a CUDA device on a machine without one: a RuntimeError and an AssertionError, the types
    torch raises when a tensor is first sent there (a RuntimeError from a CUDA build without a GPU or driver, an
    AssertionError from a CPU-only build)."""


def _checked_device(device: torch.device | str, where: str) -> torch.device:
    """`device` as a torch.device, refusing a CUDA device when CUDA is not available (torch would fail only when the
    first batch is sent there, deep inside the fit)."""
    checked = torch.device(device)
    if checked.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{where}: device {str(checked)!r}, but this machine has no CUDA device (torch.cuda.is_available() is "
            "False); use 'cpu', or default_device(), which is CUDA only when it is available."
        )
    return checked


# What `default_device(use)` last set: None picks CUDA when it is available, True too, False the CPU.
_use_cuda: bool | None = None


def default_device(use: bool | int | None = -1) -> torch.device:
    """The device a `DataLoaders` given none feeds (and `load_learner(cpu=False)` loads to): CUDA when available,
    else the CPU.

    As fastai's, `use` also sets it for what follows, in this process: False the CPU, True or None CUDA when
    available; -1 (the default) only reads it. Apple's MPS is never picked on its own (fastai picks it): pass
    `device="mps"` to `DataLoaders` for it.

    >>> default_device(False)  # from here on, DataLoaders() without a device feeds the CPU
    device(type='cpu')
    """
    global _use_cuda
    if isinstance(use, int) and not isinstance(use, bool) and use == -1:
        use = _use_cuda
    elif use is None or isinstance(use, bool) or use in (0, 1):
        _use_cuda = use = None if use is None else bool(use)
    else:
        raise TypeError(
            f"default_device(use={use!r}): use is True (CUDA when available), False (the CPU), None (automatic) "
            "or -1 (read the setting, the default); to put one DataLoaders on a device, pass it device=..."
        )
    return torch.device("cuda" if use is not False and torch.cuda.is_available() else "cpu")


def maybe_gather(x: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """In a distributed job, every process's `x` joined along `axis` (a 0-dim `x`: their mean); else `x`
    (fastai's function)."""
    if not is_distributed():
        return x
    part = x.contiguous() if x.ndim > 0 else x[None]
    parts = [torch.zeros_like(part) for _ in range(world_size())]
    torch.distributed.all_gather(parts, part)
    res = torch.cat(parts, dim=axis)
    return res if x.ndim > 0 else res.mean()


def to_detach(b: Any, cpu: bool = True, gather: bool = True) -> Any:
    """Every tensor in the (nested) batch `b` detached, and moved to the CPU when `cpu` (fastai's function).

    With `gather`, in a distributed job, each tensor becomes the concatenation along dimension 0 of every
    process's, and a 0-dim one (a loss) the mean of every process's: what fastai's does, for metrics over all ranks.
    """

    def detached(t: torch.Tensor) -> torch.Tensor:
        x = maybe_gather(t.detach()) if gather else t.detach()
        return x.cpu() if cpu else x

    return map_tensors(detached, b)


def to_device(b: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor in the (nested) batch `b` to `device` (`non_blocking` to an accelerator only)."""
    on_cpu = device.type == "cpu"
    # A copy to the CPU always waits: one made non-blocking from a GPU could be read before it has landed. A tensor
    # already on the CPU is kept as it is (the common case, cheap).
    non_blocking = non_blocking and not on_cpu
    return map_tensors(lambda t: t if on_cpu and t.is_cpu else t.to(device, non_blocking=non_blocking), b)


# Samplers that draw from the whole dataset (a distributed one: each rank its share of it, which a
# DistributedTrainer gives each rank again from the dataset in order).
_WHOLE_DATASET = (RandomSampler, WeightedRandomSampler, SequentialSampler, DistributedSampler, ShardSampler)


def unshuffled(dl: Iterable[Any], by_index: bool = False) -> Iterable[Any]:
    """The same batches in dataset order, without dropping the last one (for predictions).

    A torch DataLoader over a map-style dataset whose order is drawn (a shuffling sampler, or a `BatchSampler` over
    one) or that drops its last batch is made again (a subclass of DataLoader as itself), reading the dataset in
    order in batches of the same size, with the same workers and collate function. A `SubsetRandomSampler` reads
    only its items, in the order of its indices (the new loader's dataset is their `Subset`); a sampler of another
    kind (your own, or indices given as the sampler) picks the items, in its own order, and only its last partial
    batch comes back; with `by_index`, those items are read once into a `Subset` instead, so that the result's
    `dataset[i]` is the i-th item read (what an Interpretation indexes). Anything else is read as it comes: a custom
    batch sampler (its batches may be of any size and order, by length say), an IterableDataset, any other iterable.
    """
    if not isinstance(dl, DataLoader) or isinstance(dl.dataset, torch.utils.data.IterableDataset):
        return dl
    batches = dl.batch_sampler
    if batches is None:  # automatic batching off (batch_size=None): the dataset's items are the batches
        sampler, batch_size, drop_last = dl.sampler, None, False
    elif isinstance(batches, BatchSampler):
        sampler, batch_size, drop_last = batches.sampler, batches.batch_size, batches.drop_last
    else:
        return dl
    dataset, keep = dl.dataset, None  # the items read, and the sampler kept (None: all of `dataset`, in order)
    if isinstance(sampler, SubsetRandomSampler):  # the usual train/valid split of one dataset: its items only
        dataset = Subset(dl.dataset, [int(i) for i in sampler.indices])
    elif not isinstance(sampler, _WHOLE_DATASET):  # a sampler of your own (or indices given as one) picks the items
        if by_index:
            dataset = Subset(dl.dataset, [int(i) for i in sampler])
        else:
            keep = sampler  # in its order
    if (keep is not None or isinstance(sampler, SequentialSampler)) and not drop_last:
        return dl
    workers: dict[str, Any] = {"persistent_workers": dl.persistent_workers, "prefetch_factor": dl.prefetch_factor}
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "sampler": keep,
        "shuffle": False,
        "drop_last": False,
        "num_workers": dl.num_workers,
        "collate_fn": dl.collate_fn,
        "pin_memory": dl.pin_memory,
        "timeout": dl.timeout,
        "worker_init_fn": dl.worker_init_fn,
        "multiprocessing_context": dl.multiprocessing_context,
        **(workers if dl.num_workers > 0 else {}),  # torch refuses these without workers
    }
    try:
        return same_kind_loader(dl, dataset, **kwargs)
    except LoaderSubclassError as e:
        warn_caller(
            f"The DataLoader is a {e.cls}, whose __init__ does not take DataLoader's arguments ({e}): its items are "
            f"read in order by a plain DataLoader, without what {e.cls} does. Give its __init__ defaults for its own "
            "arguments and pass the rest on to DataLoader (**kwargs), or pass dl= a loader of yours that reads them "
            "in order."
        )
        return DataLoader(dataset, **kwargs)


class DataLoaders:
    """A training and a validation loader (any iterables of batches) plus the device they feed; more loaders may
    follow, as in fastai (`DataLoaders(train, valid, test)`: `dls[2]`, for `get_preds(ds_idx=2)`).

    As fastai's, an attribute it does not have is read from the training loader (`dls.batch_size`, `dls.dataset`),
    and `dls.bs` is the training loader's batch size.

    `valid` None means no validation. `device` is where each batch is moved before the model sees it (default:
    `default_device()`, CUDA when available); a device that is not available is refused here. `n_inp` is the number
    of inputs at the start of each batch (default: all but the last element, the target). `path` is where the
    Learner writes its files unless given its own.

    >>> dls = DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, bs=64)
    >>> learn = Learner(dls, model, loss_func=torch.nn.functional.cross_entropy)
    """

    def __init__(
        self,
        train: Iterable[Any],
        valid: Iterable[Any] | None = None,
        *more: Iterable[Any],
        device: torch.device | str | None = None,
        n_inp: int | None = None,
        path: str | Path = ".",
    ) -> None:
        self.loaders: list[Iterable[Any] | None] = [train, valid, *more]
        self.device = _checked_device(device, "DataLoaders") if device is not None else default_device()
        # Checked here: a bad n_inp would otherwise fail only when the first batch is split, inside the fit.
        if n_inp is not None:
            n_inp = to_whole(n_inp, "n_inp", "DataLoaders", "the number of inputs per batch")
        self.n_inp = n_inp
        self.path = to_path(path, "path", "DataLoaders", "the folder a learner made from them saves and exports under")

    @property
    def device(self) -> torch.device:
        """The device batches are moved to as they are read. Assigning it (`dls.device = "cpu"`, as in fastai) takes
        a string too, and refuses a CUDA device on a machine without one, as `to()` does."""
        try:
            return self.__dict__["device"]  # type: ignore[no-any-return]
        except KeyError:  # a subclass whose __init__ set none: read from the training loader, as other attributes
            return self.__getattr__("device")

    @device.setter
    def device(self, device: torch.device | str) -> None:
        # Kept in __dict__ under its own name, as before it was a property (a DataLoaders pickled then loads).
        self.__dict__["device"] = _checked_device(device, "DataLoaders.device")

    @property
    def train(self) -> Iterable[Any]:
        """The training loader."""
        return self.loaders[0]  # type: ignore[return-value]

    @train.setter
    def train(self, dl: Iterable[Any]) -> None:
        # fastai's `dls.train = dl` replaces the training loader (what dls[0] reads too).
        self.loaders[0] = dl

    @property
    def valid(self) -> Iterable[Any]:
        """The validation loader (an empty list when there is none)."""
        return self.loaders[1] if self.loaders[1] is not None else []

    @valid.setter
    def valid(self, dl: Iterable[Any] | None) -> None:
        self.loaders[1] = dl

    @property
    def train_ds(self) -> Any:
        """The training loader's dataset, when it has one."""
        return getattr(self.train, "dataset", None)

    @property
    def valid_ds(self) -> Any:
        """The validation loader's dataset, when it has one."""
        return getattr(self.valid, "dataset", None)

    @property
    def bs(self) -> int | None:
        """The training loader's batch size (its `bs`, or a torch DataLoader's `batch_size`); None if it has none."""
        train = self.train
        return getattr(train, "bs", None) or getattr(train, "batch_size", None)

    def __getattr__(self, name: str) -> Any:
        # Only for names not found the usual way: the training loader's attribute, as fastai's DataLoaders reads.
        loaders = self.__dict__.get("loaders")
        if name.startswith("_") or not loaders:  # copy/pickle probes, and before __init__ has run
            raise AttributeError(name)
        try:
            return getattr(loaders[0], name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}, nor has its training loader "
                f"({type(self.train).__name__})"
            ) from None

    def __getitem__(self, i: int) -> Iterable[Any]:
        if not hasattr(type(i), "__index__"):  # 1.0 == 1 read the validation loader; fastai's list refuses it
            raise ArgumentError(
                f"DataLoaders indices are whole numbers (0 the training loader, 1 the validation one), got {i!r}."
            )
        i = operator.index(i)  # a numpy integer as the int it stands for (np.int64(-1) read the None slot)
        if -len(self.loaders) <= i < 0:  # dls[-1] is dls[1], the empty list without one
            i += len(self.loaders)
        return self.train if i == 0 else self.valid if i == 1 else self.loaders[i]  # type: ignore[return-value]

    def one_batch(self, ds_idx: int = 0) -> Any:
        """The first batch of `self[ds_idx]` (the training loader by default), on `device`: for a look at the
        data, or a test call of the model (`model(*xb)`), as fastai's `dls.one_batch()`.

        >>> xb, yb = dls.one_batch()
        """
        name = {0: "training", 1: "validation"}.get(ds_idx, f"dls[{ds_idx}]")
        for batch in self[ds_idx]:
            return to_device(batch, self.device)
        raise ValueError(f"The {name} loader does not contain any batches, so there is no batch to show.")

    def __len__(self) -> int:
        return len(self.loaders)

    def to(self, device: torch.device | str) -> DataLoaders:
        """Feed `device` from now on (batches are moved there as they are read) and return the DataLoaders, as
        fastai's. A CUDA device on a machine without one is refused.

        >>> dls = dls.to("cpu")
        """
        self.__dict__["device"] = _checked_device(device, "DataLoaders.to")
        return self

    def cpu(self) -> DataLoaders:
        """Feed the CPU from now on; returns the DataLoaders (fastai's `dls.cpu()`)."""
        return self.to(torch.device("cpu"))

    def cuda(self) -> DataLoaders:
        """Feed `default_device()` from now on, CUDA when it is available (else the CPU, as fastai's `dls.cuda()`);
        returns the DataLoaders."""
        return self.to(default_device())

    @classmethod
    def from_dsets(
        cls,
        train_ds: Dataset[Any],
        valid_ds: Dataset[Any] | None = None,
        bs: int = 64,
        *,
        valid_bs: int | None = None,
        shuffle: bool = True,
        drop_last: bool | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        device: torch.device | str | None = None,
        n_inp: int | None = None,
        **kwargs: Any,
    ) -> DataLoaders:
        """Torch DataLoaders over two datasets; the training one shuffles and drops its last partial batch (an
        IterableDataset, which cannot be shuffled, needs shuffle=False).

        `batch_size`, torch's name, stands for `bs` (as in fastai). Other keywords go to both torch DataLoaders
        (`collate_fn`, `pin_memory`...), except `sampler`, `batch_sampler` and `generator`, which draw the training
        order: the training loader's only. A `sampler`
        draws it in place of `shuffle` (which then only sets the default of `drop_last`). A `batch_sampler` makes the
        training batches itself: `bs` is then the validation loader's only, and `shuffle` and `drop_last` go unused
        (torch takes none of them with it).
        """
        if kwargs.get("batch_size") is not None:  # torch's name, which fastai takes for bs: torch got it twice
            bs = kwargs.pop("batch_size")
        kwargs.pop("batch_size", None)
        bs = _check_bs(bs, "bs", "")  # a Python int: torch's samplers refuse a numpy integer
        if valid_bs is not None:
            valid_bs = _check_bs(valid_bs, "valid_bs", " (or None for bs)")
        if shuffle and hasattr(train_ds, "__len__") and len(train_ds) == 0:  # torch: "num_samples should be ..."
            raise InputError(
                "from_dsets: train_ds has no items, so there is nothing to shuffle or train on; check how the "
                "training set was made (or pass shuffle=False for an empty training loader)."
            )
        if shuffle and isinstance(train_ds, IterableDataset) and not {"sampler", "batch_sampler"} & set(kwargs):
            # torch: "expected unspecified shuffle option, but got shuffle=True", of a shuffle the caller left as is
            raise InputError(
                f"from_dsets: train_ds is an IterableDataset ({type(train_ds).__name__}), which yields its items in "
                "its own order: it cannot be shuffled. Pass shuffle=False (and shuffle inside the dataset's __iter__ "
                "if the order should change), or give a map-style Dataset (__getitem__ and __len__)."
            )
        # The training order's own arguments: given to both loaders, the validation one would read the items a
        # training sampler names (its indices, in the validation set), and torch would get `generator` twice.
        train_only = {key: kwargs.pop(key) for key in ("sampler", "batch_sampler") if key in kwargs}
        generator = kwargs.pop("generator", None)
        if seed is not None:
            if generator is not None:
                raise ArgumentError(
                    f"from_dsets: seed={seed!r} and a generator both set the training order; pass one of them."
                )
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):  # torch: "an integer is required"
                raise ArgumentError(f"from_dsets: seed is the training order's random seed, an int; got {seed!r}.")
            generator = torch.Generator().manual_seed(int(seed))  # a numpy integer too, which torch refuses
        batching: dict[str, Any] = {"batch_size": bs, "shuffle": shuffle}
        batching["drop_last"] = shuffle if drop_last is None else drop_last
        if "batch_sampler" in train_only:  # torch refuses each of these beside it
            batching = {}
        elif "sampler" in train_only:  # the sampler draws the order: torch refuses shuffle=True beside it
            del batching["shuffle"]
        train = DataLoader(
            train_ds,
            **batching,
            num_workers=num_workers,
            generator=generator,
            **train_only,
            **kwargs,
        )
        valid = None
        if valid_ds is not None:
            batch_size = valid_bs if valid_bs is not None else bs
            valid = DataLoader(valid_ds, batch_size=batch_size, num_workers=num_workers, **kwargs)
        return cls(train, valid, device=device, n_inp=n_inp)

    @classmethod
    def from_tensors(
        cls,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_valid: torch.Tensor | None = None,
        y_valid: torch.Tensor | None = None,
        bs: int = 64,
        **kwargs: Any,
    ) -> DataLoaders:
        """DataLoaders over in-memory tensors (inputs and targets, training and validation): each `x` and its `y`
        have as many rows (the length of dimension 0)."""
        _check_rows(x_train, y_train, "x_train", "y_train")  # an empty training set: from_dsets says so
        if (x_valid is None) != (y_valid is None):  # else the validation set would be dropped without a word
            given, missing = ("x_valid", "y_valid") if y_valid is None else ("y_valid", "x_valid")
            raise ArgumentError(
                f"from_tensors: {given} is given but {missing} is None; pass both for a validation set, or neither."
            )
        valid = None
        if x_valid is not None and y_valid is not None:
            _check_rows(x_valid, y_valid, "x_valid", "y_valid")
            valid = TensorDataset(x_valid, y_valid)
        return cls.from_dsets(TensorDataset(x_train, y_train), valid, bs, **kwargs)

    def __repr__(self) -> str:
        more = "".join(f", {_describe(dl)}" for dl in self.loaders[2:])
        return f"DataLoaders(train={_describe(self.train)}, valid={_describe(self.valid)}{more}, device={self.device})"


def _check_bs(bs: Any, name: str, alternative: str) -> int:
    # Not a whole number (bs='8'): fastai's loader fails with a ValueError, torch's with a TypeError: both.
    if isinstance(bs, bool) or not isinstance(bs, numbers.Integral):
        raise ValueTypeError(f"{name} must be a positive number of items per batch{alternative}, got {bs!r}.")
    if bs < 1:
        raise ValueError(f"{name} must be a positive number of items per batch{alternative}, got {bs}.")
    return int(bs)


def _check_rows(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    # TensorDataset's own checks are a bare "Size mismatch between tensors" that names neither tensor, and an
    # AttributeError for anything else than a tensor.
    for t, name in ((x, x_name), (y, y_name)):
        if not isinstance(t, torch.Tensor):
            raise ArgumentError(
                f"from_tensors: {name} must be a torch tensor, got {type(t).__name__}; convert it with "
                "torch.as_tensor(...), or wrap your data in a Dataset and use DataLoaders.from_dsets."
            )
    if x.ndim > 0 and y.ndim > 0 and len(x) != len(y):
        raise InputError(
            f"from_tensors: {x_name} has {len(x)} rows but {y_name} has {len(y)}; give every input row its target "
            f"(dimension 0 of {x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)} must be the same length)."
        )


def length(dl: Any) -> int | None:
    """The number of batches `dl` gives, None when it cannot tell: a generator has no `__len__`, and a torch
    DataLoader over an IterableDataset without one has `__len__` but raises TypeError from it."""
    try:
        return len(dl)
    except TypeError:
        return None


def _describe(dl: Any) -> str:
    n = length(dl)
    return f"{type(dl).__name__}({'?' if n is None else n} batches)"
