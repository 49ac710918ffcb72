"""Per-parameter steppers: the reference form of every built-in optimizer update.

A stepper is called as ``stepper(p, **{**state, **hypers})`` for each parameter ``p`` with a
gradient and returns a dict of new state for ``p`` (or None; anything else is ignored, like the ``p``
that ``adam_step``, ``radam_step`` and ``qhadam_step`` return, as fastai's do). Steppers accept ``**kwargs`` so they
can ignore the state and hyper-parameters they do not use, exactly like fastai's. A stepper may
carry a ``defaults`` dict of hyper-parameter defaults, declared with :func:`with_defaults` (which
checks the names against the signature) or, fastai-style, as a plain function attribute.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Stepper",
    "with_defaults",
    "stepper_defaults",
    "debias",
    "sgd_step",
    "weight_decay",
    "l2_reg",
    "average_grad",
    "average_sqr_grad",
    "momentum_step",
    "rms_prop_step",
    "step_stat",
    "adam_step",
    "radam_rectifier",
    "radam_step",
    "qhadam_step",
    "larc_layer_lr",
    "larc_step",
    "lamb_step",
]

StepperResult = dict[str, Any] | None


class Stepper(Protocol):
    """What ``Optimizer`` calls: ``stepper(p, **{**state, **hypers}) -> dict | None`` (other results are ignored)."""

    def __call__(self, p: Tensor, /, **kwargs: Any) -> Any: ...


F_ = TypeVar("F_", bound=Callable[..., Any])


def with_defaults(**defaults: Any) -> Callable[[F_], F_]:
    """Declare a stepper's hyper-parameter defaults, rejecting names it does not take.

    >>> @with_defaults(mom=0.9)
    ... def my_avg(p, mom, my_avg=None, **kwargs): ...
    """

    def decorate(fn: F_) -> F_:
        params = inspect.signature(fn).parameters
        unknown = [k for k in defaults if k not in params]
        if unknown:
            raise TypeError(
                f"with_defaults on {fn.__name__}: {unknown} are not parameters of {fn.__name__}"
                f"{inspect.signature(fn)}; check the spelling"
            )
        fn.defaults = dict(defaults)  # type: ignore[attr-defined]
        return fn

    return decorate


def stepper_defaults(cb: Callable[..., Any]) -> dict[str, Any]:
    """The ``defaults`` a stepper declares, looking through ``functools.partial``: but for the names a partial binds
    (``partial(average_grad, mom=0.5)`` steps with its ``mom``, as in fastai, unless a hyper-parameter sets it)."""
    bound: set[str] = set()
    while True:
        found = getattr(cb, "defaults", None)
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if k not in bound} if bound else found
        inner = getattr(cb, "func", None)
        if inner is None or not callable(inner):
            return {}
        keywords = getattr(cb, "keywords", None)
        if isinstance(keywords, dict):
            bound.update(keywords)
        cb = inner


def debias(mom: float, damp: float, step: int) -> float:
    """Bias-correction factor of an exponential average: ``damp * (1 - mom**step) / (1 - mom)``."""
    return damp * (1 - mom**step) / (1 - mom)


def sgd_step(p: Tensor, lr: float, **kwargs: Any) -> None:
    """Plain SGD: ``p -= lr * grad``."""
    assert p.grad is not None
    p.data.add_(p.grad.data, alpha=-lr)


@with_defaults(wd=0.0)
def weight_decay(p: Tensor, lr: float, wd: float, do_wd: bool = True, **kwargs: Any) -> None:
    """Decoupled weight decay: ``p *= 1 - lr * wd``."""
    if do_wd and wd != 0:
        p.data.mul_(1 - lr * wd)


@with_defaults(wd=0.0)
def l2_reg(p: Tensor, lr: float, wd: float, do_wd: bool = True, **kwargs: Any) -> None:
    """Classic L2 regularisation, added to the gradient in place: ``grad += wd * p``."""
    if do_wd and wd != 0:
        assert p.grad is not None
        p.grad.data.add_(p.data, alpha=wd)


@with_defaults(mom=0.9)
def average_grad(
    p: Tensor, mom: float, dampening: bool = False, grad_avg: Tensor | None = None, **kwargs: Any
) -> StepperResult:
    """Moving average of the gradient: ``grad_avg = mom * grad_avg + (1 - mom if dampening else 1) * g``."""
    assert p.grad is not None
    if grad_avg is None:
        grad_avg = torch.zeros_like(p.grad.data)
    damp = 1 - mom if dampening else 1.0
    grad_avg.mul_(mom).add_(p.grad.data, alpha=damp)
    return {"grad_avg": grad_avg}


@with_defaults(sqr_mom=0.99)
def average_sqr_grad(
    p: Tensor, sqr_mom: float, dampening: bool = True, sqr_avg: Tensor | None = None, **kwargs: Any
) -> StepperResult:
    """Moving average of the squared gradient (dampened by default)."""
    assert p.grad is not None
    if sqr_avg is None:
        sqr_avg = torch.zeros_like(p.grad.data)
    damp = 1 - sqr_mom if dampening else 1.0
    sqr_avg.mul_(sqr_mom).addcmul_(p.grad.data, p.grad.data, value=damp)
    return {"sqr_avg": sqr_avg}


def momentum_step(p: Tensor, lr: float, grad_avg: Tensor, **kwargs: Any) -> None:
    """SGD with momentum: ``p -= lr * grad_avg``."""
    p.data.add_(grad_avg, alpha=-lr)


@with_defaults(eps=1e-8)
def rms_prop_step(
    p: Tensor, lr: float, sqr_avg: Tensor, eps: float, grad_avg: Tensor | None = None, **kwargs: Any
) -> None:
    """RMSProp: ``p -= lr * (grad_avg or grad) / (sqrt(sqr_avg) + eps)``."""
    assert p.grad is not None
    denom = sqr_avg.sqrt().add_(eps)
    p.data.addcdiv_(grad_avg if grad_avg is not None else p.grad.data, denom, value=-lr)


def step_stat(p: Tensor, step: int = 0, **kwargs: Any) -> StepperResult:
    """Count the steps taken by ``p`` in its state (a Python int)."""
    return {"step": step + 1}


def adam_step(
    p: Tensor,
    lr: float,
    mom: float,
    step: int,
    sqr_mom: float,
    grad_avg: Tensor,
    sqr_avg: Tensor,
    eps: float,
    **kwargs: Any,
) -> Tensor:
    """Adam: ``p -= lr/debias1 * grad_avg / (sqrt(sqr_avg/debias2) + eps)``; returns ``p``, as fastai's does."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    p.data.addcdiv_(grad_avg, (sqr_avg / debias2).sqrt() + eps, value=-lr / debias1)
    return p


