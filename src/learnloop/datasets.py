"""Small datasets for examples and tests: the bundled 8x8 digits and seeded synthetic data.

The digits data is the test set of the UCI Machine Learning Repository's "Optical Recognition of
Handwritten Digits" (E. Alpaydin, C. Kaynak, 1998), licensed CC BY 4.0, as redistributed by scikit-learn.
"""

from __future__ import annotations

import io
import math
from importlib.resources import files

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["DIGITS_CLASSES", "DIGITS_SIZE", "digits", "synthetic_classification", "synthetic_regression"]

DIGITS_CLASSES = 10
"""Number of classes in :func:`digits` (the digits 0..9)."""
DIGITS_SIZE = 1797
"""Total number of images in :func:`digits` (train plus valid)."""

_DIGITS_RESOURCE = "data/digits.npz"


def _check_valid_pct(valid_pct: float) -> None:
    if not 0.0 < valid_pct < 1.0:
        raise ValueError(f"valid_pct must be strictly between 0 and 1, got {valid_pct!r}")


def _n_valid(n: int, valid_pct: float) -> int:
    """Validation-set size for ``n`` samples, raising if either split would be empty."""
    _check_valid_pct(valid_pct)
    n_valid = round(n * valid_pct)
    if n_valid < 1 or n_valid > n - 1:
        raise ValueError(
            f"n={n} is too small for valid_pct={valid_pct}: it gives {n - n_valid} train and "
            f"{n_valid} valid samples, and both must be at least 1"
        )
    return n_valid


def _check_synthetic(n: int, n_features: int) -> None:
    if n < 2:
        raise ValueError(f"n must be at least 2 (one train and one valid sample), got {n}")
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")


def digits(valid_pct: float = 0.2, seed: int = 42) -> tuple[TensorDataset, TensorDataset]:
    """Return fixed (train, valid) splits of the 1,797 8x8 UCI digits (CC BY 4.0, Alpaydin & Kaynak 1998).

    Images are float32 of shape (N, 1, 8, 8) in [0, 1], labels int64 in 0..9. The split is a permutation
    drawn from a ``torch.Generator`` seeded with ``seed``, so the same arguments always give the same split.
    Data: UCI Machine Learning Repository, "Optical Recognition of Handwritten Digits", as redistributed
    by scikit-learn.
    """
    n_valid = _n_valid(DIGITS_SIZE, valid_pct)
    raw = files("learnloop").joinpath(_DIGITS_RESOURCE).read_bytes()
    with np.load(io.BytesIO(raw)) as npz:
        images = torch.from_numpy(npz["images"].astype(np.float32) / 16.0).unsqueeze(1)
        labels = torch.from_numpy(npz["labels"].astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, valid = perm[n_valid:], perm[:n_valid]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[valid], labels[valid])


def synthetic_classification(
    n: int = 512, n_features: int = 8, n_classes: int = 3, seed: int = 0, valid_pct: float = 0.25
) -> tuple[TensorDataset, TensorDataset]:
    """Return seeded (train, valid) splits of Gaussian features with linearly separable int64 labels.

    Features are float32 of shape (n_split, n_features); labels are the argmax of a random linear map.
    """
    _check_synthetic(n, n_features)
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    n_valid = _n_valid(n, valid_pct)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_features, generator=gen)
    weight = torch.randn(n_features, n_classes, generator=gen)
    bias = 0.1 * torch.randn(n_classes, generator=gen)
    y = (x @ weight + bias).argmax(dim=1)
    return _split(x, y, n_valid)


def synthetic_regression(
    n: int = 512, n_features: int = 8, noise: float = 0.1, seed: int = 0, valid_pct: float = 0.25
) -> tuple[TensorDataset, TensorDataset]:
    """Return seeded (train, valid) splits of Gaussian features with float32 targets of shape (n_split, 1).

    Targets are a random linear map of the features plus Gaussian noise with standard deviation ``noise``.
    """
    _check_synthetic(n, n_features)
    if not 0 <= noise < math.inf:  # NaN too, which `noise < 0` let through: every target NaN
        raise ValueError(f"noise must be non-negative and finite (it is a standard deviation), got {noise!r}")
    n_valid = _n_valid(n, valid_pct)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_features, generator=gen)
    weight = torch.randn(n_features, 1, generator=gen)
    bias = torch.randn(1, generator=gen)
    y = x @ weight + bias + noise * torch.randn(n, 1, generator=gen)
    return _split(x, y, n_valid)


def _split(x: Tensor, y: Tensor, n_valid: int) -> tuple[TensorDataset, TensorDataset]:
    """Split i.i.d. samples into (train, valid): the last ``n_valid`` rows are the validation set."""
    n_train = len(x) - n_valid
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])
