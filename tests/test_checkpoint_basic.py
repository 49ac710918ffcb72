"""Learner.save / load: round trips with and without the optimizer, atomic writes, and clear errors."""

from __future__ import annotations

import collections
import fractions
import functools
import io
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import learnloop.checkpoint as checkpoint_module
from conftest import synth_learner
from learnloop import Learner, OptimWrapper
from learnloop.checkpoint import CheckpointError
from learnloop.warn import NonFiniteLossWarning


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _trained(tmp_path: Path, seed: int = 0) -> Learner:
    learn = synth_learner(path=tmp_path, seed=seed)
    learn.fit(1)
    return learn


def test_round_trip_with_optimizer(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    file = learn.save("model")
    assert file == tmp_path / "models" / "model.pth" and file.is_file()
    other = synth_learner(path=tmp_path)  # same data, untrained model and no optimizer yet
    assert not torch.equal(other.model.weight, learn.model.weight) and other.opt is None
    assert other.load("model") is other
    assert _same(other.model.state_dict(), learn.model.state_dict())
    assert _same(other.opt.state_dict(), learn.opt.state_dict())
    # both continue identically (same data, weights and optimizer state)
    learn.fit(1)
    other.fit(1)
    assert _same(other.model.state_dict(), learn.model.state_dict())


def test_round_trip_without_optimizer(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    learn.save("weights", with_opt=False)
    assert set(torch.load(tmp_path / "models" / "weights.pth", weights_only=True)) == {"weight", "bias"}
    other = synth_learner(path=tmp_path, seed=1)
    other.load("weights", with_opt=False)
    assert _same(other.model.state_dict(), learn.model.state_dict())
    # fastai 2.8's words, which a port may match on; learnloop's message goes on to name the file
    with pytest.warns(UserWarning, match=r"^Saved file doesn't contain an optimizer state: .*weights\.pth"):
        synth_learner(path=tmp_path, seed=2).load("weights")


def test_load_with_opt_false_leaves_the_optimizer_alone(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    learn.save("model")
    other = _trained(tmp_path, seed=3)
    before = other.opt.state_dict()
    other.load("model", with_opt=False)
    assert _same(other.opt.state_dict(), before)
    assert _same(other.model.state_dict(), learn.model.state_dict())


class _BuffersOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_a_model_with_nothing_to_train_loads_its_weights(tmp_path: Path) -> None:
    # learn.load made the optimizer first, which failed ("empty parameter list") for a model frozen whole, or with
    # buffers only, even with with_opt=False (fastai's fails too, with an IndexError).
    learn = _trained(tmp_path)
    learn.save("model")
    frozen = synth_learner(path=tmp_path, seed=3)
    frozen.model.requires_grad_(False)
    frozen.load("model", with_opt=False)
    assert frozen.opt is None and _same(frozen.model.state_dict(), learn.model.state_dict())
    warned = synth_learner(path=tmp_path, seed=3)
    warned.model.requires_grad_(False)
    with pytest.warns(UserWarning, match="no parameter to train .* only the weights are loaded"):
        warned.load("model")
    buffers = Learner(learn.dls, _BuffersOnly(), loss_func=nn.MSELoss(), path=tmp_path)
    buffers.model.scale.fill_(3.0)
    buffers.save("buffers")
    other = Learner(learn.dls, _BuffersOnly(), loss_func=nn.MSELoss(), path=tmp_path)
    other.load("buffers", with_opt=False)
    assert torch.equal(other.model.scale, torch.full((2,), 3.0))
    frozen.model.requires_grad_(True)
    frozen.fit(1)  # the optimizer is made by the fit, as for any learner without one
    assert frozen.opt is not None


def test_a_model_in_a_data_parallel_wrapper_is_saved_without_it(tmp_path: Path) -> None:
    # fastai's get_model unwraps nn.DataParallel as DDP; learnloop wrote "module.weight", which the plain model (and
    # fastai) refused as another model's.
    from learnloop import load_learner

    wrapped = synth_learner(path=tmp_path)
    wrapped.model = nn.DataParallel(wrapped.model)
    wrapped.fit(1)
    wrapped.save("dp")
    assert list(torch.load(tmp_path / "models" / "dp.pth")["model"]) == ["weight", "bias"]
    plain = synth_learner(path=tmp_path, seed=3)
    plain.load("dp")
    assert _same(plain.model.state_dict(), wrapped.model.module.state_dict())
    plain.model.weight.data.fill_(2.0)
    plain.save("plain")
    wrapped.load("plain")
    assert torch.equal(wrapped.model.module.weight, plain.model.weight)
    checkpoint_module.save_model(tmp_path / "f.pth", wrapped.model, wrapped.opt)
    other = nn.DataParallel(nn.Linear(2, 1))
    checkpoint_module.load_model(tmp_path / "f.pth", other, with_opt=False)
    assert torch.equal(other.module.weight, plain.model.weight)
    loaded = load_learner(wrapped.export(), model=nn.Linear(2, 1))
    assert torch.equal(loaded.model.weight, plain.model.weight)


@pytest.mark.parametrize("opt_state", [None, [1, 2]])
def test_an_optimizer_state_that_does_not_fit_is_warned_of_whatever_the_error(tmp_path: Path, opt_state: Any) -> None:
    # fastai warns "Could not load the optimizer state" whatever the optimizer raises; these were raw TypeErrors.
    learn = synth_learner(path=tmp_path, opt_func=functools.partial(OptimWrapper, opt=torch.optim.SGD))
    learn.fit(1)
    torch.save({"model": learn.model.state_dict(), "opt": opt_state}, learn.save("m"))
    before = learn.opt.state_dict()
    with pytest.warns(UserWarning, match=r"Could not load the optimizer state from .*m\.pth \(TypeError: .*left as"):
        learn.load("m")
    assert _same(learn.opt.state_dict(), before)


def test_save_creates_missing_folders_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path / "a" / "b", model_dir="deep/er")
    file = learn.save("m")
    assert file == tmp_path / "a" / "b" / "deep" / "er" / "m.pth" and file.is_file()
    assert [p.name for p in file.parent.iterdir()] == ["m.pth"]


def test_a_long_name_torch_save_takes_is_saved(tmp_path: Path) -> None:
    # The temporary file's name (".<name>.<8 hex>.tmp") went past the file system's 255 bytes for names of 242 to
    # 255 bytes, which torch.save (and fastai) write: "Cannot save ...: the folder ... cannot be written to".
    learn = _trained(tmp_path)
    for name in ["a" * 245, "é" * 125]:
        path = learn.save(name)
        assert len(path.name.encode()) > 245 and path.is_file()
        learn.load(name)
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".")] == []
    with pytest.raises(OSError, match=r"its name is longer than the file system takes \(264 bytes\)"):
        learn.save(Path("new") / ("b" * 260))


