"""fastai's ``torch_core`` helpers on plain tensors: seeding and random states, ``tensor``, ``Module``, one-hot
codes, device moves, the distributed shortcuts, and (from :mod:`learnloop.nested`) the nested-batch utilities.

The names, arguments and defaults are fastai 2.8's; ``from fastai.torch_core import X`` becomes
``from learnloop.torch_core import X``. There are no tensor subclasses, so nothing here keeps one (fastai casts a
result back to its input's class), and lists come back as lists where fastai returns its ``L``.
"""

from __future__ import annotations

import functools
import numbers
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .data import default_device, maybe_gather, to_detach
from .data import to_device as _to_device
from .distributed import barrier, rank, unwrap_model, world_size
from .errors import ArgumentError
from .hooks import flatten_model
from .metrics.core import find_bs, flatten_check
from .nested import apply, batch_to_samples, concat, find_device, item_find, to_concat, to_float, to_half, to_np
from .params import NORM_TYPES, norm_bias_params, trainable_params

__all__ = [
    "Module", "apply", "batch_to_samples", "concat", "default_device", "distrib_barrier", "find_bs", "find_device",
    "flatten_check", "flatten_model", "get_first", "get_model", "get_random_states", "item_find", "logit",
    "maybe_gather", "no_random", "norm_bias_params", "norm_types", "np_func", "num_distrib", "one_hot",
    "one_hot_decode", "one_param", "params", "rank_distrib", "set_random_states", "set_seed", "tensor", "to_concat",
    "to_cpu", "to_detach", "to_device", "to_float", "to_half", "to_np", "trainable_params", "unsqueeze", "unsqueeze_",
]

norm_types = NORM_TYPES


# ------------------------------------------------------------------ random states
def set_seed(s: int, reproducible: bool = False) -> None:
    """Seed python's `random`, numpy's and torch's (CPU and CUDA) generators with `s`; with `reproducible`, also
    make cuDNN deterministic (and turn its benchmark mode off)."""
    torch.manual_seed(s)
    torch.cuda.manual_seed_all(s)
    np.random.seed(s % (2**32 - 1))  # numpy takes seeds below 2**32 only
    random.seed(s)
    if reproducible:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def get_random_states() -> dict[str, Any]:
    """The states of python's, numpy's and torch's generators and cuDNN's two flags, as `set_random_states` takes
    them (``set_random_states(**states)``)."""
    return {
        "random_state": random.getstate(),
        "numpy_state": np.random.get_state(),
        "torch_state": torch.get_rng_state(),
        "torch_cuda_state": torch.cuda.get_rng_state_all(),
        "torch_deterministic": torch.backends.cudnn.deterministic,
        "torch_benchmark": torch.backends.cudnn.benchmark,
    }


