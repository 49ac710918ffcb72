"""Small reference models used by the command line and the examples."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["SimpleCNN", "MLP", "conv_block"]


def conv_block(n_in: int, n_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU()
    )


class SimpleCNN(nn.Sequential):
    """A small convolutional classifier: a stack of conv blocks, global average pooling and a linear head."""

    def __init__(self, n_classes: int = 10, n_channels: int = 1, widths: Sequence[int] = (16, 32, 64)) -> None:
        layers: list[nn.Module] = []
        n_in = n_channels
        for i, width in enumerate(widths):
            layers.append(conv_block(n_in, width, stride=1 if i == 0 else 2))
            n_in = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, n_classes))


class MLP(nn.Sequential):
    """A multi-layer perceptron for tabular data: Linear, BatchNorm, ReLU per hidden layer, then a linear head."""

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            n_in = width
        super().__init__(*layers, nn.Linear(n_in, n_out))
