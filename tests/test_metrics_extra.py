"""The loss-based, segmentation and BLEU metrics (fastai's): values against hand-worked or numpy numbers, names,
degenerate cases, errors, a Learner's table, pickling and the sums a distributed run adds up."""

from __future__ import annotations

import copy
import functools
import math
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnloop import DataLoaders, Learner, load_learner
from learnloop import distributed as D
from learnloop.callback import noop
from learnloop.metrics import (
    AvgMetric,
    CorpusBLEUMetric,
    Dice,
    DiceMulti,
    JaccardCoeff,
    JaccardCoeffMulti,
    LossMetric,
    LossMetrics,
    Metric,
    Perplexity,
    foreground_acc,
    mk_metric,
    perplexity,
)
from learnloop.reductions import reduce_metrics


def batch(pred: Any, *yb: Any, loss: Tensor | None = None, training: bool = False, loss_func: Any = None) -> Any:
    """A stand-in for the learner as a metric sees it during `accumulate`."""
    return SimpleNamespace(pred=pred, yb=yb, xb=(), loss=loss, training=training, loss_func=loss_func)


def run(metric: Metric, batches: list[Any]) -> Any:
    """Reset, accumulate every batch and read the value, as the Recorder does."""
    metric.reset()
    for learn in batches:
        metric.accumulate(learn)
    return metric.value


def scores(classes: Tensor, n_classes: int, axis: int = 1) -> Tensor:
    """Predictions whose argmax over `axis` is `classes`."""
    return F.one_hot(classes, n_classes).movedim(-1, axis).float()


# ------------------------------------------------------------------------------------------ foreground_acc
def test_foreground_acc_counts_only_the_pixels_that_are_not_background() -> None:
    pred = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    targ = torch.tensor([[[0, 1], [1, 2]], [[0, 2], [0, 2]]])
    # Non-background targets: (0,0,1) hit, (0,1,0) miss, (0,1,1) hit, (1,0,1) miss, (1,1,1) hit: 3 of 5.
    assert foreground_acc(scores(pred, 3), targ).item() == pytest.approx(3 / 5)
    assert foreground_acc(scores(pred, 3), targ[:, None]).item() == pytest.approx(3 / 5)  # (batch, 1, h, w) target
    # bkg_idx=2: (0,0,0) hit, (0,0,1) hit, (0,1,0) miss, (1,0,0) miss, (1,1,0) hit: 3 of 5 again, other pixels.
    assert foreground_acc(scores(pred, 3), targ, bkg_idx=2).item() == pytest.approx(3 / 5)
    assert foreground_acc(scores(pred, 3), targ, bkg_idx=1).item() == pytest.approx(4 / 6)
    value = foreground_acc(scores(pred, 3, axis=-1), targ, axis=-1)  # channels last
    assert value.dtype == torch.float32 and value.item() == pytest.approx(3 / 5)
    assert AvgMetric(foreground_acc).name == "foreground_acc"


def test_foreground_acc_of_a_height_of_one_keeps_its_height() -> None:
    pred, targ = torch.tensor([[[1, 0, 2]]]), torch.tensor([[[1, 2, 2]]])  # one image of 1 x 3 pixels
    assert foreground_acc(scores(pred, 3), targ).item() == pytest.approx(2 / 3)


def test_foreground_acc_without_foreground_is_nan() -> None:
    assert math.isnan(foreground_acc(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)).item())


