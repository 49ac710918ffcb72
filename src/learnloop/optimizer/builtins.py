"""The built-in optimizers, with fastai 2.8's signatures, defaults and stepper chains.

Every chain starts with the weight decay stepper: ``weight_decay`` (decoupled, ``p *= 1 - lr*wd``)
when ``decouple_wd`` else ``l2_reg`` (``grad += wd*p``). Each factory also takes ``implementation``
(keyword only, ``Optimizer.implementation``): ``"foreach"`` skips the fused kernels, for fastai's numbers bit for bit
(but for Lamb and Larc, whose trust ratios are computed on the device).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from torch import Tensor

from .core import Implementation, Optimizer
from .lookahead import Lookahead
from .steppers import (
    adam_step,
    average_grad,
    average_sqr_grad,
    l2_reg,
    lamb_step,
    larc_layer_lr,
    larc_step,
    momentum_step,
    qhadam_step,
    radam_step,
    rms_prop_step,
    sgd_step,
    step_stat,
    weight_decay,
)

__all__ = ["SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "LARS", "Lamb", "LAMB", "ranger"]

Params = Tensor | Iterable[Any]  # a single tensor is one parameter


def _wd(decouple_wd: bool) -> list[Callable[..., Any]]:
    return [weight_decay] if decouple_wd else [l2_reg]


def SGD(
    params: Params,
    lr: float,
    mom: float = 0.0,
    wd: float = 0.0,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """SGD, with momentum (no dampening) when ``mom`` is not 0: ``[wd, average_grad, momentum_step]``.

    ``wd`` is the weight decay: decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2 (``grad += wd*p``);
    ``implementation`` picks the kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd)
    if mom != 0:
        cbs.append(average_grad)
    cbs.append(sgd_step if mom == 0 else momentum_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, wd=wd, implementation=implementation)


def RMSProp(
    params: Params,
    lr: float,
    sqr_mom: float = 0.99,
    mom: float = 0.0,
    eps: float = 1e-8,
    wd: float = 0.0,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """RMSProp: ``[wd, average_grad if mom, average_sqr_grad, rms_prop_step]``.

    ``sqr_mom`` is the squared gradients' moving-average coefficient (before ``mom``, the gradients' one, unlike
    fastai's order: pass them by keyword), ``eps`` is added to the denominator; ``wd`` is the weight decay:
    decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2 (``grad += wd*p``); ``implementation`` picks the
    kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd)
    cbs += [average_sqr_grad] if mom == 0 else [average_grad, average_sqr_grad]
    cbs.append(rms_prop_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, implementation=implementation)


def Adam(
    params: Params,
    lr: float,
    mom: float = 0.9,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    wd: float = 0.01,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """Adam (AdamW when ``decouple_wd``): ``[wd, average_grad(dampening), average_sqr_grad, step_stat,
    adam_step]``.

    ``mom`` (beta1) and ``sqr_mom`` (beta2) are the moving averages' coefficients, ``eps`` is added to the
    denominator; ``wd`` is the weight decay: decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2
    (``grad += wd*p``); ``implementation`` picks the kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd) + [partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, implementation=implementation)