def test_an_interrupted_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    learn = _trained(tmp_path)
    file = learn.save("m")
    good = file.read_bytes()

    def half_written(obj: Any, f: Any) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        learn.save("m")
    assert file.read_bytes() == good
    assert [p.name for p in file.parent.iterdir()] == ["m.pth"]


def test_a_save_that_cannot_pickle_the_state_keeps_the_previous_file_and_says_so(tmp_path: Path) -> None:
    # fastai's torch.save has truncated the file when pickle fails on a lambda in the optimizer's state
    learn = _trained(tmp_path)
    file = learn.save("m")
    good = file.read_bytes()
    learn.opt.state[learn.model.weight]["scale"] = lambda: 1.0
    with pytest.raises(AttributeError, match="Can't pickle local object") as info:  # pickle's error, as fastai's
        learn.save("m")
    assert "saving " in " ".join(info.value.__notes__) and "the file that was there (if any) is unchanged" \
        in " ".join(info.value.__notes__)
    assert file.read_bytes() == good and [p.name for p in file.parent.iterdir()] == ["m.pth"]


Best = collections.namedtuple("Best", "value epoch")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_saved_file_gets_the_permissions_open_would_give_it(tmp_path: Path) -> None:
    # The temporary file renamed onto the name came from mkstemp, whose mode is 0600: a model saved on a shared
    # machine could be read by no one else, and a file that was there lost its mode.
    learn = synth_learner(path=tmp_path)
    umask = os.umask(0o022)
    try:
        file = learn.save("m")
        assert stat.S_IMODE(file.stat().st_mode) == 0o644  # as torch.save (fastai's learn.save) creates it
        os.umask(0o002)
        assert stat.S_IMODE(learn.save("other").stat().st_mode) == 0o664
        file.chmod(0o640)
        learn.save("m")
        assert stat.S_IMODE(file.stat().st_mode) == 0o640  # as torch.save over the file keeps it
    finally:
        os.umask(umask)


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_symlink_is_saved_through(tmp_path: Path) -> None:
    # torch.save writes through a link (models/best.pth -> a store elsewhere); the rename replaced the link with a
    # file, and the store kept the old weights.
    learn = _trained(tmp_path)
    store = tmp_path / "store" / "best.pth"
    store.parent.mkdir()
    torch.save({"old": torch.zeros(1)}, store)
    (tmp_path / "models").mkdir()
    link = tmp_path / "models" / "best.pth"
    link.symlink_to(store)
    assert learn.save("best", with_opt=False) == link
    assert link.is_symlink() and set(torch.load(store, weights_only=True)) == {"weight", "bias"}
    assert sorted(p.name for p in store.parent.iterdir()) == ["best.pth"]  # no temporary file left