def test_foreground_acc_says_which_shapes_differ() -> None:
    with pytest.raises(ValueError, match=r"classes of shape \(2, 4, 4\) \(argmax over axis 1\), but the target has "
                                         r"shape \(2, 5, 4\)"):
        foreground_acc(torch.randn(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ Dice, Jaccard
def binary_batches() -> list[Any]:
    # Batch 1: pred 1 1 0 0 / targ 1 0 1 0; batch 2: pred 1 1 1 / targ 1 1 0.
    return [
        batch(scores(torch.tensor([[1, 1, 0, 0]]), 2), torch.tensor([[1, 0, 1, 0]])),
        batch(scores(torch.tensor([[1, 1, 1]]), 2), torch.tensor([[1, 1, 0]])),
    ]


def test_dice_and_jaccard_are_over_the_whole_set() -> None:
    # |P ∩ T| = 1 + 2 = 3, |P| + |T| = (2 + 2) + (3 + 2) = 9, |P ∪ T| = 9 - 3 = 6.
    dice, jaccard = Dice(), JaccardCoeff()
    assert run(dice, binary_batches()) == 2 * 3 / 9
    assert run(jaccard, binary_batches()) == 3 / 6
    assert type(dice.value) is float and (dice.inter, dice.union) == (3.0, 9.0)
    assert dice.count == 2  # items: the `count` a distributed run sums with `total`
    assert (dice.name, jaccard.name) == ("dice", "jaccard_coeff")


def test_dice_counts_float_and_bool_masks_and_channels_last() -> None:
    pred = scores(torch.tensor([[1, 1, 0, 0]]), 2, axis=-1)
    for targ in (torch.tensor([[1.0, 0.0, 1.0, 0.0]]), torch.tensor([[True, False, True, False]])):
        assert run(Dice(axis=-1), [batch(pred, targ)]) == 2 * 1 / 4


def test_dice_and_jaccard_are_none_when_nothing_is_predicted_or_targeted() -> None:
    empty = [batch(scores(torch.zeros(1, 3, dtype=torch.long), 2), torch.zeros(1, 3, dtype=torch.long))]
    assert run(Dice(), empty) is None and run(JaccardCoeff(), empty) is None
    assert run(Dice(), []) is None


def test_dice_refuses_targets_of_another_size() -> None:
    with pytest.raises(ValueError, match="same number of elements"):
        run(Dice(), [batch(torch.randn(2, 2, 3), torch.zeros(2, 4, dtype=torch.long))])


# ---------------------------------------------------------------------------------------- DiceMulti, mIoU
def per_class(preds: list[np.ndarray], targs: list[np.ndarray], n: int, score: Callable[[int, int], float]) -> float:
    """Mean over the classes present anywhere (predicted or targeted) of score(intersection, |P| + |T|)."""
    p, t = np.concatenate([a.ravel() for a in preds]), np.concatenate([a.ravel() for a in targs])
    values = []
    for c in range(n):
        inter, union = int(((p == c) & (t == c)).sum()), int((p == c).sum() + (t == c).sum())
        if union:
            values.append(score(inter, union))
    return float(np.mean(values))


def multi_batches() -> tuple[list[Any], list[np.ndarray], list[np.ndarray]]:
    # Class 3 is never predicted nor targeted; class 2 is predicted only in batch 2 and never targeted;
    # 255 (an ignored index) is no class.
    p1, t1 = np.array([[[0, 1], [1, 0]]]), np.array([[[0, 1], [0, 255]]])
    p2, t2 = np.array([[[2, 1], [0, 0]], [[1, 1], [0, 0]]]), np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]]])
    batches = [batch(scores(torch.tensor(p), 4), torch.tensor(t)) for p, t in ((p1, t1), (p2, t2))]
    return batches, [p1, p2], [t1, t2]


def test_dice_multi_and_jaccard_multi_average_whole_set_scores_over_the_classes_present() -> None:
    batches, preds, targs = multi_batches()
    dice = run(DiceMulti(), batches)
    assert dice == pytest.approx(per_class(preds, targs, 4, lambda i, u: 2 * i / u), abs=1e-15)
    # By hand: class 0: inter 5, |P| 6 + |T| 7; class 1: inter 3, 5 + 4; class 2: inter 0, 1 + 0 (a score of 0).
    assert dice == pytest.approx((10 / 13 + 6 / 9 + 0) / 3)
    jaccard = run(JaccardCoeffMulti(), batches)
    assert jaccard == pytest.approx((5 / 8 + 3 / 6 + 0) / 3)
    assert type(dice) is np.float64 and type(jaccard) is np.float64
    assert (DiceMulti().name, JaccardCoeffMulti().name) == ("dice_multi", "jaccard_coeff_multi")


def test_dice_multi_channels_last_and_more_classes_later() -> None:
    first = batch(scores(torch.tensor([[0, 1]]), 2, axis=-1), torch.tensor([[0, 0]]))
    later = batch(scores(torch.tensor([[2, 2]]), 3, axis=-1), torch.tensor([[2, 1]]))
    # class 0: inter 1, 1 + 2; class 1: inter 0, 1 + 1; class 2: inter 1, 2 + 1.
    assert run(DiceMulti(axis=-1), [first, later]) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


