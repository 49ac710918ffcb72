"""Shared test helpers: a synthetic learner that trains in milliseconds, and an event log."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from learnloop import Callback, DataLoaders, Event, Learner
from learnloop.callback import noop

# The tests use tiny tensors: intra-op threads only add overhead, and on a busy machine each op can wait
# tens of milliseconds for its worker threads (a whole fit then takes seconds instead of milliseconds).
torch.set_num_threads(1)


class EventLog(Callback):
    """Records every event it receives, with the training flag at that moment."""

    order = 100

    def __init__(self) -> None:
        self.events: list[str] = []


for _event in Event:
    setattr(EventLog, _event.value, lambda self, _e=_event.value: self.events.append(_e))


def debiased_ema(losses: list[float], beta: float = 0.98) -> list[float]:
    """fastai's smoothed loss after each batch, in float64: ``val = beta*val + (1-beta)*x``, ``val / (1-beta**n)``."""
    out, val = [], 0.0
    for n, x in enumerate(losses, start=1):
        val = beta * val + (1 - beta) * x
        out.append(val / (1 - beta**n))
    return out


def synth_dls(
    n_train: int = 32, n_valid: int = 16, bs: int = 16, n_in: int = 2, seed: int = 0, **kw: Any
) -> DataLoaders:
    """A linear regression problem y = x @ w + b as DataLoaders (no shuffling unless asked)."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(n_in, 1, generator=g), torch.randn(1, generator=g)
    x_train, x_valid = torch.randn(n_train, n_in, generator=g), torch.randn(n_valid, n_in, generator=g)
    kw.setdefault("shuffle", False)
    kw.setdefault("device", "cpu")
    return DataLoaders.from_tensors(x_train, x_train @ w + b, x_valid, x_valid @ w + b, bs=bs, **kw)


def synth_learner(
    n_train: int = 32, n_valid: int = 16, bs: int = 16, lr: float = 1e-2, seed: int = 0, **kwargs: Any
) -> Learner:
    """A learner for `synth_dls` with a linear model and MSE loss, quiet by default."""
    torch.manual_seed(seed)
    dls = synth_dls(n_train, n_valid, bs, seed=seed)
    kwargs.setdefault("loss_func", nn.MSELoss())
    learn = Learner(dls, nn.Linear(2, 1), lr=lr, **kwargs)
    learn.logger = noop
    return learn


@pytest.fixture
def learn() -> Learner:
    return synth_learner()


def synth_classif_learner(
    n_train: int = 48, n_valid: int = 24, bs: int = 16, n_classes: int = 3, n_in: int = 4, seed: int = 0,
    **kwargs: Any,
) -> Learner:
    """A learner on a synthetic `n_classes`-way classification problem (linear model, cross-entropy), quiet."""
    g = torch.Generator().manual_seed(seed)
    x_train, x_valid = torch.randn(n_train, n_in, generator=g), torch.randn(n_valid, n_in, generator=g)
    w = torch.randn(n_in, n_classes, generator=g)
    dls = DataLoaders.from_tensors(x_train, (x_train @ w).argmax(1), x_valid, (x_valid @ w).argmax(1), bs=bs,
                                   shuffle=kwargs.pop("shuffle", False), device="cpu")
    torch.manual_seed(seed)
    kwargs.setdefault("loss_func", nn.CrossEntropyLoss())
    kwargs.setdefault("lr", 1e-2)
    learn = Learner(dls, nn.Linear(n_in, n_classes), **kwargs)
    learn.logger = noop
    return learn
