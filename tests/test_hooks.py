"""learnloop.hooks: Hook/Hooks, the model-size helpers, HookCallback, ActivationStats (learnloop.callbacks.hook) and
the model summary."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")  # tests only: the library leaves the backend to matplotlib

import matplotlib.pyplot as plt  # noqa: E402

from learnloop import (  # noqa: E402
    SGD,
    Adam,
    Callback,
    CollectDataCallback,
    DataLoaders,
    EarlyStoppingCallback,
    FetchPredsCallback,
    GatherPredsCallback,
    Learner,
    load_learner,
)
from learnloop.callback import noop  # noqa: E402
from learnloop.errors import ArgumentError, InputError  # noqa: E402
from learnloop.hooks import (  # noqa: E402
    ActivationStats,
    Hook,
    HookCallback,
    Hooks,
    dummy_eval,
    has_params,
    hook_output,
    hook_outputs,
    in_channels,
    model_sizes,
    num_features_model,
)
from learnloop.summary import PrettyString, layer_info, module_summary, summary, total_params  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2))


def make_learner(
    model: nn.Module | None = None, shuffle: bool = False, seed: int | None = None, **kw: object
) -> Learner:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    dls = DataLoaders.from_tensors(x, y, x[:8], y[:8], bs=4, shuffle=shuffle, seed=seed, device="cpu")
    learn = Learner(dls, model if model is not None else mlp(), loss_func=nn.CrossEntropyLoss(), **kw)  # type: ignore[arg-type]
    learn.logger = noop
    return learn


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------------ Hook / Hooks
def test_hook_stores_what_hook_func_returns_on_detached_tensors() -> None:
    lin = nn.Linear(3, 2)
    seen: list[tuple[nn.Module, tuple[torch.Tensor, ...]]] = []

    def func(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor) -> torch.Tensor:
        seen.append((m, i))
        return o * 2

    x = torch.randn(5, 3)
    with Hook(lin, func) as h:
        assert h.stored is None and not h.removed
        out = lin(x)
    assert seen[0][0] is lin and torch.equal(seen[0][1][0], x)
    assert torch.equal(h.stored, out.detach() * 2) and not h.stored.requires_grad
    assert h.removed and n_hooks(lin) == 0
    h.remove()  # a second time: nothing happens
    lin(x)
    assert len(seen) == 1

    with Hook(lin, lambda m, i, o: o, detach=False) as h:
        lin(x)
    assert h.stored.requires_grad


def test_hook_refuses_what_is_not_a_module_or_a_function() -> None:
    with pytest.raises(TypeError, match="Hook needs a torch.nn.Module to hook, got list"):
        Hook([nn.Linear(2, 2)], lambda m, i, o: o)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hook_func must be a function"):
        Hook(nn.Linear(2, 2), "o")  # type: ignore[arg-type]


def test_hook_output_and_its_gradient() -> None:
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with hook_output(lin) as h:
        out = lin(x)
    assert torch.equal(h.stored, out.detach())

    w = torch.tensor([2.0, -3.0])
    with pytest.warns(FutureWarning, match="non-full backward hook"), hook_output(lin, grad=True) as g:
        (lin(x) * w).sum().backward()  # as fastai's: torch's legacy backward hook, which torch warns about
    assert isinstance(g.stored, tuple)
    assert torch.equal(g.stored[0], w.expand(4, 2))  # d(sum(out * w)) / d(out)


def test_hooks_on_a_list_and_on_a_container() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(4, 3)
    with hook_outputs(model) as hooks:  # a container: its direct children
        model(x)
        assert len(hooks) == 3 and hooks[2] is list(hooks)[2]
        assert [tuple(s.shape) for s in hooks.stored] == [(4, 5), (4, 5), (4, 2)]
        assert torch.equal(hooks.stored[1], torch.relu(model[0](x)).detach())
    assert n_hooks(model) == 0
    hooks = Hooks([model[0], model[2]], lambda m, i, o: type(m).__name__)
    model(x)
    assert hooks.stored == ["Linear", "Linear"]
    hooks.remove()
    assert n_hooks(model) == 0
    with pytest.raises(TypeError, match=r"Hooks needs an iterable of modules, got Linear: pass \[module\]"):
        Hooks(nn.Linear(2, 2), lambda m, i, o: o)  # type: ignore[arg-type]


@pytest.mark.parametrize("container", [nn.ModuleDict, dict])
def test_hooks_on_a_mapping_say_to_pass_its_values(container: type) -> None:
    # Iterating one gives its keys, which were refused as "Hook needs a torch.nn.Module to hook, got str; for several
    # modules use Hooks(modules, f)": what the call did.
    heads = container({"a": nn.Linear(2, 2), "b": nn.Linear(2, 1)})
    with pytest.raises(TypeError, match=rf"a {container.__name__} yields its keys: pass ms.values\(\)"):
        hook_outputs(heads)
    with hook_outputs(heads.values()) as hooks:
        assert len(hooks) == 2
    with pytest.raises(TypeError, match=rf"ActivationStats hooks the modules that `modules` yields, but a "
                                        rf"{container.__name__} yields its keys: pass modules.values\(\)"):
        ActivationStats(modules=heads)


def test_hooks_that_fail_on_a_later_element_leave_no_hook_on_the_earlier_ones() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    calls: list[str] = []
    with pytest.raises(TypeError, match="Hook needs a torch.nn.Module to hook, got str"):
        Hooks([model[0], model[1], "head"], lambda m, i, o: calls.append(type(m).__name__))  # type: ignore[list-item]
    model(torch.randn(4, 3))
    assert calls == [] and n_hooks(model) == 0  # they were left on, calling hook_func at every forward pass


# ------------------------------------------------------------------------------------------ size helpers
def test_has_params_and_total_params() -> None:
    lin = nn.Linear(3, 2)
    assert has_params(lin) and not has_params(nn.ReLU())
    assert total_params(lin) == (8, True)
    assert total_params(nn.ReLU()) == (0, False)
    lin.weight.requires_grad_(False)
    assert total_params(lin) == (8, False)  # the first parameter's flag, as in fastai


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1))


def test_dummy_eval_and_model_sizes() -> None:
    model = cnn().train()
    torch.manual_seed(3)
    out = dummy_eval(model, (6, 6))
    assert not model.training  # as fastai's: left in eval mode
    torch.manual_seed(3)
    x = torch.empty(1, 3, 6, 6).uniform_(-1.0, 1.0)  # the dummy image: drawn from torch's generator
    assert torch.equal(out, model(x))
    assert model_sizes(model, (8, 8)) == [torch.Size([1, 4, 8, 8]), torch.Size([1, 4, 8, 8]), torch.Size([1, 6, 4, 4])]
    assert num_features_model(model) == 6
    with pytest.raises(ValueError, match="has no layer with a 4-d weight"):
        dummy_eval(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("first", [nn.Conv2d(4, 8, 3, groups=2), nn.ConvTranspose2d(4, 8, 3)])
def test_the_dummy_image_has_the_input_channels_of_a_grouped_or_transposed_first_convolution(first: nn.Module) -> None:
    # fastai's reads the first 4-d weight's dimension 1: 2 channels for the grouped one (4 / groups), 8 for the
    # transposed one (its output channels): the model failed on the dummy image.
    model = nn.Sequential(first, nn.ReLU(), nn.Conv2d(8, 5, 1))
    assert [s[1] for s in model_sizes(model, (8, 8))] == [8, 8, 5]
    assert num_features_model(model) == 5
    assert in_channels(model) == 4


def test_in_channels_reads_the_first_convolution() -> None:
    # fastai's `layers.in_channels`, which fastai's own dummy_eval/model_sizes call: ported code finds it here.
    assert in_channels(cnn()) == 3
    assert in_channels(nn.Sequential(nn.Linear(5, 3), nn.Sequential(nn.Conv2d(7, 2, 1)))) == 7  # nested, after a 2-d
    with pytest.raises(ValueError, match="has no layer with a 4-d weight"):
        in_channels(nn.Sequential(nn.Linear(2, 2)))


def test_num_features_model_tries_larger_images() -> None:
    model = nn.Sequential(nn.Conv2d(2, 5, 40))  # needs at least 40 pixels: 32 fails, 64 fits
    assert num_features_model(model) == 5
    with pytest.raises(RuntimeError):
        num_features_model(nn.Sequential(nn.Conv2d(2, 1, 1, stride=64), nn.Flatten(), nn.Linear(7, 2)))  # never fits


# --------------------------------------------------------------------------------------------- HookCallback
def test_callbacks_importable_from_hooks() -> None:
    import pickle

    import learnloop
    import learnloop.callbacks.hook as new_mod
    import learnloop.hooks as old_mod

    # HookCallback and ActivationStats live in learnloop.callbacks.hook; learnloop.hooks re-exports them, so the
    # old import path and pickles that name them there still give the same classes.
    for name in ("HookCallback", "ActivationStats"):
        assert getattr(old_mod, name) is getattr(new_mod, name) is getattr(learnloop, name)
        assert name in old_mod.__all__ and name in dir(old_mod)
        assert pickle.loads(f"clearnloop.hooks\n{name}\n.".encode()) is getattr(new_mod, name)
    assert HookCallback is new_mod.HookCallback and ActivationStats is new_mod.ActivationStats


class OutputMeans(HookCallback):
    def hook(self, m: nn.Module, i: object, o: torch.Tensor) -> float:
        return o.mean().item()


def test_hook_callback_hooks_the_leaf_modules_with_parameters_during_the_fit() -> None:
    learn = make_learner(cbs=OutputMeans())
    cb = learn.output_means
    learn.fit(1, lr=0.0)
    model = learn.model
    assert cb.modules == [model[0], model[2], model[3]]  # ReLU has no parameters
    assert n_hooks(model) == 0  # removed after the fit
    x = learn.dls.valid_ds.tensors[0][4:]  # the last validation batch: the last forward pass of the fit
    expected = model[:1](x).mean().item(), model[:3](x).mean().item(), model(x).mean().item()
    assert cb.hooks.stored == pytest.approx(expected)

    everything = OutputMeans(include_paramless=True, remove_end=False)
    learn.fit(1, lr=0.0, cbs=everything)
    assert len(everything.modules) == 4 and n_hooks(model) == 4  # kept: remove_end=False
    everything.hooks.remove()


def test_hook_callback_every_n_batches_and_a_hook_given_as_argument() -> None:
    calls: list[int] = []
    learn = make_learner()
    cb = HookCallback(modules=[learn.model[0]], every=2, hook=lambda m, i, o: calls.append(learn.train_iter))
    learn.fit(2, lr=0.0, cbs=cb)
    assert calls == [0, 2, 4, 6]  # hooked only on every other training batch, never while validating
    assert n_hooks(learn.model) == 0
    with pytest.raises(ArgumentError, match="unexpected argument.*'after_batch'"):
        HookCallback(after_batch=print)
    for every in (0, -1, 1.5, True):  # fastai's: a ZeroDivisionError in the first batch, or every batch hooked
        with pytest.raises(InputError, match=rf"every must be None .* or a whole number >= 1 .*got {every!r}"):
            ActivationStats(every=every)  # type: ignore[arg-type]
    assert HookCallback(every=np.int64(2)).every == 2
    for whole in (2.0, np.float64(2.0), torch.tensor(2)):  # refused as not "a whole number >= 1"; fastai's takes 2.0
        cb = ActivationStats(every=whole)  # type: ignore[arg-type]
        assert cb.every == 2 and type(cb.every) is int
    for bad in (float("nan"), math.inf, "2", torch.tensor([2])):
        with pytest.raises(InputError, match="every must be None"):
            HookCallback(every=bad)  # type: ignore[arg-type]


def test_a_validate_inside_the_fit_leaves_the_hooks_and_the_stats_of_the_fit_alone() -> None:
    learn = make_learner()
    stats = ActivationStats()
    validated = Callback(after_batch=lambda: learn.validate() if learn.training and learn.iter == 0 else None)
    hooked: list[int] = []
    learn.fit(1, lr=0.0, cbs=[stats, validated, Callback(before_batch=lambda: hooked.append(n_hooks(learn.model)))])
    assert len(stats.stats) == 1  # the batch before the validate() (after it, learn.training is False, as in fastai)
    assert hooked == [3] * len(hooked) and len(hooked) > 2  # hooked at every batch, those after the validate() too
    assert n_hooks(learn.model) == 0  # and the fit's after_fit took the hooks off


def test_the_default_modules_are_those_of_the_model_of_each_fit() -> None:
    # Picked once, they stayed the first model's: a model replaced between fits, or the callback given to another
    # learner, was never hooked (every statistic None) while the old model's layers were.
    stats = ActivationStats()
    first = make_learner(cbs=stats)
    first.fit(1, lr=0.0)
    second = make_learner(cbs=stats)
    second.fit(1, lr=0.0)
    assert stats.modules == [second.model[0], second.model[2], second.model[3]]
    assert len(stats.layer_stats(0)[0]) == 4  # a mean per training batch: ValueError, nothing recorded
    second.model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    second.fit(1, lr=0.0)
    assert stats.modules == list(second.model) and all(e is not None for batch in stats.stats for e in batch)


def test_a_fit_ended_by_an_error_leaves_its_hooks_until_the_next_fit_replaces_them() -> None:
    learn = make_learner()
    cb = OutputMeans()

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, lr=0.0, cbs=[cb, Callback(after_batch=fail)])
    assert n_hooks(learn.model) == 3  # no after_fit ran, as in fastai
    learn.fit(1, lr=0.0, cbs=cb)
    assert n_hooks(learn.model) == 0


class Counting(HookCallback):
    def __init__(self, calls: list[nn.Module], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = calls

    def hook(self, m: nn.Module, i: object, o: torch.Tensor) -> None:
        self.calls.append(m)


def test_the_hooks_of_a_fit_callback_whose_fit_raised_go_once_it_is_off_the_learner() -> None:
    # fit(cbs=...) takes its callbacks off however the fit ends, but an error runs no after_fit: the hooks stayed on the
    # model for good (as in fastai), calling the callback at every forward pass of every later fit, validate()...
    learn = make_learner()

    def fail() -> None:
        raise RuntimeError("boom")

    calls: list[nn.Module] = []
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, lr=0.0, cbs=[Counting(calls), Callback(after_batch=fail)])
    assert len(calls) == 3  # one batch, three modules
    learn.fit(1, lr=0.0)
    assert len(calls) == 3 and n_hooks(learn.model) == 0  # not called again (it was 3 + 3 * 6), and unhooked
    kept = Counting(calls)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, lr=0.0, cbs=[kept, Callback(after_batch=fail)])
    learn.validate()
    assert len(calls) == 6 and n_hooks(learn.model) == 0  # outside a fit: unhooked at once
    del kept  # the model holds no callback alive: one nobody holds is unhooked when it goes
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, lr=0.0, cbs=[ActivationStats(), Callback(after_batch=fail)])
    assert n_hooks(learn.model) == 0
    # Kept on purpose (remove_end=False), the hooks stay and go on calling the callback, as fastai's.
    kept = Counting(calls, remove_end=False)
    learn.fit(1, lr=0.0, cbs=kept)
    n = len(calls)
    learn.validate()
    assert len(calls) == n + 6 and n_hooks(learn.model) == 3
    kept.hooks.remove()


def test_a_model_with_kept_hooks_exports_whole_without_its_callback(tmp_path: Path) -> None:
    # The hooks hold the callback weakly; pickled, they are no-ops: the export neither fell back to weights only
    # (a closure cannot be pickled) nor carried the callback and its learner along.
    learn = make_learner()
    stats = ActivationStats(remove_end=False)
    learn.fit(1, lr=0.0, cbs=stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.export(tmp_path / "e.pkl")
    loaded = load_learner(tmp_path / "e.pkl", trusted=True)
    assert n_hooks(loaded.model) == 3 and not any(isinstance(cb, ActivationStats) for cb in loaded.cbs)
    preds, _ = loaded.get_preds(dl=learn.dls.valid)
    assert torch.allclose(preds, learn.get_preds()[0])
    assert b"ActivationStats" not in (tmp_path / "e.pkl").read_bytes()
    assert n_hooks(learn.model) == 3 and len(stats.stats) == 4


def test_activation_stats_taken_out_for_a_fetch_keeps_its_hooks_for_the_rest_of_the_fit() -> None:
    learn = make_learner()
    stats = ActivationStats()
    learn.fit(2, lr=0.0, cbs=[stats, FetchPredsCallback()])
    assert len(stats.stats) == 8  # 4 training batches an epoch: the fetch after the first epoch unhooked nothing
    assert all(len(batch) == 3 and all(e is not None for e in batch) for batch in stats.stats)
    assert n_hooks(learn.model) == 0


# ------------------------------------------------------------------------------------------ ActivationStats
def expected_stats(o: torch.Tensor) -> tuple[float, float, float]:
    return o.mean().item(), o.std().item(), (o <= 0.05).long().sum().item() / o.numel()


def test_activation_stats_values() -> None:
    learn = make_learner(opt_func=SGD, cbs=ActivationStats(with_hist=True))
    learn.fit(1, lr=0.0)  # lr 0: the weights stay, so the test can recompute every batch's activations
    stats = learn.activation_stats
    assert len(stats.stats) == 4 and len(stats.stats[0]) == 3  # 4 training batches, 3 modules with parameters
    entry = stats.stats[0][0]
    assert set(entry) == {"mean", "std", "near_zero", "hist"}
    assert all(isinstance(v, torch.Tensor) for v in entry.values()) and entry["mean"].dim() == 0
    model, x = learn.model.train(), learn.dls.train_ds.tensors[0]  # BatchNorm as in training: batch statistics
    for idx, upto in enumerate((1, 3, 4)):
        acts = [model[:upto](x[i : i + 4]).detach() for i in range(0, 16, 4)]
        means, stds, near_zero = stats.layer_stats(idx)
        assert all(isinstance(v, float) for v in means)
        assert list(zip(means, stds, near_zero, strict=True)) == [expected_stats(a) for a in acts]
        assert torch.equal(stats.hist(idx), torch.stack([a.histc(40, 0, 10) for a in acts]).t().log1p())


def test_activation_stats_every_and_tuple_outputs() -> None:
    lstm = nn.LSTM(4, 3, batch_first=True)
    cb = ActivationStats(modules=[lstm], every=3)
    cb.hooks = Hooks([lstm], cb.hook, detach=True, cpu=True)
    x = torch.randn(2, 5, 4)
    out, (h, c) = lstm(x)
    stored = cb.hooks.stored[0]
    assert isinstance(stored, list) and len(stored) == 3  # the output, h and c
    assert [s["mean"].item() for s in stored] == [t.mean().item() for t in (out, h, c)]
    cb.stats.append(cb.hooks.stored)
    for error in (ValueError, TypeError):  # fastai's layer_stats of a tuple output fails with a TypeError
        with pytest.raises(error, match="did not record one set of statistics per batch"):
            cb.layer_stats(0)
    cb.hooks.remove()

    learn = make_learner(cbs=ActivationStats(every=3))
    learn.fit(2, lr=0.0)
    assert len(learn.activation_stats.stats) == 3  # training iterations 0, 3 and 6 of 8


def test_activation_stats_with_detach_false_keeps_no_graph() -> None:
    # The statistics are tensors (fastai's are floats): computed on the hooked output as it is, with detach=False
    # each would hold its batch's autograd graph, and so its activations, as long as the record.
    learn = make_learner(opt_func=SGD, cbs=ActivationStats(with_hist=True, detach=False))
    learn.fit(1, lr=0.0)
    entries = [entry for batch in learn.activation_stats.stats for entry in batch]
    assert entries and all(v.grad_fn is None and not v.requires_grad for e in entries for v in e.values())
    ref = make_learner(opt_func=SGD, cbs=ActivationStats(with_hist=True))
    ref.fit(1, lr=0.0)
    assert learn.activation_stats.layer_stats(0) == ref.activation_stats.layer_stats(0)


def test_activation_stats_errors_and_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    cb = ActivationStats()
    with pytest.raises(ValueError, match="no statistics: fit the learner with it first"):
        cb.hist(0)
    learn = make_learner(cbs=cb)
    learn.fit(1, lr=0.0)
    with pytest.raises(ValueError, match="'hist' only with with_hist=True"):
        cb.hist(0)
    fig = cb.plot_layer_stats(1)
    assert [ax.get_title() for ax in fig.axes] == ["mean", "std", "% near zero"]
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == cb.layer_stats(1)[0]

    cb.with_hist = True
    learn.fit(1, lr=0.0)
    ax = cb.color_dim(0)
    assert ax.get_images()[0].get_array().shape == (40, 4)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'learnloop\[plot\]'"):
        cb.color_dim(0)


# ------------------------------------------------------------------------------------------------- summary
SUMMARY_FROZEN = [  # fastai 2.8.12's learn.summary() for this learner (callbacks: learnloop's defaults)
    "Sequential (Input shape: 4 x 4)",
    "============================================================================",
    "Layer (type)         Output Shape         Param #    Trainable ",
    "============================================================================",
    "                     4 x 8               ",
    "Linear                                    40         False     ",
    "ReLU                                                           ",
    "BatchNorm1d                               16         True      ",
    "____________________________________________________________________________",
    "                     4 x 2               ",
    "Linear                                    18         True      ",
    "____________________________________________________________________________",
    "",
    "Total params: 74",
    "Total trainable params: 34",
    "Total non-trainable params: 40",
    "",
    f"Optimizer used: {Adam}",
    "Loss function: CrossEntropyLoss()",
    "",
    "Model frozen up to parameter group #1",
    "",
    "Callbacks:",
    "  - TrainEvalCallback",
    "  - Recorder",
    "  - ProgressCallback",
]


def test_summary_text() -> None:
    learn = make_learner(splitter=lambda m: [list(m[:3].parameters()), list(m[3].parameters())])
    text = summary(learn)
    assert "Model " not in text  # no optimizer yet: nothing said about freezing, as in fastai
    learn.freeze()
    text = summary(learn)
    assert isinstance(text, PrettyString) and repr(text) == str(text)
    assert text.split("\n") == SUMMARY_FROZEN
    assert isinstance(learn.summary(), PrettyString) and learn.summary() == text  # the Learner's method, fastai's name
    learn.unfreeze()
    assert "\nModel unfrozen\n\nCallbacks:" in summary(learn)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(4, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class OwnParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.scale = nn.Linear(4, 3), nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


class TiedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = nn.Embedding(10, 4), nn.Linear(4, 10)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


def test_module_summary_counts_a_shared_parameter_once_in_the_totals() -> None:
    # fastai's counts the tied matrix in each module holding it: 40 + 50 = 90 parameters for a model of 50.
    learn = make_learner(TiedWeights())
    text = module_summary(learn, torch.randint(0, 10, (2, 3)))
    assert "\nEmbedding                                 40         True      " in text
    assert "\nLinear                                    50         True      " in text  # each layer shows its own
    assert "Total params: 50\nTotal trainable params: 50\n" in text
    lin = nn.Linear(4, 4)
    learn = make_learner(nn.Sequential(nn.Sequential(lin, nn.ReLU()), nn.Sequential(lin), nn.Linear(4, 2)))
    learn.model[2].requires_grad_(False)
    text = module_summary(learn, torch.randn(2, 4))
    assert "Total params: 30\nTotal trainable params: 20\nTotal non-trainable params: 10\n" in text


def test_module_summary_of_tuple_outputs_and_uncounted_parameters() -> None:
    learn = make_learner(Recurrent())
    assert module_summary(learn, torch.randn(2, 7, 4)).split("\n") == [  # fastai's text
        "Recurrent (Input shape: 2 x 7 x 4)",
        "============================================================================",
        "Layer (type)         Output Shape         Param #    Trainable ",
        "============================================================================",
        "                     2 x 7 x 5           ",
        "LSTM                                                           ",  # no `weight`: not counted, as fastai
        "____________________________________________________________________________",
        "                     2 x 2               ",
        "Linear                                    12         True      ",
        "____________________________________________________________________________",
        "",
        "Total params: 12",
        "Total trainable params: 12",
        "Total non-trainable params: 0",
        "",
        "",
    ]
    learn = make_learner(OwnParameter())
    info = layer_info(learn, torch.randn(5, 4))
    assert info == [("Linear", 15, True, torch.Size([1, 3]), False), None]  # `scale`: never called, not counted
    assert "Total params: 15\n" in module_summary(learn, torch.randn(5, 4))


def test_summary_leaves_mode_weights_random_state_records_and_callbacks_alone() -> None:
    collect, gather = CollectDataCallback(), GatherPredsCallback()
    learn = make_learner(shuffle=True, cbs=[EarlyStoppingCallback(patience=5), ActivationStats(), collect, gather])
    learn.fit(1)
    values, best = [list(v) for v in learn.recorder.values], learn.early_stopping.best
    stats = learn.activation_stats.stats
    data, preds = collect.data, gather.preds
    assert len(data) == 6 and preds.shape == (8, 2)
    order = list(learn.cbs)
    model = learn.model.train()
    model[2].eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    summary(learn)
    assert torch.equal(torch.get_rng_state(), state)  # the shuffled loader's batch drew from it: put back
    assert [m.training for m in model] == [True, True, False, True]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert learn.recorder.values == values and learn.early_stopping.best == best
    assert learn.activation_stats.stats is stats
    assert collect.data is data and gather.preds is preds  # the summary's pass would have started them over
    assert learn.cbs == order and n_hooks(model) == 0

    seeded = make_learner(shuffle=True, seed=5)
    generator = seeded.dls.train.generator.get_state()
    summary(seeded)
    assert torch.equal(seeded.dls.train.generator.get_state(), generator)


def test_summary_from_a_fits_before_fit_leaves_activation_stats_hooked() -> None:
    # There the fit is not yet under way: the summary's pass took ActivationStats' hooks, fired while it was out,
    # off the model for good, and the fit recorded no batch (fastai's records the summary's batch at every one).
    def record(with_summary: bool) -> list[list[float]]:
        stats, texts = ActivationStats(), []

        def print_summary() -> None:
            if not texts:  # once: the summary's own pass fires before_fit too
                texts.append("")
                texts.append(summary(learn))

        learn = make_learner(cbs=[stats, *([Callback(before_fit=print_summary)] if with_summary else [])])
        learn.fit(1)
        assert n_hooks(learn.model) == 0
        return stats.layer_stats(0)

    plain = record(False)
    assert len(plain[0]) == 4 and record(True) == plain


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)  # the data has 4 features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_summary_of_a_model_that_fails_says_what_it_was_given() -> None:
    learn = make_learner(Broken())
    learn.model.train()
    with pytest.raises(RuntimeError, match=r"input\(s\) of shape \(1, 4\) \(the batch's: \(4, 4\)\)"):
        summary(learn)
    assert n_hooks(learn.model) == 0 and learn.model.training
    assert [type(cb).__name__ for cb in learn.cbs] == ["TrainEvalCallback", "Recorder", "ProgressCallback"]


def test_summary_of_a_model_with_several_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return self.a(x1) + self.b(x2)

    x1, x2, y = torch.randn(6, 4), torch.randn(6, 2), torch.randn(6, 3)
    data = torch.utils.data.TensorDataset(x1, x2, y)
    dls = DataLoaders(torch.utils.data.DataLoader(data, batch_size=3), device="cpu")
    learn = Learner(dls, TwoInputs(), loss_func=nn.MSELoss())
    text = summary(learn)  # all but the last element are inputs
    assert text.startswith("TwoInputs (Input shape: 3 x 4)\n")
    assert "Total params: 24\n" in text


def test_activation_stats_of_no_batch_are_empty_lists_as_fastai() -> None:
    # validate() starts a new record (before_fit), which holds no training batch: fastai's layer_stats then gives
    # three empty lists, not an error.
    learn = make_learner(opt_func=SGD, cbs=ActivationStats())
    assert learn.activation_stats.layer_stats(0) == [[], [], []]
    learn.fit(1, lr=0.0)
    assert len(learn.activation_stats.layer_stats(0)[0]) == len(learn.activation_stats.stats) > 0
    learn.validate()
    assert learn.activation_stats.stats == [] and learn.activation_stats.layer_stats(0) == [[], [], []]
    with pytest.raises(ValueError, match="no statistics: fit the learner with it first"):
        learn.activation_stats.hist(0)
