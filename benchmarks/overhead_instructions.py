"""Loop overhead in machine instructions: the same work as overhead.py, counted by valgrind's cachegrind.

Time on a shared machine moves by a few percent from one process to the next; instruction counts do not.
Each contender runs in its own process under cachegrind, once with 1 epoch and once with 1 + `--epochs`,
so imports, set-up and the warm-up epoch cancel out of the difference: what is left is the cost of
`--epochs` epochs, reported per batch. Instructions are no time (a cache miss costs many), but the
ratio is the same from run to run, which makes it the figure to compare changes with.

    python benchmarks/overhead_instructions.py [--batches 300] [--epochs 3] [--torch-optim]

Needs valgrind (`apt install valgrind`); takes a few minutes (twice that with `--torch-optim`, which adds
the pair with torch.optim.SGD).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CONTENDERS = {
    "raw": "raw PyTorch loop, learnloop SGD(mom=0.9)",
    "learner": "learnloop Learner, learnloop SGD(mom=0.9)",
    "raw_torch": "raw PyTorch loop (torch.optim.SGD, foreach)",
    "learner_torch": "learnloop Learner, OptimWrapper(torch.optim.SGD)",
}
BASELINE = {"raw": "raw", "learner": "raw", "raw_torch": "raw_torch", "learner_torch": "raw_torch"}


def child(which: str, epochs: int, n_batches: int) -> None:
    """Run `epochs` epochs of one contender after a warm-up epoch (what cachegrind counts)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from overhead import learnloop_loop, make_batches, raw_loop

    from learnloop.optimizer import SGD, OptimWrapper

    torch.set_num_threads(1)
    batches = make_batches(n_batches)
    torch_sgd = functools.partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9, foreach=True)
    epoch = {
        "raw": lambda: raw_loop(batches, learnloop_opt=True),
        "learner": lambda: learnloop_loop(batches, functools.partial(SGD, mom=0.9)),
        "raw_torch": lambda: raw_loop(batches),
        "learner_torch": lambda: learnloop_loop(batches, torch_sgd),
    }[which]()
    for _ in range(1 + epochs):
        epoch()


def count(which: str, epochs: int, n_batches: int) -> int:
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",  # the same dict layouts every run
        "OMP_NUM_THREADS": "1",  # no idle worker threads spinning into the count
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, __file__, "--child", which, str(epochs), str(n_batches)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    match = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if match is None:
        raise RuntimeError(f"no instruction count in cachegrind's output:\n{out[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--torch-optim", action="store_true", help="also the pair with torch.optim.SGD")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, epochs, n_batches = args.child
        child(which, int(epochs), int(n_batches))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    contenders = {w: name for w, name in CONTENDERS.items() if args.torch_optim or not w.endswith("_torch")}
    jobs = [(which, epochs) for which in contenders for epochs in (0, args.epochs)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: count(*job, args.batches), jobs), strict=True))
    per_batch = {w: (counts[w, args.epochs] - counts[w, 0]) / (args.epochs * args.batches) for w in contenders}
    print(f"Instructions per batch (cachegrind): {args.batches} batches of 64, MLP 32-64-10, 1 thread, "
          f"{args.epochs} epochs after a warm-up\n")  # fmt: skip
    print("| loop | instructions/batch | ratio to the raw loop, same optimizer |")
    print("|---|---:|---:|")
    for which, name in contenders.items():
        print(f"| {name} | {per_batch[which] / 1e3:.1f}k | {per_batch[which] / per_batch[BASELINE[which]]:.3f}x |")


if __name__ == "__main__":
    main()
