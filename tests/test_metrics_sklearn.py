"""fastai's scikit-learn and scipy metrics (learnloop.metrics.sklearn_metrics), checked against numbers computed here
with numpy from their definitions: one batch, inside a Learner, pickled, and without scikit-learn installed."""

from __future__ import annotations

import importlib.util
import itertools
import math
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from conftest import synth_classif_learner, synth_learner
from learnloop import BCEWithLogitsLossFlat, DataLoaders, Learner, load_learner
from learnloop.callback import noop
from learnloop.errors import InputError
from learnloop.metrics import (
    AccumMetric,
    ActivationType,
    APScoreBinary,
    APScoreMulti,
    BalancedAccuracy,
    BrierScore,
    BrierScoreMulti,
    CohenKappa,
    F1Score,
    F1ScoreMulti,
    FBeta,
    FBetaMulti,
    HammingLoss,
    HammingLossMulti,
    Jaccard,
    JaccardMulti,
    MatthewsCorrCoef,
    MatthewsCorrCoefMulti,
    PearsonCorrCoef,
    Precision,
    PrecisionMulti,
    Recall,
    RecallMulti,
    RocAuc,
    RocAucBinary,
    RocAucMulti,
    SpearmanCorrCoef,
    ValueMetric,
    accuracy_multi,
    optim_metric,
    skm_to_fastai,
)

# optim_metric over a metric returning a tensor (accuracy_multi): scipy's arithmetic on it makes torch warn that its
# __array_wrap__ is deprecated by numpy 2, in fastai as here.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="scikit-learn is missing: pip install 'learnloop[metrics]'"
)


# Independent computations, from the definitions (numpy only).


def counts(pred: np.ndarray, targ: np.ndarray, cls: int) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of class `cls`."""
    p, t = pred == cls, targ == cls
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum())


def fbeta(tp: int, fp: int, fn: int, beta: float = 1.0) -> float:
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over the distinct thresholds, highest first, of the precision times the recall gained."""
    total, ap, last_recall = labels.sum(), 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        chosen = scores >= t
        tp = (labels[chosen] == 1).sum()
        recall = tp / total
        ap += (recall - last_recall) * tp / chosen.sum()
        last_recall = recall
    return float(ap)


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)  # no ties in these data


# Data: 3-class and 2-class logits with targets, multi-label logits with 0/1 targets, regression pairs.
G = torch.Generator().manual_seed(3)
LOGITS3, TARG3 = torch.randn(30, 3, generator=G), torch.randint(0, 3, (30,), generator=G)
LOGITS2, TARG2 = torch.randn(30, 2, generator=G), torch.randint(0, 2, (30,), generator=G)
ML_LOGITS, ML_TARG = torch.randn(30, 4, generator=G), torch.randint(0, 2, (30, 4), generator=G).float()
REG_PRED = torch.randn(30, generator=G)
REG_TARG = REG_PRED + torch.randn(30, generator=G)
P3, T3 = LOGITS3.argmax(1).numpy(), TARG3.numpy()
P2, T2 = LOGITS2.argmax(1).numpy(), TARG2.numpy()
PROB2 = torch.softmax(LOGITS2, 1)[:, 1].numpy().astype(np.float64)
PROB3 = torch.softmax(LOGITS3, 1).numpy().astype(np.float64)
ML_PROB = torch.sigmoid(ML_LOGITS).numpy().astype(np.float64)
ML_T = ML_TARG.numpy().astype(int)


def learner_like(pred: Tensor, targ: Tensor) -> Any:
    """What a metric reads from the learner in `accumulate`."""
    return type("L", (), {"pred": pred, "yb": (targ,), "training": False})()


def run(metric: AccumMetric, pred: Tensor, targ: Tensor, n_batches: int = 3) -> Any:
    """The metric over `pred`/`targ` fed in `n_batches` batches, as the Recorder feeds it."""
    metric.reset()
    for p, t in zip(pred.chunk(n_batches), targ.chunk(n_batches), strict=True):
        metric.accumulate(learner_like(p, t))
    return metric.value


def per_class(fn: Callable[[int, int, int, int], float], pred: np.ndarray, targ: np.ndarray, n: int) -> list[float]:
    return [fn(*counts(pred, targ, c)) for c in range(n)]


