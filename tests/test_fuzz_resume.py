"""The resume fuzzer (tools/fuzz/resume.py) runs a seed end to end, and its comparison sees a difference of one bit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

FUZZER = Path(__file__).resolve().parent.parent / "tools" / "fuzz" / "resume.py"


def _fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_resume", FUZZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_diff_sees_one_bit_and_takes_nan_as_equal() -> None:
    first_diff = _fuzzer().first_diff
    x = torch.tensor([1.0, float("nan")])
    y = x.clone()
    assert first_diff({"opt": [x]}, {"opt": [y]}) is None
    y[0] = torch.nextafter(y[0], torch.tensor(2.0))
    assert first_diff({"opt": [x]}, {"opt": [y]}) == ".opt[0]: tensors differ by up to 1.19e-07"
    assert first_diff({"lrs": [0.1]}, {"lrs": [0.1 + 1e-17, 0.2]}) == ".lrs: length 1 vs 2"
    assert first_diff({"best": 0.5}, {"best": 0.5000000000000001}) == ".best: 0.5 vs 0.5000000000000001"


def test_a_seed_runs_every_resume_and_reports_a_line(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = subprocess.run(
        [sys.executable, str(FUZZER), "--seeds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: 1 seeds, 1 bit-identical, 0 differ in a documented best-effort case, 0 differ, 0 errors" in (
        done.stdout
    )
    result = json.loads(out.read_text())
    assert result["seed"] == 2 and result["status"] == "ok" and result["first_diff"] is None
    assert result["resumes"] >= 3 and "interrupted, left checkpoint_" in result["child"]  # the SIGINT stopped it
