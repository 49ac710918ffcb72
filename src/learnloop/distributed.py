"""torch.distributed helpers: which process this is, setting the process group up and down, and the
few collectives learnloop itself issues, each bounded by a timeout.

Single-process runs pay nothing: with no process group and no launcher environment this process is
rank 0 of a world of 1, and every collective below returns at once.

torchrun describes the job in environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); :func:`setup` checks them, then joins the process group (NCCL on
CUDA, Gloo on CPU) with a timeout (:func:`default_timeout`: ``LEARNLOOP_DIST_TIMEOUT`` seconds, else
10 minutes), so a peer that died or never came makes the others fail instead of waiting forever.

learnloop's own messages between ranks (cancel agreement, metric reductions, barriers) go through a
separate Gloo group on the CPU (:func:`control_group`): they never wait on an accelerator, and they
cannot interleave with the gradient all-reduces DDP runs on the default group.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistributedError",
    "LaunchEnv",
    "DEFAULT_TIMEOUT",
    "all_gather_objects",
    "all_reduce_sum",
    "agree",
    "agree_each",
    "barrier",
    "broadcast_object",
    "check_launch_env",
    "control_group",
    "default_timeout",
    "is_distributed",
    "is_rank_zero",
    "launched_distributed",
    "lost_peers_in_backward",
    "local_rank",
    "rank",
    "rank_device",
    "rank0_first",
    "rank_zero_first",
    "set_timeout",
    "setup",
    "setup_distrib",
    "teardown",
    "teardown_distrib",
    "unwrap_model",
    "world_size",
]

DEFAULT_TIMEOUT = timedelta(minutes=10)
TIMEOUT_ENV = "LEARNLOOP_DIST_TIMEOUT"


class DistributedError(RuntimeError):
    """A distributed job that cannot run as launched: bad environment, missing peers, a timeout."""


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job, as the launcher's environment describes it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


# ------------------------------------------------------------------ who am I
def _available() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a process group of more than one process is up."""
    return _available() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: the process group's, else the launcher's ``RANK``, else 0."""
    if _available():
        return dist.get_rank()
    return _env_int(os.environ, "RANK", 0)


def world_size() -> int:
    """The number of processes: the process group's, else the launcher's ``WORLD_SIZE``, else 1."""
    if _available():
        return dist.get_world_size()
    return _env_int(os.environ, "WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, else 0): the index of its GPU."""
    return _env_int(os.environ, "LOCAL_RANK", 0)


def is_rank_zero() -> bool:
    """True unless this process is a rank other than 0 of a distributed job (launched or initialised).

    Files, logs, plots and printed tables are written by rank 0 only.
    """
    return rank() == 0


def launched_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Whether a launcher (torchrun) started this process as one of several: ``WORLD_SIZE`` > 1.

    A dictionary lookup, so checking it costs nothing in a single-process run.
    """
    env = os.environ if env is None else env
    value = env.get("WORLD_SIZE")
    return value is not None and value.strip() not in ("", "0", "1")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel or nn.DataParallel wrapper (the model itself otherwise): what to
    save, as fastai's `get_model` unwraps both, so the file's keys have no "module." prefix."""
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model


def rank_device() -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"The environment variable {name}={value!r} should be a whole number.") from None


def check_launch_env(env: Mapping[str, str] | None = None, n_devices: int | None = None) -> LaunchEnv:
    """Read and check the launcher's variables; raise :class:`DistributedError` saying what is wrong.

    `n_devices` is the number of GPUs on this machine (None: don't check ``LOCAL_RANK`` against it).
    """
    env = os.environ if env is None else env
    launch = "launch with `torchrun --nproc_per_node=N script.py`, which sets them all"
    if "WORLD_SIZE" not in env:
        raise DistributedError(f"WORLD_SIZE is not set, so this is not a distributed launch: {launch}.")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
    if missing:
        raise DistributedError(f"WORLD_SIZE is set but {', '.join(missing)} is not: {launch}.")
    world = _env_int(env, "WORLD_SIZE", 1)
    global_rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", global_rank)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    if world < 1:
        raise DistributedError(f"WORLD_SIZE={world}: the job needs at least one process.")
    if not 0 <= global_rank < world:
        raise DistributedError(
            f"RANK={global_rank} is outside 0..{world - 1} (WORLD_SIZE={world}): the ranks and world size of "
            f"the processes disagree; {launch}."
        )
    if not 0 <= local < local_world or local_world > world:
        raise DistributedError(
            f"LOCAL_RANK={local} does not fit LOCAL_WORLD_SIZE={local_world} and WORLD_SIZE={world}; {launch}."
        )
    if n_devices is not None and local >= n_devices:
        raise DistributedError(
            f"LOCAL_RANK={local} but this machine has {n_devices} GPU(s): start at most {n_devices} processes "
            f"per machine (torchrun --nproc_per_node={n_devices})."
        )
    return LaunchEnv(global_rank, world, local, local_world)