def mcc(tp: int, fp: int, fn: int, tn: int) -> float:
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def kappa(pred: np.ndarray, targ: np.ndarray) -> float:
    observed = (pred == targ).mean()
    expected = sum((pred == c).mean() * (targ == c).mean() for c in np.union1d(pred, targ))
    return float((observed - expected) / (1 - expected))


def recall_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return tp / (tp + fn)


def precision_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return tp / (tp + fp)


def jaccard_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return tp / (tp + fp + fn)


SINGLE_LABEL: list[tuple[str, Callable[[], AccumMetric], Tensor, Tensor, float]] = [
    ("f1_score", lambda: F1Score(), LOGITS2, TARG2, fbeta(*counts(P2, T2, 1)[:3])),
    ("f1_score", lambda: F1Score(average="macro"), LOGITS3, TARG3,
     float(np.mean([fbeta(*counts(P3, T3, c)[:3]) for c in range(3)]))),
    ("fbeta_score", lambda: FBeta(2), LOGITS2, TARG2, fbeta(*counts(P2, T2, 1)[:3], beta=2)),
    ("fbeta_score", lambda: FBeta(0.5, average="macro"), LOGITS3, TARG3,
     float(np.mean([fbeta(*counts(P3, T3, c)[:3], beta=0.5) for c in range(3)]))),
    ("precision_score", lambda: Precision(), LOGITS2, TARG2, precision_of(*counts(P2, T2, 1))),
    ("precision_score", lambda: Precision(pos_label=0), LOGITS2, TARG2, precision_of(*counts(P2, T2, 0))),
    ("recall_score", lambda: Recall(average="macro"), LOGITS3, TARG3,
     float(np.mean(per_class(recall_of, P3, T3, 3)))),
    ("jaccard_score", lambda: Jaccard(), LOGITS2, TARG2, jaccard_of(*counts(P2, T2, 1))),
    ("balanced_accuracy_score", lambda: BalancedAccuracy(), LOGITS3, TARG3,
     float(np.mean(per_class(recall_of, P3, T3, 3)))),
    ("balanced_accuracy_score", lambda: BalancedAccuracy(adjusted=True), LOGITS3, TARG3,
     float((np.mean(per_class(recall_of, P3, T3, 3)) - 1 / 3) / (1 - 1 / 3))),
    ("cohen_kappa_score", lambda: CohenKappa(), LOGITS3, TARG3, kappa(P3, T3)),
    ("hamming_loss", lambda: HammingLoss(), LOGITS3, TARG3, float((P3 != T3).mean())),
    ("matthews_corrcoef", lambda: MatthewsCorrCoef(), LOGITS2, TARG2, mcc(*counts(P2, T2, 1))),
    ("brier_score_loss", lambda: BrierScore(), LOGITS2, TARG2, float(((P2 - T2) ** 2).mean())),  # of the argmax
    ("average_precision_score", lambda: APScoreBinary(), LOGITS2, TARG2, average_precision(PROB2, T2)),
    ("roc_auc_score", lambda: RocAucBinary(), LOGITS2, TARG2, auc(PROB2, T2)),
    ("roc_auc_score", lambda: RocAuc(), LOGITS3, TARG3,  # each class against the rest
     float(np.mean([auc(PROB3[:, c], (T3 == c).astype(int)) for c in range(3)]))),
    ("roc_auc_score", lambda: RocAuc(multi_class="ovo"), LOGITS3, TARG3,  # Hand & Till: each pair, both ways
     float(np.mean([(auc(PROB3[m][:, j], (T3[m] == j).astype(int)) + auc(PROB3[m][:, k], (T3[m] == k).astype(int))) / 2
                    for j, k in itertools.combinations(range(3), 2) for m in [(T3 == j) | (T3 == k)]]))),
]


def ml_pred(thresh: float = 0.5) -> np.ndarray:
    return (ML_PROB >= thresh).astype(int)


def per_label(fn: Callable[[int, int, int, int], float], pred: np.ndarray) -> float:
    return float(np.mean([fn(*counts(pred[:, j], ML_T[:, j], 1)) for j in range(ML_T.shape[1])]))