def test_dice_multi_without_any_class_is_nan_with_numpys_warning() -> None:
    for metric in (DiceMulti(), JaccardCoeffMulti()):
        with pytest.warns(RuntimeWarning, match="Mean of empty slice"):
            assert math.isnan(run(metric, []))


# ---------------------------------------------------------------------------------------------- Perplexity
def test_perplexity_is_exp_of_the_mean_loss_weighted_by_batch_size() -> None:
    batches = [
        batch(None, torch.zeros(3), loss=torch.tensor([1.0, 2.0])),  # per-item losses: their mean, 1.5
        batch(None, torch.zeros(1), loss=torch.tensor(3.0)),
    ]
    value = run(Perplexity(), batches)
    assert isinstance(value, Tensor) and value.item() == pytest.approx(math.exp((1.5 * 3 + 3.0) / 4))
    assert run(Perplexity(), []) is None
    assert Perplexity().name == "perplexity" and isinstance(perplexity, Perplexity)
    assert mk_metric(perplexity) is perplexity  # shared by the learners given it, as fastai's


# ------------------------------------------------------------------------------------------ LossMetric(s)
def test_loss_metric_averages_an_attribute_of_the_loss_weighted_by_batch_size() -> None:
    parts = [SimpleNamespace(), SimpleNamespace(part=torch.tensor(2.0)), SimpleNamespace(part=torch.tensor(5.0))]
    batches = [batch(None, torch.zeros(n), loss_func=lf) for n, lf in zip((1, 3, 2), parts, strict=True)]
    metric = LossMetric("part")
    assert run(metric, batches).item() == pytest.approx((0 * 1 + 2 * 3 + 5 * 2) / 6)  # 0 while there is none
    assert metric.name == "part" and LossMetric("part", "mine").name == "mine"
    assert run(LossMetric("other"), batches) == 0.0
    assert run(LossMetric("part"), []) is None


def test_loss_metrics_one_per_attribute() -> None:
    assert [(m.attr, m.name) for m in LossMetrics("mse,l1")] == [("mse", "mse"), ("l1", "l1")]
    assert [(m.attr, m.name) for m in LossMetrics("mse, l1", "a, b")] == [("mse", "a"), ("l1", "b")]
    assert [(m.attr, m.name) for m in LossMetrics(["mse", "l1"], ["a", "b"])] == [("mse", "a"), ("l1", "b")]
    with pytest.raises(ValueError, match=r"2 attributes \['mse', 'l1'\] but 1 names \['a'\]; give one name"):
        LossMetrics("mse,l1", "a")


# ---------------------------------------------------------------------------------------------------- BLEU
def tokens(rows: list[list[int]], vocab: int = 10) -> Tensor:
    """(batch, seq, vocab) predictions whose argmax is `rows`."""
    return F.one_hot(torch.tensor(rows), vocab).float()


def test_corpus_bleu_by_hand() -> None:
    metric = CorpusBLEUMetric()
    # Sequence 1: 1 2 3 4 5 against 1 2 3 4 6: matches 4/5, 3/4, 2/3, 1/2.
    # Sequence 2: 7 7 7 7 against 7 1 2 3: one 7 counts (clipped), then no 2-, 3-, 4-gram: 1/2, 1/4, 1/8 instead.
    pred, targ = tokens([[1, 2, 3, 4, 5], [7, 7, 7, 7, 0]]), torch.tensor([[1, 2, 3, 4, 6], [7, 1, 2, 3, 9]])
    precisions = [(4 + 1) / 10, (3 + 0.5) / 8, (2 + 0.25) / 6, (1 + 0.125) / 4]
    assert run(metric, [batch(pred, targ)]) == pytest.approx(math.prod(precisions) ** 0.25, rel=1e-15)
    assert type(metric.value) is float and metric.name == "corpus_bleu"
    assert (metric.pred_len, metric.targ_len, metric.counts) == (10, 10, [10, 8, 6, 4])
    assert metric.corrects == [5, 3.5, 2.25, 1.125] and metric.count == 2
    # fastai's types: an order's sum is an int until a smoothed fraction is added to it
    assert [type(c) for c in metric.corrects] == [int, float, float, float]


