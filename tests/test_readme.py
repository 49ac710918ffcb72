"""The README works as written: its quick start runs when pasted into Python anywhere, its links resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_block(after_heading: str, lang: str = "python") -> str:
    """The first fenced `lang` block after the heading `after_heading`."""
    section = README.split(f"\n## {after_heading}\n", 1)[1]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block under '## {after_heading}'"
    return match.group(1)


def test_starts_with_the_two_commands() -> None:
    assert README.startswith(
        "# learnloop\n\n```bash\n"
        "make train   # sets up .venv, then trains a small CNN on the bundled digits and prints the epoch table\n"
        "make test    # sets up .venv, then runs the whole test suite (pytest, ruff, mypy)\n```\n"
    )


def test_quick_start_runs_from_any_directory(tmp_path: Path) -> None:
    code = code_block("Quick start")
    assert 12 <= len(code.strip().splitlines()) <= 20
    # Pasted into the interpreter in a directory of its own; the checks are ours, not the README's.
    check = "\nassert acc >= 0.95, acc\nassert probs.shape == (len(valid_ds), 10)\nprint('QUICK START OK')\n"
    done = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    assert "QUICK START OK" in done.stdout and "accuracy" in done.stdout
    assert (tmp_path / "models" / "digits.pth").is_file() and (tmp_path / "loss.png").is_file()


def test_other_python_blocks_are_valid_python() -> None:
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        compile(block, "README.md", "exec")


def test_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for doc in ("docs/callbacks.md", "docs/porting-from-fastai.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / doc).read_text()):
            assert (ROOT / "docs" / target).resolve().exists(), (doc, target)


def test_every_built_in_callback_is_documented() -> None:
    import learnloop
    from learnloop import Callback

    text = (ROOT / "docs" / "callbacks.md").read_text()
    names = [n for n in learnloop.__all__
             if isinstance(getattr(learnloop, n), type) and issubclass(getattr(learnloop, n), Callback)]
    missing = [n for n in names if n != "Callback" and f"`{n}" not in text]
    assert not missing, f"docs/callbacks.md does not mention {missing}"
