"""Numerical and behavioural checks of learnloop.metrics on hand-computed batches."""

from __future__ import annotations

import functools
import math
import pickle
import re
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import debiased_ema, synth_learner
from learnloop import Callback, smoothing
from learnloop.metrics import (
    AccumMetric,
    ActivationType,
    AvgLoss,
    AvgMetric,
    AvgSmoothLoss,
    ExplainedVariance,
    Metric,
    R2Score,
    TorchMetric,
    ValueMetric,
    accuracy,
    accuracy_multi,
    error_rate,
    exp_rmspe,
    explained_variance,
    find_bs,
    flatten_check,
    mae,
    mk_metric,
    mse,
    msle,
    r2_score,
    rmse,
    top_k_accuracy,
)
from learnloop.reductions import reduce_metrics


def batch(pred: Any, *yb: Any, loss: Tensor | None = None, training: bool = False) -> SimpleNamespace:
    """A stand-in for the learner as a metric sees it during `accumulate`."""
    return SimpleNamespace(pred=pred, yb=yb, xb=(torch.zeros(1),), loss=loss, training=training)


def run(metric: Metric, batches: list[SimpleNamespace]) -> Any:
    """Reset, accumulate every batch and read the value, as the Recorder does."""
    metric.reset()
    for learn in batches:
        metric.accumulate(learn)
    return metric.value


# Three items, three classes: argmaxes are 1, 0, 2.
LOGITS = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.1, 0.4, 0.5]])


def test_accuracy_and_error_rate() -> None:
    targ = torch.tensor([1, 2, 2])
    assert accuracy(LOGITS, targ).item() == pytest.approx(2 / 3)
    assert error_rate(LOGITS, targ).item() == pytest.approx(1 / 3)
    # axis selects the class dimension
    assert accuracy(LOGITS.T, targ, axis=0).item() == pytest.approx(2 / 3)


def test_accuracy_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"input of shape \(3,\) and target of shape \(4,\)"):
        accuracy(LOGITS, torch.tensor([1, 2, 2, 0]))
    with pytest.raises(ValueError, match=r"same number of elements"):
        mse(torch.zeros(2, 3), torch.zeros(5))


def test_flatten_check_accepts_same_numel() -> None:
    inp, targ = flatten_check(torch.zeros(2, 3), torch.ones(6, 1))
    assert inp.shape == targ.shape == (6,)


def test_top_k_accuracy() -> None:
    # Rank of the targets: item 0 target 2 is 2nd, item 1 target 2 is 3rd, item 2 target 0 is 3rd.
    targ = torch.tensor([2, 2, 0])
    assert top_k_accuracy(LOGITS, targ, k=1).item() == pytest.approx(0.0)
    assert top_k_accuracy(LOGITS, targ, k=2).item() == pytest.approx(1 / 3)
    assert top_k_accuracy(LOGITS, targ, k=3).item() == pytest.approx(1.0)
    assert top_k_accuracy(LOGITS.T, targ, k=2, axis=0).item() == pytest.approx(1 / 3)


def test_top_k_accuracy_errors() -> None:
    with pytest.raises(ValueError, match=r"target of shape \(2,\) does not match input of shape \(3, 3\)"):
        top_k_accuracy(LOGITS, torch.tensor([0, 1]), k=2)
    with pytest.raises(ValueError, match="k=5 is larger than the 3 classes"):
        top_k_accuracy(LOGITS, torch.tensor([0, 1, 2]))


def test_accuracy_multi() -> None:
    inp = torch.tensor([[2.0, -1.0], [-3.0, 0.5]])  # sigmoid > 0.5 -> [[1, 0], [0, 1]]
    targ = torch.tensor([[1, 1], [0, 1]])
    assert accuracy_multi(inp, targ).item() == pytest.approx(3 / 4)
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7]])
    assert accuracy_multi(probs, targ, thresh=0.65, sigmoid=False).item() == pytest.approx(3 / 4)


def test_regression_functions() -> None:
    inp = torch.tensor([1.0, 2.0, 4.0])
    targ = torch.tensor([1.0, 3.0, 2.0])
    assert mse(inp, targ).item() == pytest.approx((0 + 1 + 4) / 3)
    assert mae(inp, targ).item() == pytest.approx((0 + 1 + 2) / 3)
    expected_msle = sum((math.log(1 + a) - math.log(1 + b)) ** 2 for a, b in [(1, 1), (2, 3), (4, 2)]) / 3
    assert msle(inp, targ).item() == pytest.approx(expected_msle)
    # fastai's float32 value bit for bit: log(1 + x) as written, not log1p (which differs here)
    a = torch.tensor([3.4889344533439726e-05, 4.017172977910377e-05, 2.2325752979668323e-06])
    b = torch.tensor([5.185217742109671e-05, 6.976675649639219e-05, 8.000114030437544e-05])
    as_fastai = F.mse_loss(torch.log(1 + a), torch.log(1 + b))
    assert torch.equal(msle(a, b), as_fastai) and not torch.equal(as_fastai, F.mse_loss(a.log1p(), b.log1p()))
    # mse flattens: a (3, 1) prediction against a (3,) target is fine
    assert mse(inp[:, None], targ).item() == pytest.approx(5 / 3)


def test_avg_metric_weights_uneven_batches_by_size() -> None:
    preds = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    targs = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    sizes = [4, 2, 1]
    batches = [batch(p, t) for p, t in zip(preds.split(sizes), targs.split(sizes), strict=True)]
    value = run(AvgMetric(accuracy), batches)
    assert isinstance(value, Tensor)
    assert value.item() == pytest.approx(accuracy(preds, targs).item())
    # the unweighted mean of per-batch accuracies would differ on this data
    per_batch = [accuracy(b.pred, b.yb[0]).item() for b in batches]
    assert sum(per_batch) / len(per_batch) != pytest.approx(value.item())


def test_avg_metric_running_totals_and_reset() -> None:
    m = AvgMetric(mae)
    assert m.value is None
    m.accumulate(batch(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])))  # mae 1.5 on 2 items
    m.accumulate(batch(torch.tensor([4.0]), torch.tensor([0.0])))  # mae 4 on 1 item
    assert m.count == 3
    assert isinstance(m.total, Tensor) and m.total.item() == pytest.approx(7.0)
    assert m.value is not None and m.value.item() == pytest.approx(7 / 3)
    m.reset()
    assert m.count == 0 and m.value is None


