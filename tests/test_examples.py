"""Every script in examples/ runs to completion (each checks its own results with asserts).

The scripts run as a new user would run them, `python examples/<name>.py`, each in a fresh directory, all
at once (one thread each) so that the suite waits for the slowest rather than for their sum.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    procs = {}
    for script in EXAMPLES:
        cwd = tmp_path_factory.mktemp(script.stem)
        procs[script.name] = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_there_are_examples() -> None:
    assert {"custom_callback.py", "custom_optimizer.py", "lr_find_one_cycle.py", "csv_regression.py"} <= {
        p.name for p in EXAMPLES}


@pytest.mark.parametrize("name", [p.name for p in EXAMPLES])
def test_example_runs(started: dict[str, subprocess.Popen[str]], name: str) -> None:
    output, _ = started[name].communicate(timeout=300)
    assert started[name].returncode == 0, output
    assert "Traceback" not in output
