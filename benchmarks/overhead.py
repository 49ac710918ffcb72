"""Loop overhead: learnloop's Learner against a hand-written PyTorch loop doing the same work.

A tiny MLP on pre-built in-memory batches (bs 64), one thread. Every contender trains one epoch per
repetition, repetitions are interleaved (A B C, B C A, ...) so machine noise hits all alike, and the table
reports the median time per batch and its ratio to the raw loop. fastai and Lightning run too when they
are installed (an optional benchmark environment, never a dependency of learnloop).

Each contender runs as several independent instances (own model, optimizer and Learner): where a model's
tensors land in memory moves an epoch's time by a few percent (two identical raw loops in one process differ
that much), so before each instance is made a random amount of memory is set aside (`shift_memory`), the
instances of a contender land in different places, and taking the median over them keeps that luck out of
the ratios. The k-th instances of all contenders are made together, none always after the others. A round runs the
k-th instance of every contender back to back, so each epoch is compared with its baseline's epoch of the
same round, run a fraction of a second apart: on a shared machine, whose speed drifts by several percent
from one second to the next, this pairing is what makes the ratios repeatable. A second raw loop, identical
to the first, is timed like any contender (the A/A control row): how far its ratio lies from 1.000x is the
resolution of the run.

    python benchmarks/overhead.py [--batches 300] [--reps 11] [--instances 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import random
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from learnloop import DataLoaders, Learner
from learnloop.optimizer import SGD, OptimWrapper

N_IN, N_HIDDEN, N_OUT, BS, LR = 32, 64, 10, 64, 1e-2
# A second, identical raw loop: its ratio to the first would be 1.000x on a quiet machine, so its distance from
# 1.000x shows how finely this run can tell two loops apart.
AA_CONTROL = "raw PyTorch loop again (A/A control: the run's own noise)"


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_IN, N_HIDDEN), nn.ReLU(), nn.Linear(N_HIDDEN, N_OUT))


def shift_memory(rng: random.Random, keep: list[Any]) -> None:
    """Set aside (in `keep`) a random amount of tensor memory and of Python objects, so that what is allocated
    next lands elsewhere in memory than it would have."""
    keep.append(torch.empty(rng.randrange(1, 64 * 1024)))  # up to 256 kB: below malloc's threshold for mmap
    keep.append([object() for _ in range(rng.randrange(2000))])


def make_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(BS, N_IN, generator=g), torch.randint(0, N_OUT, (BS,), generator=g)) for _ in range(n)]


def raw_loop(batches: list[tuple[torch.Tensor, torch.Tensor]], learnloop_opt: bool = False) -> Callable[[], None]:
    """The limit: forward, loss, backward, step, zero_grad, and nothing else."""
    model = make_model()
    opt: Any = (
        SGD(list(model.parameters()), lr=LR, mom=0.9)
        if learnloop_opt
        else torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, foreach=True)
    )

    def epoch() -> None:
        model.train()
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()

    return epoch


def learnloop_loop(
    batches: list[tuple[torch.Tensor, torch.Tensor]], opt_func: Callable, one_cycle: bool = False
) -> Callable[[], None]:
    """learnloop's Learner with its default callbacks, progress going to a non-terminal."""
    dls = DataLoaders(batches, [], device="cpu")
    learn = Learner(dls, make_model(), loss_func=F.cross_entropy, opt_func=opt_func, lr=LR)
    sink = io.StringIO()

    def epoch() -> None:
        with contextlib.redirect_stdout(sink):
            if one_cycle:
                learn.fit_one_cycle(1, LR)
            else:
                learn.fit(1)
        sink.seek(0)
        sink.truncate()

    return epoch


def fastai_loop(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None] | None:
    try:
        import fastai.callback.progress  # noqa: F401  (puts ProgressCallback among fastai's default callbacks)
        from fastai.data.core import DataLoaders as FastaiDataLoaders
        from fastai.learner import Learner as FastaiLearner
        from fastai.optimizer import SGD as FastaiSGD
    except ImportError:
        return None
    dls = FastaiDataLoaders(batches, [], device="cpu")
    learn = FastaiLearner(dls, make_model(), loss_func=F.cross_entropy, opt_func=functools.partial(FastaiSGD, mom=0.9),
                          lr=LR)
    sink = io.StringIO()

    def epoch() -> None:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            learn.fit(1)
        sink.seek(0)
        sink.truncate()

    return epoch