def test_avg_metric_of_python_floats_sums_them_as_python_floats_as_fastai() -> None:
    def py_mae(pred: Tensor, targ: Tensor) -> float:
        return float((pred - targ).abs().mean())

    m = AvgMetric(py_mae)
    m.accumulate(batch(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.0])))
    m.accumulate(batch(torch.tensor([0.7]), torch.tensor([0.0])))
    first, second = float(torch.tensor([0.1, 0.2]).mean()), float(torch.tensor([0.7]).mean())
    assert type(m.total) is float and m.value == (0.0 + first * 2 + second * 1) / 3  # float64 throughout
    reduce_metrics([m])  # one process: unchanged, and still a Python float
    assert type(m.total) is float and m.count == 3
    m.accumulate(batch(torch.tensor([1.0]), torch.tensor([0.0])))
    assert type(m.value) is float


def test_avg_metric_batch_size_from_nested_targets() -> None:
    calls: list[tuple[Any, ...]] = []

    def first_target_mae(pred: Tensor, targ: dict[str, Tensor], extra: Tensor) -> Tensor:
        calls.append((pred, targ, extra))
        return mae(pred, targ["y"])

    m = AvgMetric(first_target_mae)
    m.accumulate(batch(torch.tensor([1.0, 1.0, 1.0]), {"y": torch.zeros(3)}, torch.zeros(3)))
    m.accumulate(batch(torch.tensor([3.0]), {"y": torch.zeros(1)}, torch.zeros(1)))
    assert m.count == 4
    assert m.value is not None and m.value.item() == pytest.approx((3 * 1 + 1 * 3) / 4)
    assert len(calls) == 2 and len(calls[0]) == 3  # every target is passed on


def test_find_bs() -> None:
    assert find_bs((torch.zeros(5, 2),)) == 5
    assert find_bs(([{"a": torch.zeros(3)}], torch.zeros(9))) == 3
    assert find_bs(("label", torch.zeros(4))) == 4
    with pytest.raises(TypeError, match="no tensor in tuple"):
        find_bs(("a", 1))


def test_avg_metric_accepts_python_float_results() -> None:
    m = AvgMetric(lambda pred, targ: 0.5)
    m.accumulate(batch(torch.zeros(2), torch.zeros(2)))
    assert m.value == 0.5  # a Python float, as fastai's


def test_avg_metric_accumulates_half_precision_in_float32() -> None:
    m = AvgMetric(lambda pred, targ: torch.tensor(60000.0, dtype=torch.float16))
    m.accumulate(batch(torch.zeros(4), torch.zeros(4)))  # 240000 overflows float16
    assert m.value is not None and m.value.item() == pytest.approx(60000.0)


def test_avg_metric_names() -> None:
    assert AvgMetric(accuracy).name == "accuracy"
    assert AvgMetric(functools.partial(top_k_accuracy, k=3)).name == "top_k_accuracy"

    class Scorer:
        def __call__(self, pred: Tensor, targ: Tensor) -> Tensor:
            return pred.mean()

    assert AvgMetric(Scorer()).name == "scorer"


def test_avg_loss() -> None:
    m = AvgLoss()
    batches = [
        batch(torch.zeros(3), torch.zeros(3), loss=torch.tensor(2.0)),
        batch(torch.zeros(1), torch.zeros(1), loss=torch.tensor(6.0)),
    ]
    value = run(m, batches)
    assert value.item() == pytest.approx((3 * 2.0 + 1 * 6.0) / 4)
    assert m.name == "loss"
    # a per-item loss vector is averaged first
    assert run(m, [batch(torch.zeros(2), torch.zeros(2), loss=torch.tensor([1.0, 3.0]))]).item() == 2.0


@pytest.mark.parametrize("n", [1, 2, 5])
def test_avg_smooth_loss_debiasing(n: int) -> None:
    beta = 0.9
    losses = [4.0, 1.0, 3.0, 0.5, 2.0][:n]
    m = AvgSmoothLoss(beta=beta)
    value = run(m, [batch(torch.zeros(2), torch.zeros(2), loss=torch.tensor(x)) for x in losses])
    val = 0.0
    for x in losses:
        val = beta * val + (1 - beta) * x
    assert m.count == n
    assert value.item() == pytest.approx(val / (1 - beta**n))
    # written out: a weighted mean with weights beta**(n-1-i)
    weights = [beta ** (n - 1 - i) for i in range(n)]
    assert value.item() == pytest.approx(
        sum(w * x for w, x in zip(weights, losses, strict=True)) / sum(weights)
    )


def test_avg_smooth_loss_first_value_is_the_first_loss() -> None:
    m = AvgSmoothLoss()
    before = m.value  # fastai's tensor(0.) / (1 - beta**0): nan, when used as a metric on a phase without batches
    assert before.dtype == torch.float32 and before.shape == () and math.isnan(before)
    m.accumulate(batch(torch.zeros(1), torch.zeros(1), loss=torch.tensor(3.5)))
    assert m.value is not None and m.value.item() == pytest.approx(3.5)
    assert m.name == "avg_smooth_loss"  # fastai's: the class name (the Recorder names its column train_loss)


def _loss_batches(losses: list[Tensor]) -> list[SimpleNamespace]:
    return [batch(torch.zeros(1), torch.zeros(1), loss=x) for x in losses]


def fastai_smoothed(losses: list[Tensor], beta: float) -> list[float]:
    """fastai's AvgSmoothLoss after each batch, written out: per batch ``val = torch.lerp(loss.mean(), val, beta)``
    on float32 tensors (``val`` starts at ``tensor(0.)``) and ``val / (1 - beta**n)``."""
    val, out = torch.tensor(0.0), []
    for n, loss in enumerate(losses, start=1):
        val = torch.lerp(loss.mean(), val, beta)
        out.append((val / (1 - beta**n)).item())
    return out


def test_avg_smooth_loss_does_not_depend_on_when_it_is_folded() -> None:
    beta = 0.9
    losses = list((torch.rand(10, generator=torch.Generator().manual_seed(0)) * 5).unbind())
    all_at_once = AvgSmoothLoss(beta)
    for learn in _loss_batches(losses):
        all_at_once.accumulate(learn)
    assert all_at_once.folded == [] and len(all_at_once.pending) == 10  # accumulating folds nothing
    once = all_at_once.take_folded().tolist()

    every_batch, read = AvgSmoothLoss(beta), []
    for learn in _loss_batches(losses):
        every_batch.accumulate(learn)
        value = every_batch.value
        assert value is not None and value.dtype == torch.float32 and value.shape == ()
        read.append(float(value))
    per_batch = every_batch.take_folded().tolist()

    chunked, in_chunks = AvgSmoothLoss(beta), []
    batches = _loss_batches(losses)
    for start, stop in ((0, 3), (3, 4), (4, 10)):
        for learn in batches[start:stop]:
            chunked.accumulate(learn)
        in_chunks += chunked.take_folded().tolist()

    direct = AvgSmoothLoss(beta)
    direct.fold_losses(losses)

    assert once == per_batch == in_chunks == direct.take_folded().tolist() == read == fastai_smoothed(losses, beta)
    assert once == pytest.approx(debiased_ema([float(x) for x in losses], beta), rel=1e-6, abs=0)
    assert all_at_once.count == every_batch.count == chunked.count == direct.count == 10
    assert all_at_once.val == every_batch.val == chunked.val == direct.val