def test_corpus_bleu_corrects_are_floats_once_smoothed_even_when_whole() -> None:
    # Each sequence matches one 2-gram ((2, 1), (4, 3)) and no 3-gram, so adds 1/2: the sum 1.0 is a float, as in
    # fastai (whose corrects here are [4, 2, 1.0, 0.5]).
    pred, targ = tokens([[1, 2, 1, 2], [3, 4, 3, 4]]), torch.tensor([[2, 1, 5, 6], [4, 3, 5, 6]])
    metric = CorpusBLEUMetric()
    run(metric, [batch(pred, targ)])
    assert metric.corrects == [4, 2, 1.0, 0.5]
    assert [type(c) for c in metric.corrects] == [int, int, float, float]
    assert [type(n) for n in (metric.pred_len, metric.targ_len, *metric.counts)] == [int] * 6


def test_corpus_bleu_brevity_penalty_and_short_sequences() -> None:
    # 4 predicted tokens for 6 target ones; a 3-token sequence adds smoothed matches but no 4-gram.
    long = batch(tokens([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 4, 5, 6]]))
    short = batch(tokens([[1, 2, 3]]), torch.tensor([[1, 2, 3]]))
    precisions = [(4 + 3) / 7, (3 + 2) / 5, (2 + 1) / 3, (1 + 0.5) / 1]
    expected = math.exp(1 - 9 / 7) * math.prod(precisions) ** 0.25
    assert run(CorpusBLEUMetric(), [long, short]) == pytest.approx(expected, rel=1e-15)


def test_corpus_bleu_without_batches_is_zero_and_skips_training() -> None:
    assert run(CorpusBLEUMetric(), []) == 0.0
    assert run(CorpusBLEUMetric(), [batch(tokens([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 4]]), training=True)]) == 0.0


def test_corpus_bleu_of_sequences_shorter_than_four_tokens_says_why_it_has_no_value() -> None:
    metric = CorpusBLEUMetric()
    with pytest.raises(ZeroDivisionError, match="no predicted sequence holds 4 tokens.*at least 4 tokens"):
        run(metric, [batch(tokens([[1, 2, 3]]), torch.tensor([[1, 2, 3]]))])


# ---------------------------------------------------------------------------------------------- in a Learner
G = torch.Generator().manual_seed(0)
X_SEG, X_SEG_VALID = torch.randn(16, 1, 5, 5, generator=G), torch.randn(8, 1, 5, 5, generator=G)


def seg_targets(x: Tensor) -> Tensor:
    return (x[:, 0] > 0.3).long() + (x[:, 0] > 1.0).long()


def seg_learner(n_classes: int, metrics: list[Any], loss_func: Any = None) -> Learner:
    y, y_valid = seg_targets(X_SEG).clamp(max=n_classes - 1), seg_targets(X_SEG_VALID).clamp(max=n_classes - 1)
    dls = DataLoaders.from_tensors(X_SEG, y, X_SEG_VALID, y_valid, bs=4, shuffle=False, device="cpu")
    torch.manual_seed(0)
    learn = Learner(dls, nn.Conv2d(1, n_classes, 3, padding=1), loss_func or nn.CrossEntropyLoss(), metrics=metrics)
    learn.logger = noop
    return learn


def test_segmentation_metrics_in_fit_and_validate() -> None:
    metrics = [foreground_acc, DiceMulti(), JaccardCoeffMulti(), Perplexity()]
    learn = seg_learner(3, metrics)
    learn.fit(1, 0.1)
    names = ["foreground_acc", "dice_multi", "jaccard_coeff_multi", "perplexity"]
    assert learn.recorder.metric_names == ["epoch", "train_loss", "valid_loss", *names, "time"]
    values = learn.validate()
    assert values == learn.recorder.values[-1]
    preds, targs = learn.get_preds()
    classes, t = preds.argmax(1).numpy(), targs.numpy()
    batches_fg = [(classes[i : i + 4] == t[i : i + 4])[t[i : i + 4] != 0].mean() for i in (0, 4)]
    losses = [F.cross_entropy(preds[i : i + 4], targs[i : i + 4]).item() for i in (0, 4)]
    assert values[1] == pytest.approx(np.mean(batches_fg))
    assert values[2] == pytest.approx(per_class([classes], [t], 3, lambda i, u: 2 * i / u))
    assert values[3] == pytest.approx(per_class([classes], [t], 3, lambda i, u: i / (u - i)))
    assert values[4] == pytest.approx(math.exp(np.mean(losses)), rel=1e-6)


