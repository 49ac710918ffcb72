"""The benchmark scripts run and print their tables (tiny sizes: what is checked is the script, not the speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_overhead_benchmark_prints_every_contender_with_its_ratios() -> None:
    out = _run("overhead.py", "--batches", "4", "--reps", "2", "--instances", "2")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    for name in (
        "raw PyTorch loop (torch.optim.SGD, foreach)",
        "raw PyTorch loop again (A/A control: the run's own noise)",
        "learnloop Learner, OptimWrapper(torch.optim.SGD)",
        "raw PyTorch loop, learnloop SGD(mom=0.9)",
        "learnloop Learner, learnloop SGD(mom=0.9)",
        "learnloop Learner, learnloop SGD, fit_one_cycle (lr and mom scheduled)",
    ):
        assert re.search(r"\| [\d.]+ \| [\d.]+x \| [\d.]+x \|$", rows[name]), rows[name]
    assert rows["raw PyTorch loop (torch.optim.SGD, foreach)"].endswith("| 1.000x | 1.000x |")
    assert "fastai 2.8 Learner" in rows and "Lightning Trainer" in rows  # timed, or marked as not installed


def test_opcode_benchmark_names_the_learners_own_functions() -> None:
    out = _run("overhead_opcodes.py", "--batches", "4", "--top", "40")
    totals = re.search(r"raw loop (\d+), Learner (\d+): \+(\d+) \(([\d.]+)x\)", out)
    assert totals is not None, out
    raw, learner, extra = (int(totals.group(i)) for i in (1, 2, 3))
    assert learner > raw > 0 and abs(learner - raw - extra) <= 1
    rows = dict(re.findall(r"^\| (\S+) \| ([+-][\d.]+) \|$", out, flags=re.M))
    assert float(rows["learnloop/loop.py:_all_batches"]) > 0  # the loop's own body, counted per batch
    assert "benchmarks/overhead.py:epoch" in rows  # the raw loop's body, which the Learner does not run