def test_avg_smooth_loss_val_is_the_average_after_the_last_batch_and_setting_it_keeps_the_batches_before() -> None:
    losses = [torch.tensor(4.0), torch.tensor(1.0), torch.tensor(2.5), torch.tensor(3.0)]
    m = AvgSmoothLoss(0.9)
    for learn in _loss_batches(losses[:3]):
        m.accumulate(learn)
    val = torch.tensor(0.0)  # fastai's val, updated at every batch
    for loss in losses[:3]:
        val = torch.lerp(loss, val, 0.9)
    assert m.val.item() == val.item()  # the pending losses count: fastai's `val` is after every batch
    for learn in _loss_batches(losses[:3]):
        m.accumulate(learn)
    m.val = torch.tensor(0.5)  # the three batches before come first, then the new value
    m.accumulate(_loss_batches(losses[3:])[0])
    assert m.count == 7
    assert m.value.item() == (torch.lerp(losses[3], torch.tensor(0.5), 0.9) / (1 - 0.9**7)).item()


def test_avg_smooth_loss_beta_changed_mid_epoch_applies_from_the_next_batch_as_in_fastai() -> None:
    losses = [torch.tensor(x) for x in (4.0, 1.0, 2.5, 3.0, 0.5)]
    m, expected, val = AvgSmoothLoss(0.98), [], torch.tensor(0.0)
    for n, (loss, learn) in enumerate(zip(losses, _loss_batches(losses), strict=True), start=1):
        if n == 4:  # a callback changes beta after three batches, which are still pending
            m.beta = 0.5
        m.accumulate(learn)
        val = torch.lerp(loss, val, m.beta)  # fastai: each batch with the beta of its time
        expected.append((val / (1 - m.beta**n)).item())
    assert m.take_folded().tolist() == expected
    assert m.value.item() == expected[-1]
    old = AvgSmoothLoss(0.7)  # pickled when `beta` was a plain attribute
    state = {**old.__dict__, "beta": old.__dict__.pop("_beta")}
    old.__dict__.clear()
    old.__setstate__(state)
    assert old.beta == 0.7 and pickle.loads(pickle.dumps(old)).beta == 0.7


def test_avg_smooth_loss_keeps_a_bounded_number_of_pending_losses() -> None:
    # A long epoch with nothing reading the losses: every `max_pending` batches they are folded on their own,
    # into the same values (bit for bit) as folding them all at once.
    beta, n, bound = 0.98, 2500, AvgSmoothLoss.max_pending
    assert n > 2 * bound
    losses = list((torch.rand(n, generator=torch.Generator().manual_seed(0)) * 5).unbind())
    bounded, longest = AvgSmoothLoss(beta), 0
    for learn in _loss_batches(losses):
        bounded.accumulate(learn)
        longest = max(longest, len(bounded.pending))
    assert longest < bound and len(bounded.pending) == n % bound and bounded.count == n

    all_at_once = AvgSmoothLoss(beta)
    all_at_once.fold_losses(losses)
    assert bounded.take_folded().tolist() == all_at_once.take_folded().tolist() == fastai_smoothed(losses, beta)
    assert bounded.count == all_at_once.count == n and bounded.val == all_at_once.val


def test_avg_smooth_loss_averages_per_item_losses_per_batch() -> None:
    beta = 0.9
    per_item = [torch.tensor([1.0, 3.0, 2.0, 6.0]), torch.tensor([0.5, 0.25, 1.0, 2.0])]
    m = AvgSmoothLoss(beta)
    for learn in _loss_batches(per_item):
        m.accumulate(learn)
    assert m.take_folded().tolist() == fastai_smoothed(per_item, beta)
    assert fastai_smoothed(per_item, beta) == pytest.approx(debiased_ema([3.0, 0.9375], beta), rel=1e-6)


