"""Tests for learnloop.datasets: the bundled digits and the synthetic generators."""

from __future__ import annotations

import io
import math
from collections import Counter
from importlib.resources import files

import numpy as np
import pytest
import torch
from torch import nn

from learnloop.datasets import (
    DIGITS_CLASSES,
    DIGITS_SIZE,
    digits,
    synthetic_classification,
    synthetic_regression,
)


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    raw = files("learnloop").joinpath("data/digits.npz").read_bytes()
    with np.load(io.BytesIO(raw)) as npz:
        return npz["images"], npz["labels"]


def _rows(ds: torch.utils.data.TensorDataset) -> Counter[tuple[int, ...]]:
    """Each sample as a hashable row of the original 0..16 pixel counts followed by its label."""
    x, y = ds.tensors
    pixels = (x * 16).round().to(torch.int64).reshape(len(x), -1)
    return Counter(tuple(row) for row in torch.cat([pixels, y[:, None]], dim=1).tolist())


def test_npz_file_is_small_and_well_formed() -> None:
    res = files("learnloop").joinpath("data/digits.npz")
    assert len(res.read_bytes()) < 1_000_000
    images, labels = _raw_digits()
    assert images.dtype == np.uint8 and images.shape == (DIGITS_SIZE, 8, 8)
    assert labels.dtype == np.uint8 and labels.shape == (DIGITS_SIZE,)
    assert images.max() == 16 and images.min() == 0


def test_digits_shapes_dtypes_and_range() -> None:
    train, valid = digits()
    assert len(train) + len(valid) == DIGITS_SIZE == 1797
    assert len(valid) == round(0.2 * 1797)
    for ds in (train, valid):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(y.unique().tolist()) == set(range(DIGITS_CLASSES))
    xb, yb = train[0]
    assert xb.shape == (1, 8, 8) and yb.ndim == 0


def test_digits_class_counts() -> None:
    train, valid = digits()
    labels = torch.cat([train.tensors[1], valid.tensors[1]])
    counts = torch.bincount(labels, minlength=DIGITS_CLASSES)
    assert counts.sum() == 1797 and counts.min() >= 170 and counts.max() <= 190


def test_digits_split_is_fixed() -> None:
    (t1, v1), (t2, v2) = digits(), digits()
    for a, b in ((t1, t2), (v1, v2)):
        assert all(torch.equal(p, q) for p, q in zip(a.tensors, b.tensors, strict=True))
    _, v3 = digits(seed=1)
    assert not torch.equal(v1.tensors[1], v3.tensors[1])


def test_digits_split_is_disjoint_and_complete() -> None:
    train, valid = digits(valid_pct=0.1, seed=3)
    assert len(valid) == round(0.1 * 1797)
    images, labels = _raw_digits()
    raw = Counter((*img.reshape(-1).tolist(), int(lab)) for img, lab in zip(images, labels, strict=True))
    assert _rows(train) + _rows(valid) == raw


def test_digits_values_match_raw_scaling() -> None:
    images, _ = _raw_digits()
    train, valid = digits()
    total = train.tensors[0].sum() + valid.tensors[0].sum()
    assert total.item() == pytest.approx(images.astype(np.float64).sum() / 16, rel=1e-6)


def test_classification_shapes_and_determinism() -> None:
    train, valid = synthetic_classification(n=200, n_features=5, n_classes=4, seed=7)
    assert len(train) == 150 and len(valid) == 50
    x, y = train.tensors
    assert x.dtype == torch.float32 and x.shape == (150, 5)
    assert y.dtype == torch.int64 and y.shape == (150,)
    assert 0 <= y.min() and y.max() < 4
    again, _ = synthetic_classification(n=200, n_features=5, n_classes=4, seed=7)
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    other, _ = synthetic_classification(n=200, n_features=5, n_classes=4, seed=8)
    assert not torch.equal(other.tensors[0], x)


def test_regression_shapes_and_determinism() -> None:
    train, valid = synthetic_regression(n=100, n_features=3, seed=2, valid_pct=0.2)
    assert len(train) == 80 and len(valid) == 20
    x, y = train.tensors
    assert x.dtype == torch.float32 and x.shape == (80, 3)
    assert y.dtype == torch.float32 and y.shape == (80, 1)
    again, _ = synthetic_regression(n=100, n_features=3, seed=2, valid_pct=0.2)
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    other, _ = synthetic_regression(n=100, n_features=3, seed=3, valid_pct=0.2)
    assert not torch.equal(other.tensors[1], y)


def test_generators_leave_global_rng_alone() -> None:
    state = torch.get_rng_state()
    digits()
    synthetic_classification()
    synthetic_regression()
    assert torch.equal(torch.get_rng_state(), state)


def test_classification_is_learnable() -> None:
    train, valid = synthetic_classification(n=512, n_features=8, n_classes=3, seed=0)
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = train.tensors
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(valid.tensors[0]).argmax(1) == valid.tensors[1]).float().mean().item()
    assert acc > 0.9


def test_regression_is_learnable() -> None:
    train, valid = synthetic_regression(n=512, n_features=8, noise=0.1, seed=0)

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.ones(len(x), 1)], dim=1)

    coef = torch.linalg.lstsq(design(train.tensors[0]), train.tensors[1]).solution
    pred = design(valid.tensors[0]) @ coef
    y = valid.tensors[1]
    rmse = (pred - y).pow(2).mean().sqrt().item()
    r2 = 1 - (pred - y).pow(2).sum() / (y - y.mean()).pow(2).sum()
    assert rmse < 0.15 and r2.item() > 0.99


def test_digits_are_learnable() -> None:
    train, valid = digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, DIGITS_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = train.tensors
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(valid.tensors[0]).argmax(1) == valid.tensors[1]).float().mean().item()
    assert acc > 0.9


@pytest.mark.parametrize("valid_pct", [0.0, 1.0, -0.2, 1.5])
def test_bad_valid_pct(valid_pct: float) -> None:
    for make in (digits, synthetic_classification, synthetic_regression):
        with pytest.raises(ValueError, match=r"valid_pct must be strictly between 0 and 1"):
            make(valid_pct=valid_pct)


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"n must be at least 2"):
        synthetic_classification(n=1)
    with pytest.raises(ValueError, match=r"n=3 is too small for valid_pct=0.1: .* both must be at least 1"):
        synthetic_regression(n=3, valid_pct=0.1)
    with pytest.raises(ValueError, match=r"n=4 is too small for valid_pct=0.9"):
        synthetic_classification(n=4, valid_pct=0.9)
    with pytest.raises(ValueError, match=r"n_features must be at least 1, got 0"):
        synthetic_regression(n_features=0)
    with pytest.raises(ValueError, match=r"valid_pct=0.0001"):
        digits(valid_pct=0.0001)


def test_bad_classes_and_noise() -> None:
    with pytest.raises(ValueError, match=r"n_classes must be at least 2, got 1"):
        synthetic_classification(n_classes=1)
    with pytest.raises(ValueError, match=r"noise must be non-negative .* got -0.5"):
        synthetic_regression(noise=-0.5)
    for noise in (math.nan, math.inf):  # were every target NaN or infinite
        with pytest.raises(ValueError, match=rf"noise must be non-negative and finite .* got {noise}"):
            synthetic_regression(noise=noise)
