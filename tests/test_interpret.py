"""Interpretation classes: losses, top losses, confusion matrix and its plot, most confused, report, top-loss plot.

The model picks the first three pixels of a 2x2 "image" as its logits, so each item's prediction, class and loss
are written out here from the logits chosen for it (one logit `m` at the predicted class, 0 at the others).
"""

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
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

matplotlib.use("Agg")  # tests only: the library leaves the backend to matplotlib

import matplotlib.pyplot as plt  # noqa: E402

from learnloop import BCEWithLogitsLossFlat, CrossEntropyLossFlat, DataLoaders, Learner  # noqa: E402
from learnloop.callback import noop  # noqa: E402
from learnloop.errors import InputError  # noqa: E402
from learnloop.interpret import (  # noqa: E402
    ClassificationInterpretation,
    Interpretation,
    SegmentationInterpretation,
)

# (actual, predicted) of each validation item; the predicted class gets the logit MARGINS[i].
PAIRS = [(0, 0), (0, 1), (0, 1), (1, 1), (1, 2), (2, 2), (2, 0), (2, 1), (2, 1)]
MARGINS = [1.0 + 0.5 * i for i in range(len(PAIRS))]
CM = [[1, 2, 0], [0, 1, 1], [1, 2, 1]]  # rows actual, columns predicted, counted from PAIRS by hand
VOCAB = ["cat", "dog", "fox"]


def expected_loss(i: int) -> float:
    """Cross-entropy of logits (m at the predicted class, 0 elsewhere) against the actual class."""
    (actual, predicted), m = PAIRS[i], MARGINS[i]
    return math.log(math.exp(m) + 2) - (m if actual == predicted else 0.0)