def test_avg_smooth_loss_folds_losses_of_mixed_shapes() -> None:
    beta = 0.9
    m = AvgSmoothLoss(beta)
    losses = [torch.tensor(2.0), torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0.5])]
    for learn in _loss_batches(losses):
        m.accumulate(learn)
    assert m.take_folded().tolist() == fastai_smoothed(losses, beta)
    assert fastai_smoothed(losses, beta) == pytest.approx(debiased_ema([2.0, 3.0, 0.5], beta), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_batch_means_are_float32_means_whatever_the_dtype_and_shape(dtype: torch.dtype) -> None:
    # The numbers fastai smooths: each batch's loss as a float32 number, a loss of several numbers averaged first.
    g = torch.Generator().manual_seed(0)
    scalars = [(torch.rand((), generator=g, dtype=torch.float64) * 10 ** i).to(dtype) for i in range(-3, 4)]
    assert smoothing.batch_means(scalars) == torch.stack(scalars).float().tolist()
    mixed = [*scalars, torch.tensor([1.0, 2.0, 4.0], dtype=dtype)]
    assert smoothing.batch_means(mixed) == [*torch.stack(scalars).float().tolist(), torch.tensor(7 / 3).item()]


def test_avg_smooth_loss_set_value_carries_on_from_the_new_value() -> None:
    beta = 0.9
    m = AvgSmoothLoss(beta)
    m.set_value(5.0)  # nothing accumulated yet: nothing to set
    assert m.count == 0
    for learn in _loss_batches([torch.tensor(4.0), torch.tensor(1.0)]):
        m.accumulate(learn)
    assert m.take_folded().tolist() == fastai_smoothed([torch.tensor(4.0), torch.tensor(1.0)], beta)
    assert m.take_folded().tolist() == []  # each batch's value is handed out once
    m.set_value(10.0)
    value = m.value
    assert value is not None and float(value) == pytest.approx(10.0, rel=1e-7)
    assert torch.equal(m.val, torch.tensor(10.0) * (1 - beta**2))  # a float32 tensor, as fastai's
    before = m.val
    m.accumulate(_loss_batches([torch.tensor(2.0)])[0])
    val = torch.lerp(torch.tensor(2.0), before, beta)  # carried on from 10.0
    assert torch.equal(m.val, val)
    assert m.take_folded().tolist() == [(val / (1 - beta**3)).item()]
    assert m.take_folded().tolist() == [] and m.count == 3


@pytest.mark.parametrize("beta", [0.98, 0.9, 0.5, 0.3])
def test_avg_smooth_loss_value_is_fastais_after_every_batch_bit_for_bit(beta: float) -> None:
    # `value` divides on the host; it must be fastai's float32 `val / (1 - beta**n)` exactly, after any batch.
    g = torch.Generator().manual_seed(1)
    losses = list((torch.rand(300, generator=g) * torch.logspace(-3, 3, 300)).unbind())
    expected = fastai_smoothed(losses, beta)
    m = AvgSmoothLoss(beta)
    for loss, want in zip(_loss_batches(losses), expected, strict=True):
        m.accumulate(loss)
        value = m.value
        assert value.dtype == torch.float32 and value.shape == ()
        assert value.item() == want == m.value_as_float()
    assert m.take_folded().tolist() == expected  # folded batch by batch, handed out debiased at the end
    m.reset()
    assert math.isnan(m.value_as_float())  # before any batch: fastai's 0 / 0


def test_avg_smooth_loss_is_fastais_float32_value_bit_for_bit() -> None:
    # fastai's first value is lerp(x, 0, 0.98) / (1 - 0.98) in float32: not x itself, nor the float64 average.
    m = AvgSmoothLoss()
    m.fold_losses([torch.tensor(1.488769769668579)])
    assert m.take_folded().tolist() == [1.4887683391571045]
    assert m.val.dtype == torch.float32 and m.val.shape == ()  # fastai's `val`: a float32 tensor
    assert m.val.item() == 0.029775366187095642  # float32(x * (1 - float32(0.98))), one rounding
    # Seeded random losses: bit-identical to the per-batch torch.lerp recurrence, for either branch of lerp
    # (weight < 0.5 computes x + w * (val - x)) and whatever the numbers: the host replay, its checked variant
    # (losses a factor 2**28 apart), zeros, and the fallback on torch.lerp itself (losses of both signs).
    g = torch.Generator().manual_seed(0)
    kinds = {
        "uniform": torch.rand(1500, generator=g) * 3,
        "close to the average": 1 + torch.randn(1500, generator=g) * 1e-5,
        "decaying": 2.3 * torch.exp(-torch.arange(1500) / 150) * (1 + 0.2 * torch.rand(1500, generator=g)),
        "negative": -torch.rand(1000, generator=g) - 0.01,
        "far apart": torch.exp(torch.randn(1000, generator=g) * 8),
        "zeros": torch.where(torch.arange(1000) % 300 < 100, 0.0, torch.rand(1000, generator=g)),
        "both signs": torch.randn(300, generator=g),
        "not finite": torch.tensor([1.0, float("inf"), 2.0, float("nan"), 3.0]),
    }
    for beta in (0.98, 0.9, 0.999, 0.5, 0.3):
        for kind, values in kinds.items():
            losses = list(values.unbind())
            folded = AvgSmoothLoss(beta)
            for i, learn in enumerate(_loss_batches(losses)):
                folded.accumulate(learn)
                if i % 700 == 0:
                    folded.fold()
            got, expected = folded.take_folded(), torch.tensor(fastai_smoothed(losses, beta))
            assert torch.allclose(got, expected, rtol=0, atol=0, equal_nan=True), (beta, kind)


@pytest.mark.parametrize("beta", [0.625, 0.375])  # lerp's two branches: 1 - w and w are 3/8
def test_avg_smooth_loss_rounds_a_fused_multiply_add_once(beta: float) -> None:
    # fastai's torch.lerp computes val - (val - x) * (1 - w), or x + w * (val - x), rounded once to float32 where
    # the kernel fuses the multiply-add. Summed in a double and then rounded to float32, the result is rounded
    # twice, which differs when the double lands exactly halfway between two float32 numbers: here the product
    # is such a point (3 * an odd 24-bit number) and the other term is too small to move the double off it.
    fuses = smoothing._lerp_fuses(torch.device("cpu"))
    differs = 0
    for odd in range(5592407, 11184810, 2 * 18_001):  # 3 * odd has 25 bits
        big, tiny = float(odd * 2**-20), odd * 2**-80
        val, x = (big, tiny) if beta < 0.5 else (tiny, big)
        m = AvgSmoothLoss(beta)
        m.count, m.val = 5, torch.tensor(val)
        m.fold_losses([torch.tensor(x)])
        expected = torch.lerp(torch.tensor(x), torch.tensor(val), beta).item()
        assert m.val.item() == expected
        twice = float(torch.tensor(tiny + 0.375 * big, dtype=torch.float64).float())
        differs += twice != expected
    assert differs > 30 or not fuses  # the cases are the double-rounding ones


@pytest.mark.parametrize("beta", [0.98, 0.3])
def test_avg_smooth_loss_replays_either_kind_of_lerp_kernel(beta: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.lerp rounds its multiply-add once where its kernel was compiled with fused multiply-adds (AVX2 CPUs,
    # CUDA) and twice elsewhere: which one is probed on the device. Unfused, each step is float32 ops one at a
    # time, as separate torch ops compute them.
    def unfused(losses: list[Tensor]) -> list[float]:
        w, val, out = torch.tensor(beta, dtype=torch.float32), torch.tensor(0.0), []
        for n, x in enumerate(losses, start=1):
            val = x + w * (val - x) if beta < 0.5 else val - (val - x) * (1 - w)
            out.append((val / (1 - beta**n)).item())
        return out

    losses = list((torch.rand(3000, generator=torch.Generator().manual_seed(1)) * 3).unbind())
    here = fastai_smoothed(losses, beta)  # whichever kernel this machine has
    fuses = smoothing._lerp_fuses(torch.device("cpu"))
    assert (unfused(losses) == here) != fuses
    for fused in (True, False):
        monkeypatch.setitem(smoothing._lerp_fused, "cpu", fused)
        m = AvgSmoothLoss(beta)
        m.fold_losses(losses)
        if fused == fuses:
            assert m.take_folded().tolist() == here
        if not fused:
            assert m.take_folded().tolist() == unfused(losses)
    # Where the probe matches neither formula, the losses are replayed with torch.lerp itself.
    monkeypatch.setitem(smoothing._lerp_fused, "cpu", None)
    m = AvgSmoothLoss(beta)
    m.fold_losses(losses)
    assert m.take_folded().tolist() == fastai_smoothed(losses, beta)


def test_lerp_probes_tell_the_two_kernels_apart() -> None:
    for beta, pairs in smoothing._LERP_PROBES.items():
        w = smoothing.to_float32(beta)
        for x, val in pairs:
            x, val = smoothing.to_float32(x), smoothing.to_float32(val)
            assert smoothing._replay_checked([x], val, w, True) != smoothing._replay_checked([x], val, w, False)
    assert smoothing._lerp_fuses(torch.device("cpu")) in (True, False)


@pytest.mark.parametrize(("beta", "exact_from"), [(0.98, 858), (0.9, 165), (0.999, 17321), (0.5, 25), (0.0, 1)])
def test_debiasing_divisors_become_one_where_float32_rounds_them_to_one(beta: float, exact_from: int) -> None:
    # torch rounds the Python number 1 - beta**n to float32 when fastai divides its float32 average by it: below
    # 1.0 up to `exact_from` - 1, exactly 1.0 from `exact_from` on (beta**n <= 2**-25), where the table stops.
    def divisor(n: int) -> float:
        return torch.tensor(1 - beta**n, dtype=torch.float32).item()

    assert exact_from == 1 or divisor(exact_from - 1) < 1.0
    assert all(divisor(n) == 1.0 for n in range(exact_from, exact_from + 3000))
    assert smoothing.Debiaser(beta).exact_from == exact_from
    assert smoothing.Debiaser(1.0).exact_from is None and smoothing.Debiaser(-0.5).exact_from is None


@pytest.mark.parametrize("beta", [0.98, 0.9, 0.5])
def test_avg_smooth_loss_past_a_million_batches_keeps_a_bounded_table_of_divisors(beta: float) -> None:
    start = torch.tensor(0.75)
    m = AvgSmoothLoss(beta)
    m.count, m.val = 1_000_000, start  # as after a million batches
    losses = [torch.tensor(x) for x in (1.0, 0.5, 2.0, 1.25)]
    m.fold_losses(losses[:1])
    m.fold_losses(losses[1:])
    val, expected = start, []
    for n, x in enumerate(losses, start=1_000_001):
        val = torch.lerp(x, val, beta)
        expected.append((val / (1 - beta**n)).item())  # fastai's, whose divisor is 1.0 in float32 by now
    assert m.take_folded().tolist() == expected
    assert m.value.item() == expected[-1]
    assert 0 < len(m._debiaser._divisors) < 1024  # the divisors below 1.0 (857 for 0.98), not 2**20 of them


@pytest.mark.parametrize("chunk", [1, 7, 100, 5000])
def test_avg_smooth_loss_is_fastais_across_the_end_of_the_divisor_table(chunk: int) -> None:
    # Folds that end before, straddle or start after the batch from which 1 - 0.9**n rounds to 1.0 (165).
    beta = 0.9
    losses = list((torch.rand(400, generator=torch.Generator().manual_seed(2)) * 3).unbind())
    m, got = AvgSmoothLoss(beta), []
    for start in range(0, len(losses), chunk):
        m.fold_losses(losses[start : start + chunk])
        got += m.take_folded().tolist()
    assert got == fastai_smoothed(losses, beta)


def test_value_metric() -> None:
    def best_so_far() -> float:
        return 0.25

    assert ValueMetric(best_so_far).value == 0.25
    assert ValueMetric(best_so_far).name == "best_so_far"
    assert ValueMetric(lambda: 1.0, "custom").name == "custom"


def test_rmse_is_over_the_whole_set_not_a_mean_of_batches() -> None:
    preds = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])
    targs = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    batches = [batch(preds[:4], targs[:4]), batch(preds[4:], targs[4:])]
    try:  # the module-level rmse: leave nothing stored in it for other tests, whatever fails
        value = run(rmse, batches)
        whole_set = math.sqrt((4 * 1.0 + 100.0) / 5)
        assert value.item() == pytest.approx(whole_set)
        per_batch = [1.0, 10.0]
        assert whole_set != pytest.approx(sum(per_batch) / 2)
        assert whole_set != pytest.approx((4 * 1.0 + 1 * 10.0) / 5)  # nor a batch-size-weighted mean
        assert rmse.name == "_rmse"
        # usable as a plain function too: as fastai's, the call replaces the accumulated state with its batch
        assert rmse(preds[:4], targs[:4]).item() == pytest.approx(1.0)
        assert len(rmse.preds) == 1 and torch.equal(rmse.preds[0], preds[:4]) and rmse.value.item() == 1.0
    finally:
        rmse.reset()


class CallsRmse(Callback):
    """Calls the module-level ``rmse`` as a function on every validation batch, as a user's callback may."""

    def after_batch(self) -> None:
        if not self.learn.training:
            rmse(self.learn.pred, self.learn.yb[0])


@pytest.mark.parametrize("order", [0, 60])  # before or after the Recorder accumulates the batch
@pytest.mark.parametrize("metric", [rmse, exp_rmspe])
def test_calling_a_metric_as_a_function_leaves_the_learners_copy_alone(metric: AccumMetric, order: int) -> None:
    learn = synth_learner(n_valid=48, bs=16, metrics=[metric, rmse])  # 3 validation batches
    alone = learn.validate()
    caller = CallsRmse()
    caller.order = order
    try:
        with_caller = learn.validate(cbs=caller)
        assert with_caller == alone  # the learner's rmse still spans the 3 batches, not what the callback left
        assert len(rmse.preds) == 1  # the callback's last call stored its batch in the module-level rmse
    finally:
        rmse.reset()
    assert all(m is not metric for m in learn.metrics)
    preds, targs = learn.get_preds()
    assert alone[2] == pytest.approx(torch.sqrt(F.mse_loss(preds, targs)).item(), rel=1e-6)


def test_exp_rmspe() -> None:
    preds, targs = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 1.0, 1.5])
    value = run(exp_rmspe, [batch(preds[:2], targs[:2]), batch(preds[2:], targs[2:])])
    p, t = preds.exp(), targs.exp()
    assert value.item() == pytest.approx(torch.sqrt((((t - p) / t) ** 2).mean()).item())