def f1_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return fbeta(tp, fp, fn)


def f2_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return fbeta(tp, fp, fn, beta=2)


MULTI_LABEL: list[tuple[str, Callable[[], AccumMetric], float]] = [
    ("f1_score", lambda: F1ScoreMulti(), per_label(f1_of, ml_pred())),
    ("f1_score", lambda: F1ScoreMulti(thresh=0.3), per_label(f1_of, ml_pred(0.3))),
    ("fbeta_score", lambda: FBetaMulti(2), per_label(f2_of, ml_pred())),
    ("precision_score", lambda: PrecisionMulti(), per_label(precision_of, ml_pred())),
    ("recall_score", lambda: RecallMulti(), per_label(recall_of, ml_pred())),
    ("jaccard_score", lambda: JaccardMulti(), per_label(jaccard_of, ml_pred())),
    ("hamming_loss", lambda: HammingLossMulti(), float((ml_pred() != ML_T).mean())),
    ("roc_auc_score", lambda: RocAucMulti(), float(np.mean([auc(ML_PROB[:, j], ML_T[:, j]) for j in range(4)]))),
    ("average_precision_score", lambda: APScoreMulti(),
     float(np.mean([average_precision(ML_PROB[:, j], ML_T[:, j]) for j in range(4)]))),
]


@needs_sklearn
@pytest.mark.parametrize(("name", "make", "pred", "targ", "expected"), SINGLE_LABEL)
def test_single_label_metrics_over_batches(
    name: str, make: Callable[[], AccumMetric], pred: Tensor, targ: Tensor, expected: float
) -> None:
    metric = make()
    assert metric.name == name
    assert run(metric, pred, targ) == pytest.approx(expected, rel=1e-12)
    metric.reset()
    assert metric.value is None  # nothing accumulated


@needs_sklearn
@pytest.mark.parametrize(("name", "make", "expected"), MULTI_LABEL)
def test_multi_label_metrics_over_batches(name: str, make: Callable[[], AccumMetric], expected: float) -> None:
    metric = make()
    assert metric.name == name and not metric.flatten
    assert run(metric, ML_LOGITS, ML_TARG) == pytest.approx(expected, rel=1e-12)
    assert metric.preds[0].shape == (10, 4)  # kept (items, labels)


@needs_sklearn
def test_multi_label_metrics_take_probabilities_with_sigmoid_false() -> None:
    probs = torch.sigmoid(ML_LOGITS)
    assert run(F1ScoreMulti(sigmoid=False), probs, ML_TARG) == pytest.approx(per_label(f1_of, ml_pred()), rel=1e-12)
    # the ranking metrics score the given probabilities (fastai's take their argmax, which scikit-learn rejects)
    expected_auc = float(np.mean([auc(ML_PROB[:, j], ML_T[:, j]) for j in range(4)]))
    assert run(RocAucMulti(sigmoid=False), probs, ML_TARG) == pytest.approx(expected_auc, rel=1e-12)
    expected_ap = float(np.mean([average_precision(ML_PROB[:, j], ML_T[:, j]) for j in range(4)]))
    assert run(APScoreMulti(sigmoid=False), probs, ML_TARG) == pytest.approx(expected_ap, rel=1e-12)


@needs_sklearn
def test_ranking_multi_label_metrics_without_sigmoid_take_the_argmax_against_class_indices() -> None:
    # fastai's own check: scores (items, 5) against one class index per item are scored by their argmax, here the
    # last column for every item, so the ROC AUC of a constant score is 0.5 (scoring them as given was a ValueError)
    scores = torch.tensor(np.array([np.arange(0, 0.2, 0.04)] * 20))
    targ = torch.tensor([0, 0, 1, 1]).repeat(5)
    assert run(RocAucMulti(sigmoid=False), scores, targ, n_batches=4) == 0.5
    assert run(APScoreMulti(sigmoid=False), scores, targ, n_batches=4) == 0.5