def test_binary_segmentation_and_loss_parts_in_fit_and_validate(tmp_path: Path) -> None:
    learn = seg_learner(2, [Dice(), JaccardCoeff(), *LossMetrics("mse,l1,total,missing", "MSE,L1,both,none")],
                        loss_func=SegmentationParts())
    learn.fit(1, 0.1)
    assert learn.recorder.metric_names[3:-1] == ["dice", "jaccard_coeff", "MSE", "L1", "both", "none"]
    values = learn.validate()
    preds, targs = learn.get_preds()
    p, t = preds.argmax(1), targs
    inter, union = float((p * t).sum()), float((p + t).sum())
    assert values[1:3] == [pytest.approx(2 * inter / union), pytest.approx(inter / (union - inter))]
    parts = [SegmentationParts().parts(preds[i : i + 4], targs[i : i + 4]) for i in (0, 4)]
    for k, got in enumerate(values[3:6]):
        assert got == pytest.approx(np.mean([part[k] for part in parts]), rel=1e-6)
    assert values[6] == 0.0
    learn.export(tmp_path / "seg.pkl")  # a learner with these metrics and a loss of parts exports and loads
    loaded = load_learner(tmp_path / "seg.pkl", trusted=True)
    assert isinstance(loaded.loss_func, SegmentationParts)


class SegmentationParts(nn.Module):
    """Cross-entropy plus a squared error of the class-1 probability, keeping its parts (mse, l1, total)."""

    def parts(self, pred: Tensor, targ: Tensor) -> tuple[float, float, float]:
        self(pred, targ)
        return float(self.mse), float(self.l1), self.total

    def forward(self, pred: Tensor, targ: Tensor) -> Tensor:
        prob = pred.softmax(1)[:, 1]
        self.mse = F.mse_loss(prob, targ.float())
        self.l1 = F.cross_entropy(pred, targ)
        self.total = float((self.mse + self.l1).detach())
        return self.mse + self.l1


def test_corpus_bleu_in_fit_and_validate() -> None:
    g = torch.Generator().manual_seed(0)
    x, x_valid = torch.randint(0, 6, (16, 5), generator=g), torch.randint(0, 6, (8, 5), generator=g)
    dls = DataLoaders.from_tensors(x, (x + 1) % 6, x_valid, (x_valid + 1) % 6, bs=4, shuffle=False, device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 6))
    learn = Learner(dls, model, lambda p, t: F.cross_entropy(p.transpose(1, 2), t), metrics=[CorpusBLEUMetric(6)])
    learn.logger = noop
    learn.fit(1, 0.1)
    assert learn.recorder.metric_names[3] == "corpus_bleu"
    bleu = learn.validate()[1]
    preds, targs = learn.get_preds()
    assert bleu == pytest.approx(bleu_by_counting(preds.argmax(-1).tolist(), targs.tolist()), rel=1e-12)


def bleu_by_counting(preds: list[list[int]], targs: list[list[int]]) -> float:
    """Smoothed corpus BLEU-4 by plain counting, sequences of equal lengths."""
    corrects, counts = [0.0] * 4, [0] * 4
    for pred, targ in zip(preds, targs, strict=True):
        smooth = 1.0
        for n in range(1, 5):
            pred_grams = [tuple(pred[i : i + n]) for i in range(len(pred) - n + 1)]
            targ_grams = [tuple(targ[i : i + n]) for i in range(len(targ) - n + 1)]
            found = sum(min(pred_grams.count(g), targ_grams.count(g)) for g in set(pred_grams))
            if not found:
                smooth /= 2
            corrects[n - 1] += found or smooth
            counts[n - 1] += len(pred_grams)
    return math.prod(c / t for c, t in zip(corrects, counts, strict=True)) ** 0.25


