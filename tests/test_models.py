"""The bundled reference models: shapes, slicing (the body of a fastai-style splitter) and target scaling."""

from __future__ import annotations

import torch
from torch import nn

from learnloop.models import MLP, Rescale, SimpleCNN
from learnloop.torch_core import params


def test_simple_cnn_classifies_8x8_images() -> None:
    model = SimpleCNN(n_classes=10, widths=(4, 8)).eval()
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert [type(m) for m in model[-3:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]


def test_slicing_a_model_gives_a_plain_sequential_of_the_same_layers() -> None:
    model = SimpleCNN(widths=(4, 8))
    body = model[:-1]
    assert type(body) is nn.Sequential and len(body) == len(model) - 1
    assert all(a is b for a, b in zip(body, model, strict=False))
    assert model[-1] is model[len(model) - 1] and isinstance(model[-1], nn.Linear)
    # fastai's usual splitter: the body's parameters, then the head's
    groups = [params(model[:-1]), params(model[-1])]
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    mlp = MLP(4, 2, hidden=(8,))
    assert type(mlp[1:3]) is nn.Sequential and isinstance(mlp[1:3][0], nn.Linear)


def test_mlp_scales_its_output_to_the_targets_units() -> None:
    torch.manual_seed(0)
    plain, scaled = MLP(3, 1, hidden=(5,)), MLP(3, 1, hidden=(5,), target_stats=(100.0, 10.0))
    scaled.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(6, 3)
    plain.eval(), scaled.eval()
    assert isinstance(scaled[-1], Rescale)
    torch.testing.assert_close(scaled(x), plain(x) * 10.0 + 100.0)
    assert set(scaled.state_dict()) - set(plain.state_dict()) == {"5.scale", "5.shift"}


def test_rescale_keeps_the_targets_units_under_mixed_precision() -> None:
    # Under autocast the head's output is float16 / bfloat16, which Rescale's 0-dim buffers did not promote: prices
    # of 250000 overflowed float16 (inf: `learnloop train --fp16` on them was all nan), bfloat16 rounded them to 1024s.
    torch.manual_seed(0)
    model = MLP(4, 1, hidden=(8,), target_stats=(250_000.0, 80_000.0)).eval()
    x = torch.randn(5, 4)
    exact = model(x)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert (out - exact).abs().max() < 0.01 * 80_000  # the head's own rounding, not the price's
    assert Rescale(2.0, 1.0)(torch.ones(2, dtype=torch.float64)).dtype == torch.float64  # wider inputs stay wide
