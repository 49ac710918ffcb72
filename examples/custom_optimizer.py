"""Optimizers from steppers: rebuild Adam from its parts, then write a new optimizer (Lion) and train with it.

    python examples/custom_optimizer.py

An optimizer is a list of small functions ("steppers") applied in order to every parameter with a gradient:
`state = update(state, stepper(p, **state, **hypers))`. A stepper returns the state it wants to keep (or None),
takes the hyper-parameters it needs by name, and declares defaults for new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from learnloop import CrossEntropyLossFlat, DataLoaders, Learner, accuracy
from learnloop.datasets import digits
from learnloop.models import MLP
from learnloop.optimizer import (
    Adam,
    Optimizer,
    adam_step,
    average_grad,
    average_sqr_grad,
    step_stat,
    weight_decay,
    with_defaults,
)


def adam_from_steppers(params: list[torch.Tensor], lr: float) -> Optimizer:
    """fastai's Adam, spelt out: decoupled weight decay, the two running averages, a step counter, the update."""
    steppers = [weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    return Optimizer(params, steppers, lr=lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)


@with_defaults(beta1=0.9, beta2=0.99)
def lion_step(
    p: torch.Tensor, lr: float, beta1: float, beta2: float, grad_avg: torch.Tensor | None = None, **kwargs: object
) -> dict[str, torch.Tensor]:
    """Lion (Chen et al., 2023): step by the sign of a blend of momentum and gradient, then update the momentum."""
    assert p.grad is not None
    g = p.grad
    if grad_avg is None:
        grad_avg = torch.zeros_like(p)
    p.data.add_((beta1 * grad_avg + (1 - beta1) * g).sign(), alpha=-lr)
    grad_avg.mul_(beta2).add_(g, alpha=1 - beta2)
    return {"grad_avg": grad_avg}


def Lion(params: list[torch.Tensor], lr: float, wd: float = 0.1) -> Optimizer:
    """Lion with decoupled weight decay; it wants an lr 3-10x smaller than Adam's."""
    return Optimizer(params, [weight_decay, lion_step], lr=lr, wd=wd)


def same_steps(make_a: Callable[..., Optimizer], make_b: Callable[..., Optimizer], n_steps: int = 5) -> bool:
    """Whether two optimizer factories move the same parameters identically for `n_steps` random gradients."""
    torch.manual_seed(0)
    start = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(n_steps)]
    results = []
    for make in (make_a, make_b):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = make(params, lr=1e-2)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    return all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results, strict=True))


def main() -> None:
    # 1. The built-in Adam runs fused kernels over whole parameter groups; the spelt-out chain runs parameter by
    #    parameter. Same numbers.
    assert same_steps(Adam, adam_from_steppers)
    print("Adam from steppers matches the built-in Adam")

    # 2. Train an MLP on the digits with Lion, a stepper chain of our own.
    torch.manual_seed(0)
    train_ds, valid_ds = digits()
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=64, seed=0, device="cpu")
    learn = Learner(dls, MLP(64, 10, hidden=(128,)), loss_func=CrossEntropyLossFlat(), opt_func=Lion,
                    metrics=accuracy)
    learn.fit_one_cycle(4, 2e-3)  # schedules lr (and would schedule `mom`, had Lion one: it has beta1)
    print("Lion's hyper-parameters:", {k: v for k, v in learn.opt.hypers[0].items() if k != "lr"})
    assert learn.recorder.values[-1][-1] > 0.9


if __name__ == "__main__":
    main()