def default_timeout() -> timedelta:
    """How long a collective may wait for the other ranks: ``LEARNLOOP_DIST_TIMEOUT`` seconds, else 10 minutes."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r} should be a number of seconds.") from None
    if seconds <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r} should be a positive number of seconds.")
    return timedelta(seconds=seconds)


# ------------------------------------------------------------ set up, tear down
_owned = False  # this module initialised the process group (so tears it down)
_control: Any = None  # the Gloo group of learnloop's own messages
_timeout: timedelta = DEFAULT_TIMEOUT
_timeout_given: timedelta | None = None  # set_timeout's, for a process group that was up already
_atexit_registered = False


def setup(backend: str | None = None, timeout: timedelta | float | None = None) -> bool:
    """Join the process group the launcher described, unless one is up already; True if this call did.

    The backend is NCCL when CUDA is available (this rank's GPU, ``cuda:LOCAL_RANK``, becomes the
    current device), Gloo otherwise. `timeout` (a timedelta or seconds; default :func:`default_timeout`)
    bounds the rendezvous and every collective, so a missing or dead peer ends the job with an error.
    """
    global _owned, _timeout, _atexit_registered
    if _available():
        return False
    _timeout = _as_timedelta(timeout) if timeout is not None else default_timeout()
    cuda = torch.cuda.is_available() and backend != "gloo"
    env = check_launch_env(n_devices=torch.cuda.device_count() if cuda else None)
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(env.local_rank)
    try:
        dist.init_process_group(backend=backend, timeout=_timeout, rank=env.rank, world_size=env.world_size)
    except Exception as e:
        raise DistributedError(
            f"Rank {env.rank} could not join the process group of {env.world_size} processes at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within {_timeout}: {e}. Check that "
            f"all {env.world_size} processes were started (torchrun --nnodes/--nproc_per_node) and can reach "
            "the master address."
        ) from e
    _owned = True
    if not _atexit_registered:
        atexit.register(teardown)
        _atexit_registered = True
    return True


def teardown() -> None:
    """Leave the process group, if this module set it up (a process group set up elsewhere is left alone)."""
    global _owned, _control, _timeout_given
    _control, _timeout_given = None, None
    if _owned and _available():
        dist.destroy_process_group()
    _owned = False


def _as_timedelta(timeout: timedelta | float) -> timedelta:
    return timeout if isinstance(timeout, timedelta) else timedelta(seconds=float(timeout))


def set_timeout(timeout: timedelta | float | None) -> timedelta | None:
    """Bound learnloop's collectives by `timeout` from now on, in a process group that is up already (a Learner made
    under torchrun sets it up): its own messages (the control group, barriers) and, in a group learnloop set up,
    DDP's and FSDP's too; None puts back the timeout the group was set up with. Returns the timeout set before (None
    if none), to put it back. ``distrib_ctx(timeout=...)`` calls it for its block."""
    global _timeout_given
    previous = _timeout_given
    _timeout_given = None if timeout is None else _as_timedelta(timeout)
    if _available():
        groups = ([dist.group.WORLD] if _owned else []) + ([] if _control is None else [_control])
        for group in groups:
            dist.distributed_c10d._set_pg_timeout(_collective_timeout(), group)
    return previous


def control_group() -> Any:
    """The Gloo group learnloop's own messages use (created on first use: call it on every rank)."""
    global _control
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=_collective_timeout())
    return _control


def _collective_timeout() -> timedelta:
    if _timeout_given is not None:
        return _timeout_given
    # A process group set up elsewhere (the user's own init_process_group) gets learnloop's default.
    return _timeout if _owned else default_timeout()


