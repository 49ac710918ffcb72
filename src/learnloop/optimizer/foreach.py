"""Vectorised forms of the built-in steppers: one call updates a whole bucket of parameters.

A :class:`Bucket` holds the parameters of one group that share a device, a dtype, ``do_wd`` and a
step count, with their gradients and state dicts. Each form below does, with ``torch._foreach_*``
ops on the bucket's tensor lists, exactly what its per-parameter stepper does to each parameter;
per-parameter state stays in the same dicts, under the same keys.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import steppers as S

__all__ = ["Bucket", "BuiltinSpec", "BUILTINS", "cpu_chunks", "resolve_builtin", "scale_", "state_tensors"]

Hypers = Mapping[str, Any]


@dataclass(slots=True)
class Bucket:
    """Parameters of one group sharing device, dtype, ``do_wd`` and step count."""

    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]
    do_wd: bool
    step: int


ForeachStepper = Callable[[Bucket, Hypers, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class BuiltinSpec:
    """How to vectorise a built-in stepper: its foreach form, the keywords a ``partial`` may bind, the
    state keys it writes."""

    foreach: ForeachStepper
    options: frozenset[str] = frozenset()
    produces: tuple[str, ...] = ()


#: On CPU a bucket is processed in chunks of about this many elements (1 MB of float32 per tensor list):
#: a chain of foreach ops over all of a large model's tensors streams every list through memory once per
#: op, while chunks stay in cache between ops (about 2x faster for Adam's chain).
CPU_CHUNK_NUMEL = 2**18


def cpu_chunks(b: Bucket, limit: int = CPU_CHUNK_NUMEL) -> list[Bucket]:
    """Split a bucket into consecutive buckets of at most ``limit`` elements (a larger tensor goes alone)."""
    out: list[Bucket] = []
    size = 0
    for p, g, s in zip(b.params, b.grads, b.states, strict=True):
        n = p.numel()
        if not out or size + n > limit:
            out.append(Bucket([], [], [], b.do_wd, b.step))
            size = 0
        cur = out[-1]
        cur.params.append(p)
        cur.grads.append(g)
        cur.states.append(s)
        size += n
    return out


def state_tensors(b: Bucket, key: str) -> list[Tensor]:
    """The bucket's ``key`` state tensors, created as zeros (like the gradient) where missing."""
    out = []
    for s, g in zip(b.states, b.grads, strict=True):
        t = s.get(key)
        if t is None:
            t = s[key] = torch.zeros_like(g)
        out.append(t)
    return out


#: Dtypes whose in-place foreach multiply by a Python number rounds the number to the dtype first on the CPU (torch
#: 2.13: ``_foreach_mul_(bf16 tensors, 0.9)`` multiplies by 0.8984375), where ``Tensor.mul_`` multiplies in float32.
_ROUNDS_SCALAR = frozenset({torch.bfloat16, torch.float16})


def scale_(tensors: list[Tensor], factor: float) -> None:
    """``t *= factor`` for every tensor, rounded as the per-parameter steppers' ``Tensor.mul_`` rounds it.

    In half precision on the CPU, torch's in-place foreach multiply would use ``factor`` rounded to the tensors'
    dtype: a momentum of 0.99 would act as 0.98828125. The tensors of a bucket share their dtype and device.
    """
    if tensors and tensors[0].dtype in _ROUNDS_SCALAR and tensors[0].device.type == "cpu":
        for t in tensors:
            t.mul_(factor)
    else:
        torch._foreach_mul_(tensors, factor)


