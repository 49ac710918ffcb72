"""Single-kernel forms of whole built-in chains, run on torch's fused optimizer kernels.

The standard Adam chain ``[weight_decay, partial(average_grad, dampening=True), average_sqr_grad,
step_stat, adam_step]`` is exactly torch's AdamW with ``betas=(mom, sqr_mom)``: decay ``p *= 1 - lr*wd``
first, then ``p -= lr/(1-mom**t) * m / (sqrt(v/(1-sqr_mom**t)) + eps)``. The momentum SGD chain
``[weight_decay, average_grad, momentum_step]`` is torch's SGD with ``dampening=0`` once the decoupled
decay is applied (fastai's buffer starts at zero, so its first value ``0*mom + g`` equals torch's ``g``).
Each plan returns False when it cannot run (device or dtype without a fused kernel, or tensors the kernel would
read in the wrong order: see ``_flat_alike``); the caller then runs the foreach chain instead.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from . import steppers as S
from .foreach import Bucket, state_tensors

__all__ = ["FusedPlan", "find_fused_plan"]

FusedPlan = Callable[[Bucket, Mapping[str, Any]], bool]

# torch 2.13's fused CPU SGD drifts from its own for-loop SGD by many ulps in float16/bfloat16 (0.15
# after 5 momentum steps on 48 bf16 weights of size ~1, where the for-loop stays within 0.006 of a
# float32 computation), so half-precision SGD takes the foreach path.
_FUSED_DTYPES = {
    "adamw": frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64}),
    "sgd": frozenset({torch.float32, torch.float64}),
}
_unsupported: set[tuple[str, torch.dtype, str]] = set()


@functools.cache
def _fused_devices() -> frozenset[str]:
    return frozenset(_get_fused_kernels_supported_devices())


def _can_fuse(b: Bucket, kernel: str) -> bool:
    p = b.params[0]
    return (
        p.dtype in _FUSED_DTYPES[kernel]
        and p.device.type in _fused_devices()
        and (p.device.type, p.dtype, kernel) not in _unsupported
    )


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill a block of memory without gaps or overlaps, in any order of its dimensions."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _flat_alike(*lists: list[Tensor]) -> bool:
    """Whether the fused kernels read these tensors right. They walk each tensor as one flat run of its elements, so a
    parameter, its gradient and its state must all be dense and laid out alike; else the update lands on the wrong
    elements (a strided slice as a parameter, a gradient assigned transposed, a model moved to channels_last after
    its state was made). Such a bucket takes the foreach forms, which follow the strides."""
    if all(map(Tensor.is_contiguous, itertools.chain.from_iterable(lists))):  # the usual case: one C call a tensor
        return True
    return all(
        _dense(ts[0]) and all(t.stride() == ts[0].stride() for t in ts[1:]) for ts in zip(*lists, strict=True)
    )


def _mark_unsupported(b: Bucket, kernel: str, *states: list[Tensor]) -> None:
    """After the kernel failed on ``b``: mark it unsupported for the device and dtype, unless the bucket's gradients or
    state tensors have another dtype than its parameters (state made before the model was cast, ``model.half()``
    after some steps), which the kernel refuses whatever its support: that bucket alone takes the foreach forms."""
    dtype = b.params[0].dtype
    if all(t.dtype == dtype for t in itertools.chain(b.grads, *states)):
        _unsupported.add((b.params[0].device.type, dtype, kernel))


def _fused_adamw(b: Bucket, h: Mapping[str, Any]) -> bool:
    # A mom or sqr_mom of 1 has no debiasing: adam_step's ZeroDivisionError (fastai's), where the kernel gives NaNs.
    if not _can_fuse(b, "adamw") or h["mom"] == 1 or h["sqr_mom"] == 1:
        return False
    exp_avgs, exp_avg_sqs = state_tensors(b, "grad_avg"), state_tensors(b, "sqr_avg")
    if not _flat_alike(b.params, b.grads, exp_avgs, exp_avg_sqs):
        return False
    step = b.step + 1
    # torch.full launches a fill on the device: no host-to-device copy, no synchronisation.
    step_t = torch.full((), float(step), dtype=torch.float32, device=b.params[0].device)
    try:
        torch._fused_adamw_(
            b.params,
            b.grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            [step_t] * len(b.params),
            lr=h["lr"],
            beta1=h["mom"],
            beta2=h["sqr_mom"],
            weight_decay=h["wd"] if b.do_wd else 0.0,
            eps=h["eps"],
            amsgrad=False,
            maximize=False,
        )
    except (RuntimeError, NotImplementedError):
        _mark_unsupported(b, "adamw", exp_avgs, exp_avg_sqs)
        return False
    b.step = step
    for s in b.states:
        s["step"] = step
    return True


def _fused_sgd_momentum(b: Bucket, h: Mapping[str, Any]) -> bool:
    mom = h["mom"]
    # torch's SGD leaves its buffers alone when momentum is 0, fastai's chain does not.
    if mom == 0 or not _can_fuse(b, "sgd"):
        return False
    bufs = state_tensors(b, "grad_avg")
    if not _flat_alike(b.params, b.grads, bufs):
        return False
    if b.do_wd and h["wd"] != 0:
        torch._foreach_mul_(b.params, 1 - h["lr"] * h["wd"])
    try:
        torch._fused_sgd_(
            b.params,
            b.grads,
            bufs,
            weight_decay=0.0,
            momentum=mom,
            lr=h["lr"],
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=False,
        )
    except (RuntimeError, NotImplementedError):
        # The decay is already applied: finish this step with the foreach forms of the rest of the chain.
        _mark_unsupported(b, "sgd", bufs)
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, b.grads)
        torch._foreach_add_(b.params, bufs, alpha=-h["lr"])
    return True


def _is(cb: Callable[..., Any], fn: Callable[..., Any], **required: Any) -> bool:
    """``cb`` is ``fn``, or a keyword partial of it, that runs with the options ``required`` (an option it does not
    bind takes ``fn``'s default: ``partial(average_grad)`` does not dampen)."""
    bound: Mapping[str, Any] = {}
    if isinstance(cb, functools.partial):
        if cb.args or cb.func is not fn:
            return False
        bound = cb.keywords
    elif cb is not fn:
        return False
    if not set(bound) <= set(required):
        return False
    params = inspect.signature(fn).parameters
    return all(bound.get(k, params[k].default) == v for k, v in required.items())


def find_fused_plan(cbs: Sequence[Callable[..., Any]]) -> FusedPlan | None:
    """The fused plan running this exact chain of built-in steppers, if there is one."""
    if len(cbs) == 5 and (
        _is(cbs[0], S.weight_decay)
        and _is(cbs[1], S.average_grad, dampening=True)
        and _is(cbs[2], S.average_sqr_grad, dampening=True)
        and _is(cbs[3], S.step_stat)
        and _is(cbs[4], S.adam_step)
    ):
        return _fused_adamw
    if len(cbs) == 3 and (
        _is(cbs[0], S.weight_decay)
        and _is(cbs[1], S.average_grad, dampening=False)
        and _is(cbs[2], S.momentum_step)
    ):
        return _fused_sgd_momentum
    return None
