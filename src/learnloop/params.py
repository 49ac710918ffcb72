"""Which parameters train, and which are exempt from weight decay: the default splitter and the normalisation layers."""

from __future__ import annotations

from torch import nn

__all__ = ["NORM_TYPES", "trainable_params", "norm_bias_params"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
)


def trainable_params(m: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model `m` that require a gradient (the default splitter: one group)."""
    return [p for p in m.parameters() if p.requires_grad]


def norm_bias_params(m: nn.Module, with_bias: bool = True) -> list[nn.Parameter]:
    """Parameters of the normalisation layers in the model `m`, and biases of other layers when `with_bias`."""
    if isinstance(m, NORM_TYPES):
        return list(m.parameters())
    params = [p for child in m.children() for p in norm_bias_params(child, with_bias)]
    bias = getattr(m, "bias", None)
    if with_bias and isinstance(bias, nn.Parameter):
        params.append(bias)
    return params