def _weight_decay(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    if b.do_wd and h["wd"] != 0:
        scale_(b.params, 1 - h["lr"] * h["wd"])


def _l2_reg(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    if b.do_wd and h["wd"] != 0:
        torch._foreach_add_(b.grads, b.params, alpha=h["wd"])


def _average_grad(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    mom = h["mom"]
    avgs = state_tensors(b, "grad_avg")
    scale_(avgs, mom)
    torch._foreach_add_(avgs, b.grads, alpha=1 - mom if opts.get("dampening", False) else 1.0)


def _average_sqr_grad(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    sqr_mom = h["sqr_mom"]
    avgs = state_tensors(b, "sqr_avg")
    scale_(avgs, sqr_mom)
    torch._foreach_addcmul_(avgs, b.grads, b.grads, value=1 - sqr_mom if opts.get("dampening", True) else 1.0)


def _sgd_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    torch._foreach_add_(b.params, b.grads, alpha=-h["lr"])


def _momentum_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    torch._foreach_add_(b.params, [s["grad_avg"] for s in b.states], alpha=-h["lr"])


def _split(b: Bucket, key: str) -> tuple[Bucket, Bucket]:
    """Split a bucket by whether each state holds ``key`` (None counts as missing)."""
    has = [s.get(key) is not None for s in b.states]
    parts = []
    for want in (True, False):
        idx = [i for i, x in enumerate(has) if x == want]
        parts.append(
            Bucket(
                [b.params[i] for i in idx],
                [b.grads[i] for i in idx],
                [b.states[i] for i in idx],
                b.do_wd,
                b.step,
            )
        )
    return parts[0], parts[1]


def _rms_prop_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    with_avg, without = _split(b, "grad_avg")
    for part, num in ((with_avg, [s["grad_avg"] for s in with_avg.states]), (without, without.grads)):
        if part.params:
            denom = torch._foreach_sqrt([s["sqr_avg"] for s in part.states])
            torch._foreach_add_(denom, h["eps"])
            torch._foreach_addcdiv_(part.params, num, denom, value=-h["lr"])


def _step_stat(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    b.step += 1
    for s in b.states:
        s["step"] = b.step


def _debiased_denom(b: Bucket, h: Hypers) -> list[Tensor]:
    """``sqrt(sqr_avg / debias2) + eps`` for every parameter of the bucket."""
    debias2 = S.debias(h["sqr_mom"], 1 - h["sqr_mom"], b.step)
    denom = list(torch._foreach_div([s["sqr_avg"] for s in b.states], debias2))
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, h["eps"])
    return denom


def _adam_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    debias1 = S.debias(h["mom"], 1 - h["mom"], b.step)
    denom = _debiased_denom(b, h)
    torch._foreach_addcdiv_(b.params, [s["grad_avg"] for s in b.states], denom, value=-h["lr"] / debias1)


def _radam_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    lr, mom, sqr_mom, eps, beta = h["lr"], h["mom"], h["sqr_mom"], h["eps"], h["beta"]
    debias1 = S.debias(mom, 1 - mom, b.step)
    avgs = [s["grad_avg"] for s in b.states]
    v = S.radam_rectifier(sqr_mom, b.step)
    if v is None:
        torch._foreach_add_(b.params, avgs, alpha=-lr / debias1)
        return
    debias2 = S.debias(sqr_mom, 1 - sqr_mom, b.step)
    denom = list(torch._foreach_div([s["sqr_avg"] for s in b.states], debias2))
    torch._foreach_sqrt_(denom)
    if eps:
        torch._foreach_add_(denom, eps)
    if beta:
        denom = [F.softplus(d, beta) for d in denom]
    torch._foreach_addcdiv_(b.params, avgs, denom, value=-lr * v / debias1)


def _qhadam_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    mom, sqr_mom, nu_1, nu_2 = h["mom"], h["sqr_mom"], h["nu_1"], h["nu_2"]
    debias1 = S.debias(mom, 1 - mom, b.step)
    debias2 = S.debias(sqr_mom, 1 - sqr_mom, b.step)
    num = torch._foreach_mul(b.grads, 1 - nu_1)
    torch._foreach_add_(
        num, torch._foreach_mul(torch._foreach_div([s["grad_avg"] for s in b.states], debias1), nu_1)
    )
    denom = torch._foreach_mul(torch._foreach_mul(b.grads, b.grads), 1 - nu_2)
    torch._foreach_add_(
        denom, torch._foreach_mul(torch._foreach_div([s["sqr_avg"] for s in b.states], debias2), nu_2)
    )
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, h["eps"])
    torch._foreach_addcdiv_(b.params, num, denom, value=-h["lr"])


def _larc_layer_lr(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    lr = h["lr"]
    p_norm = torch.stack(torch._foreach_norm(b.params))
    g_norm = torch.stack(torch._foreach_norm(b.grads))
    local_lr = lr * h["trust_coeff"] * p_norm / (g_norm + p_norm * h["wd"] + h["eps"])
    if opts.get("clip", True):
        local_lr = S._clip_lr(local_lr, lr)
    for s, x in zip(b.states, local_lr.unbind(), strict=True):
        s["local_lr"] = x


def _larc_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    with_avg, without = _split(b, "grad_avg")
    for part, src in ((with_avg, [s["grad_avg"] for s in with_avg.states]), (without, without.grads)):
        if part.params:
            torch._foreach_sub_(part.params, torch._foreach_mul(src, [s["local_lr"] for s in part.states]))


def _lamb_step(b: Bucket, h: Hypers, opts: Mapping[str, Any]) -> None:
    debias1 = S.debias(h["mom"], 1 - h["mom"], b.step)
    update = torch._foreach_div([s["grad_avg"] for s in b.states], debias1)
    torch._foreach_div_(update, _debiased_denom(b, h))
    p_norm, u_norm = torch.stack(torch._foreach_norm(b.params)), torch.stack(torch._foreach_norm(update))
    # Roots in float32 at least, rounded once after the division as lamb_step's division by a Python number rounds
    # (roots in a half dtype would be rounded first); one division per list, not one per tensor (CPU foreach).
    roots = torch.tensor(
        [math.sqrt(p.numel()) for p in b.params], dtype=torch.promote_types(p_norm.dtype, torch.float32),
        device=p_norm.device,
    )
    r1, r2 = p_norm / roots, u_norm / roots
    if r1.dtype != p_norm.dtype:
        r1, r2 = r1.to(p_norm.dtype), r2.to(p_norm.dtype)
    q = torch.where((r1 == 0) | (r2 == 0), torch.ones_like(r1), (r1 / r2).clamp(max=10)) * h["lr"]
    torch._foreach_sub_(b.params, torch._foreach_mul(update, list(q.unbind())))


_DAMPENING = frozenset({"dampening"})

BUILTINS: dict[Callable[..., Any], BuiltinSpec] = {
    S.weight_decay: BuiltinSpec(_weight_decay),
    S.l2_reg: BuiltinSpec(_l2_reg),
    S.average_grad: BuiltinSpec(_average_grad, _DAMPENING, ("grad_avg",)),
    S.average_sqr_grad: BuiltinSpec(_average_sqr_grad, _DAMPENING, ("sqr_avg",)),
    S.sgd_step: BuiltinSpec(_sgd_step),
    S.momentum_step: BuiltinSpec(_momentum_step),
    S.rms_prop_step: BuiltinSpec(_rms_prop_step),
    S.step_stat: BuiltinSpec(_step_stat, produces=("step",)),
    S.adam_step: BuiltinSpec(_adam_step),
    S.radam_step: BuiltinSpec(_radam_step),
    S.qhadam_step: BuiltinSpec(_qhadam_step),
    S.larc_layer_lr: BuiltinSpec(_larc_layer_lr, frozenset({"clip"}), ("local_lr",)),
    S.larc_step: BuiltinSpec(_larc_step),
    S.lamb_step: BuiltinSpec(_lamb_step),
}

#: State keys the vectorised path manages; a hyper-parameter with one of these names (which would
#: shadow the state, per fastai's ``{**state, **hypers}``) sends its group down the per-parameter path.
RESERVED_NAMES = frozenset({"grad_avg", "sqr_avg", "step", "local_lr", "do_wd", "dampening", "clip"})


def resolve_builtin(cb: Callable[..., Any]) -> tuple[BuiltinSpec, dict[str, Any]] | None:
    """The spec and bound options of a built-in stepper (or a keyword-only ``partial`` of one), else None."""
    opts: dict[str, Any] = {}
    if isinstance(cb, functools.partial):
        if cb.args:
            return None
        opts = dict(cb.keywords)
        cb = cb.func
    try:
        spec = BUILTINS.get(cb)
    except TypeError:  # an unhashable callable object
        return None
    if spec is None or not set(opts) <= spec.options:
        return None
    return spec, opts