def expected_prob(i: int) -> float:
    return math.exp(MARGINS[i]) / (math.exp(MARGINS[i]) + 2)


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def images(channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(9, channels, 2, 2) inputs whose first three values are the logits, and the actual classes."""
    x = torch.zeros(len(PAIRS), channels * 4)
    for i, (_, predicted) in enumerate(PAIRS):
        x[i, predicted] = MARGINS[i]
        x[i, 3:] = -float(i)  # the other pixels: give each image its own range
    return x.reshape(len(PAIRS), channels, 2, 2), torch.tensor([a for a, _ in PAIRS])


def picker(n_in: int) -> nn.Module:
    """A model whose logits are the first three values of its flattened input."""
    linear = nn.Linear(n_in, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3, n_in))
    return nn.Sequential(nn.Flatten(), linear)


def make_learner(loss_func: Any = None, channels: int = 1, shuffle_valid: bool = False) -> Learner:
    x, y = images(channels)
    valid = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=shuffle_valid)
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=4), valid, device="cpu")
    learn = Learner(dls, picker(4 * channels), loss_func=loss_func or CrossEntropyLossFlat())
    learn.logger = noop
    return learn


@pytest.fixture
def interp() -> ClassificationInterpretation:
    return ClassificationInterpretation.from_learner(make_learner(), vocab=VOCAB)


def test_losses_are_per_item_in_dataset_order_even_from_a_shuffled_loader() -> None:
    for cls in (Interpretation, ClassificationInterpretation):
        got = cls.from_learner(make_learner(shuffle_valid=True))
        assert type(got) is cls
        assert got.losses.tolist() == pytest.approx([expected_loss(i) for i in range(len(PAIRS))], rel=1e-5)
    train = Interpretation.from_learner(make_learner(), ds_idx=0)  # the training loader holds the same items
    assert train.losses.tolist() == pytest.approx([expected_loss(i) for i in range(len(PAIRS))], rel=1e-5)


def test_from_learner_takes_a_loader_and_an_activation() -> None:
    learn = make_learner()
    x, y = images()
    dl = DataLoader(TensorDataset(x[:5], y[:5]), batch_size=2)
    got = ClassificationInterpretation.from_learner(learn, dl=dl, act=lambda p: p * 0)
    assert len(got.losses) == 5 and got.losses.tolist() == pytest.approx([expected_loss(i) for i in range(5)], rel=1e-5)
    assert got.act is not None and got[0][1].tolist() == [[0.0, 0.0, 0.0]]  # the activation's output


def test_top_losses(interp: ClassificationInterpretation) -> None:
    by_loss = sorted(range(len(PAIRS)), key=expected_loss, reverse=True)
    losses, idx = interp.top_losses()
    assert idx.tolist() == by_loss
    assert losses.tolist() == pytest.approx([expected_loss(i) for i in by_loss], rel=1e-5)
    losses, idx = interp.top_losses(3, largest=False)
    assert idx.tolist() == by_loss[::-1][:3]
    losses, idx, items = interp.top_losses(2, items=True)
    assert idx.tolist() == by_loss[:2]
    x, y = images()
    assert [(item[0].tolist(), int(item[1])) for item in items] == [(x[i].tolist(), int(y[i])) for i in by_loss[:2]]
    with pytest.raises(InputError, match=r"top_losses\(k=10\): there are 9 losses; give k between 0 and 9"):
        interp.top_losses(10)


def test_getitem_runs_the_model_again_on_the_items(interp: ClassificationInterpretation) -> None:
    x, _ = images()
    inps, preds, targs, decoded, losses = interp[torch.tensor([7, 1])]
    assert torch.equal(inps, x[[7, 1]])
    assert preds[:, 1].tolist() == pytest.approx([expected_prob(7), expected_prob(1)])
    assert targs.tolist() == [2, 0] and decoded.tolist() == [1, 1]
    assert losses.tolist() == pytest.approx([expected_loss(7), expected_loss(1)], rel=1e-5)
    assert interp[4][2].tolist() == [1]


def test_getitem_takes_a_slice_of_the_items(interp: ClassificationInterpretation) -> None:
    x, y = images()
    inps, preds, targs, decoded, losses = interp[:]  # fastai's notebook reads every item this way
    assert torch.equal(inps, x) and torch.equal(targs, y) and preds.shape == (9, 3)
    assert losses.tolist() == pytest.approx([expected_loss(i) for i in range(9)], rel=1e-5)
    assert interp[2:7:2][2].tolist() == y[2:7:2].tolist() and interp[-2:][4].tolist() == losses[-2:].tolist()


def test_getitem_takes_a_boolean_mask_of_the_items(interp: ClassificationInterpretation) -> None:
    # As fastai's L and tensor indexing take one: the items where the mask is True (they were read as indices 0 and 1).
    wrong = interp.losses > 1.5
    expected = [i for i in range(len(PAIRS)) if expected_loss(i) > 1.5]
    for mask in (wrong, wrong.tolist(), wrong.numpy()):
        _, _, targs, _, losses = interp[mask]
        assert targs.tolist() == [PAIRS[i][0] for i in expected]
        assert losses.tolist() == pytest.approx([expected_loss(i) for i in expected], rel=1e-5)
    with pytest.raises(InputError, match="the mask has 2 values for 9 items"):
        interp[[True, False]]


def test_items_need_a_dataloader_over_a_map_style_dataset() -> None:
    x, y = images()
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]  # any iterable of batches: losses work, items do not
    got = Interpretation.from_learner(make_learner(), dl=batches)
    assert got.losses.tolist() == pytest.approx([expected_loss(i) for i in range(len(PAIRS))], rel=1e-5)
    with pytest.raises(TypeError, match=r"interp\[idxs\] fetches items by their index.*got list"):
        got[0]
    with pytest.raises(TypeError, match=r"top_losses\(items=True\) fetches items .*map-style Dataset"):
        got.top_losses(items=True)
    with pytest.raises(InputError, match="found no losses: the loader list gave no batches"):
        Interpretation.from_learner(make_learner(), dl=[])


def test_items_need_the_dataset_order_a_custom_batch_sampler_does_not_give() -> None:
    x, y = images()
    by_length = DataLoader(TensorDataset(x, y), batch_sampler=[[8, 7, 6], [5, 4, 3, 2, 1, 0]])
    got = Interpretation.from_learner(make_learner(), dl=by_length)
    assert got.losses.tolist() == pytest.approx([expected_loss(i) for i in reversed(range(len(PAIRS)))], rel=1e-5)
    with pytest.raises(TypeError, match=r"top_losses\(items=True\) .*custom batch sampler \(list\)"):
        got.top_losses(items=True)


def test_a_loader_with_a_sampler_of_its_own_pairs_each_loss_with_its_item() -> None:
    # The sampler picks the items in its order: losses[i] is the loss of interp.dl.dataset[i], the Subset of
    # those items in that order (before, losses came in the sampler's order, items in the dataset's).
    x, y = images()
    order = [8, 0, 7, 1, 6, 2]
    got = Interpretation.from_learner(make_learner(), dl=DataLoader(TensorDataset(x, y), batch_size=4, sampler=order))
    assert got.losses.tolist() == pytest.approx([expected_loss(i) for i in order], rel=1e-5)
    losses, idx, items = got.top_losses(2, items=True)
    assert [torch.equal(item[0], x[order[i]]) for item, i in zip(items, idx.tolist(), strict=True)] == [True, True]
    inputs, *_, item_losses = got[idx]
    assert torch.equal(inputs, x[[order[i] for i in idx.tolist()]]) and torch.equal(item_losses, losses)


def test_a_shuffling_batch_sampler_is_read_in_dataset_order() -> None:
    x, y = images()
    ds = TensorDataset(x, y)
    shuffled = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 4, drop_last=True))
    got = Interpretation.from_learner(make_learner(), dl=shuffled)
    assert got.losses.tolist() == pytest.approx([expected_loss(i) for i in range(len(PAIRS))], rel=1e-5)
    _, idx, items = got.top_losses(1, items=True)
    assert torch.equal(items[0][0], x[idx[0]])


def test_confusion_matrix_and_most_confused(interp: ClassificationInterpretation) -> None:
    cm = interp.confusion_matrix()
    assert cm.dtype == np.int64 and cm.tolist() == CM
    assert interp.vocab == VOCAB
    confused = interp.most_confused()
    assert confused == [("cat", "dog", 2), ("fox", "dog", 2), ("dog", "fox", 1), ("fox", "cat", 1)]
    assert all(isinstance(count, np.int64) for _, _, count in confused)  # fastai's type
    assert interp.most_confused(min_val=2) == [("cat", "dog", 2), ("fox", "dog", 2)]
    assert len(interp.most_confused(min_val=0)) == 9  # every cell, the diagonal's set to 0 too (fastai's)
    assert interp.confusion_matrix().tolist() == CM  # most_confused left the matrix as it was


def test_a_loss_without_decodes_counts_the_argmax() -> None:
    got = ClassificationInterpretation.from_learner(make_learner(nn.CrossEntropyLoss()))
    assert got.confusion_matrix().tolist() == CM and got.decoded.tolist() == [p for _, p in PAIRS]
    assert got.losses.tolist() == pytest.approx([expected_loss(i) for i in range(len(PAIRS))], rel=1e-5)


class ClassesDataset(TensorDataset):
    classes = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("dls_vocab", "dataset_classes", "expected"),
    [
        (None, False, [0, 1, 2]),  # the width of the predictions
        (None, True, ["a", "b", "c"]),
        (("x", "y", "z"), True, ["x", "y", "z"]),
        ([["p", "q"], ["x", "y", "z"]], False, ["x", "y", "z"]),  # a vocab per target: the last
    ],
)
def test_vocab_is_found_when_not_given(dls_vocab: Any, dataset_classes: bool, expected: list[Any]) -> None:
    learn = make_learner()
    if dls_vocab is not None:
        learn.dls.vocab = dls_vocab  # type: ignore[attr-defined]
    x, y = images()
    dl = DataLoader((ClassesDataset if dataset_classes else TensorDataset)(x, y), batch_size=4)
    got = ClassificationInterpretation.from_learner(learn, dl=dl)
    assert got.vocab == expected
    assert ClassificationInterpretation.from_learner(learn, dl=dl, vocab=["u", "v", "w"]).vocab == ["u", "v", "w"]


def test_one_sigmoid_output_is_two_classes() -> None:
    x = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    y = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    dls = DataLoaders.from_tensors(x, y, x, y, bs=2, device="cpu")
    learn = Learner(dls, nn.Identity(), loss_func=BCEWithLogitsLossFlat())
    got = ClassificationInterpretation.from_learner(learn)
    assert got.vocab == [0, 1]
    assert got.confusion_matrix().tolist() == [[1, 1], [1, 1]]  # predicted 1, 0, 1, 0 against 1, 1, 0, 0


def test_values_outside_the_classes_are_not_counted(interp: ClassificationInterpretation) -> None:
    targs = torch.tensor([0, 1, -100, 2, 1])  # an ignore_index, as a segmentation target may hold
    decoded = torch.tensor([0, 2, 1, 2, 1])
    got = ClassificationInterpretation(
        interp.learn, interp.dl, torch.zeros(5), vocab=VOCAB, outputs=(torch.zeros(5, 3), targs, decoded)
    )
    assert got.confusion_matrix().tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(InputError, match=r"decoded predictions \(shape \(5, 2\)\) and the targets \(shape \(5,\)\)"):
        ClassificationInterpretation(
            interp.learn, interp.dl, torch.zeros(5), outputs=(targs, targs, torch.ones(5, 2, dtype=torch.long))
        )


def test_print_classification_report(interp: ClassificationInterpretation, capsys: pytest.CaptureFixture[str]) -> None:
    interp.print_classification_report()
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    # precision = right / predicted (column), recall = right / actual (row), support = row total, from CM
    for k, name in enumerate(VOCAB):
        precision = CM[k][k] / sum(row[k] for row in CM)
        recall = CM[k][k] / sum(CM[k])
        f1 = 2 * precision * recall / (precision + recall)
        assert rows[name] == [f"{precision:.2f}", f"{recall:.2f}", f"{f1:.2f}", str(sum(CM[k]))]
    assert rows["accuracy"] == [f"{3 / 9:.2f}", "9"]


def test_plot_confusion_matrix(interp: ClassificationInterpretation, tmp_path: Path) -> None:
    fig = interp.plot_confusion_matrix(fname=tmp_path / "cm.png", figsize=(4, 3))
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tuple(fig.get_size_inches()) == (4, 3)
    (ax,) = fig.axes
    assert ax.get_title() == "Confusion matrix" and (ax.get_xlabel(), ax.get_ylabel()) == ("Predicted", "Actual")
    assert [t.get_text() for t in ax.get_xticklabels()] == VOCAB == [t.get_text() for t in ax.get_yticklabels()]
    assert ax.get_ylim() == (2.5, -0.5)  # the first class on top
    assert ax.images[0].get_cmap().name == "Blues" and ax.images[0].get_array().tolist() == CM
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert {ij: t.get_text() for ij, t in cells.items()} == {(i, j): str(CM[i][j]) for i in range(3) for j in range(3)}
    # white on the cells above half the largest count (2 / 2 = 1)
    assert {ij for ij, t in cells.items() if t.get_color() == "white"} == {(0, 1), (2, 1)}


def test_plot_confusion_matrix_lays_out_before_its_axis_labels(interp: ClassificationInterpretation) -> None:
    # fastai's tight_layout runs before the axis labels are set: the axes are where a layout without them puts them
    fig = interp.plot_confusion_matrix()
    (ax,) = fig.axes
    drawn = ax.get_position().bounds
    ax.set_xlabel("")
    ax.set_ylabel("")
    fig.tight_layout()
    assert ax.get_position().bounds == pytest.approx(drawn)


def test_plot_confusion_matrix_normalized(interp: ClassificationInterpretation) -> None:
    fig = interp.plot_confusion_matrix(normalize=True, title="rates", cmap="Reds", norm_dec=1)
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"{CM[i][j] / sum(CM[i]):.1f}" for i in range(3) for j in range(3)]
    assert ax.get_title() == "rates" and ax.images[0].get_cmap().name == "Reds"
    assert not interp.plot_confusion_matrix(plot_txt=False).axes[0].texts


def test_plot_confusion_matrix_normalized_with_a_class_absent_from_the_targets(
    interp: ClassificationInterpretation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The absent class's row is 0/0: 'nan' as in fastai, in black; the other cells' text is white above half the
    # largest rate that is not NaN (fastai's threshold is NaN there, so all its text is black).
    monkeypatch.setattr(interp, "confusion_matrix", lambda: np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # without numpy's warning on the division
        (ax,) = interp.plot_confusion_matrix(normalize=True).axes
    assert [(t.get_text(), t.get_color()) for t in ax.texts] == [
        ("0.75", "white"), ("0.25", "black"), ("0.00", "black"), ("nan", "black"), ("nan", "black"), ("nan", "black"),
        ("0.17", "black"), ("0.00", "black"), ("0.83", "white"),
    ]


def test_plot_top_losses_of_one_channel_images(interp: ClassificationInterpretation, tmp_path: Path) -> None:
    by_loss = sorted(range(len(PAIRS)), key=expected_loss, reverse=True)
    fig = interp.plot_top_losses(3, fname=tmp_path / "top")
    assert (tmp_path / "top.png").exists()
    assert fig.texts[0].get_text() == "Prediction/Actual/Loss/Probability"
    axes = fig.axes
    assert len(axes) == 4  # a 2x2 grid for 3 images
    x, _ = images()
    for ax, i in zip(axes, by_loss[:3], strict=False):
        actual, predicted = PAIRS[i]
        assert ax.get_title() == f"{VOCAB[predicted]}/{VOCAB[actual]} / {expected_loss(i):.2f} / {expected_prob(i):.2f}"
        assert ax.images[0].get_array().tolist() == x[i, 0].tolist() and ax.images[0].get_cmap().name == "gray"
    assert not axes[3].images
    fig = interp.plot_top_losses(range(1, 3), largest=False, nrows=1)
    assert len(fig.axes) == 2
    by_loss.reverse()
    assert [ax.get_title().split("/")[0] for ax in fig.axes] == [VOCAB[PAIRS[i][1]] for i in by_loss[1:3]]
    with pytest.raises(InputError, match=r"plot_top_losses\(k=\[\]\) picks no item"):
        interp.plot_top_losses([])


def test_plot_top_losses_of_rgb_images_rescales_each() -> None:
    got = ClassificationInterpretation.from_learner(make_learner(channels=3))
    x, _ = images(channels=3)
    (ax,) = got.plot_top_losses(1).axes
    i = int(got.top_losses(1)[1][0])
    img = x[i].permute(1, 2, 0)
    np.testing.assert_allclose(ax.images[0].get_array(), ((img - img.min()) / (img.max() - img.min())).numpy())


def test_plot_top_losses_names_the_classes_of_one_sigmoid_output() -> None:
    x = torch.tensor([2.0, -1.0, 0.5, -3.0]).reshape(4, 1, 1, 1)  # one-pixel images, their own logits
    y = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    dls = DataLoaders.from_tensors(x, y, x, y, bs=2, device="cpu")
    learn = Learner(dls, nn.Flatten(), loss_func=BCEWithLogitsLossFlat())
    got = ClassificationInterpretation.from_learner(learn, vocab=["no", "yes"])
    titles = {ax.get_title().split(" / ")[0] for ax in got.plot_top_losses(4).axes}
    assert titles == {"yes/yes", "no/yes", "yes/no", "no/no"}  # predicted/actual: x > 0 against y


class WithAux(nn.Module):
    """The picker's logits and an auxiliary output: a model of several outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.picker = picker(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.picker(x)
        return logits, logits.sum(1, keepdim=True)


class MainOutputLoss(nn.Module):
    """Cross-entropy of the first output; the predictions keep both outputs, decoded from the first."""

    reduction = "mean"

    def forward(self, out: tuple[torch.Tensor, torch.Tensor], targ: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out[0], targ, reduction=self.reduction)

    def activation(self, out: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return out[0].softmax(1), out[1]

    def decodes(self, out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return out[0].argmax(1)


def test_a_model_of_several_outputs_takes_its_classes_from_the_first() -> None:
    learn = make_learner(MainOutputLoss())
    learn.model = WithAux()
    got = ClassificationInterpretation.from_learner(learn)  # the vocab read the width of a tuple: AttributeError
    assert got.vocab == [0, 1, 2] and got.confusion_matrix().tolist() == CM
    by_loss = sorted(range(len(PAIRS)), key=expected_loss, reverse=True)
    fig = got.plot_top_losses(3)  # one title per item (it zipped the two outputs), with the first's probability
    assert [ax.get_title().split(" / ")[-1] for ax in fig.axes[:3]] == [f"{expected_prob(i):.2f}" for i in by_loss[:3]]


def test_plot_top_losses_needs_images() -> None:
    x = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    learn = Learner(DataLoaders.from_tensors(x, y, x, y, bs=4, device="cpu"), nn.Linear(3, 3), CrossEntropyLossFlat())
    with pytest.raises(NotImplementedError, match=r"draws image inputs.*these are of shape \(2, 3\)"):
        ClassificationInterpretation.from_learner(learn).plot_top_losses(2)


def test_segmentation_losses_are_the_mean_over_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, 2, 4, generator=g), torch.randint(0, 3, (5, 2, 4), generator=g)
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])  # the logits are the input
    learn = Learner(DataLoaders.from_tensors(x, y, x, y, bs=2, device="cpu"), conv, CrossEntropyLossFlat(axis=1))
    got = SegmentationInterpretation.from_learner(learn)
    logits, targets = x.double().numpy(), y.numpy()
    pixel = np.log(np.exp(logits).sum(1)) - np.take_along_axis(logits, targets[:, None], 1)[:, 0]
    assert got.losses.tolist() == pytest.approx(pixel.reshape(5, -1).mean(1).tolist(), rel=1e-5)
    assert got.top_losses(2)[1].tolist() == np.argsort(-pixel.reshape(5, -1).mean(1))[:2].tolist()


