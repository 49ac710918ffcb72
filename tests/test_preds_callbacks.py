"""MCDropoutCallback: Monte-Carlo dropout samples from get_preds, the model left in eval mode; FetchPredsCallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import synth_dls, synth_learner
from learnloop import Callback, FetchPredsCallback, GatherPredsCallback, Learner
from learnloop.callback import is_side_run, noop
from learnloop.callbacks import MCDropoutCallback, SaveModelCallback
from learnloop.callbacks.preds import _dropout_modules


class SpatialDropout(nn.Dropout2d):
    """A user's dropout layer: matched by its name, as fastai matches it."""


class DropoutBlock(nn.Module):
    """A container named like a dropout layer: not a layer itself, its leaves are looked at."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.drop = nn.Linear(8, 8), nn.AlphaDropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.lin(x))


def dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), DropoutBlock(),
                         nn.Linear(8, 1))


def dropout_learner() -> Learner:
    learn = Learner(synth_dls(), dropout_model(), loss_func=nn.MSELoss())
    learn.logger = noop
    return learn


def test_the_dropout_layers_are_the_leaves_named_dropout_in_any_case() -> None:
    model = nn.Sequential(nn.Dropout(), nn.Dropout1d(), nn.Dropout2d(), nn.Dropout3d(), nn.AlphaDropout(),
                          nn.FeatureAlphaDropout(), SpatialDropout(), DropoutBlock(), nn.Linear(1, 1), nn.ReLU())
    found = _dropout_modules(model)
    assert [type(m).__name__ for m in found] == ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                                                 "FeatureAlphaDropout", "SpatialDropout", "AlphaDropout"]


def test_get_preds_gives_a_new_sample_each_call_and_leaves_the_model_in_eval_mode() -> None:
    learn = dropout_learner()
    plain = [learn.get_preds()[0] for _ in range(2)]
    assert torch.equal(plain[0], plain[1])
    samples = [learn.get_preds(cbs=MCDropoutCallback())[0] for _ in range(2)]
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[0], plain[0])
    assert not any(m.training for m in learn.model.modules())


def test_the_samples_are_the_models_with_dropout_on_draw_for_draw() -> None:
    # What fastai 2.8.12's MCDropoutCallback gives under the same seed (checked against it): every dropout layer in
    # training mode, everything else (BatchNorm) in eval mode.
    learn = dropout_learner()
    torch.manual_seed(1)
    samples = [learn.get_preds(cbs=MCDropoutCallback())[0] for _ in range(3)]
    reference = dropout_model()
    reference.load_state_dict(learn.model.state_dict())
    reference.eval()
    for m in _dropout_modules(reference):
        m.train()
    torch.manual_seed(1)
    with torch.no_grad():
        expected = [torch.cat([reference(xb) for xb, _ in learn.dls.valid]) for _ in range(3)]
    for got, want in zip(samples, expected, strict=True):
        assert torch.equal(got, want)


def test_batchnorm_keeps_its_running_statistics() -> None:
    learn = dropout_learner()
    bn = learn.model[1]
    before = bn.running_mean.clone()
    learn.get_preds(cbs=MCDropoutCallback())
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("in_fit", [False, True])
def test_the_dropout_layers_are_back_in_eval_mode_after_validation(in_fit: bool) -> None:
    learn = dropout_learner()
    cb = MCDropoutCallback()
    if in_fit:
        learn.fit(1, cbs=cb)
    else:
        learn.validate(cbs=cb)
    assert learn.model[3].training is False  # back in eval mode at after_validate
    assert (cb.order, cb.run_train, cb.run_valid) == (0, True, True)  # fastai's


class Watcher(Callback):
    def __init__(self) -> None:
        self.validations = 0

    def after_validate(self) -> None:
        self.validations += 1


@pytest.mark.parametrize("as_class", [True, False])
def test_fetch_preds_callback_takes_its_cbs_out_given_as_classes_too(as_class: bool) -> None:
    watcher = Watcher()
    learn = synth_learner(cbs=watcher)
    learn.fit(2, cbs=FetchPredsCallback(cbs=Watcher if as_class else watcher))
    # The fit's two validation phases only, not the fetches'; the same instance back on the learner.
    assert watcher.validations == 2
    assert learn.watcher is watcher and [cb for cb in learn.cbs if isinstance(cb, Watcher)] == [watcher]


def test_gather_preds_with_loss_in_a_fit_says_the_loss_is_reduced() -> None:
    learn = synth_learner()  # MSELoss(reduction="mean"): one number per batch
    with pytest.raises(RuntimeError, match=r"needs a loss per item.*shape \(\) for a batch of 16 items"):
        learn.fit(1, cbs=GatherPredsCallback(with_loss=True))


def test_a_gather_preds_callback_added_to_a_fit_leaves_the_trackers_on(tmp_path: Path) -> None:
    # Only get_preds' own gatherer makes a side run that trackers, loggers and checkpoints sit out; with
    # learn.gather_preds read as one, SaveModelCallback saved nothing in this fit.
    learn = synth_learner(path=tmp_path)
    gather = GatherPredsCallback()
    learn.fit(1, cbs=[gather, SaveModelCallback(fname="best")])
    assert (tmp_path / "models" / "best.pth").exists()
    assert gather.preds is not None and len(gather.preds) == len(learn.dls.valid_ds)
    assert not gather.side_run
    seen: list[bool] = []
    learn.get_preds(cbs=Callback(before_fit=lambda: seen.append(is_side_run(learn))))
    assert seen == [True]