@needs_sklearn
def test_brier_score_multi_and_matthews_multi_are_scikit_learns_on_the_thresholded_arrays() -> None:
    import sklearn.metrics as skm

    bools = ML_PROB >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn notes the rows of 0/1 do not sum to one
        expected = skm.brier_score_loss(ML_T, bools)
        assert run(BrierScoreMulti(), ML_LOGITS, ML_TARG) == expected
    assert BrierScoreMulti().name == "brier_score_loss" and MatthewsCorrCoefMulti().name == "matthews_corrcoef"
    with pytest.raises(ValueError, match="multilabel-indicator is not supported"):  # as in fastai
        run(MatthewsCorrCoefMulti(), ML_LOGITS, ML_TARG)


@needs_sklearn
def test_one_batch_call_takes_decoded_predictions() -> None:
    # As fastai's: calling the metric skips the argmax/activation, which `accumulate` applies.
    f1 = F1Score()
    assert f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 1])) == pytest.approx(0.5)
    assert len(f1.preds) == 1
    auc_metric = RocAucBinary()
    assert auc_metric(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 1])) == pytest.approx(0.75)
    with pytest.raises(InputError, match="same number of elements"):
        F1Score()(LOGITS2, TARG2)  # undecoded logits: 60 values for 30 targets


def test_pearson_and_spearman() -> None:
    pytest.importorskip("scipy")
    pearson, spearman = PearsonCorrCoef(), SpearmanCorrCoef()
    assert (pearson.name, spearman.name) == ("pearsonr", "spearmanr")
    p, t = REG_PRED.numpy().astype(np.float64), REG_TARG.numpy().astype(np.float64)
    assert run(pearson, REG_PRED, REG_TARG) == pytest.approx(np.corrcoef(p, t)[0, 1], rel=1e-5)  # float32 data
    assert run(spearman, REG_PRED, REG_TARG) == pytest.approx(np.corrcoef(ranks(p), ranks(t))[0, 1], rel=1e-12)
    # column predictions are flattened; AccumMetric's keywords pass through
    assert run(PearsonCorrCoef(), REG_PRED[:, None], REG_TARG) == pytest.approx(np.corrcoef(p, t)[0, 1], rel=1e-5)
    assert PearsonCorrCoef(name="r").name == "r" and SpearmanCorrCoef(flatten=False).flatten is False


def test_spearman_nan_policy_and_pearson_on_constant_input() -> None:
    pytest.importorskip("scipy")
    p, t = REG_PRED.clone(), REG_TARG.clone()
    p[0] = math.nan
    assert math.isnan(run(SpearmanCorrCoef(), p, t))  # 'propagate'
    rp, rt = ranks(p[1:].numpy()), ranks(t[1:].numpy())
    assert run(SpearmanCorrCoef(nan_policy="omit"), p, t) == pytest.approx(np.corrcoef(rp, rt)[0, 1], rel=1e-12)
    with pytest.warns(Warning, match="constant"):  # scipy's warning passes through, as in fastai
        assert math.isnan(run(PearsonCorrCoef(), torch.ones(6), REG_TARG[:6]))


@needs_sklearn
def test_scikit_learns_warnings_pass_through() -> None:
    from sklearn.exceptions import UndefinedMetricWarning

    no_positive = torch.tensor([[1.0, 0.0]] * 4)  # argmax 0 everywhere: no positive prediction
    with pytest.warns(UndefinedMetricWarning, match="Precision is ill-defined"):
        assert run(Precision(), no_positive, torch.tensor([0, 1, 1, 0]), n_batches=2) == 0.0
    assert PrecisionMulti(thresh=0.99).name == "precision_score"