class Coll:
    """Stands for fastcore's L, in which a port of fastai's Lookahead keeps its slow weights."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items


def test_a_lazy_module_not_initialized_yet_is_not_saved_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)  # fastai writes the file, which its own load then refuses
    learn.model = nn.Sequential(nn.LazyLinear(1))
    with pytest.raises(CheckpointError, match=r"UninitializedParameter at \['0.weight'\].*nothing was written.*lazy "
                       r"module's .* not initialized yet: run one batch through the model first"):
        learn.save("init")
    learn.model(torch.zeros(2, 1))
    learn.save("init")
    learn.load("init")


def test_a_state_the_loader_would_refuse_is_not_saved(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    file = learn.save("m")
    good = file.read_bytes()
    first = next(iter(learn.opt.state))
    learn.opt.state[first]["slow_p"] = Coll([torch.zeros(2)])
    where = r"a test_checkpoint_basic.Coll at \['opt'\]\['state'\]\[\d+\]\['slow_p'\]"
    with pytest.raises(CheckpointError, match=rf"Cannot save .*m.pth: the state holds {where}, which torch's "
                       r"weights-only loader refuses.*the file that was there is unchanged.*with_opt=False"):
        learn.save("m")
    assert file.read_bytes() == good
    with pytest.raises(CheckpointError, match="nothing was written"):
        learn.save("other")
    assert [p.name for p in file.parent.iterdir()] == ["m.pth"]  # no temporary file left either
    learn.save("m", with_opt=False)
    learn.load("m", with_opt=False)
    # What torch's weights-only loader is told to allow is allowed, when saving as when loading.
    with torch.serialization.safe_globals([Coll]):
        learn.save("m")
        learn.load("m")
    assert isinstance(learn.opt.state[first]["slow_p"], Coll)


def test_a_buffer_save_of_a_state_the_loader_would_refuse_is_an_error(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    buffer = io.BytesIO(b"head")
    buffer.seek(4)
    learn.save(buffer)  # a loadable one, read back from where it stands
    buffer.seek(4)
    learn.load(buffer)
    first = next(iter(learn.opt.state))
    learn.opt.state[first]["slow_p"] = [torch.zeros(2), Coll([])]
    with pytest.raises(CheckpointError, match=r"Coll at \['opt'\]\['state'\]\[\d+\]\['slow_p'\]\[1\].*buffer"):
        learn.save(io.BytesIO())


def test_atomic_save_refuses_any_file_the_loader_would_refuse(tmp_path: Path) -> None:
    # Every file learnloop writes with it (training checkpoints, exports) is read back with the weights-only loader.
    file = tmp_path / "x.pth"
    with pytest.raises(CheckpointError, match=r"holds a fractions.Fraction at \['a'\]\[1\]"):
        checkpoint_module.atomic_save({"a": [1, fractions.Fraction(1, 3)]}, file)
    with pytest.raises(CheckpointError, match=r"holds builtins.int at \['b'\]"):  # a class as a value
        checkpoint_module.atomic_save({"b": int}, file)
    assert not file.exists() and list(tmp_path.iterdir()) == []
    # A namedtuple (in a callback's state, say) was a TypeError from to_plain rebuilding it from a generator.
    with pytest.raises(CheckpointError, match=r"holds a test_checkpoint_basic.Best at \['best'\]"):
        checkpoint_module.atomic_save({"best": Best(0.5, np.float64(3))}, file)
    checkpoint_module.atomic_save({"a": [1, 2.0, "x", None, (torch.ones(1),), {"b": True}]}, file)
    assert checkpoint_module.safe_load(file)["a"][1] == 2.0


def test_saving_non_finite_weights_is_warned_of_and_done(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite weights: nothing to say
        file = learn.save("m")
    with torch.no_grad():
        learn.model.weight[0, 0] = float("nan")
    match = (r"Saving weights that hold NaN or infinite values \(the model's parameter 'weight': training has "
             r"diverged\) to .*m\.pth, replacing the file that was there \(save under another name")
    with pytest.warns(NonFiniteLossWarning, match=match):
        learn.save("m")  # saved all the same, as fastai saves (SaveModelCallback(at_end=True) relies on it)
    assert torch.isnan(torch.load(file, weights_only=True)["model"]["weight"][0, 0])
    with pytest.warns(NonFiniteLossWarning, match=r"to .*new\.pth \(save under"):
        learn.save("new")
    with pytest.warns(NonFiniteLossWarning, match="into the buffer"):
        learn.save(io.BytesIO())
    with torch.no_grad():
        learn.model.weight.fill_(1.0)
        learn.model.bias.fill_(float("inf"))
    with pytest.warns(NonFiniteLossWarning, match="parameter 'bias'"):
        learn.save("m")


def test_a_buffer_of_infinities_is_no_divergence(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    learn.model.register_buffer("mask", torch.tensor([0.0, -float("inf")]))  # an attention mask, say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.save("m")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at .*nothing\.pth"):
        synth_learner(path=tmp_path).load("nothing")


def test_a_directory_in_place_of_the_file(tmp_path: Path) -> None:
    # fastai's learn.load raises torch's IsADirectoryError; learnloop's said "No checkpoint at ...: check the name".
    (tmp_path / "models" / "m.pth").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"m\.pth is a directory, not a file written by torch.save"):
        synth_learner(path=tmp_path).load("m")
    with pytest.raises(FileNotFoundError, match="is a directory"):  # what learnloop raised before
        checkpoint_module.load_model(tmp_path / "models" / "m.pth", nn.Linear(2, 1))


def test_an_export_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    # It was "saved from a different model", its format fields listed as unexpected keys.
    learn = _trained(tmp_path)
    learn.export(learn.path / learn.model_dir / "exported.pth")
    with pytest.raises(CheckpointError, match=r"exported\.pth was written by learn\.export, not learn\.save: load it "
                       r"with load_learner"):
        learn.load("exported")


def test_truncated_file(tmp_path: Path) -> None:
    learn = _trained(tmp_path)
    file = learn.save("m")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        learn.load("m")


def test_a_pickle_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    (tmp_path / "models").mkdir()
    torch.save({"weight": fractions.Fraction(1, 3)}, tmp_path / "models" / "evil.pth")
    with pytest.raises(CheckpointError, match="refused.*arbitrary code"):
        learn.load("evil")


def test_a_file_without_a_state_dict(tmp_path: Path) -> None:
    learn = synth_learner(path=tmp_path)
    (tmp_path / "models").mkdir()
    torch.save([torch.ones(1)], tmp_path / "models" / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict.*list"):
        learn.load("list")


def test_a_checkpoint_of_a_different_model_names_the_mismatch(tmp_path: Path) -> None:
    _trained(tmp_path).save("m")
    wider = Learner(synth_learner().dls, nn.Linear(2, 3), loss_func=nn.MSELoss(), path=tmp_path)
    before = wider.model.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"(?s)different model.*size mismatch for weight.*\[1, 2\].*\[3, 2\]"):
        wider.load("m")
    assert torch.equal(wider.model.weight, before)


def _saved_on_a_gpu(file: Path, state: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch.save` of `state` to `file` as a GPU would write it: each storage's location is 'cuda:0'."""
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, file)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_reads_onto_the_cpu_by_default_as_fastai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fastai's load_model reads with device=None onto the CPU, so weights a GPU saved load on a machine without one;
    # learnloop's left them on the GPU (map_location=None), and called the file "corrupt or truncated".
    model = nn.Linear(2, 1)
    _saved_on_a_gpu(tmp_path / "gpu.pth", model.state_dict(), monkeypatch)
    other = nn.Linear(2, 1)
    checkpoint_module.load_model(tmp_path / "gpu.pth", other, with_opt=False)
    assert torch.equal(other.weight, model.weight)
    # device=n is GPU n, as in fastai (torch's map_location takes no number); neither is a corrupt file.
    for device, shown in ((0, "device\\(type='cuda', index=0\\)"), ("cuda", "'cuda'")):
        with pytest.raises(CheckpointError, match=rf"cannot be read onto a device this machine does not have "
                           rf"\(map_location={shown}.*pass device='cpu'"):
            checkpoint_module.load_model(tmp_path / "gpu.pth", other, device=device)