def radam_rectifier(sqr_mom: float, step: int) -> float | None:
    """RAdam's variance rectification term, or None while it is undefined (length of SMA <= 5)."""
    r_inf = 2 / (1 - sqr_mom) - 1
    r = r_inf - 2 * step * sqr_mom**step / (1 - sqr_mom**step)
    if r <= 5:
        return None
    return math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))


@with_defaults(beta=0.0)
def radam_step(
    p: Tensor,
    lr: float,
    mom: float,
    step: int,
    sqr_mom: float,
    grad_avg: Tensor,
    sqr_avg: Tensor,
    eps: float,
    beta: float,
    **kwargs: Any,
) -> Tensor:
    """Rectified Adam; plain momentum SGD (debiased) while the rectifier is undefined. Returns ``p`` (fastai's)."""
    debias1 = debias(mom, 1 - mom, step)
    v = radam_rectifier(sqr_mom, step)
    if v is None:
        p.data.add_(grad_avg, alpha=-lr / debias1)
        return p
    denom = (sqr_avg / debias(sqr_mom, 1 - sqr_mom, step)).sqrt()
    if eps:
        denom += eps
    if beta:
        denom = F.softplus(denom, beta)
    p.data.addcdiv_(grad_avg, denom, value=-lr * v / debias1)
    return p


@with_defaults(nu_1=0.7, nu_2=1.0)
def qhadam_step(
    p: Tensor,
    lr: float,
    mom: float,
    sqr_mom: float,
    sqr_avg: Tensor,
    nu_1: float,
    nu_2: float,
    step: int,
    grad_avg: Tensor,
    eps: float,
    **kwargs: Any,
) -> Tensor:
    """Quasi-hyperbolic Adam: mixes the raw gradient into both moments with weights ``1 - nu``; returns ``p``."""
    assert p.grad is not None
    g = p.grad.data
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    num = g * (1 - nu_1) + (grad_avg / debias1) * nu_1
    denom = ((g * g) * (1 - nu_2) + (sqr_avg / debias2) * nu_2).sqrt() + eps
    p.data.addcdiv_(num, denom, value=-lr)
    return p


@with_defaults(trust_coeff=0.02, wd=0.0, eps=1e-8)
def larc_layer_lr(
    p: Tensor, lr: float, trust_coeff: float, wd: float, eps: float, clip: bool = True, **kwargs: Any
) -> StepperResult:
    """LARC's layer-wise lr ``lr*trust*|p| / (|g| + wd*|p| + eps)``, clipped at ``lr`` (a 0-dim tensor).

    Clipping keeps ``lr`` unless the layer's lr is below it, so a NaN one (a NaN gradient) is ``lr``, as fastai's
    ``min(lr, local_lr)`` gives: only the NaN entries of the parameter turn NaN, not all of it."""
    assert p.grad is not None
    g = p.grad.data
    p_norm = torch.linalg.vector_norm(p.data)
    g_norm = torch.linalg.vector_norm(g) if g.layout == torch.strided else torch.norm(g)  # a sparse one, as fastai's
    local_lr = lr * trust_coeff * p_norm / (g_norm + p_norm * wd + eps)
    return {"local_lr": _clip_lr(local_lr, lr) if clip else local_lr}


def _clip_lr(local_lr: Tensor, lr: float) -> Tensor:
    """``local_lr`` where it is below ``lr``, else ``lr`` (NaN included, as Python's ``min(lr, local_lr)``)."""
    return torch.where(local_lr < lr, local_lr, lr)


def larc_step(p: Tensor, local_lr: Tensor | float, grad_avg: Tensor | None = None, **kwargs: Any) -> None:
    """LARC step: ``p -= local_lr * (grad_avg or grad)``."""
    assert p.grad is not None
    p.data.sub_((p.grad.data if grad_avg is None else grad_avg) * local_lr)


def lamb_step(
    p: Tensor,
    lr: float,
    mom: float,
    step: int,
    sqr_mom: float,
    grad_avg: Tensor,
    sqr_avg: Tensor,
    eps: float,
    **kwargs: Any,
) -> None:
    """LAMB: Adam's update scaled by the trust ratio ``min(rms(p) / rms(update), 10)`` (1 if either is 0)."""
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    update = (grad_avg / debias1) / ((sqr_avg / debias2).sqrt() + eps)
    r1 = torch.linalg.vector_norm(p.data) / math.sqrt(p.numel())
    r2 = torch.linalg.vector_norm(update) / math.sqrt(p.numel())
    q = torch.where((r1 == 0) | (r2 == 0), torch.ones_like(r1), (r1 / r2).clamp(max=10))
    p.data.sub_(update * (q * lr))
