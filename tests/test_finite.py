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