def test_load_model_without_an_optimizer_warns_that_the_state_is_not_loaded(tmp_path: Path) -> None:
    # As fastai's load_model(file, model, None): it warns; learnloop's skipped the optimizer state without a word.
    learn = synth_learner(path=tmp_path)
    learn.fit(1)
    learn.save("with")
    learn.save("without", with_opt=False)
    with pytest.warns(UserWarning, match=r"Could not load the optimizer state from .*with.pth: no optimizer was "
                      r"given \(opt=None\).*learn.create_opt\(\).*with_opt=False"):
        checkpoint_module.load_model(tmp_path / "models" / "with.pth", synth_learner().model)
    with pytest.warns(UserWarning, match="Saved file doesn't contain an optimizer state"):
        checkpoint_module.load_model(tmp_path / "models" / "without.pth", synth_learner().model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("with", "without"):
            checkpoint_module.load_model(tmp_path / "models" / f"{name}.pth", synth_learner().model, with_opt=False)
        fresh = synth_learner(path=tmp_path)  # learn.load creates the optimizer first, as fastai's
        fresh.load("with")
    assert fresh.opt is not None and fresh.opt.state_dict()["state"]


@pytest.mark.parametrize("strict", [True, False])
def test_a_load_that_fails_changes_no_weight(tmp_path: Path, strict: bool) -> None:
    # torch copies the tensors that fit before it raises for the others: the first layer, shared by both models,
    # was loaded from the file while the error said the file was of another model.
    def learner(*layers: nn.Module) -> Learner:
        return Learner(synth_learner().dls, nn.Sequential(*layers), loss_func=nn.MSELoss(), path=tmp_path)

    torch.manual_seed(0)
    learner(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).save("m")
    torch.manual_seed(1)
    other = learner(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 1))
    other.model.register_buffer("count", torch.tensor(7))
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    match = r"(?s)different model \(nothing was loaded\).*size mismatch for 2.weight"
    with pytest.raises(CheckpointError, match=match):
        other.load("m", strict=strict)
    assert all(torch.equal(v, before[k]) for k, v in other.model.state_dict().items())