def RAdam(
    params: Params,
    lr: float,
    mom: float = 0.9,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    wd: float = 0.0,
    beta: float = 0.0,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """Rectified Adam; ``beta`` > 0 smooths the denominator with ``softplus(denom, beta)``.

    ``mom`` (beta1) and ``sqr_mom`` (beta2) are the moving averages' coefficients, ``eps`` is added to the
    denominator; ``wd`` is the weight decay: decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2
    (``grad += wd*p``); ``implementation`` picks the kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd) + [partial(average_grad, dampening=True), average_sqr_grad, step_stat, radam_step]
    return Optimizer(
        params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, beta=beta, implementation=implementation
    )


def QHAdam(
    params: Params,
    lr: float,
    mom: float = 0.999,
    sqr_mom: float = 0.999,
    nu_1: float = 0.7,
    nu_2: float = 1.0,
    eps: float = 1e-8,
    wd: float = 0.0,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """Quasi-hyperbolic Adam (Ma & Yarats, 2019).

    ``mom`` (beta1) and ``sqr_mom`` (beta2) are the moving averages' coefficients, ``nu_1`` and ``nu_2`` how much of
    each average (against the current gradient) the step uses, ``eps`` is added to the denominator; ``wd`` is the
    weight decay: decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2 (``grad += wd*p``);
    ``implementation`` picks the kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd) + [
        partial(average_grad, dampening=True),
        partial(average_sqr_grad, dampening=True),
        step_stat,
        qhadam_step,
    ]
    return Optimizer(
        params,
        cbs,
        lr=lr,
        nu_1=nu_1,
        nu_2=nu_2,
        mom=mom,
        sqr_mom=sqr_mom,
        eps=eps,
        wd=wd,
        implementation=implementation,
    )


def Larc(
    params: Params,
    lr: float,
    mom: float = 0.9,
    clip: bool = True,
    trust_coeff: float = 0.02,
    eps: float = 1e-8,
    wd: float = 0.0,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """LARC: SGD with a layer-wise lr from the trust ratio, clipped at ``lr`` (``clip=False`` gives LARS).

    The layer's lr is ``lr * trust_coeff * norm(p) / (norm(grad) + wd * norm(p) + eps)``; ``mom`` is the momentum;
    ``wd`` is the weight decay: decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2 (``grad += wd*p``);
    ``implementation`` picks the kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd)
    if mom != 0:
        cbs.append(average_grad)
    cbs += [partial(larc_layer_lr, clip=clip), larc_step]
    return Optimizer(
        params, cbs, lr=lr, mom=mom, trust_coeff=trust_coeff, eps=eps, wd=wd, implementation=implementation
    )


#: fastai's name for the same factory; pass ``clip=False`` for LARS proper.
LARS = Larc


def Lamb(
    params: Params,
    lr: float,
    mom: float = 0.9,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    wd: float = 0.0,
    decouple_wd: bool = True,
    *,
    implementation: Implementation = "auto",
) -> Optimizer:
    """LAMB: Adam's update scaled per tensor by ``min(rms(p) / rms(update), 10)``.

    ``mom`` (beta1) and ``sqr_mom`` (beta2) are the moving averages' coefficients, ``eps`` is added to the
    denominator; ``wd`` is the weight decay: decoupled (``p *= 1 - lr*wd``) when ``decouple_wd``, else L2
    (``grad += wd*p``); ``implementation`` picks the kernels (``Optimizer``).
    """
    cbs = _wd(decouple_wd) + [partial(average_grad, dampening=True), average_sqr_grad, step_stat, lamb_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, implementation=implementation)


LAMB = Lamb


def ranger(
    params: Params,
    lr: float,
    mom: float = 0.95,
    wd: float = 0.01,
    eps: float = 1e-6,
    k: int = 6,
    alpha: float = 0.5,
    *,
    sqr_mom: float = 0.99,
    beta: float = 0.0,
    decouple_wd: bool = True,
    implementation: Implementation = "auto",
) -> Lookahead:
    """``Lookahead(RAdam(...), k, alpha)`` with fastai's ranger defaults and argument order.

    ``mom``, ``wd`` and ``eps`` are RAdam's (``Adam``), ``k`` and ``alpha`` Lookahead's. The keyword-only arguments
    go to ``RAdam`` (fastai passes them through ``**kwargs``).
    """
    radam = RAdam(
        params,
        lr=lr,
        mom=mom,
        sqr_mom=sqr_mom,
        eps=eps,
        wd=wd,
        beta=beta,
        decouple_wd=decouple_wd,
        implementation=implementation,
    )
    return Lookahead(radam, k=k, alpha=alpha)
