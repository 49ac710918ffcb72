"""learn.export / load_learner(model=...) and the loss function: rebuilt from the primitives the export records for
learnloop's and torch.nn's losses (so predictions keep its activation and decodes), a warning for any other."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synth_classif_learner, synth_learner
from learnloop import Callback, Learner, MixUp, load_learner
from learnloop.callbacks.mixed_loss import MixedLoss
from learnloop.checkpoint import atomic_save
from learnloop.export import InferenceOnlyLoss
from learnloop.loss_record import rebuilt_loss
from learnloop.losses import (
    BaseLoss,
    BCELossFlat,
    BCEWithLogitsLossFlat,
    CrossEntropyLossFlat,
    DiceLoss,
    FocalLoss,
    FocalLossFlat,
    L1LossFlat,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
    MSELossFlat,
)
from test_losses import segmentation_learner


def _classifier(loss_func: Any) -> Learner:
    return synth_classif_learner(loss_func=loss_func)


def _regressor(loss_func: Any) -> Learner:
    return synth_learner(loss_func=loss_func)


def _multilabel(loss_func: Any) -> Learner:
    learn = synth_classif_learner(loss_func=loss_func)
    for ds in (learn.dls.train_ds, learn.dls.valid_ds):
        targets = ds.tensors[1]
        ds.tensors = (ds.tensors[0], F.one_hot(targets, 3).float())
    return learn


def _probabilities(loss_func: Any) -> Learner:
    learn = _multilabel(loss_func)
    learn.model = nn.Sequential(learn.model, nn.Sigmoid())
    return learn


# Every loss of learnloop.losses, with settings that differ from the defaults, and some of torch.nn's.
CASES: list[tuple[Callable[[], Any], Callable[[Any], Learner]]] = [
    (lambda: CrossEntropyLossFlat(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1), _classifier),
    (lambda: CrossEntropyLossFlat(ignore_index=2, reduction="sum"), _classifier),
    (lambda: FocalLossFlat(gamma=1.5, weight=torch.tensor([1.0, 3.0, 1.0])), _classifier),
    (lambda: FocalLoss(gamma=0.5, reduction="sum"), _classifier),
    (lambda: LabelSmoothingCrossEntropy(eps=0.3, weight=torch.tensor([2.0, 1.0, 1.0])), _classifier),
    (lambda: LabelSmoothingCrossEntropyFlat(eps=0.2), _classifier),
    (lambda: BCEWithLogitsLossFlat(thresh=0.3), _multilabel),
    (lambda: BCEWithLogitsLossFlat(pos_weight=torch.tensor([1.0, 2.0, 3.0])), _multilabel),
    (lambda: BCELossFlat(weight=torch.ones(1)), _probabilities),
    (lambda: MSELossFlat(reduction="sum"), _regressor),
    (lambda: L1LossFlat(), _regressor),
    (lambda: BaseLoss(nn.HuberLoss, delta=0.5, is_2d=False, floatify=True), _regressor),
    (lambda: FocalLossFlat(axis=1, gamma=1.0), segmentation_learner),
    (lambda: DiceLoss(smooth=1.0, square_in_union=True, reduction="mean"), segmentation_learner),
    (lambda: nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.05), _classifier),
    (lambda: nn.MSELoss(), _regressor),
    (lambda: nn.SmoothL1Loss(beta=0.3), _regressor),
]
SETTINGS = ("axis", "flatten", "floatify", "is_2d", "thresh", "eps", "gamma", "reduction", "ignore_index",
            "label_smoothing", "smooth", "square_in_union", "delta", "beta")


def _exported(learn: Learner, path: Path, fname: str = "export.pkl") -> Path:
    learn.path = path
    learn.logger = lambda *_: None
    learn.fit(1)
    return learn.export(fname)


def _primitives_only(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _primitives_only(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_primitives_only(v) for v in obj)
    return obj is None or isinstance(obj, (bool, int, float, str))


@pytest.mark.parametrize(("make_loss", "make_learner"), CASES, ids=[type(m()).__name__ for m, _ in CASES])
def test_a_model_load_rebuilds_the_loss_and_keeps_its_activation_and_decodes(
    tmp_path: Path, make_loss: Callable[[], Any], make_learner: Callable[[Any], Learner]
) -> None:
    learn = make_learner(make_loss())
    file = _exported(learn, tmp_path)
    record = torch.load(file, weights_only=True)["loss"]
    assert _primitives_only(record) and record["description"] is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a loss that can be rebuilt is, without a word
        loaded = load_learner(file, model=_copy_model(learn))
    exported, rebuilt = learn.loss_func, loaded.loss_func
    assert type(rebuilt) is type(exported) and repr(rebuilt) == repr(exported)
    assert {k: getattr(rebuilt, k) for k in SETTINGS if hasattr(exported, k)} == {
        k: getattr(exported, k) for k in SETTINGS if hasattr(exported, k)
    }
    for ours, theirs in zip(rebuilt.state_dict().values(), exported.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs) and ours.dtype == theirs.dtype
    if isinstance(exported, BaseLoss):
        assert type(rebuilt.func) is type(exported.func)
    dl = learn.dls.valid
    expected = learn.get_preds(dl=dl, with_decoded=True)
    got = loaded.get_preds(dl=dl, with_decoded=True)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    x, y = next(iter(dl))
    with torch.no_grad():
        out = learn.model(x)
    assert torch.equal(rebuilt(out, y), exported(out, y))


def _copy_model(learn: Learner) -> nn.Module:
    """A model of the same architecture as `learn`'s, with other weights (the export's are loaded into it)."""
    import copy

    model = copy.deepcopy(learn.model)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_a_cross_entropy_export_predicts_classes_after_a_model_load(tmp_path: Path) -> None:
    learn = _classifier(CrossEntropyLossFlat())
    file = _exported(learn, tmp_path)
    x = torch.randn(4)
    decoded, _, probs = load_learner(file, model=_copy_model(learn)).predict(x)
    expected = learn.predict(x)
    assert isinstance(decoded, int) and decoded == expected[0]
    assert torch.equal(probs, expected[2]) and abs(probs.sum().item() - 1) < 1e-6  # softmax, as before the export


class CustomCrossEntropy(CrossEntropyLossFlat):
    """A subclass: it could change anything, so it is not rebuilt as its parent."""


def cross_entropy(out: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, targ)


def test_any_other_loss_is_a_stand_in_and_a_warning_when_it_had_an_activation(tmp_path: Path) -> None:
    learn = _classifier(CustomCrossEntropy())
    file = _exported(learn, tmp_path)
    with pytest.warns(UserWarning, match=r"(?s)a test_export_loss.CustomCrossEntropy, cannot be rebuilt.*do not apply "
                                         r"its activation and decodes.*load_learner\(\.\.\., loss_func=\.\.\.\)"):
        loaded = load_learner(file, model=_copy_model(learn))
    assert isinstance(loaded.loss_func, InferenceOnlyLoss)
    x = torch.randn(4)
    with torch.no_grad():
        raw = learn.model(x[None])[0]
    assert torch.equal(loaded.predict(x)[2], raw)  # the raw output, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given a loss function, nothing to warn of
        given = load_learner(file, model=_copy_model(learn), loss_func=CustomCrossEntropy())
    assert torch.equal(given.predict(x)[2], learn.predict(x)[2])
    # A loss without activation or decodes loses nothing predictions would use: no warning
    learn = _classifier(cross_entropy)
    file = _exported(learn, tmp_path, "function.pkl")
    assert torch.load(file, weights_only=True)["loss"]["class"] == "test_export_loss.cross_entropy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(load_learner(file, model=_copy_model(learn)).loss_func, InferenceOnlyLoss)


def test_an_export_without_the_loss_record_still_loads(tmp_path: Path) -> None:
    learn = _classifier(CrossEntropyLossFlat())
    file = _exported(learn, tmp_path)
    old = torch.load(file, weights_only=True)
    del old["loss"]  # as written by learnloop before the loss function was recorded
    atomic_save(old, file)
    with pytest.warns(UserWarning, match=r"does not record its loss function.*pass load_learner\(\.\.\., loss_func="):
        loaded = load_learner(file, model=_copy_model(learn))
    assert isinstance(loaded.loss_func, InferenceOnlyLoss)
    x = torch.randn(4)
    with torch.no_grad():
        assert torch.equal(loaded.predict(x)[2], learn.model(x[None])[0])
    trusted = load_learner(file, trusted=True)  # the pickled loss is unaffected
    assert torch.equal(trusted.predict(x)[2], learn.predict(x)[2])


def test_a_description_is_never_imported_from(tmp_path: Path) -> None:
    learn = _classifier(CrossEntropyLossFlat())
    file = _exported(learn, tmp_path)
    info = torch.load(file, weights_only=True)
    info["loss"]["description"] = {"class": "os.system", "settings": {"command": "echo hello"}}
    atomic_save(info, file)
    with pytest.warns(UserWarning, match="learnloop.losses.CrossEntropyLossFlat, cannot be rebuilt"):
        loaded = load_learner(file, model=_copy_model(learn))
    assert isinstance(loaded.loss_func, InferenceOnlyLoss)
    for bad in (
        {"class": "learnloop.losses.FocalLoss", "settings": {"gamma": [1, 2]}},  # not a setting's type
        {"class": "learnloop.losses.FocalLoss", "settings": {"weight": {"tensor": [[1], 2], "dtype": "float32"}}},
        {"class": "learnloop.losses.FocalLoss", "settings": {"weight": {"tensor": [1.0], "dtype": "Tensor"}}},
        {"class": "learnloop.losses.CrossEntropyLossFlat", "settings": {"__class__": 1},
         "func": {"class": "torch.nn.modules.loss.CrossEntropyLoss", "settings": {}}},
        {"class": "learnloop.losses.CrossEntropyLossFlat", "settings": []},
        # torch losses with weights: their sizes would allocate parameters, and they are not on the list
        {"class": "torch.nn.modules.adaptive.AdaptiveLogSoftmaxWithLoss",
         "settings": {"in_features": 4000, "n_classes": 50000, "cutoffs": [10]}},
        {"class": "torch.nn.modules.loss.LinearCrossEntropyLoss", "settings": {"in_features": 4000,
                                                                               "num_classes": 50000}},
        {"class": "torch.nn.modules.loss.TripletMarginWithDistanceLoss", "settings": {"distance_function": "x"}},
    ):
        info["loss"]["description"] = bad
        atomic_save(info, file)
        with pytest.warns(UserWarning, match="cannot be rebuilt"):
            assert isinstance(load_learner(file, model=_copy_model(learn)).loss_func, InferenceOnlyLoss)


def test_a_safetensors_record_nested_too_deep_for_the_json_parser_is_warned_of(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="does not record its loss function"):
        loss = rebuilt_loss("[" * 100_000 + "]" * 100_000, torch.device("cpu"), tmp_path)
    assert isinstance(loss, InferenceOnlyLoss)


def test_a_reexported_inference_learner_loads_without_a_warning(tmp_path: Path) -> None:
    learn = _classifier(CustomCrossEntropy())
    file = _exported(learn, tmp_path)
    with pytest.warns(UserWarning):
        loaded = load_learner(file, model=_copy_model(learn))
    again = loaded.export("again.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(load_learner(again, model=_copy_model(learn)).loss_func, InferenceOnlyLoss)


def test_safetensors_exports_record_the_loss_too(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    learn = _classifier(LabelSmoothingCrossEntropyFlat(eps=0.2, weight=torch.tensor([1.0, 2.0, 3.0])))
    file = _exported(learn, tmp_path, "model.safetensors")
    with safe_open(str(file), framework="pt") as f:
        record = json.loads(f.metadata()["loss"])
    assert record["class"] == "learnloop.losses.LabelSmoothingCrossEntropyFlat"
    loaded = load_learner(file, model=_copy_model(learn))
    assert isinstance(loaded.loss_func, LabelSmoothingCrossEntropyFlat) and loaded.loss_func.eps == 0.2
    assert torch.equal(loaded.loss_func.weight, torch.tensor([1.0, 2.0, 3.0]))
    x = torch.randn(4)
    assert loaded.predict(x)[0] == learn.predict(x)[0]
    learn.loss_func = CustomCrossEntropy()
    file = learn.export("custom.safetensors")
    with pytest.warns(UserWarning, match="CustomCrossEntropy, cannot be rebuilt"):
        load_learner(file, model=_copy_model(learn))


@pytest.mark.parametrize("pickle_model", [True, False])
def test_the_loss_mixup_left_in_place_is_exported_as_the_loss_it_wraps(tmp_path: Path, pickle_model: bool) -> None:
    # A fit(cbs=MixUp()) that raises runs no after_fit: learn.loss_func stays MixUp's MixedLoss (a plain loss outside
    # its fit). The export described that wrapper, not the loss: a weights-only load got a stand-in, and predictions
    # lost the softmax of CrossEntropyLossFlat; a pickled export carried the handler along.
    learn = _classifier(CrossEntropyLossFlat())

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[MixUp(), Callback(after_step=fail)])
    assert isinstance(learn.loss_func, MixedLoss)
    learn.path = tmp_path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.export("e.pkl", pickle_model=pickle_model)
        loaded = load_learner(tmp_path / "e.pkl", **({"trusted": True} if pickle_model else {"model": learn.model}))
    assert type(loaded.loss_func) is CrossEntropyLossFlat
    preds, _ = loaded.get_preds(dl=learn.dls.valid)
    assert torch.allclose(preds.sum(1), torch.ones(len(preds)))