def test_r2_score_and_explained_variance() -> None:
    preds = torch.tensor([2.5, 0.0, 2.0, 8.0, 4.0])
    targs = torch.tensor([3.0, -0.5, 2.0, 7.0, 5.0])
    batches = [batch(preds[:3], targs[:3]), batch(preds[3:], targs[3:])]
    mean = targs.mean()
    expected_r2 = 1 - ((targs - preds) ** 2).sum() / ((targs - mean) ** 2).sum()
    assert run(r2_score, batches) == pytest.approx(expected_r2.item())
    assert r2_score.name == "r2_score"
    diff = targs - preds
    expected_ev = 1 - ((diff - diff.mean()) ** 2).mean() / ((targs - mean) ** 2).mean()
    assert run(explained_variance, batches) == pytest.approx(expected_ev.item())
    assert explained_variance.name == "explained_variance_score"
    # the factories give independent instances
    assert R2Score() is not R2Score() and ExplainedVariance().name == "explained_variance_score"


def test_r2_score_and_explained_variance_are_scikit_learns_numbers_bit_for_bit() -> None:
    # fastai's R2Score / ExplainedVariance are scikit-learn's functions: a Python float, from float32 sums done
    # in numpy's order. The expected numbers are what scikit-learn 1.9.1 returns for these arrays.
    g = np.random.default_rng(1)
    targ = g.normal(size=37).astype(np.float32) * 3
    pred = (targ + g.normal(size=37).astype(np.float32)).astype(np.float32)
    weight = g.uniform(0, 2, 37)
    p, t = torch.from_numpy(pred), torch.from_numpy(targ)
    assert R2Score()(p, t) == 0.9238443374633789 and type(R2Score()(p, t)) is float
    assert ExplainedVariance()(p, t) == 0.9272197484970093
    assert R2Score(sample_weight=weight)(p, t) == 0.950952946279075  # float64 weights: float64 sums
    assert ExplainedVariance(sample_weight=weight)(p, t) == 0.9513069816183105
    # A list of weights has no dtype: scikit-learn's sums stay float32, as the predictions'.
    assert R2Score(sample_weight=list(weight))(p, t) == 0.95095294713974
    assert ExplainedVariance(sample_weight=list(weight))(p, t) == 0.9513069987297058
    assert math.isnan(r2_score(p[:1], t[:1]))  # undefined for one sample, as in scikit-learn