def test_skm_to_fastai_settings_and_argument_order() -> None:
    seen: list[tuple[Any, Any]] = []

    def func(y_true: Any, y_pred: Any, scale: float = 1.0) -> float:
        seen.append((y_true, y_pred))
        return float((y_true == y_pred).mean()) * scale

    metric = skm_to_fastai(func, scale=2.0)  # a class metric: argmax over the last axis
    assert (metric.dim_argmax, metric.activation, metric.thresh, metric.to_np, metric.invert_args) == (
        -1, ActivationType.No, None, True, True,
    )
    assert metric.name == "func" and metric.kwargs == {"scale": 2.0}
    assert run(metric, LOGITS3, TARG3) == pytest.approx(2 * float((P3 == T3).mean()))
    y_true, y_pred = seen[-1]
    assert isinstance(y_true, np.ndarray) and np.array_equal(y_true, T3) and np.array_equal(y_pred, P3)
    thresholded = skm_to_fastai(func, thresh=0.5)  # a sigmoid, then >= thresh
    assert (thresholded.dim_argmax, thresholded.activation, thresholded.thresh) == (None, ActivationType.Sigmoid, 0.5)
    assert run(thresholded, ML_LOGITS, ML_TARG) == pytest.approx(float((ml_pred() == ML_T).mean()))
    regression = skm_to_fastai(func, is_class=False)
    assert (regression.dim_argmax, regression.activation) == (None, ActivationType.No)
    assert skm_to_fastai(func, axis=0, activation="softmax", name="f").dim_argmax == 0


def test_optim_metric_finds_the_best_value_of_an_argument() -> None:
    pytest.importorskip("scipy")
    calls: list[float] = []

    def peaked(preds: Any, targs: Any, thresh: float = 0.5) -> float:
        calls.append(thresh)
        return 1 - (thresh - 0.3) ** 2

    best = optim_metric(peaked, "thresh", (0.0, 1.0))
    assert best.__name__ == "opt_peaked"
    assert best(None, None) == pytest.approx(1.0, abs=1e-4)
    value, x = optim_metric(peaked, "thresh", (0.0, 1.0), get_x=True)(None, None)
    assert abs(x - 0.3) < 0.01 and value == pytest.approx(1 - (x - 0.3) ** 2)
    value, x = optim_metric(peaked, "thresh", (0.0, 1.0), do_neg=False, get_x=True)(None, None)  # the minimum
    assert x > 0.95 and value == pytest.approx(1 - (x - 0.3) ** 2)
    calls.clear()
    optim_metric(peaked, "thresh", (0.0, 1.0), tol=0.2)(None, None)
    coarse = len(calls)
    calls.clear()
    optim_metric(peaked, "thresh", (0.0, 1.0), tol=1e-6)(None, None)
    assert len(calls) > coarse  # `tol` is the search's tolerance on the argument
    # a metric of the whole set: accuracy_multi at its best threshold, in an AccumMetric
    metric = AccumMetric(optim_metric(accuracy_multi, "thresh", (0.05, 0.95)), flatten=False)
    assert metric.name == "opt_accuracy_multi"
    best_acc = max(float(((ML_PROB > t) == ML_T).mean()) for t in np.linspace(0.05, 0.95, 181))
    assert run(metric, ML_LOGITS, ML_TARG) <= best_acc + 1e-6


def test_roc_auc_multi_class_must_be_ovr_or_ovo() -> None:
    with pytest.raises(InputError, match=r"multi_class must be 'ovr'.*or 'ovo'.*got 'raise'.*RocAucBinary"):
        RocAuc(multi_class="raise")
    with pytest.raises(AssertionError):  # fastai's type
        RocAuc(multi_class="ovo ")


def test_bfloat16_predictions_are_activated_in_float32_for_numpy() -> None:
    # numpy has no bfloat16, so the predictions go over as float32; their softmax was taken in bfloat16 first, and
    # its probabilities did not sum to 1 closely enough for scikit-learn: RocAuc raised a ValueError.
    logits, targ = torch.randn(24, 3), torch.randint(0, 3, (24,))
    rounded = logits.bfloat16()
    for make in (RocAuc, lambda: RocAuc(multi_class="ovo"), RocAucMulti, APScoreMulti):
        t = (torch.rand(24, 3) > 0.5).long() if make in (RocAucMulti, APScoreMulti) else targ
        assert run(make(), rounded, t) == run(make(), rounded.float(), t)
    # Metrics of tensors (to_np=False) get the bfloat16 activation, as in fastai, and so do thresholded ones (fastai's
    # work there: the booleans go to numpy), which may differ from float32's at the threshold.
    m = AccumMetric(lambda p, t: p.dtype, activation=ActivationType.Softmax, dim_argmax=-1, flatten=False)
    assert run(m, rounded, targ) == torch.bfloat16
    near = torch.full((1, 1), 0.00390625, dtype=torch.bfloat16)  # sigmoid 0.5009765625 in float32, 0.5 in bfloat16
    assert not torch.sigmoid(near.float()) >= 0.5015 and torch.sigmoid(near) >= 0.5015  # (thresh rounded to 0.5)
    hits = AccumMetric(lambda p, t: p.sum().item(), activation="sigmoid", thresh=0.5015, to_np=True, flatten=False)
    assert run(hits, near, torch.ones(1, 1), n_batches=1) == 1


