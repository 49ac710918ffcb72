"""Loop overhead in Python bytecodes, function by function: where the Learner's own per-batch work lies.

The same work as overhead.py. One epoch of each contender runs under `sys.settrace` with opcode events on (after
an untraced warm-up epoch), and every bytecode executed is counted against its function. The counts do not
depend on the machine's load, and they name the functions: the table lists, per batch, the bytecodes each
function runs in the Learner beyond the raw loop stepping the same optimizer (a function the raw loop runs as
often cancels out). Bytecodes are no time: torch's kernels and C code are not counted, and one bytecode may cost
ten instructions or a thousand; the figure shows what a change to the loop's Python adds or removes.

    python benchmarks/overhead_opcodes.py [--batches 300] [--torch-optim] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import learnloop_loop, make_batches, raw_loop  # noqa: E402

from learnloop.optimizer import SGD, OptimWrapper  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def _where(frame: FrameType) -> str:
    """`package/module.py:function`: the path cut after site-packages, src or this repository's folder."""
    path = frame.f_code.co_filename.removeprefix(ROOT)
    for cut in ("site-packages/", "src/"):
        path = path.rsplit(cut, 1)[-1]
    return f"{path}:{frame.f_code.co_name}"


def count_opcodes(epoch: Callable[[], None]) -> collections.Counter[str]:
    """The bytecodes one call of `epoch` runs, by function."""
    counts: collections.Counter[str] = collections.Counter()

    def call(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        frame.f_trace_opcodes = True
        where = _where(frame)

        def step(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
            if event == "opcode":
                counts[where] += 1
            return step

        return step

    sys.settrace(call)
    try:
        epoch()
    finally:
        sys.settrace(None)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--torch-optim", action="store_true", help="the pair with torch.optim.SGD instead")
    parser.add_argument("--top", type=int, default=15, help="how many functions to list")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = make_batches(args.batches)
    if args.torch_optim:
        opt_func: Any = functools.partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9, foreach=True)
        raw, name = raw_loop(batches), "OptimWrapper(torch.optim.SGD)"
    else:
        opt_func = functools.partial(SGD, mom=0.9)
        raw, name = raw_loop(batches, learnloop_opt=True), "learnloop SGD(mom=0.9)"
    learner = learnloop_loop(batches, opt_func)
    per_batch = {}
    for label, epoch in (("raw", raw), ("learner", learner)):
        epoch()  # warm-up: first-call work (imports, caches) is not the loop's
        per_batch[label] = {k: v / args.batches for k, v in count_opcodes(epoch).items()}
    raw_counts, learner_counts = per_batch["raw"], per_batch["learner"]
    extra = {k: learner_counts.get(k, 0.0) - raw_counts.get(k, 0.0) for k in raw_counts.keys() | learner_counts.keys()}
    total_raw, total_learner = sum(raw_counts.values()), sum(learner_counts.values())
    print(f"Python bytecodes per batch: {args.batches} batches of 64, MLP 32-64-10, {name}\n")
    print(f"raw loop {total_raw:.0f}, Learner {total_learner:.0f}: {total_learner - total_raw:+.0f} "
          f"({total_learner / total_raw:.3f}x)\n")  # fmt: skip
    print("| function | Learner's extra bytecodes per batch |")
    print("|---|---:|")
    for where, n in sorted(extra.items(), key=lambda item: -abs(item[1]))[: args.top]:
        print(f"| {where} | {n:+.1f} |")


if __name__ == "__main__":
    main()
