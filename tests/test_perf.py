"""Speed helpers: ChannelsLast, CompileModel and ProfilerCallback."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synth_learner
from learnloop import Callback, DataLoaders, Learner
from learnloop.callback import noop
from learnloop.callbacks.perf import ChannelsLast, CompileModel, ProfilerCallback


def conv_learner(**kwargs: Any) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randn(32, 1, generator=g)
    dls = DataLoaders.from_tensors(x[:24], y[:24], x[24:], y[24:], bs=8, shuffle=False, device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    learn = Learner(dls, model, loss_func=nn.MSELoss(), **kwargs)
    learn.logger = noop
    return learn


def test_channels_last_converts_the_model_and_leaves_the_batches_alone() -> None:
    learn = conv_learner()
    seen: list[tuple[bool, bool, bool]] = []  # (input channels_last, output channels_last, training)
    conv = next(m for m in learn.model.modules() if isinstance(m, nn.Conv2d))
    cl = torch.channels_last
    conv.register_forward_hook(
        lambda m, args, out: seen.append(
            (args[0].is_contiguous(memory_format=cl), out.is_contiguous(memory_format=cl), learn.training)
        )
    )
    learn.fit(1, cbs=ChannelsLast())
    assert conv.weight.is_contiguous(memory_format=cl)
    assert seen and all(not x_cl and out_cl for x_cl, out_cl, _ in seen)  # the conv computes in channels_last
    assert {training for *_, training in seen} == {True, False}  # validation batches too
    # As in fastai, the batches are the data's: get_preds gives the inputs back as they came, and a callback of
    # the default order can still view them flat.
    flat = Callback(before_batch=lambda cb: cb.learn.xb[0].view(len(cb.learn.xb[0]), -1))
    inputs = learn.get_preds(with_input=True, cbs=[ChannelsLast(), flat])[0]
    assert inputs.is_contiguous() and torch.equal(inputs, learn.dls.valid.dataset.tensors[0])


def test_compile_model_calls_module_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    learn = synth_learner()
    calls: list[dict[str, Any]] = []

    def fake_compile(**kwargs: Any) -> None:
        calls.append(kwargs)
        learn.model._compiled_call_impl = learn.model._call_impl  # what nn.Module.compile leaves behind

    monkeypatch.setattr(learn.model, "compile", fake_compile)
    cb = CompileModel(mode="reduce-overhead", dynamic=False)
    learn.add_cb(cb)
    learn.fit(1)
    learn.fit(1)
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]  # compiled once, kept for later fits


def test_compile_model_in_place() -> None:
    """A real torch.compile (inductor) of a tiny model: a few seconds on a CPU, most of it importing dynamo."""
    learn = synth_learner()
    model = learn.model
    keys = list(model.state_dict())
    assert not CompileModel.is_compiled(model)
    try:
        learn.fit(1, cbs=CompileModel())
    except Exception as e:  # noqa: BLE001 - no C++ toolchain, unsupported platform...
        pytest.skip(f"torch.compile's inductor backend is not usable here: {type(e).__name__}: {e}")
    assert learn.model is model and CompileModel.is_compiled(model)
    assert list(model.state_dict()) == keys  # no `_orig_mod.` prefix: checkpoints are unchanged
    assert learn.opt.param_lists[0][0] is model.weight
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])


def test_profiler_writes_a_chrome_trace(tmp_path: Path) -> None:
    learn = synth_learner(n_train=64, bs=8)  # 8 training batches
    prof = ProfilerCallback(wait=1, warmup=1, active=2, path=tmp_path / "trace.json")
    learn.fit(1, cbs=prof)
    assert prof.traces == [tmp_path / "trace.json"]
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("aten::" in n for n in names)
    assert prof._running is False


def test_profiler_sits_out_lr_find(tmp_path: Path) -> None:
    # A profiler on the learner profiled lr_find's sweep (training batches): it wrote the sweep's trace, and lost the
    # list of the last fit's. It sits the sweep out, as trackers and loggers do, and profiles the next fit.
    learn = synth_learner(n_train=16, bs=4)
    prof = ProfilerCallback(wait=0, warmup=1, active=1, path=tmp_path / "trace.json")
    learn.add_cb(prof)
    learn.lr_find(num_it=12, show_plot=False, suggest_funcs=None)
    assert prof.traces == [] and prof.prof is None and not (tmp_path / "trace.json").exists()
    learn.fit(1)
    assert prof.traces == [tmp_path / "trace.json"] and (tmp_path / "trace.json").exists()
    learn.lr_find(num_it=12, show_plot=False, suggest_funcs=None)
    assert prof.traces == [tmp_path / "trace.json"]  # the fit's, still listed


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events:UserWarning")  # one trace per cycle is the point
def test_profiler_cycles_and_default_path(tmp_path: Path) -> None:
    learn = synth_learner(n_train=64, bs=8, path=tmp_path)
    prof = ProfilerCallback(wait=0, warmup=1, active=1, repeat=2)
    learn.add_cb(prof)
    learn.fit(1)
    assert prof.traces == [tmp_path / "trace.json", tmp_path / "trace_1.json"]
    assert all(p.exists() for p in prof.traces)
    learn.validate()  # no training batch: no profiler started, the traces are kept
    assert len(prof.traces) == 2


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events:UserWarning")
def test_profiler_goes_on_through_a_validate_run_inside_the_fit(tmp_path: Path) -> None:
    # The validate() fires a before_fit and an after_fit of its own: neither may stop the fit's profiler and let the
    # next training batch start another one from the beginning of the schedule.
    class ValidateAfterEachEpoch(Callback):
        order = 50

        def after_epoch(self) -> None:
            if not self.learn._nested_run:
                self.learn.validate()

    profilers: list[Any] = []
    learn = synth_learner(n_train=24, bs=8)  # 3 training batches an epoch
    prof = ProfilerCallback(wait=1, warmup=1, active=2, repeat=2, path=tmp_path / "trace.json")  # 8 steps
    watch = Callback(after_batch=lambda: profilers.append(prof.prof) if learn.training else None)
    learn.fit(3, cbs=[prof, ValidateAfterEachEpoch(), watch])
    assert len({id(p) for p in profilers}) == 1 and prof._n_steps == 8
    assert prof.traces == [tmp_path / "trace.json", tmp_path / "trace_1.json"]


@pytest.mark.parametrize("kwargs", [{"active": 0}, {"wait": -1}, {"repeat": 1.5}])
def test_profiler_bad_schedule(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ProfilerCallback: .* is a number of steps"):
        ProfilerCallback(**kwargs)


def test_profiler_takes_numpy_integers() -> None:
    # Refused with "wait is a number of steps, a whole number >= 0; got 2".
    prof = ProfilerCallback(wait=np.int64(2), warmup=np.int32(0), active=np.int64(3), repeat=np.int64(1))
    assert (prof.wait, prof.warmup, prof.active, prof.repeat) == (2, 0, 3, 1) and type(prof.wait) is int
    assert prof.n_profiled_steps == 5


def test_channels_last_runs_at_fastais_order() -> None:
    from learnloop.callbacks import DistributedTrainer

    assert ChannelsLast.order == -1  # fastai's: after TrainEvalCallback, before DistributedTrainer wraps the model
    learn = conv_learner(cbs=[DistributedTrainer(), ChannelsLast()])
    names = [type(cb).__name__ for cb in learn.ordered_cbs("before_fit")]
    assert names.index("TrainEvalCallback") < names.index("ChannelsLast") < names.index("DistributedTrainer")


def test_to_channelslast_adds_channels_last_and_mixed_precision() -> None:
    from learnloop.callbacks import MixedPrecision

    learn = conv_learner()
    assert learn.to_channelslast(amp_mode="bf16", init_scale=8.0) is learn
    (cl,) = [cb for cb in learn.cbs if isinstance(cb, ChannelsLast)]
    (mp,) = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert mp.amp_mode == "bf16" and mp.kwargs["init_scale"] == 8.0
    learn.to_channelslast()  # already there: nothing added
    assert sum(isinstance(cb, (ChannelsLast, MixedPrecision)) for cb in learn.cbs) == 2
    learn.fit(1)
    conv = next(m for m in learn.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    assert learn.to_contiguous() is learn
    assert not any(isinstance(cb, ChannelsLast) for cb in learn.cbs)
    assert any(isinstance(cb, MixedPrecision) for cb in learn.cbs)  # kept without to_fp32
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    learn.to_channelslast().to_contiguous(to_fp32=True)
    assert not any(isinstance(cb, (ChannelsLast, MixedPrecision)) for cb in learn.cbs)


def test_to_channelslast_without_amp_or_with_mixed_precision_already() -> None:
    from learnloop.callbacks import MixedPrecision

    learn = conv_learner().to_channelslast(use_amp=False)
    assert [type(cb) for cb in learn.cbs if isinstance(cb, (ChannelsLast, MixedPrecision))] == [ChannelsLast]
    learn = conv_learner().to_bf16().to_channelslast()  # its MixedPrecision stays the only one, in bf16
    mps = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert len(mps) == 1 and mps[0].amp_mode == "bf16"
    assert any(isinstance(cb, ChannelsLast) for cb in learn.cbs)


def test_profiler_pickles_after_a_fit(tmp_path: Path) -> None:
    # pickle.dumps(learn) failed after a fit: "cannot pickle 'torch._C._autograd._ProfilerResult' object".
    learn = synth_learner(n_train=16, bs=8)
    prof = ProfilerCallback(wait=0, warmup=1, active=1, repeat=1, path=tmp_path / "trace.json")
    learn.add_cb(prof)
    learn.fit(1)
    copy = next(cb for cb in pickle.loads(pickle.dumps(learn)).cbs if isinstance(cb, ProfilerCallback))
    assert copy.prof is None and copy._running is False and copy.traces == [tmp_path / "trace.json"]
    assert prof.prof is not None  # the original keeps its profiler's results