def test_a_load_that_fails_on_a_value_that_is_not_a_tensor_changes_no_weight(tmp_path: Path) -> None:
    # Same keys and shapes, but one value is no tensor: torch loaded the others before refusing it, while the error
    # said nothing was loaded.
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state: dict[str, Any] = {k: torch.full_like(v, 9.0) for k, v in model.state_dict().items()}
    state["1.bias"] = 5
    torch.save(state, tmp_path / "m.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"different model \(nothing was loaded\)"):
        checkpoint_module.load_model(tmp_path / "m.pth", model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_saved_state_dict_is_torchs_with_its_metadata(tmp_path: Path) -> None:
    # The model's state is written as torch.save(model.state_dict()) and fastai write it: an OrderedDict whose
    # `_metadata` gives each module's version (BatchNorm's 2), not a plain dict without it.
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    learn = synth_learner(path=tmp_path)
    learn.model = model
    learn.create_opt()
    for with_opt in (False, True):
        state = torch.load(learn.save("m", with_opt=with_opt), weights_only=True)
        state = state["model"] if with_opt else state
        assert isinstance(state, collections.OrderedDict)
        assert state._metadata == model.state_dict()._metadata and state._metadata["1"]["version"] == 2
        assert learn.load("m", with_opt=with_opt) is learn
    buffer = learn.save(io.BytesIO(), with_opt=False)
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)._metadata == model.state_dict()._metadata
