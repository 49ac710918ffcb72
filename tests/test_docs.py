"""The examples in README.md and docs/*.md work as written: every python block compiles, and those that need
only a learner, its data and a model run on a tiny stand-in for them (the README's quick start has its own test)."""

from __future__ import annotations

import importlib
import re
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# What the examples take as given (`dls`, `model`, `loss`, `learn`...), small enough to train in milliseconds.
# Nothing of learnloop's is imported here but what the README's quick start imports before its later blocks.
PRELUDE = """
import torch
from torch import nn
from learnloop import CrossEntropyLossFlat, DataLoaders, Learner, accuracy

torch.manual_seed(0)
x_all = torch.randn(96, 8)
y_all = (x_all[:, 0] > 0).long()
dls = DataLoaders.from_tensors(x_all[:64], y_all[:64], x_all[64:], y_all[64:], bs=16)
def Net(): return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
def splitter(m): return [list(m[:3].parameters()), list(m[3].parameters())]
def build_learner(): torch.manual_seed(0); return Learner(dls, Net(), loss_func=loss, metrics=accuracy)
model, loss = Net(), CrossEntropyLossFlat()
params = list(model.parameters())
body_params, head_params = params[:-2], params[-2:]
learn = build_learner()
xb, x = dls.one_batch()[0], x_all[0]
"""

# Blocks that are not run, by their first line, and why.
NOT_RUN = {
    "from learnloop import CrossEntropyLossFlat, DataLoaders, Learner, accuracy": "the quick start: test_readme.py",
    "for cb in cbs:": "pseudo-code of Optimizer.step",
    "# train.py": "a script for torchrun, on the digits: test_distributed.py runs such scripts",
    "with learn.distrib_ctx(fsdp=True, shard_modules=(TransformerBlock,)):": "FSDP needs several processes",
    "torch.use_deterministic_algorithms(True)   # errors on kernels that have no deterministic version":
        "it would change torch's global settings for the tests that follow",
}


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M):
            line = text[:match.start()].count("\n") + 1
            blocks.append((f"{doc.relative_to(ROOT)}:{line}", textwrap.dedent(match.group(2))))
    return blocks


BLOCKS = python_blocks()


def test_every_block_is_found() -> None:
    assert len(BLOCKS) >= 18
    firsts = {code.splitlines()[0] for _, code in BLOCKS}
    assert set(NOT_RUN) <= firsts, set(NOT_RUN) - firsts


@pytest.mark.parametrize("where, code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_block_compiles(where: str, code: str) -> None:
    compile(code, where, "exec")


@pytest.mark.parametrize("where, code", [b for b in BLOCKS if b[1].splitlines()[0] not in NOT_RUN],
                         ids=[w for w, c in BLOCKS if c.splitlines()[0] not in NOT_RUN])
def test_block_runs(where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib").use("Agg")
    monkeypatch.chdir(tmp_path)  # the examples save under the learner's path, the working directory
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny model's fit may warn (no checkpoint to resume from, say)
        exec(compile(PRELUDE, "prelude", "exec"), namespace)
        exec(compile(code, where, "exec"), namespace)


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of `doc`: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_links_and_anchors_resolve() -> None:
    checked = 0
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.name}: {target} does not exist"
            if anchor:
                assert anchor in anchors(linked), f"{doc.name}: {target} names no heading of {linked.name}"
            checked += 1
    assert checked >= 20


def test_readme_names_the_train_options_there_are() -> None:
    import argparse

    from learnloop.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {s for a in subparsers.choices["train"]._actions for s in a.option_strings if s.startswith("--")}
    readme = (ROOT / "README.md").read_text()
    table = readme.split("`learnloop train --help` lists every option:", 1)[1].split("\n\n", 2)[1]
    in_table = set(re.findall(r"`(--[\w-]+)", table))
    assert len(in_table) >= 20 and in_table <= options, in_table - options
    undocumented = options - {"--help"} - set(re.findall(r"--[\w-]+", readme))
    assert not undocumented, f"README.md does not mention {undocumented}"


def test_checkpoints_page_lists_every_key_a_checkpoint_holds(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from learnloop import CheckpointCallback, CrossEntropyLossFlat, DataLoaders, Learner

    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    learn = Learner(DataLoaders.from_tensors(x, y, x, y, bs=8), nn.Linear(4, 2), loss_func=CrossEntropyLossFlat(),
                    path=tmp_path)
    with learn.no_bar():
        learn.fit(1, cbs=CheckpointCallback())
    ckpt = torch.load(next((tmp_path / "models" / "checkpoints").glob("*.pth")), weights_only=True)
    page = (ROOT / "docs" / "checkpoints.md").read_text()
    table = page.split("## What a checkpoint holds", 1)[1].split("\n\n", 3)[2]
    documented = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)?", table, re.M))
    assert set(ckpt) <= {key for row in documented for key in row if key}, set(ckpt)


@pytest.mark.parametrize("module", ["learnloop", "learnloop.optimizer", "learnloop.callbacks", "learnloop.metrics"])
def test_every_name_the_package_exports_is_documented(module: str) -> None:
    text = "".join(doc.read_text() for doc in DOCS)
    names = importlib.import_module(module).__all__
    undocumented = [name for name in names if not re.search(rf"\b{name}\b", text)]
    assert not undocumented, f"README.md and docs/*.md do not mention {module}'s {undocumented}"


def test_porting_guide_imports_resolve() -> None:
    """Each row of the porting guide's import table: the learnloop names import from where it says (the fastai
    side, checked against fastai 2.8.12 when the guide was written, has no fastai here to import)."""
    page = (ROOT / "docs" / "porting-from-fastai.md").read_text()
    table = page.split("## Imports", 1)[1].split("\n\n", 2)[1]
    checked = 0
    for row in table.splitlines()[2:]:
        fastai_side, learnloop_side = row.strip("|").split(" | ")[:2]
        target = re.search(r"`from (learnloop[\w.]*) import ?([^`]*)`", learnloop_side)
        if target is None:
            continue
        module = importlib.import_module(target.group(1))
        if target.group(2).strip() in ("", "the same names"):  # "`from learnloop.hooks import` the same names"
            listed = ",".join(re.findall(r"`from fastai[\w.]* import ([^`]*)`", fastai_side))
        else:
            listed = target.group(2)
        names = [n.strip() for n in listed.split(",") if n.strip() not in ("", "...", "*")]
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, f"{target.group(1)} has no {missing} (row: {fastai_side})"
        checked += len(names)
    assert checked >= 100, checked