def test_missing_extras_are_named(interp: ClassificationInterpretation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'learnloop\[plot\]'"):
        interp.plot_confusion_matrix()
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    with pytest.raises(ImportError, match=r"print_classification_report needs scikit-learn.*learnloop\[metrics\]"):
        interp.print_classification_report()


def test_a_regression_model_or_a_loss_without_decodes_is_refused() -> None:
    x = torch.randn(6, 3)
    y = x.sum(1, keepdim=True)
    learn = Learner(DataLoaders.from_tensors(x, y, x, y, bs=4, device="cpu"), nn.Linear(3, 1), nn.MSELoss())
    with pytest.raises(InputError, match="needs class indices, but the predicted classes hold fractional values"):
        ClassificationInterpretation.from_learner(learn)
    labels = (y > 0).float()
    learn = Learner(DataLoaders.from_tensors(x, labels, x, labels, bs=4), nn.Linear(3, 1), nn.BCEWithLogitsLoss())
    with pytest.raises(InputError, match=r"such as torch's nn.BCEWithLogitsLoss"):
        ClassificationInterpretation.from_learner(learn)


def test_batches_of_several_targets_are_refused() -> None:
    x, y = images()

    def loss(pred: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return nn.functional.cross_entropy(pred, a, reduction=reduction)

    dl = DataLoader(TensorDataset(x, y, y), batch_size=4)
    learn = Learner(DataLoaders(dl, dl, device="cpu", n_inp=1), picker(4), loss_func=loss)
    with pytest.raises(InputError, match="one target per item with the predicted class; these batches have 2"):
        ClassificationInterpretation.from_learner(learn)
    assert len(Interpretation.from_learner(learn).losses) == len(PAIRS)


def test_items_by_a_numpy_index(interp: ClassificationInterpretation) -> None:
    assert interp[np.int64(4)][2].tolist() == [1] and interp[np.array([4, 0])][2].tolist() == [1, 0]


def test_an_empty_validation_set_is_named() -> None:
    x, y = images()
    train_only = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=4), device="cpu")
    learn = Learner(train_only, picker(4), CrossEntropyLossFlat())
    with pytest.raises(InputError, match=r"found no losses: the loader learn.dls\[1\] gave no batches"):
        Interpretation.from_learner(learn)