# Inside a Learner: the Recorder's columns and values, Python numbers as fastai's Recorder makes them.


def ml_learner() -> Learner:
    g = torch.Generator().manual_seed(5)
    x_train, x_valid = torch.randn(48, 4, generator=g), torch.randn(24, 4, generator=g)
    w = torch.randn(4, 3, generator=g)
    y_train, y_valid = (x_train @ w > 0).float(), (x_valid @ w + torch.randn(24, 3, generator=g) > 0).float()
    dls = DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, bs=16, shuffle=False, device="cpu")
    torch.manual_seed(0)
    metrics = [F1ScoreMulti(), RocAucMulti(), HammingLossMulti(), optim_metric(accuracy_multi, "thresh", (0.1, 0.9))]
    learn = Learner(dls, nn.Linear(4, 3), loss_func=BCEWithLogitsLossFlat(), metrics=metrics)
    learn.logger = noop
    return learn


def test_the_recorder_logs_one_element_numpy_values_as_python_numbers() -> None:
    # fastai's Recorder calls .item() on every metric value that has one element: scikit-learn's and scipy's
    # numpy scalars become Python numbers in recorder.values and validate(); longer arrays stay as they are.
    values: list[Any] = [np.float32(0.25), np.array([0.5]), np.array([1.0, 2.0])]
    learn = synth_learner(metrics=[ValueMetric(lambda v=v: v, f"m{i}") for i, v in enumerate(values)])
    got = learn.validate()[1:]
    assert [type(v) for v in got[:2]] == [float, float] and got[:2] == [0.25, 0.5]
    assert got[2] is values[2]


@needs_sklearn
def test_classification_metrics_in_a_learner() -> None:
    metrics = [F1Score(average="macro"), RocAuc(), CohenKappa(), BalancedAccuracy()]
    learn = synth_classif_learner(metrics=metrics)
    learn.fit(1)
    assert learn.recorder.metric_names[3:-1] == [
        "f1_score", "roc_auc_score", "cohen_kappa_score", "balanced_accuracy_score",
    ]
    row = learn.recorder.values[-1][2:]  # read now: get_preds shortens the last row, as fastai's does
    logits, targs = learn.get_preds()  # the loss, torch's CrossEntropyLoss, has no activation
    probs = torch.softmax(logits, -1)
    pred, targ, prob = logits.argmax(1).numpy(), targs.numpy(), probs.numpy().astype(np.float64)
    expected = [
        float(np.mean([fbeta(*counts(pred, targ, c)[:3]) for c in range(3)])),
        float(np.mean([auc(prob[:, c], (targ == c).astype(int)) for c in range(3)])),
        kappa(pred, targ),
        float(np.mean(per_class(recall_of, pred, targ, 3))),
    ]
    assert all(type(v) is float for v in row)  # numpy scalars as Python numbers, as fastai's Recorder
    assert row == pytest.approx(expected, rel=1e-12)
    assert learn.validate()[1:] == row