# ------------------------------------------------------------------------------------------------- pickling
def test_metrics_pickle_with_their_state() -> None:
    seg, _, _ = multi_batches()
    bleu = [batch(tokens([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 3, 4, 6]]))]
    losses = [batch(None, torch.zeros(2), loss=torch.tensor(1.5), loss_func=SimpleNamespace(part=0.5))]
    cases: list[tuple[Metric, list[Any]]] = [
        (Dice(), binary_batches()), (JaccardCoeff(), binary_batches()), (DiceMulti(), seg),
        (JaccardCoeffMulti(), seg), (CorpusBLEUMetric(), bleu), (perplexity, losses), (LossMetric("part", "p"), losses),
    ]
    for metric, batches in cases:
        value = run(metric, batches)
        loaded = pickle.loads(pickle.dumps(metric))
        assert type(loaded) is type(metric) and loaded.name == metric.name
        assert float(loaded.value) == float(value)


# ---------------------------------------------------------------------------------- distributed: the sums
def reduce_over_two_ranks(mine: list[Metric], theirs: list[Metric], monkeypatch: pytest.MonkeyPatch) -> None:
    """reduce_metrics on this rank's `mine` as if another rank held `theirs`: what that rank would send is
    recorded first, then added to (or gathered with) this rank's."""
    sent: dict[str, list[Any]] = {"sum": [], "gather": []}
    with monkeypatch.context() as patch:
        patch.setattr(D, "all_reduce_sum", lambda t: sent["sum"].append(t.clone()) or t)
        patch.setattr(D, "all_gather_objects", lambda obj: sent["gather"].append(obj) or [obj])
        reduce_metrics(copy.deepcopy(theirs))
    sums, gathers = iter(sent["sum"]), iter(sent["gather"])
    with monkeypatch.context() as patch:
        patch.setattr(D, "all_reduce_sum", lambda t: t + next(sums))
        patch.setattr(D, "all_gather_objects", lambda obj: [obj, next(gathers)])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a metric each rank reports on its own share is warned of: none may be
            reduce_metrics(mine)


def new_metrics() -> list[Metric]:
    return [Dice(), JaccardCoeff(), DiceMulti(), JaccardCoeffMulti(), CorpusBLEUMetric(), Perplexity(),
            LossMetric("part"), mk_metric(foreground_acc)]


def mixed_batches(seed: int, n: int) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pred, targ = torch.randn(2, 3, 6, generator=g), torch.randint(0, 3, (2, 6), generator=g)
        out.append(batch(pred, targ, loss=torch.rand((), generator=g), loss_func=SimpleNamespace(part=torch.rand(()))))
    return out


def accumulate_all(metrics: list[Metric], batches: list[Any]) -> None:
    for m in metrics:
        m.reset()
        for learn in batches:
            # Dice and Jaccard are binary: their targets are the classes above 0; BLEU reads (batch, seq, vocab).
            if isinstance(m, Dice):
                learn = batch(learn.pred[:, :2], learn.yb[0].clamp(max=1))
            elif isinstance(m, CorpusBLEUMetric):
                learn = batch(learn.pred.transpose(1, 2), learn.yb[0])
            m.accumulate(learn)


@pytest.mark.parametrize("n_mine, n_theirs", [(2, 3), (0, 3), (3, 0)])
def test_the_sums_combined_over_two_ranks_give_the_whole_sets_values(
    n_mine: int, n_theirs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = mixed_batches(0, n_mine + n_theirs)
    whole, mine, theirs = new_metrics(), new_metrics(), new_metrics()
    accumulate_all(whole, batches)
    accumulate_all(mine, batches[:n_mine])  # a rank may have no batch at all (a tiny validation set)
    accumulate_all(theirs, batches[n_mine:])
    reduce_over_two_ranks(mine, theirs, monkeypatch)
    for m, w in zip(mine, whole, strict=True):
        assert float(m.value) == pytest.approx(float(w.value), rel=1e-6), m.name


# ------------------------------------------------------------------------------------------------- no waiting
@pytest.mark.parametrize(
    "make_metric",
    [Dice, DiceMulti, Perplexity, functools.partial(LossMetric, "part"), functools.partial(AvgMetric, foreground_acc)],
)
def test_accumulate_never_reads_tensor_values(make_metric: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # On an accelerator each of these reads waits for the device (CorpusBLEUMetric reads the tokens: it must).
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("metric read a tensor value on the host while accumulating")

    m = make_metric()
    m.reset()
    batches = mixed_batches(1, 2)
    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, name, forbidden)
        for learn in batches:
            m.accumulate(learn)
    assert m.value is not None
