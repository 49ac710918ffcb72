"""The distributed fuzzer (tools/fuzz/distributed.py): its one-process reference reads the global batches the ranks
read together, its comparison tells rounding from a difference, and a seed runs end to end under torchrun."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch.utils.data import DataLoader, TensorDataset

from learnloop.sharding import shard_loader

FUZZER = Path(__file__).resolve().parent.parent / "tools" / "fuzz" / "distributed.py"


def _fuzzer() -> ModuleType:
    sys.path.insert(0, str(FUZZER.parent))  # it imports resume.py from beside it
    try:
        spec = importlib.util.spec_from_file_location("fuzz_distributed", FUZZER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(FUZZER.parent))
    return module


def test_the_reference_reads_the_global_batches_of_the_two_ranks() -> None:
    fuzz = _fuzzer()
    ds = TensorDataset(torch.arange(11))
    for shuffle in (False, True):
        for drop_last in (False, True):
            per_rank = []
            for rank in range(2):
                g = torch.Generator().manual_seed(5)
                dl = DataLoader(ds, batch_size=4, shuffle=shuffle, generator=g, drop_last=drop_last)
                share = shard_loader(dl, rank, 2, train=True, split_batch=True, agree_seed=lambda seed: seed)
                share.sampler.set_epoch(1)
                per_rank.append([b[0].tolist() for b in share])
            g = torch.Generator().manual_seed(5)
            batches = fuzz.GlobalBatches(ds, 2, drop_last, shuffle, g)
            batches.epoch = 1
            ref = [b[0].tolist() for b in DataLoader(ds, batch_sampler=batches, generator=g)]
            assert ref == [a + b for a, b in zip(*per_rank, strict=True)]


def test_close_diff_allows_rounding_and_reports_more() -> None:
    close_diff = _fuzzer().close_diff
    x = torch.tensor([1.0, 2.0])
    assert close_diff({"w": [x]}, {"w": [x + 1e-7]}) is None
    assert close_diff({"w": [x]}, {"w": [x + 1e-7]}, exact=True) == ".w[0]: tensors differ"
    assert close_diff({"w": [x]}, {"w": [x + 1e-3]}) == ".w[0]: tensors differ by up to 0.001"
    assert close_diff({"n": [1, 2]}, {"n": [1]}) == ".n: length 2 vs 1"
    assert close_diff([float("nan"), 0.5], [float("nan"), 0.5], exact=True) is None  # an epoch without a batch
    assert close_diff([0.5], [0.5 + 1e-9], exact=True) == "[0]: 0.5 vs 0.500000001"


def test_a_seed_runs_on_two_processes_and_reports_a_line(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = subprocess.run([sys.executable, str(FUZZER), "--seeds", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    assert result["seed"] == 0 and result["status"] == "same" and result["max_weight_diff"] < 1e-6
