"""finite.py: which weights are usable (finite parameters, buffers without NaN)."""

from __future__ import annotations

import math

import torch
from torch import nn

from learnloop.finite import all_finite, first_non_finite


def test_parameters_must_be_finite_and_buffers_free_of_nan() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert all_finite(model)
    model[1].running_var.fill_(math.inf)  # a buffer may hold infinities on purpose (an attention mask of -inf)
    assert all_finite(model)
    model[1].running_mean[0] = math.nan
    assert not all_finite(model) and first_non_finite(model) == "buffer '1.running_mean'"
    model[1].running_mean.zero_()
    with torch.no_grad():
        model[0].weight[0, 0] = math.inf
    assert not all_finite(model) and first_non_finite(model) == "parameter '0.weight'"
    assert all_finite(nn.ReLU())  # nothing to check


def test_complex_parameters_and_buffers_are_checked_too() -> None:
    # Spectral layers (FNO...) train complex weights: a NaN in one is divergence as in a real one.
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(3, 2, dtype=torch.cfloat))
    model.register_buffer("phase", torch.ones(2, dtype=torch.cdouble))
    assert all_finite(model)
    model.phase[1] = complex(0.0, math.nan)
    assert not all_finite(model) and first_non_finite(model) == "buffer 'phase'"
    model.phase[1] = complex(math.inf, 0.0)  # infinities in a buffer are allowed, as in a real one
    assert all_finite(model)
    with torch.no_grad():
        model.w[0, 0] = complex(math.inf, 0.0)
    assert not all_finite(model) and first_non_finite(model) == "parameter 'w'"


def test_a_lazy_modules_uninitialized_weights_hold_nothing_to_check() -> None:
    # No values yet, so none to reject: the check (learn.save's, before the first batch) must not fail on them with
    # torch's "Attempted to use an uninitialized parameter".
    model = nn.Sequential(nn.LazyLinear(3), nn.LazyBatchNorm1d(), nn.Linear(3, 1))
    assert all_finite(model)
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan
    assert not all_finite(model) and first_non_finite(model) == "parameter '2.weight'"
