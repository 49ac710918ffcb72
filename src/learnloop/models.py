"""Small reference models used by the command line and the examples."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import overload

import torch
from torch import nn

__all__ = ["SimpleCNN", "MLP", "Rescale", "conv_block", "CNN_WIDTHS", "MLP_HIDDEN"]

CNN_WIDTHS = (16, 32, 64)
"""Default channel widths of :class:`SimpleCNN`'s conv blocks."""
MLP_HIDDEN = (200, 100)
"""Default hidden layer widths of :class:`MLP` (fastai's tabular default)."""


def conv_block(n_in: int, n_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU()
    )


class _Layers(nn.Sequential):
    """An `nn.Sequential` whose slices are plain `nn.Sequential`s: torch builds a slice with the class's own
    constructor, which these models' arguments do not fit (`model[:-1]`, the body of a fastai-style splitter)."""

    @overload
    def __getitem__(self, idx: slice) -> nn.Sequential: ...

    @overload
    def __getitem__(self, idx: int) -> nn.Module: ...

    def __getitem__(self, idx: slice | int) -> nn.Sequential | nn.Module:
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


class SimpleCNN(_Layers):
    """A small convolutional classifier: a stack of conv blocks, global average pooling and a linear head."""

    def __init__(self, n_classes: int = 10, n_channels: int = 1, widths: Sequence[int] = CNN_WIDTHS) -> None:
        layers: list[nn.Module] = []
        n_in = n_channels
        for i, width in enumerate(widths):
            layers.append(conv_block(n_in, width, stride=1 if i == 0 else 2))
            n_in = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, n_classes))


class Rescale(nn.Module):
    """`x * scale + shift`, with fixed `scale` and `shift` kept as buffers (so they travel in the state dict), computed
    in the buffers' precision when `x` is narrower (float16 under autocast)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast `x` is float16 / bfloat16, which 0-dim buffers do not promote: a target's units (a price of
        # 250000) would overflow float16 or round to bfloat16's steps of 1024. Rescale in the buffers' precision.
        return x.to(torch.promote_types(x.dtype, self.scale.dtype)) * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.4g}, shift={self.shift.item():.4g}"


class MLP(_Layers):
    """A multi-layer perceptron for tabular data: Linear, BatchNorm, ReLU per hidden layer, then a linear head.

    Inputs of more than one dimension per item are flattened. With `target_stats=(mean, std)` the output is
    scaled to the targets' units (`out * std + mean`): the layers learn a unit-scale output, whatever the
    targets' scale, while predictions, losses and metrics read in the targets' own units.

    >>> model = MLP(n_in=8, n_out=1, hidden=(64, 32), target_stats=(250_000.0, 80_000.0))   # house prices
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        hidden: Sequence[int] = MLP_HIDDEN,
        dropout: float = 0.0,
        target_stats: tuple[float, float] | None = None,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        if target_stats is not None:
            mean, std = target_stats
            layers.append(Rescale(scale=std, shift=mean))
        super().__init__(*layers)