# ------------------------------------------------------------------ collectives
@contextmanager
def _peers(what: str) -> Iterator[None]:
    """Turn a lost peer (Gloo's 'connection closed', a timeout) into an error that says what probably happened."""
    try:
        yield
    except RuntimeError as e:
        raise _lost_peers(e, what) from e


def _lost_peers(e: BaseException, what: str, check: str = "") -> DistributedError:
    others = f"rank {1 - rank()}" if world_size() == 2 else "another rank"
    return DistributedError(
        f"Rank {rank()} lost the other ranks while {what}: {others} most likely stopped with an error (its "
        f"traceback is above), or did not get here within the timeout ({_collective_timeout()}; set {TIMEOUT_ENV} "
        f"or timeout=){check}. [{e}]"
    )


_BACKEND_FAILURE = re.compile(r"gloo|nccl|connection (closed|reset)|timed out", re.IGNORECASE)


def lost_peers_in_backward(e: RuntimeError) -> DistributedError | None:
    """The error to raise for `e`, raised by the backward pass of a distributed fit, when it is DDP's gradient
    all-reduce failing on a lost or late rank (a backend error, not autograd's); None otherwise. Only called once the
    backward failed: nothing per batch."""
    if not is_distributed() or not (isinstance(e, dist.DistError) or _BACKEND_FAILURE.search(str(e))):
        return None
    return _lost_peers(
        e, "all-reducing the gradients in the backward pass (DDP)",
        ": check that rank's log, a callback that raises or waits at before_backward on one rank only (after the "
        "DistributedTrainer's question, order above 4), and a backward pass much slower on one rank than the others",
    )


def agree(code: int) -> int:
    """The largest `code` any rank passes: how ranks agree on a cancel one of them raised."""
    return agree_each(code)[0]


def agree_each(*codes: int) -> tuple[int, ...]:
    """The largest of each of `codes` any rank passes, in one all-reduce."""
    if not is_distributed():
        return codes
    t = torch.tensor(codes, dtype=torch.int64)
    with _peers("checking whether a rank cancelled"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=control_group())
    return tuple(int(v) for v in t.tolist())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (computed in float64 on the CPU), returned with `t`'s dtype and device."""
    if not is_distributed():
        return t
    buf = t.detach().to("cpu", torch.float64)
    with _peers("summing metrics"):
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=control_group())
    return buf.to(device=t.device, dtype=t.dtype)


def all_gather_objects(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (tensors should be on the CPU)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    with _peers("gathering results"):
        dist.all_gather_object(out, obj, group=control_group())
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj`, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    with _peers(f"receiving from rank {src}"):
        dist.broadcast_object_list(box, src=src, group=control_group())
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here; after the timeout, fail naming the ranks that did not come."""
    if not is_distributed():
        return
    group = control_group()
    with _peers("waiting at a barrier (every rank must call learn.save/load and the like)"):
        dist.monitored_barrier(group=group, timeout=_collective_timeout())


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (download or unpack data once).

    >>> with rank_zero_first():
    ...     path = download_dataset()   # rank 0 downloads; the others then find the files in place
    """
    if not is_rank_zero():
        barrier()
    yield
    if is_rank_zero():
        barrier()


# fastai's names (fastai.distributed), for scripts ported from it.


def setup_distrib(gpu: int | str | None = None) -> int | None:
    """fastai's: with `gpu`, make it this process's CUDA device and, under a launcher, join the process group
    (:func:`setup`); with None, do nothing. Returns `gpu` as an int (or None)."""
    if gpu is None:
        return None
    gpu = int(gpu)
    torch.cuda.set_device(gpu)
    if launched_distributed():
        setup()
    return gpu


def teardown_distrib() -> None:
    """fastai's: leave the process group, whoever set it up (:func:`teardown` leaves only learnloop's own)."""
    teardown()
    if _available():
        dist.destroy_process_group()


def rank0_first(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fastai's: ``func(*args, **kwargs)`` on rank 0 first, then on the other ranks (downloading data once, say);
    returns what it returned on this rank. Under a launcher without a process group yet, one is set up for the
    call and left after it, as fastai's does; in a single process it is just the call.

    >>> path = rank0_first(download_dataset, "digits")
    """
    created = setup() if launched_distributed() else False
    try:
        with rank_zero_first():
            return func(*args, **kwargs)
    finally:
        if created:
            teardown()