def test_r2_score_takes_bfloat16_and_checks_the_weights() -> None:
    pred, targ = torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.5, 3.0])
    assert R2Score()(pred.bfloat16(), targ.bfloat16()) == R2Score()(pred, targ)  # numpy has no bfloat16
    with pytest.raises(ValueError, match="sample_weight has 2 weights for 3 predictions"):
        R2Score(sample_weight=[1.0, 2.0])(pred, targ)
    # NaN in the predictions (a diverged model) gives nan, as rmse does; scikit-learn's raise a ValueError there.
    nan_pred = torch.tensor([1.0, math.nan, 3.5])
    assert math.isnan(R2Score()(nan_pred, targ)) and math.isnan(ExplainedVariance()(nan_pred, targ))


def test_r2_score_constant_targets_follows_scikit_learn() -> None:
    const = torch.full((4,), 2.0)
    assert r2_score(const, const) == 1.0
    assert r2_score(const + 1, const) == 0.0
    assert explained_variance(const + 1, const) == 1.0  # a constant error explains all the (zero) variance


def test_accum_metric_dim_argmax_and_reset() -> None:
    def frac_equal(preds: Tensor, targs: Tensor) -> Tensor:
        return (preds == targs).float().mean()

    m = AccumMetric(frac_equal, dim_argmax=-1)
    assert m.value is None
    value = run(m, [batch(LOGITS[:2], torch.tensor([1, 2])), batch(LOGITS[2:], torch.tensor([2]))])
    assert value.item() == pytest.approx(2 / 3)
    assert torch.equal(torch.cat(m.preds), torch.tensor([1, 0, 2]))
    assert m.name == "frac_equal"
    m.reset()
    assert m.preds == [] and m.targs == [] and m.value is None


def test_accum_metric_activations_and_thresh() -> None:
    seen: dict[str, Tensor] = {}

    def capture(preds: Tensor, targs: Tensor) -> Tensor:
        seen["preds"] = preds
        return preds.float().sum()

    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    run(AccumMetric(capture, activation="softmax", dim_argmax=-1), [batch(logits, torch.zeros(2, 2))])
    assert torch.allclose(seen["preds"], logits.softmax(-1).flatten())
    run(AccumMetric(capture, activation=ActivationType.Sigmoid, thresh=0.5), [batch(logits, torch.zeros(4))])
    assert torch.equal(seen["preds"], torch.tensor([True, True, True, False]))  # sigmoid(0) >= 0.5
    run(AccumMetric(capture, activation=ActivationType.BinarySoftmax), [batch(logits, torch.zeros(2))])
    assert torch.allclose(seen["preds"], logits.softmax(-1)[:, 1])
    # fastai tests dim_argmax and thresh for truth: 0 means no argmax, 0.0 no threshold (the softmax still runs
    # over dim 0)
    run(AccumMetric(capture, dim_argmax=0), [batch(logits, torch.zeros(4))])
    assert torch.equal(seen["preds"], logits.flatten())
    run(AccumMetric(capture, dim_argmax=1), [batch(logits, torch.zeros(2))])
    assert torch.equal(seen["preds"], torch.tensor([1, 0]))
    run(AccumMetric(capture, activation="sigmoid", thresh=0.0), [batch(logits, torch.zeros(4))])
    assert torch.equal(seen["preds"], logits.sigmoid().flatten())
    run(AccumMetric(capture, activation="softmax", dim_argmax=0), [batch(logits, torch.zeros(4))])
    assert torch.equal(seen["preds"], logits.softmax(0).flatten())
    with pytest.raises(ValueError, match=r"activation='tanh' is not an activation; use one of 'no', 'sigmoid'"):
        AccumMetric(capture, activation="tanh")
    # None is no activation, as in fastai's AccumMetric (and skm_to_fastai): the argmax over dim_argmax
    metric = AccumMetric(capture, activation=None, dim_argmax=-1)
    assert metric.activation == ActivationType.No
    run(metric, [batch(logits, torch.zeros(2))])
    assert torch.equal(seen["preds"], torch.tensor([1, 0]))