def set_random_states(
    random_state: Any,
    numpy_state: Any,
    torch_state: Tensor,
    torch_cuda_state: Sequence[Tensor],
    torch_deterministic: bool,
    torch_benchmark: bool,
) -> None:
    """Put back the generator states and cuDNN flags that `get_random_states` returned."""
    random.setstate(random_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    torch.cuda.set_rng_state_all(torch_cuda_state)
    torch.backends.cudnn.deterministic = torch_deterministic
    torch.backends.cudnn.benchmark = torch_benchmark


@contextmanager
def no_random(seed: int = 42, reproducible: bool = True) -> Iterator[None]:
    """Run the block seeded with `seed` (`set_seed`), then put every generator and cuDNN flag back as it was.

    >>> with no_random():
    ...     noise = torch.randn(3)   # the same numbers at every call; the draws outside are not disturbed
    """
    states = get_random_states()
    set_seed(seed, reproducible=reproducible)
    try:
        yield
    finally:
        set_random_states(**states)


# ------------------------------------------------------------------ tensors
def tensor(
    x: Any,
    *rest: Any,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
) -> Tensor:
    """`x` as a tensor (like `torch.as_tensor`, lists and numpy arrays included); several arguments make a vector.

    A tensor is returned as it is (the keywords are ignored, as in fastai), a numpy array shares its memory where
    it can (uint16 ones become float32), and float64 always becomes float32: ``tensor(1, 2.5)`` is float32.
    """
    if rest:
        x = (x, *rest)
    if isinstance(x, Tensor):
        return x.float() if x.dtype == torch.float64 else x
    if isinstance(x, (tuple, list, numbers.Number)):
        res = torch.tensor(x, dtype=dtype, device=device)
    else:
        array = x if isinstance(x, np.ndarray) else np.array(x)
        if array.dtype.kind in "OUSV":
            raise ArgumentError(
                f"tensor() cannot make a tensor of a {type(x).__name__} ({array.dtype} array): give numbers, "
                "(nested) lists or tuples of numbers, a numpy array or anything numpy turns into a numeric array."
            )
        if array.dtype == np.uint16:
            array = array.astype(np.float32)
        res = torch.as_tensor(array, dtype=dtype, device=device)
    if res.dtype == torch.float64:
        res = res.float()
    if requires_grad:  # after the cast to float32, so that the result is a leaf whose .grad fills
        res.requires_grad_(True)
    return res.pin_memory() if pin_memory else res


def unsqueeze(x: Tensor, dim: int = -1, n: int = 1) -> Tensor:
    """`x` with `n` new dimensions of size 1 inserted at `dim` (`torch.unsqueeze`, `n` times)."""
    for _ in range(n):
        x = x.unsqueeze(dim)
    return x


def unsqueeze_(x: Tensor, dim: int = -1, n: int = 1) -> Tensor:
    """Insert `n` dimensions of size 1 at `dim` in place (`Tensor.unsqueeze_`, `n` times); returns `x`."""
    for _ in range(n):
        x.unsqueeze_(dim)
    return x


def logit(x: Tensor) -> Tensor:
    """The inverse of the sigmoid, `log(x / (1 - x))`, with `x` clamped to [1e-7, 1 - 1e-7] to stay finite."""
    x = x.clamp(1e-7, 1 - 1e-7)
    return -(1 / x - 1).log()


def one_hot(x: Any, c: int) -> Tensor:
    """A uint8 vector of `c` zeros with ones at the class indices `x` (an int, a list, an array or a tensor)."""
    res = torch.zeros(c, dtype=torch.uint8)
    if isinstance(x, Tensor):
        if x.numel() > 0:
            res[x] = 1
        return res
    if x is None:  # no class, as fastai's (L(None) is empty); res[[None]] would set every position
        return res
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x.item()
    # As fastai's L(x): the items of any iterable (a generator, dict keys...); a string or a number is one item.
    items: list[Any] = [x] if isinstance(x, (str, bytes)) or not isinstance(x, Iterable) else list(x)
    if items:
        res[items] = 1
    return res


def one_hot_decode(x: Any, vocab: Sequence[Any] | None = None) -> list[Any]:
    """The positions where the one-hot vector `x` is 1, or the entries of `vocab` at those positions."""
    use_vocab = vocab is not None and len(vocab) > 0  # an empty vocab gives positions, as in fastai
    return [vocab[i] if use_vocab else i for i, v in enumerate(x) if v == 1]  # type: ignore[index]


def np_func(f: Callable[..., Any]) -> Callable[..., Tensor]:
    """`f`, a function of numpy arrays, made a function of tensors: tensor arguments go in as arrays (keyword
    arguments as they are) and the result comes back through `tensor`."""

    @functools.wraps(f)
    def _inner(*args: Any, **kwargs: Any) -> Tensor:
        return tensor(f(*[to_np(a) if isinstance(a, Tensor) else a for a in args], **kwargs))

    return _inner


# ------------------------------------------------------------------ devices and batches
def to_device(b: Any, device: torch.device | str | None = None, non_blocking: bool = False) -> Any:
    """`b` with its tensors on `device` (None: `default_device()`), with fastai's defaults."""
    return _to_device(b, torch.device(device) if device is not None else default_device(), non_blocking)


def to_cpu(b: Any) -> Any:
    """`b` with its tensors on the CPU."""
    return _to_device(b, torch.device("cpu"), non_blocking=False)  # blocking: the values are read next


def get_first(c: Any) -> Any:
    """The first element of `c` (the first row of a pandas object, by position)."""
    return getattr(c, "iloc", c)[0]


# ------------------------------------------------------------------ models
class Module(nn.Module):
    """`nn.Module` whose subclasses need not call ``super().__init__()`` before setting layers (fastai's).

    >>> class Head(Module):
    ...     def __init__(self, n): self.lin = nn.Linear(n, 1)
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # nn.Module's own set-up runs here, before the subclass's __init__ assigns its layers.
        self = super().__new__(cls)
        nn.Module.__init__(self)
        return self

    def __init__(self) -> None:
        """Nothing to do: `__new__` set the module up, so a ``super().__init__()`` call anywhere is harmless."""


def get_model(model: nn.Module) -> nn.Module:
    """The model inside a `DistributedDataParallel` or `nn.DataParallel` wrapper, else `model` itself."""
    return unwrap_model(model)


def one_param(m: nn.Module) -> nn.Parameter | None:
    """The first parameter of `m` (None when it has none)."""
    return next(iter(m.parameters()), None)


def params(m: nn.Module) -> list[nn.Parameter]:
    """All the parameters of `m`, in a list."""
    return list(m.parameters())


# ------------------------------------------------------------------ distributed
def num_distrib() -> int:
    """The number of processes of a distributed job: the process group's, else ``WORLD_SIZE``; 0 outside one."""
    if (dist.is_available() and dist.is_initialized()) or "WORLD_SIZE" in os.environ:
        return world_size()
    return 0  # fastai's answer without a launcher, where learnloop's world_size() says 1


def rank_distrib() -> int:
    """This process's rank: the process group's, else ``RANK``, else 0."""
    return rank()


def distrib_barrier() -> None:
    """Wait until every process of a distributed job gets here (nothing to do in a single process)."""
    barrier()