@needs_sklearn
def test_binary_and_multi_label_metrics_in_a_learner() -> None:
    learn = synth_classif_learner(n_classes=2, metrics=[APScoreBinary(), RocAucBinary(), MatthewsCorrCoef()])
    values = learn.validate()
    logits, targs = learn.get_preds()
    prob, targ = torch.softmax(logits, -1)[:, 1].numpy().astype(np.float64), targs.numpy()
    expected = [average_precision(prob, targ), auc(prob, targ), mcc(*counts(logits.argmax(1).numpy(), targ, 1))]
    assert values[1:] == pytest.approx(expected, rel=1e-12)

    learn = ml_learner()
    learn.fit(1)
    assert learn.recorder.metric_names[3:-1] == ["f1_score", "roc_auc_score", "hamming_loss", "opt_accuracy_multi"]
    row = learn.recorder.values[-1][2:]
    logits, targs = learn.get_preds(act=lambda x: x)
    prob, targ = torch.sigmoid(logits).numpy().astype(np.float64), targs.numpy().astype(int)
    pred = (prob >= 0.5).astype(int)
    assert row[0] == pytest.approx(np.mean([fbeta(*counts(pred[:, j], targ[:, j], 1)[:3]) for j in range(3)]))
    assert row[1] == pytest.approx(np.mean([auc(prob[:, j], targ[:, j]) for j in range(3)]), rel=1e-12)
    assert row[2] == pytest.approx(float((pred != targ).mean()))
    assert 0 < row[3] <= 1 and all(type(v) is float for v in row)  # opt_accuracy_multi: a batch-weighted mean


def test_correlation_metrics_in_a_learner() -> None:
    pytest.importorskip("scipy")
    learn = synth_learner(n_valid=40, metrics=[PearsonCorrCoef(), SpearmanCorrCoef()])
    with torch.no_grad():  # a poor fit, so the correlations are not 1
        learn.model.weight.copy_(torch.tensor([[0.3, -1.0]]))
    learn.fit(1, lr=0.0)
    assert learn.recorder.metric_names[3:-1] == ["pearsonr", "spearmanr"]
    row = learn.recorder.values[-1][2:]
    preds, targs = (t.numpy().ravel().astype(np.float64) for t in learn.get_preds())
    assert all(type(v) is float for v in row)
    assert row[0] == pytest.approx(np.corrcoef(preds, targs)[0, 1], rel=1e-5)
    assert row[1] == pytest.approx(np.corrcoef(ranks(preds), ranks(targs))[0, 1], rel=1e-12)


@needs_sklearn
def test_metrics_pickle_and_a_learner_with_them_exports(tmp_path: Path) -> None:
    made = [factory() for _, factory, *_ in SINGLE_LABEL + MULTI_LABEL] + [
        PearsonCorrCoef(), SpearmanCorrCoef(), BrierScoreMulti(), MatthewsCorrCoefMulti(),
    ]
    for metric in made:
        clone = pickle.loads(pickle.dumps(metric))
        assert clone.name == metric.name and clone.kwargs == metric.kwargs
    f1 = F1Score(average="macro")
    run(f1, LOGITS3, TARG3)
    assert pickle.loads(pickle.dumps(f1)).value == f1.value  # with its accumulated batches
    opt = optim_metric(accuracy_multi, "thresh", (0.1, 0.9))
    assert pickle.loads(pickle.dumps(opt)).__name__ == "opt_accuracy_multi"
    learn = synth_classif_learner(metrics=[F1Score(average="macro"), RocAuc()])
    learn.path = tmp_path
    learn.fit(1)
    loaded = load_learner(learn.export(), model=nn.Linear(4, 3))
    assert torch.equal(loaded.model.weight, learn.model.weight)


# scikit-learn and scipy stay optional.


def test_importing_learnloop_does_not_import_scikit_learn_or_scipy() -> None:
    code = (
        "import sys, learnloop, learnloop.metrics; from learnloop.metrics import F1Score, PearsonCorrCoef; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: F1Score(), r"F1Score needs scikit-learn"),
        (lambda: RocAucMulti(), r"RocAucMulti needs scikit-learn"),
        (lambda: PearsonCorrCoef(), r"PearsonCorrCoef needs scipy"),
        (lambda: SpearmanCorrCoef(), r"SpearmanCorrCoef needs scipy"),
        (lambda: optim_metric(accuracy_multi, "thresh", (0.1, 0.9)), r"optim_metric needs scipy"),
    ],
)
def test_a_missing_scikit_learn_or_scipy_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], Any], message: str
) -> None:
    for module in ("sklearn", "sklearn.metrics", "scipy", "scipy.stats", "scipy.optimize"):
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: "import sklearn" fails
    with pytest.raises(ImportError, match=message + r".*pip install 'learnloop\[metrics\]'"):
        make()