@pytest.mark.parametrize("ndim", [2, 4, 5])
def test_accum_metric_softmax_without_dim_uses_dim_1_like_fastai(ndim: int) -> None:
    # fastai passes dim=None to F.softmax: torch's implicit choice is dim 1 for 2-D and 4-D or larger inputs
    stored: list[Tensor] = []
    logits = torch.randn(2, 3, *(2,) * (ndim - 2), generator=torch.Generator().manual_seed(0))
    for activation in ("softmax", "binarysoftmax"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: dim 1 is the class dimension here
            metric = AccumMetric(lambda p, t: stored.append(p), activation=activation, flatten=False)
            run(metric, [batch(logits, logits)])
    assert torch.equal(stored[0], logits.softmax(1))
    assert torch.equal(stored[1], logits.softmax(1)[:, -1])


@pytest.mark.parametrize("ndim", [1, 3])
def test_accum_metric_softmax_without_dim_uses_dim_0_with_a_warning_like_fastai(ndim: int) -> None:
    # torch's implicit choice (fastai's) is dim 0 for 1-D and 3-D inputs: usually the batch, hence the warning
    stored: list[Tensor] = []
    logits = torch.randn(4, *(3,) * (ndim - 1), generator=torch.Generator().manual_seed(0))
    metric = AccumMetric(lambda p, t: stored.append(p), activation="softmax", flatten=False)
    with pytest.warns(UserWarning, match=f"softmax over dim 0 of {ndim}-D predictions.*pass dim_argmax"):
        run(metric, [batch(logits, logits)])
    assert torch.equal(stored[0], logits.softmax(0))


def test_accum_metric_subclass_passing_learn_to_accum_values() -> None:
    # fastai's accum_values(preds, targs, learn=None): a subclass's accumulate written for fastai passes the learner.
    class ArgmaxAcc(AccumMetric):
        def accumulate(self, learn: Any) -> None:
            self.accum_values(learn.pred.argmax(1), learn.yb[0], learn)

    m = ArgmaxAcc(lambda p, t: (p == t).float().mean(), name="acc")
    value = run(m, [batch(LOGITS[:2], torch.tensor([1, 2])), batch(LOGITS[2:], torch.tensor([2]))])
    assert value.item() == pytest.approx(2 / 3)


def test_accum_metric_to_np_invert_arg_flatten_and_kwargs() -> None:
    args: list[Any] = []

    def record(a: Any, b: Any, scale: float = 1.0) -> float:
        args.append((a, b))
        return scale

    m = AccumMetric(record, to_np=True, invert_arg=True, flatten=False, name="rec", scale=2.0)
    value = run(m, [batch(torch.ones(2, 3), torch.zeros(2))])
    assert value == 2.0 and m.name == "rec"
    targs, preds = args[-1]
    assert type(preds).__name__ == "ndarray" and preds.shape == (2, 3) and targs.shape == (2,)
    assert m.invert_args is True  # fastai's attribute name (its argument is `invert_arg`)
    m.invert_args = False
    assert m.value == 2.0
    preds, targs = args[-1]
    assert preds.shape == (2, 3)
    m.name = "renamed"  # settable, as fastai's
    assert m.name == "renamed"
    assert AccumMetric(record, name="").name == ""  # only None means "the function's name"
    with pytest.raises(ValueError, match=r"input of shape \(2, 3\) and target of shape \(2,\)"):
        AccumMetric(record).accumulate(batch(torch.ones(2, 3), torch.zeros(2)))


class FakeTorchMetric:
    """Stateful metric with the torchmetrics interface: update(preds, target), compute(), reset()."""

    def __init__(self) -> None:
        self.correct = 0
        self.seen = 0
        self.devices: list[torch.device] = []

    def to(self, device: torch.device) -> FakeTorchMetric:
        self.devices.append(device)
        return self

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.correct += int((preds.argmax(-1) == target).sum())
        self.seen += target.numel()

    def compute(self) -> Tensor:
        return torch.tensor(self.correct / self.seen)

    def reset(self) -> None:
        self.correct = self.seen = 0


def test_mk_metric_wraps_torchmetrics_style_objects() -> None:
    fake = FakeTorchMetric()
    m = mk_metric(fake)
    assert isinstance(m, TorchMetric) and m.metric is fake
    assert m.name == "fake_torch_metric"
    value = run(m, [batch(LOGITS[:2], torch.tensor([1, 2])), batch(LOGITS[2:], torch.tensor([2]))])
    assert value.item() == pytest.approx(2 / 3)
    assert fake.devices == [torch.device("cpu")]  # moved once, on first use
    m.reset()
    assert fake.seen == 0
    assert TorchMetric(FakeTorchMetric(), name="acc").name == "acc"
    assert isinstance(mk_metric(FakeTorchMetric), TorchMetric)  # a class is instantiated


def test_torch_metric_without_batches_is_none() -> None:
    # An empty validation set: None, as every other metric gives, not compute() on no data (torchmetrics' 0 with
    # a warning; FakeTorchMetric's ZeroDivisionError stopped the fit).
    fake = FakeTorchMetric()
    m = TorchMetric(fake)
    assert run(m, []) is None
    assert run(m, [batch(LOGITS[:2], torch.tensor([1, 2]))]).item() == pytest.approx(1 / 2)
    m.reset()
    assert m.value is None
    learn = synth_learner(n_valid=0, metrics=[FakeTorchMetric()])
    learn.fit(1)
    assert learn.recorder.values[-1][1:] == [None, None]


def test_mk_metric_callable_and_metric() -> None:
    m = mk_metric(accuracy)
    assert isinstance(m, AvgMetric) and m.name == "accuracy"
    own = mk_metric(rmse)  # a copy with nothing stored: rmse is also called as a function
    assert isinstance(own, AccumMetric) and own is not rmse and own.func is rmse.func and own.name == "_rmse"
    assert own.preds == [] and own.preds is not rmse.preds and own.kwargs is not rmse.kwargs
    loss = AvgLoss()
    assert mk_metric(loss) is loss
    assert isinstance(mk_metric(AvgLoss), AvgLoss)


def test_mk_metric_instantiates_any_class_as_fastai_does() -> None:
    class MaxError:  # a callable class: fastai's mk_metric instantiates it and averages what its instances return
        def __call__(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
            return (pred - targ).abs().max()

    m = mk_metric(MaxError)
    assert isinstance(m, AvgMetric) and isinstance(m.func, MaxError) and m.name == "max_error"
    l1 = mk_metric(torch.nn.L1Loss)
    assert isinstance(l1, AvgMetric) and isinstance(l1.func, torch.nn.L1Loss)


@pytest.mark.parametrize("bad", [3, "accuracy", None, int])
def test_mk_metric_rejects_other_objects(bad: Any) -> None:
    with pytest.raises(TypeError, match="expected a learnloop Metric, an object with update/compute/reset"):
        mk_metric(bad)


def test_metric_base_name_and_value() -> None:
    class MyScoreMetric(Metric):
        pass

    class R2Thing(Metric):
        pass

    assert MyScoreMetric().name == "my_score"
    assert R2Thing().name == "r2_thing"
    assert Metric().name == "metric"
    with pytest.raises(NotImplementedError, match="MyScoreMetric must define a `value` property"):
        _ = MyScoreMetric().value


@pytest.mark.parametrize(
    ("cls_name", "name"),
    [  # fastai 2.8's names (fastcore's camel2snake)
        ("My_ScoreMetric", "my_score"),
        ("_PrivateMetric", "_private"),
        ("Top_KAcc", "top_k_acc"),
        ("Acc__TwoMetric", "acc__two"),
        ("MSELossMetric", "mse_loss"),
        ("IoU50Score", "io_u50_score"),
        ("ABCdef", "ab_cdef"),
        ("F1ScoreMulti", "f1_score_multi"),
    ],
)
def test_metric_names_from_class_names_are_fastais(cls_name: str, name: str) -> None:
    cls = type(cls_name, (Metric,), {})
    assert cls().name == name


def _same(preds: Tensor, targs: Tensor) -> Tensor:
    return (preds == targs).float().mean()


@pytest.mark.parametrize(
    "make_metric",
    [
        lambda: AvgMetric(accuracy),
        lambda: AvgMetric(functools.partial(top_k_accuracy, k=2)),
        AvgLoss,
        AvgSmoothLoss,
        lambda: AccumMetric(_same, dim_argmax=-1),
        R2Score,
    ],
)
def test_accumulate_never_reads_tensor_values(make_metric: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # On an accelerator each of these reads waits for the device; accumulating must use none of them.
    # A partial check (boolean-mask indexing also syncs and is not caught); the meta device would be
    # stricter, but its first use costs about a second.
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("metric read a tensor value on the host while accumulating")

    m = make_metric()
    m.reset()
    batches = []
    for bs in (4, 3):
        pred, targ = torch.randn(bs, 3), torch.randint(0, 3, (bs,))
        if isinstance(m, AccumMetric) and m.dim_argmax is None:
            pred, targ = torch.randn(bs), torch.randn(bs)
        batches.append(batch(pred, targ, loss=torch.rand(())))
    # A whole-set metric moves each batch to the CPU, as fastai's does (see the test below): that copy may wait.
    reads = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
    with monkeypatch.context() as patch:
        for name in reads if isinstance(m, AccumMetric) else (*reads, "cpu"):
            patch.setattr(torch.Tensor, name, forbidden)
        for learn in batches:
            m.accumulate(learn)
    value = m.value  # reading may wait on the device (AvgSmoothLoss folds its losses on the host)
    # A tensor, but a Python float for scikit-learn's metrics (R2Score), as in fastai.
    if isinstance(m, AccumMetric) and m.to_np:
        assert isinstance(value, float)
    else:
        assert isinstance(value, Tensor) and value.shape == ()


class _CallLog(Tensor):
    """A tensor that records the torch functions and methods called on it."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        cls.calls.append(getattr(func, "__name__", ""))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("by_call", [False, True])
def test_accum_metric_stores_batches_on_the_cpu_like_fastai(by_call: bool) -> None:
    # fastai's accum_values detaches each batch to the CPU, so the accelerator's memory does not grow with the
    # validation set; on a CPU-only machine the copy is a no-op, so check that it is asked for.
    pred = torch.randn(4, 3).as_subclass(_CallLog)
    targ = torch.tensor([0, 1, 2, 0]).as_subclass(_CallLog)
    m = AccumMetric(_same, dim_argmax=-1)
    m.reset()
    _CallLog.calls.clear()
    if by_call:
        m(pred.argmax(-1), targ)
    else:
        m.accumulate(batch(pred, targ))
    assert _CallLog.calls.count("cpu") == 2  # the predictions and the targets
    assert all(t.device.type == "cpu" for t in m.preds + m.targs)


def test_a_users_own_accum_metric_is_the_learners_as_in_fastai() -> None:
    mine = AccumMetric(_rmse_like)
    assert mk_metric(mine) is mine and mk_metric(rmse) is not rmse


def _rmse_like(inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    return ((inp - targ) ** 2).mean().sqrt()


# `pickle.dumps(rmse, protocol=2)` as written when the metrics were one module, learnloop/metrics.py: every class and
# function it names is a `learnloop.metrics.X`, private ones included (the `_rmse` it wraps).
ONE_MODULE_RMSE_PICKLE = (
    b"\x80\x02clearnloop.metrics\nAccumMetric\nq\x00)\x81q\x01}q\x02(X\x04\x00\x00\x00funcq\x03clearnloop."
    b"metrics\n_rmse\nq\x04X\n\x00\x00\x00dim_argmaxq\x05NX\n\x00\x00\x00activationq\x06clearnloop.metrics"
    b"\nActivationType\nq\x07X\x02\x00\x00\x00noq\x08\x85q\tRq\nX\x06\x00\x00\x00threshq\x0bNX\x05\x00\x00"
    b"\x00to_npq\x0c\x89X\x0b\x00\x00\x00invert_argsq\r\x89X\x07\x00\x00\x00flattenq\x0e\x88X\x06\x00\x00"
    b"\x00kwargsq\x0f}q\x10X\x05\x00\x00\x00_nameq\x11X\x05\x00\x00\x00_rmseq\x12X\x05\x00\x00\x00predsq"
    b"\x13]q\x14X\x05\x00\x00\x00targsq\x15]q\x16ub."
)


def test_metrics_pickled_by_the_one_module_layout_still_load() -> None:
    old = pickle.loads(ONE_MODULE_RMSE_PICKLE)
    assert type(old) is AccumMetric and old.func is rmse.func and old.activation is ActivationType.No
    pred, targ = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    assert torch.equal(old(pred, targ), torch.sqrt(F.mse_loss(pred, targ)))
    # The others as that layout named them: their protocol-2 pickles with each `learnloop.metrics.<module>`
    # global spelt `learnloop.metrics`.
    smooth = AvgSmoothLoss(beta=0.9)
    for loss in (4.0, 1.0):
        smooth.accumulate(batch(None, loss=torch.tensor(loss)))
    metrics = [mk_metric(m) for m in (exp_rmspe, r2_score, explained_variance, R2Score(sample_weight=[1.0, 2.0, 1.0]))]
    for m in metrics:
        m.accum_values(pred, targ)
    for m in [*metrics, smooth, AvgMetric(accuracy), AvgLoss(), ValueMetric(functools.partial(float, 2.5))]:
        one_module = re.sub(rb"clearnloop\.metrics\.\w+\n", b"clearnloop.metrics\n", pickle.dumps(m, protocol=2))
        assert b"learnloop.metrics." not in one_module
        loaded = pickle.loads(one_module)
        assert type(loaded) is type(m) and loaded.name == m.name
        if m.value is None:
            assert loaded.value is None
        else:
            assert torch.equal(torch.as_tensor(loaded.value), torch.as_tensor(m.value))
