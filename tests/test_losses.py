"""Flattened losses, label smoothing, and the activation/decodes the Learner applies in get_preds."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synth_classif_learner, synth_learner
from learnloop.losses import (
    BCELossFlat,
    BCEWithLogitsLossFlat,
    CrossEntropyLossFlat,
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
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
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
