"""Flattened losses, label smoothing, and the activation/decodes the Learner applies in get_preds."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synth_classif_learner, synth_learner
from learnloop import DataLoaders, Learner
from learnloop.callbacks.mixup import MixUp
from learnloop.errors import InputError
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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_cross_entropy_flat_matches_torch_on_flat_and_sequence_outputs() -> None:
    out, targ = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(CrossEntropyLossFlat()(out, targ), F.cross_entropy(out, targ))
    seq_out, seq_targ = torch.randn(4, 7, 5), torch.randint(0, 5, (4, 7))
    expected = F.cross_entropy(seq_out.reshape(-1, 5), seq_targ.reshape(-1))
    torch.testing.assert_close(CrossEntropyLossFlat()(seq_out, seq_targ), expected)


def test_cross_entropy_flat_with_class_axis_1_matches_torch_on_images() -> None:
    out, targ = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    torch.testing.assert_close(CrossEntropyLossFlat(axis=1)(out, targ), F.cross_entropy(out, targ))


def test_cross_entropy_flat_passes_keywords_and_casts_small_int_targets() -> None:
    weight = torch.tensor([1.0, 2.0, 0.5])
    out, targ = torch.randn(6, 3), torch.randint(0, 3, (6,))
    loss = CrossEntropyLossFlat(weight=weight, reduction="sum")
    torch.testing.assert_close(loss(out, targ.int()), F.cross_entropy(out, targ, weight=weight, reduction="sum"))


def test_activation_and_decodes() -> None:
    out = torch.randn(4, 3)
    ce = CrossEntropyLossFlat()
    torch.testing.assert_close(ce.activation(out), out.softmax(-1))
    assert torch.equal(ce.decodes(out), out.argmax(-1))
    bce = BCEWithLogitsLossFlat(thresh=0.3)
    torch.testing.assert_close(bce.activation(out), out.sigmoid())
    assert torch.equal(bce.decodes(torch.tensor([0.2, 0.4])), torch.tensor([False, True]))
    assert torch.equal(MSELossFlat().activation(out), out) and torch.equal(MSELossFlat().decodes(out), out)


def test_regression_losses_flatten_and_floatify() -> None:
    out, targ = torch.randn(8, 1), torch.randint(0, 3, (8,))
    torch.testing.assert_close(MSELossFlat()(out, targ), F.mse_loss(out.view(-1), targ.float()))
    torch.testing.assert_close(L1LossFlat()(out, targ), F.l1_loss(out.view(-1), targ.float()))
    probs = torch.rand(8, 2)
    multi = torch.randint(0, 2, (8, 2))
    expected = F.binary_cross_entropy(probs.view(-1), multi.float().view(-1))
    torch.testing.assert_close(BCELossFlat()(probs, multi), expected)
    torch.testing.assert_close(
        BCEWithLogitsLossFlat()(out.expand(8, 2), multi),
        F.binary_cross_entropy_with_logits(out.expand(8, 2).reshape(-1), multi.float().view(-1)),
    )


@pytest.mark.parametrize("loss_cls", [BCELossFlat, BCEWithLogitsLossFlat, MSELossFlat, L1LossFlat])
def test_floatify_follows_float64_outputs(loss_cls: Any) -> None:
    # Targets cast to float32 met float64 outputs: nn.BCELoss refused them (fastai's computes the loss), and
    # nn.BCEWithLogitsLoss rounded its loss to float32.
    probs = torch.rand(8, 2, dtype=torch.float64, requires_grad=True)
    targ = torch.randint(0, 2, (8, 2))
    loss = loss_cls()(probs, targ)
    loss.backward()
    expected = loss_cls()(probs.detach().float(), targ)
    assert loss.dtype == torch.float64 and probs.grad is not None
    torch.testing.assert_close(loss.float(), expected)
    assert loss_cls()(probs.float(), targ.double()).dtype == torch.float32  # float32 outputs: float32 targets


@pytest.mark.parametrize(
    "make",
    [
        lambda w: CrossEntropyLossFlat(weight=w),
        lambda w: FocalLossFlat(weight=w),
        lambda w: LabelSmoothingCrossEntropyFlat(weight=w),
        lambda w: CrossEntropyLossFlat(weight=w, axis=1),
    ],
)
def test_float64_outputs_meet_a_float32_class_weight(make: Any) -> None:
    # torch refused the float32 `weight` with the float64 outputs the flattened losses keep (fastai's float32 copy of
    # the output computes the loss): the weight is used in float64 for the call, and stays float32 in the loss.
    weight = torch.tensor([0.5, 1.0, 2.0])
    loss_func = make(weight)
    out = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    targ = torch.tensor([0, 1, 2, 2, 1, 0])
    loss = loss_func(out, targ)
    loss.backward()
    assert loss.dtype == torch.float64 and out.grad is not None and out.grad.dtype == torch.float64
    expected = make(weight.double())(out.detach(), targ)
    assert torch.equal(loss.detach(), expected)
    torch.testing.assert_close(loss.float(), make(weight)(out.detach().float(), targ))
    assert loss_func.func.weight.dtype == torch.float32
    assert loss_func(out.float(), targ).dtype == torch.float32


def test_bce_pos_weight_keeps_the_label_axis() -> None:
    out, targ = torch.randn(4, 3), torch.randint(0, 2, (4, 3))
    pos_weight = torch.tensor([1.0, 2.0, 3.0])
    expected = F.binary_cross_entropy_with_logits(out, targ.float(), pos_weight=pos_weight)
    torch.testing.assert_close(BCEWithLogitsLossFlat(pos_weight=pos_weight)(out, targ), expected)
    with pytest.raises(ValueError, match="pos_weight needs the class axis kept"):
        BCEWithLogitsLossFlat(pos_weight=pos_weight, flatten=True)


def test_reduction_is_settable_and_none_gives_one_loss_per_value() -> None:
    loss = CrossEntropyLossFlat()
    assert loss.reduction == "mean"
    loss.reduction = "none"
    out, targ = torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3))
    assert loss(out, targ).shape == (6,)
    assert loss.func.reduction == "none"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_matches_torchs_label_smoothing(reduction: str) -> None:
    out, targ = torch.randn(8, 5), torch.randint(0, 5, (8,))
    ours = LabelSmoothingCrossEntropy(eps=0.1, reduction=reduction)(out, targ)
    theirs = F.cross_entropy(out, targ, label_smoothing=0.1, reduction=reduction)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_rounds_as_fastai_does(reduction: str) -> None:
    # fastai computes `loss * eps / c` (two roundings), not `loss * (eps / c)`: with eps 0.3 the two differ in
    # the last bits for most inputs, and a fit's recorded losses with them.
    g = torch.Generator().manual_seed(12)  # inputs where the two orders differ for every reduction
    out, targ = torch.randn(64, 7, generator=g), torch.randint(0, 7, (64,), generator=g)
    log_p = out.log_softmax(1)
    smooth = -log_p.sum() if reduction == "sum" else -log_p.sum(1)
    smooth = smooth.mean() if reduction == "mean" else smooth
    nll = F.nll_loss(log_p, targ, reduction=reduction)
    fastai = smooth * 0.3 / 7 + (1 - 0.3) * nll
    assert not torch.equal(fastai, smooth * (0.3 / 7) + (1 - 0.3) * nll)  # the test can tell the orders apart
    assert torch.equal(LabelSmoothingCrossEntropy(eps=0.3, reduction=reduction)(out, targ), fastai)


def test_label_smoothing_formula_with_weight_on_the_nll_part_only() -> None:
    out, targ = torch.randn(8, 4), torch.randint(0, 4, (8,))
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    eps = 0.2
    log_p = out.log_softmax(1)
    expected = eps / 4 * (-log_p.sum(1)).mean() + (1 - eps) * F.nll_loss(log_p, targ, weight=weight)
    torch.testing.assert_close(LabelSmoothingCrossEntropy(eps=eps, weight=weight)(out, targ), expected)
    torch.testing.assert_close(LabelSmoothingCrossEntropy(eps=0.0)(out, targ), F.cross_entropy(out, targ))


def test_label_smoothing_flat_on_sequences() -> None:
    out, targ = torch.randn(2, 6, 4), torch.randint(0, 4, (2, 6))
    expected = F.cross_entropy(out.reshape(-1, 4), targ.reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(LabelSmoothingCrossEntropyFlat()(out, targ), expected)


def test_label_smoothing_flat_activation_and_decodes_use_the_last_axis_whatever_axis_is() -> None:
    out = torch.randn(2, 5, 4)  # class axis 1 for the loss
    loss = LabelSmoothingCrossEntropyFlat(axis=1)
    torch.testing.assert_close(loss.activation(out), out.softmax(-1))  # as fastai's, not over `axis`
    assert torch.equal(loss.decodes(out), out.argmax(-1)) and loss.decodes(out).shape == (2, 5)
    targ = torch.randint(0, 5, (2, 4))
    expected = F.cross_entropy(out, targ, label_smoothing=0.1)  # the loss itself does use `axis`
    torch.testing.assert_close(loss(out, targ), expected)


def test_flat_losses_read_the_wrapped_losss_attributes() -> None:
    # As fastai's, which copies them over: eps, ignore_index, label_smoothing... read through the flat loss.
    assert LabelSmoothingCrossEntropyFlat().eps == 0.1 and LabelSmoothingCrossEntropyFlat(eps=0.2).eps == 0.2
    ce = CrossEntropyLossFlat(ignore_index=3, label_smoothing=0.05)
    assert ce.ignore_index == 3 and ce.label_smoothing == 0.05
    assert torch.equal(BCEWithLogitsLossFlat(pos_weight=torch.ones(2)).pos_weight, torch.ones(2))
    assert ce.reduction == "mean" and ce.y_int is True and ce.axis == -1  # its own attributes come first
    with pytest.raises(AttributeError, match="'CrossEntropyLossFlat' object has no attribute 'gamma'"):
        _ = ce.gamma
    assert not hasattr(MSELossFlat(), "eps")
    ls = LabelSmoothingCrossEntropyFlat()
    ls.func.eps = 0.0  # the wrapped loss's value, read when asked (fastai's copy would still say 0.1)
    assert ls.eps == 0.0
    for clone in (copy.deepcopy(ls), pickle.loads(pickle.dumps(ls))):
        assert clone.eps == 0.0 and clone.func is not ls.func


def test_label_smoothing_rejects_an_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="LabelSmoothingCrossEntropy: reduction must be 'mean', 'sum' or 'none'"):
        LabelSmoothingCrossEntropy(reduction="avg")


def test_label_smoothing_weight_moves_with_the_module() -> None:
    loss = LabelSmoothingCrossEntropy(weight=torch.ones(3))
    assert "weight" in dict(loss.named_buffers())


@pytest.mark.parametrize("loss_func", [CrossEntropyLossFlat(), LabelSmoothingCrossEntropy()])
def test_get_preds_applies_the_losss_activation_and_decodes(loss_func: nn.Module) -> None:
    learn = synth_classif_learner(loss_func=loss_func)
    learn.fit(1)
    preds, targs, decoded = learn.get_preds(with_decoded=True)
    torch.testing.assert_close(preds.sum(1), torch.ones(len(preds)))
    assert torch.equal(decoded, preds.argmax(1))
    _, _, losses = learn.get_preds(with_loss=True)
    assert losses.shape == (len(targs),)
    assert loss_func.reduction == "mean"


def test_get_preds_with_mse_flat_is_the_raw_output() -> None:
    learn = synth_learner(loss_func=MSELossFlat())
    learn.fit(1)
    preds, _ = learn.get_preds()
    with torch.no_grad():
        raw = learn.model(learn.dls.valid.dataset.tensors[0])
    torch.testing.assert_close(preds, raw)


# ------------------------------------------------------------------------------------------ repr, BaseLoss
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: CrossEntropyLossFlat(), "FlattenedLoss of CrossEntropyLoss()"),
        (lambda: CrossEntropyLossFlat(weight=torch.ones(3), axis=1), "FlattenedLoss of CrossEntropyLoss()"),
        (lambda: BCEWithLogitsLossFlat(), "FlattenedLoss of BCEWithLogitsLoss()"),
        (lambda: BCEWithLogitsLossFlat(pos_weight=torch.ones(2)), "FlattenedLoss of BCEWithLogitsLoss()"),
        (lambda: BCELossFlat(), "FlattenedLoss of BCELoss()"),
        (lambda: MSELossFlat(), "FlattenedLoss of MSELoss()"),
        (lambda: L1LossFlat(), "FlattenedLoss of L1Loss()"),
        (lambda: BaseLoss(nn.NLLLoss, axis=1), "FlattenedLoss of NLLLoss()"),
        (lambda: LabelSmoothingCrossEntropy(), "LabelSmoothingCrossEntropy()"),
        (lambda: LabelSmoothingCrossEntropy(eps=0.3, reduction="sum"), "LabelSmoothingCrossEntropy()"),
        (lambda: LabelSmoothingCrossEntropyFlat(), "FlattenedLoss of LabelSmoothingCrossEntropy()"),
        (lambda: FocalLoss(), "FocalLoss()"),
        (lambda: FocalLossFlat(gamma=1.0), "FlattenedLoss of FocalLoss()"),
        (lambda: DiceLoss(), "DiceLoss()"),
    ],
)
def test_repr_and_str_are_fastais(make: Any, expected: str) -> None:
    loss = make()
    assert repr(loss) == expected and str(loss) == expected  # what fastai 2.8.12 prints


class ScaledL1:
    """A loss class that is not an nn.Module."""

    def __init__(self, scale: float = 1.0, reduction: str = "mean") -> None:
        self.scale, self.reduction = scale, reduction

    def __call__(self, inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        loss = (inp - targ).abs() * self.scale
        return loss.mean() if self.reduction == "mean" else loss


def test_base_loss_over_a_plain_class_reads_its_attributes_through() -> None:
    loss = BaseLoss(ScaledL1, 2.0, is_2d=False, floatify=True)
    assert loss.scale == 2.0 and loss.reduction == "mean"
    torch.testing.assert_close(loss(torch.ones(3, 1), torch.zeros(3, dtype=torch.long)), torch.tensor(2.0))
    loss.func.scale = 3.0  # read when asked, as for a module
    assert loss.scale == 3.0
    loss.reduction = "none"
    assert loss.func.reduction == "none" and loss(torch.ones(3, 1), torch.zeros(3)).shape == (3,)
    assert repr(loss).startswith("FlattenedLoss of <") and "ScaledL1 object" in repr(loss)
    with pytest.raises(AttributeError, match="'BaseLoss' object has no attribute 'gamma'"):
        _ = loss.gamma
    clone = pickle.loads(pickle.dumps(loss))
    assert clone.scale == 3.0 and clone.func is not loss.func


def test_bce_flatten_none_does_not_flatten_as_fastai() -> None:
    # fastai keeps flatten=None, a falsy value: no flattening (so (6, 1) outputs do not meet (6,) targets).
    loss = BCEWithLogitsLossFlat(flatten=None)
    assert loss.flatten is None
    out, targ = torch.randn(4, 3), torch.randint(0, 2, (4, 3))
    assert torch.equal(loss(out, targ), F.binary_cross_entropy_with_logits(out, targ.float()))
    with pytest.raises(ValueError, match="Target size"):
        loss(torch.randn(6, 1), torch.rand(6))
    assert BCEWithLogitsLossFlat().flatten is True and BCEWithLogitsLossFlat(pos_weight=torch.ones(3)).flatten is False


# ------------------------------------------------------------------------------------------ focal loss
# Inputs without random numbers, and fastai 2.8.12's losses on them (its float32 results; learnloop's agree bit
# for bit on this machine: the same operations in the same order).
_OUT = torch.linspace(-3, 3, 60).reshape(4, 3, 5).cos() * 3
_TARG = torch.tensor([[0, 1, 4], [2, 2, 3], [4, 0, 1], [3, 3, 0]])
_SEG = torch.linspace(-2, 2, 2 * 4 * 3 * 3).reshape(2, 4, 3, 3).sin() * 4
_SEG_TARG = torch.tensor([[[0, 1, 2], [3, 3, 0], [1, 1, 2]], [[2, 2, 2], [0, 1, 3], [3, 0, 1]]])


def _close(actual: torch.Tensor, fastai: float | list[Any]) -> None:
    torch.testing.assert_close(actual, torch.tensor(fastai), rtol=1e-6, atol=1e-7)


def test_focal_loss_flat_gives_fastais_values() -> None:
    _close(FocalLossFlat()(_OUT, _TARG), 1.0454965829849243)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    _close(FocalLossFlat(gamma=1.5, weight=weight, reduction="sum")(_OUT, _TARG), 22.561141967773438)
    _close(FocalLossFlat(reduction="none")(_OUT, _TARG), [
        1.2496793270111084, 1.3760818243026733, 0.48679113388061523, 1.1148606538772583, 1.0539361238479614,
        0.9322376847267151, 1.2514303922653198, 0.6426077485084534, 0.7902123332023621, 1.4920974969863892,
        1.3760818243026733, 0.7799422740936279,
    ])
    _close(FocalLossFlat(axis=1)(_SEG, _SEG_TARG), 1.5405182838439941)


def test_focal_loss_is_the_formula_and_gamma_0_is_cross_entropy() -> None:
    out, targ = torch.randn(32, 5, 10), torch.randint(0, 10, (32, 5))
    flat_out, flat_targ = out.reshape(-1, 10), targ.reshape(-1)
    p_t = flat_out.softmax(1).gather(1, flat_targ[:, None]).squeeze(1)
    expected = ((1 - p_t) ** 2 * -p_t.log()).mean()
    torch.testing.assert_close(FocalLossFlat()(out, targ), expected)
    torch.testing.assert_close(FocalLoss()(flat_out, flat_targ), expected)
    torch.testing.assert_close(FocalLossFlat(gamma=0)(out, targ), CrossEntropyLossFlat()(out, targ))
    assert not torch.equal(FocalLossFlat(gamma=2)(out, targ), CrossEntropyLossFlat()(out, targ))
    # segmentation: the class axis is 1; activation and decodes over it too
    seg, seg_targ = torch.randn(4, 5, 16, 16), torch.randint(0, 5, (4, 16, 16))
    focal = FocalLossFlat(gamma=0, axis=1)
    torch.testing.assert_close(focal(seg, seg_targ), CrossEntropyLossFlat(axis=1)(seg, seg_targ), atol=1e-4, rtol=1e-4)
    assert torch.equal(focal.activation(seg), F.softmax(seg, dim=1)) and torch.equal(focal.decodes(seg), seg.argmax(1))
    assert FocalLossFlat().y_int is True and FocalLoss().y_int is True
    assert FocalLossFlat(gamma=3.0).gamma == 3.0 and FocalLossFlat().weight is None


def test_focal_loss_reduction_set_after_construction() -> None:
    out, targ = torch.randn(4, 3, 5), torch.randint(0, 5, (4, 3))
    loss = FocalLossFlat()
    mean = loss(out, targ)
    loss.reduction = "none"  # as get_preds(with_loss=True) and MixUp do for a while
    assert loss.func.reduction == "none"
    per_item = loss(out, targ)
    assert per_item.shape == (12,)
    torch.testing.assert_close(per_item.mean(), mean)
    loss.reduction = "sum"
    torch.testing.assert_close(loss(out, targ), per_item.sum())
    with pytest.raises(ValueError, match="FocalLoss: reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        FocalLoss(reduction="avg")
    loss.reduction = "avg"
    with pytest.raises(ValueError, match="FocalLoss: reduction must be"):
        loss(out, targ)


def test_focal_loss_weight_is_a_buffer_that_moves_with_the_loss() -> None:
    loss = FocalLossFlat(weight=torch.ones(3))
    assert list(loss.state_dict()) == ["func.weight"]
    assert loss.to(torch.float64).weight.dtype == torch.float64


# ------------------------------------------------------------------------------------------ dice loss
def test_dice_loss_one_hot_and_decodes_as_fastais_notebook() -> None:
    x = torch.tensor([[[1, 0, 2], [2, 2, 1]]])
    one_hot = torch.tensor([[[[0, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 1]], [[0, 0, 1], [1, 1, 0]]]])
    assert torch.equal(DiceLoss._one_hot(x, 3), one_hot) and DiceLoss._one_hot(x, 3).dtype == torch.int64
    assert torch.equal(DiceLoss._one_hot(x, 3, axis=-1), one_hot.movedim(1, -1))
    assert torch.equal(DiceLoss._one_hot(torch.tensor([5, 1]), 3), torch.tensor([[0, 0, 0], [0, 1, 0]]))
    model_output = torch.tensor([[[[2.0, 1.0], [1.0, 5.0]], [[1, 2.0], [3.0, 1.0]], [[3.0, 0], [4.0, 3.0]]]])
    target = torch.tensor([[[2, 1], [2, 0]]])
    _close(DiceLoss()(model_output, target), 0.8537047505378723)  # fastai's value
    assert torch.equal(DiceLoss().decodes(model_output), target)
    torch.testing.assert_close(DiceLoss().activation(model_output), model_output.softmax(1))


def test_dice_loss_gives_fastais_values() -> None:
    _close(DiceLoss()(_SEG, _SEG_TARG), 6.437612056732178)
    _close(DiceLoss(square_in_union=True, smooth=1.0, reduction="mean")(_SEG, _SEG_TARG), 0.5335646271705627)
    _close(DiceLoss(reduction="none")(_SEG, _SEG_TARG), [
        [0.8832578659057617, 0.9200794696807861, 0.8359705209732056, 0.6550595760345459],
        [0.9451251029968262, 0.7812448740005493, 0.6770344972610474, 0.7398406863212585],
    ])


def test_dice_loss_notebook_scenarios() -> None:
    dice = DiceLoss(reduction="mean")
    torch.testing.assert_close(dice(torch.tensor([[[0.1], [0.1], [100.0]]]), torch.tensor([[2]])), torch.tensor(0.0))
    half = dice(torch.tensor([[[0.1, 100.0], [0.1, 0.1], [100.0, 0.1]]]), torch.tensor([[2, 1]]))
    assert abs(half.item() - 0.66) < 0.01
    target = torch.zeros(100, 100)
    target[:, 5], target[:, 50] = 1, 2
    background = torch.zeros(1, 3, 100, 100)
    background[0, 0] = 100
    assert abs(dice(background, target[None]).item() - 0.67) < 0.01  # the notebook's dl, reduction='mean'
    correct = background.clone()
    correct[0, 0, :, 5] = correct[0, 0, :, 50] = 0
    correct[0, 1, :, 5] = correct[0, 2, :, 50] = 100
    torch.testing.assert_close(dice(correct, target[None]), torch.tensor(0.0))
    out, targ = torch.randn(32, 4, 5, 10), torch.randint(0, 2, (32, 5, 10))
    combined = FocalLossFlat(axis=1)(out, targ) + DiceLoss(1, 1.0)(out, targ)  # the notebook's CombinedLoss
    assert combined.isfinite()
    half_targets = DiceLoss()(out, targ.half())  # float targets of class indices, as the notebook's fp16 test
    torch.testing.assert_close(half_targets, DiceLoss()(out, targ))


def test_dice_loss_class_axis_anywhere_and_bad_targets() -> None:
    out, targ = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    last = DiceLoss(axis=-1, reduction="none")(out.movedim(1, -1), targ)  # fastai's works with axis=1 only
    torch.testing.assert_close(last, DiceLoss(reduction="none")(out, targ))
    with pytest.raises(InputError, match=r"target must hold class indices \(not one-hot masks\)"):
        DiceLoss()(out, F.one_hot(targ, 3).movedim(-1, 1))
    with pytest.raises(AssertionError):  # fastai's type
        DiceLoss()(out, targ[:, :2])
    with pytest.raises(ValueError, match="DiceLoss: reduction must be"):
        DiceLoss(reduction="avg")


def test_new_losses_pickle_and_copy() -> None:
    for loss in (FocalLoss(weight=torch.ones(3)), FocalLossFlat(gamma=1.0, axis=1), DiceLoss(smooth=1.0)):
        for clone in (pickle.loads(pickle.dumps(loss, protocol=2)), copy.deepcopy(loss)):
            assert type(clone) is type(loss) and repr(clone) == repr(loss)
            out, targ = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
            if isinstance(loss, FocalLoss):
                out, targ = out[..., 0], targ[:, 0]
            assert torch.equal(clone(out, targ), loss(out, targ))


def segmentation_learner(loss_func: Any, **kwargs: Any) -> Learner:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, 4, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # three classes per pixel
    dls = DataLoaders.from_tensors(x[:16], y[:16], x[16:], y[16:], bs=8, shuffle=False, device="cpu")
    torch.manual_seed(0)
    return Learner(dls, nn.Conv2d(2, 3, 1), loss_func=loss_func, lr=1e-2, **kwargs)


@pytest.mark.parametrize("loss_func", [FocalLossFlat(axis=1), DiceLoss()], ids=["focal", "dice"])
def test_get_preds_and_mixup_with_the_new_losses(loss_func: nn.Module) -> None:
    learn = segmentation_learner(loss_func, cbs=MixUp(0.4))
    learn.logger = lambda *_: None
    learn.fit(1)  # MixUp sets reduction='none' for each batch, and back
    assert loss_func.reduction == ("mean" if isinstance(loss_func, FocalLossFlat) else "sum")
    preds, targs, decoded, losses = learn.get_preds(with_decoded=True, with_loss=True)
    assert preds.shape == (8, 3, 4, 4) and decoded.shape == targs.shape == (8, 4, 4)
    torch.testing.assert_close(preds.sum(1), torch.ones(8, 4, 4))
    assert torch.equal(decoded, preds.argmax(1))
    assert losses.shape == (8,) and losses.isfinite().all()
    assert loss_func.reduction == ("mean" if isinstance(loss_func, FocalLossFlat) else "sum")


def test_none_reduce_is_fastais_context_manager() -> None:
    from learnloop import callbacks, losses
    from learnloop.callbacks.mixed_loss import NoneReduce

    assert losses.NoneReduce is callbacks.NoneReduce is NoneReduce  # fastai.layers.NoneReduce
    x, y = torch.randn(5), torch.randn(5)
    module = nn.MSELoss()
    with NoneReduce(module) as lf:  # a reduction attribute: set to 'none' in the block, the loss itself returned
        assert lf is module and lf(x, y).shape == (5,)
    assert module.reduction == "mean"
    with NoneReduce(F.mse_loss) as lf:  # a function: called with reduction='none'
        assert lf(x, y).shape == (5,)

    def forwards(pred: torch.Tensor, targ: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return F.mse_loss(pred, targ, **kwargs)

    with NoneReduce(forwards) as lf:  # taken through **kwargs, as fastai's (learnloop's `unreduced` refuses it)
        assert lf(x, y).shape == (5,)
    flat = CrossEntropyLossFlat()
    with NoneReduce(flat) as lf:
        assert lf(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).shape == (4,)
    assert flat.reduction == "mean"
    with pytest.raises(RuntimeError, match="in the block"), NoneReduce(module):
        raise RuntimeError("in the block")
    assert module.reduction == "mean"  # put back when the block raises too
    module.reduction = None  # type: ignore[assignment]
    with NoneReduce(module):
        assert module.reduction == "none"
    assert module.reduction is None  # fastai's leaves a None reduction at 'none'