def lightning_loop(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None] | None:
    try:
        import lightning as L
    except ImportError:
        return None

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            return F.cross_entropy(self.model(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9, foreach=True)

    class Batches:  # one iterable of batches: Lightning would take a list for a list of loaders
        def __iter__(self) -> Any:
            return iter(batches)

        def __len__(self) -> int:
            return len(batches)

    module, loader, sink = Module(), Batches(), io.StringIO()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its per-Trainer notices about devices

    def epoch() -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
            trainer.fit(module, loader)
        sink.seek(0)
        sink.truncate()

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--instances", type=int, default=6, help="independent copies of each contender")
    parser.add_argument("--seed", type=int, default=0, help="seed of the memory set aside before each instance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = make_batches(args.batches)
    contenders: dict[str, Callable[[], Callable[[], None] | None]] = {
        "raw PyTorch loop (torch.optim.SGD, foreach)": lambda: raw_loop(batches),
        AA_CONTROL: lambda: raw_loop(batches),
        "learnloop Learner, OptimWrapper(torch.optim.SGD)": lambda: learnloop_loop(
            batches, functools.partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9, foreach=True)),
        "raw PyTorch loop, learnloop SGD(mom=0.9)": lambda: raw_loop(batches, learnloop_opt=True),
        "learnloop Learner, learnloop SGD(mom=0.9)": lambda: learnloop_loop(batches, functools.partial(SGD, mom=0.9)),
        "learnloop Learner, learnloop SGD, fit_one_cycle (lr and mom scheduled)": lambda: learnloop_loop(
            batches, functools.partial(SGD, mom=0.9), one_cycle=True),
        "fastai 2.8 Learner": lambda: fastai_loop(batches),
        "Lightning Trainer": lambda: lightning_loop(batches),
    }
    # The k-th instances of all contenders are made together, so that none is always made after the others, each
    # after a random amount of memory set aside: where a model's tensors land depends on what was allocated before.
    made: dict[str, list[Callable[[], None] | None]] = {name: [] for name in contenders}
    rng = random.Random(args.seed)
    set_aside: list[Any] = []
    for _ in range(args.instances):
        for name, make in contenders.items():
            shift_memory(rng, set_aside)
            made[name].append(make())
    runs = {name: [fn for fn in fns if fn is not None] for name, fns in made.items() if fns[0] is not None}
    missing = [name for name in contenders if name not in runs]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for instances in runs.values():  # warm-up
        for fn in instances:
            fn()
    names = list(runs)
    for rep in range(args.reps):
        for k in range(args.instances):
            # The k-th instance of every contender, one after the other, in an order that turns with each round:
            # an epoch is compared with its baseline's epoch run moments before or after it, and no contender
            # always follows the same neighbour (warm or cold caches) or holds the same place in the cycle.
            turn = (rep * args.instances + k) % len(names)
            for name in names[turn:] + names[:turn]:
                start = time.thread_time()  # CPU time of this thread: robust to other processes on a shared machine
                runs[name][k]()
                times[name].append((time.thread_time() - start) / args.batches * 1e6)
    raw_torch, raw_learnloop = "raw PyTorch loop (torch.optim.SGD, foreach)", "raw PyTorch loop, learnloop SGD(mom=0.9)"

    def ratio(name: str, baseline: str) -> float:
        # The median of the per-round ratios: each epoch is compared with the epoch of the baseline's instance
        # of the same round, run moments apart, so slow drifts of a shared machine cancel out.
        return statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))

    print(f"Loop overhead: {args.batches} batches of {BS}, MLP {N_IN}-{N_HIDDEN}-{N_OUT}, 1 thread, "
          f"thread CPU time of one epoch, {args.instances} instances of each contender x {args.reps} interleaved "
          f"repetitions (ratios: median of the {args.instances * args.reps} per-round ratios), "
          f"torch {torch.__version__}\n")
    print("| loop | µs/batch (median) | ratio to the raw torch.optim loop | ratio to the raw loop, same optimizer |")
    print("|---|---:|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        if name.startswith("fastai"):  # fastai steps its own SGD: no raw loop here steps the same optimizer
            print(f"| {name} | {median:.1f} | {ratio(name, raw_torch):.3f}x | - |")
            continue
        same = raw_learnloop if "learnloop SGD" in name else raw_torch
        print(f"| {name} | {median:.1f} | {ratio(name, raw_torch):.3f}x | {ratio(name, same):.3f}x |")
    for name in missing:
        print(f"| {name} | not installed | - | - |")


if __name__ == "__main__":
    main()
