"""fastai's smoothed loss, bit for bit, computed on the host from the batch losses.

fastai's ``AvgSmoothLoss`` updates a float32 tensor once per batch, ``val = torch.lerp(loss.mean(), val, beta)``,
and reads ``val / (1 - beta**n)``. :class:`~learnloop.metrics.AvgSmoothLoss` defers that work: it keeps the batch
losses and folds them all at once when the average is read, with the functions here, which give the same float32
numbers as the per-batch recurrence:

- :func:`batch_means`: each batch's ``loss.mean()`` in float32, as Python numbers, with one copy to the host;
- :func:`replay_lerp`: every ``val`` of the recurrence, replaying torch.lerp's float32 roundings in doubles;
- :class:`Debiaser`: the division by ``1 - beta**n`` rounded to float32, from a table of the divisors that
  ends where they become 1.0.

>>> vals = replay_lerp([4.0, 1.0], 0.0, 0.9, torch.device("cpu"))  # val after each batch, from val = 0
>>> [round(v, 4) for v in vals]  # 0.1 * 4, then 0.9 * 0.4 + 0.1 * 1
[0.4, 0.46]
>>> [round(v, 4) for v in Debiaser(0.9).debiased(vals, first=1).tolist()]  # divided by 1 - 0.9**n
[4.0, 2.4211]
"""

from __future__ import annotations

import math
import struct
from array import array

import torch
from torch import Tensor

_FLOAT32 = struct.Struct("f")


def to_float32(x: float) -> float:
    """`x` rounded to the nearest float32 number (ties to even; inf past float32's range), as a Python float.

    Applied to the float64 result of an operation on float32 values, it gives the correctly rounded float32
    result of ``+ - * /`` (float64 has more than twice float32's precision, so rounding twice is harmless):
    torch's float32 arithmetic, without a tensor.
    """
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(x))[0]  # type: ignore[no-any-return]
    except OverflowError:  # beyond float32's range
        return math.copysign(math.inf, x)


def batch_means(losses: list[Tensor]) -> list[float]:
    """Each batch's loss as fastai smooths it, ``loss.mean()`` in float32, as numbers: one wait on the device."""
    first = losses[0]
    try:
        stacked = torch.stack(losses)
    except RuntimeError:  # losses of different shapes, or on different devices
        stacked = torch.stack([_mean(t).to(first.device) for t in losses])
    if stacked.ndim > 1:  # per-item losses: each batch's mean, as fastai's `loss.mean()` computes it
        stacked = torch.stack([_mean(t) for t in losses])
    return stacked.float().tolist()


def _mean(loss: Tensor) -> Tensor:
    return loss.detach().mean() if loss.dtype == torch.float32 else loss.detach().double().mean().float()


class Debiaser:
    """Divides the biased averages after batches ``n = first, first + 1, ...`` by ``1 - beta**n`` rounded to
    float32, as torch rounds the Python number fastai divides its float32 average by.

    The divisors are computed once (with Python's pow, as fastai's) into a table that grows as batches come, up
    to ``exact_from``: from that batch on, ``1 - beta**n`` rounds to 1.0 in float32 (``beta**n`` is at most 2**-25,
    half the gap between 1.0 and the float32 number below it; n = 858 for beta 0.98), the division changes nothing
    and the table stops growing. A ``beta`` outside [0, 1) never gets there (``exact_from`` is None): its divisors
    are computed for each call, not kept.
    """

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.exact_from = _first_divisor_of_one(beta)
        self._divisors = torch.zeros(0)  # 1 - beta**n in float32 for n = 1, 2, ... (below `exact_from`)

    def debiased(self, vals: list[float], first: int) -> Tensor:
        """``vals[i] / float32(1 - beta**(first + i))`` for float32 numbers `vals`, a float32 vector."""
        biased = torch.frombuffer(array("f", vals), dtype=torch.float32)  # exact: float32 numbers already
        last = first + len(vals) - 1
        if self.exact_from is None:
            return biased / torch.tensor([1 - self.beta**n for n in range(first, last + 1)], dtype=torch.float32)
        last_below = min(last, self.exact_from - 1)  # the last n whose divisor is not 1.0
        if len(self._divisors) < last_below:
            size = min(max(last_below, 2 * len(self._divisors), 1024), self.exact_from - 1)
            self._divisors = torch.tensor([1 - self.beta**n for n in range(1, size + 1)], dtype=torch.float32)
        below = max(0, last_below - first + 1)  # how many of `vals` have a divisor below 1.0
        head = biased[:below] / self._divisors[first - 1 : first - 1 + below]
        return head if below == len(vals) else torch.cat((head, biased[below:]))  # the rest divided by 1.0


def _divisor(beta: float, n: int) -> float:
    return to_float32(1 - beta**n)


def _first_divisor_of_one(beta: float) -> int | None:
    """The least ``n >= 1`` from which ``float32(1 - beta**n)`` is 1.0 for every larger ``n`` (None if there is
    none: ``beta`` outside [0, 1)). ``beta**n`` decreases with ``n``, so the first 1.0 is found by bisection."""
    if not 0 <= beta < 1:
        return None
    hi = 1
    while _divisor(beta, hi) != 1.0:
        hi *= 2
    lo = hi // 2  # the divisor at lo is below 1.0 (lo = 0: 1 - beta**0 is 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _divisor(beta, mid) == 1.0 else (mid, hi)
    return hi


# `torch.lerp(x, val, beta)` on float32 numbers rounds `beta` to float32 (`w`), then computes
#   `x + w * (val - x)`        if w < 0.5,
#   `val - (val - x) * (1 - w)` otherwise,
# each operation rounded to float32, except that the multiply-add is rounded once where the kernel was
# compiled with fused multiply-adds (x86 CPUs with AVX2, CUDA). Which of the two torch does is probed once
# per device type (`_lerp_fuses`). The replay computes in doubles and rounds each result to float32 with
# Veltkamp's split: for a double `a`, `t = a * (2**29 + 1); t - (t - a)` is `a` rounded to 24 significant
# bits, to nearest with ties to even, as long as `a` lies in float32's normal range. That holds when the
# losses are of one sign (or zero) and every average stays between 2**-60 and 2**60 (`replay_lerp` checks);
# anything else (losses of both signs, non-finite ones) is replayed with torch.lerp itself, one call per batch.
# A double holds the product of two float32 numbers exactly, so a fused multiply-add is the exact sum
# rounded once; summing in doubles rounds it twice, which matters only when the double sum falls exactly
# halfway between two float32 numbers (`_break_tie`). It cannot when `_replay_fused` applies: there the sum
# is exact in a double. Summing two float32 numbers in a double and rounding to float32 is always exact.

_TO_24_BITS = 2.0**29 + 1  # Veltkamp's constant for float32's 24-bit significand
_TO_25_BITS = 2.0**28 + 1  # the same for 25 bits: the float32 numbers and the points halfway between them
_LERP_PROBES = {  # (x, val) where the fused and the unfused formulas differ, for a weight of each branch
    0.98: ((5.0, 38 / 3), (218 / 7, 221 / 3)),
    0.3: ((3 / 7, 2.0), (19 / 7, 22 / 3)),
}
_lerp_fused: dict[str, bool | None] = {}  # device type -> whether torch.lerp fuses its multiply-add there


def replay_lerp(xs: list[float], val: float, beta: float, device: torch.device) -> list[float]:
    """fastai's ``val = torch.lerp(x, val, beta)`` on float32 numbers for each ``x`` of `xs`: every ``val``.

    `val` is the float32 average before the first ``x``; `device` is where the losses were computed (its
    torch.lerp kernel decides the roundings)."""
    w, fused = to_float32(beta), _lerp_fuses(device)
    bounds = _magnitudes(xs, val)
    if fused is None or bounds is None or not 2.0**-40 <= w <= 1:
        return _replay_with_torch(xs, val, beta, device)
    small, big = bounds
    # A lower bound on every |val| of the replay: each is between the last one and `x`, or `w` times the last
    # one for a zero loss, and the first from 0 is (1 - w) * x.
    least = small * (1 if val else 1 - w) * w ** xs.count(0.0)
    if not (2.0**-60 <= least and big <= 2.0**60):  # keeps every rounding within float32's normal range
        return _replay_with_torch(xs, val, beta, device)
    if fused and w >= 0.5 and big < 2.0**28 * least:
        return _replay_fused(xs, val, 1 - w)
    return _replay_checked(xs, val, w, fused)


def _magnitudes(xs: list[float], val: float) -> tuple[float, float] | None:
    """The least and the greatest magnitude of the non-zero numbers among `xs` and `val`, if they are all finite
    and of one sign (None otherwise); (1, 1) if they are all zero."""
    if not math.isfinite(sum(xs)):  # min and max may skip a nan
        return None
    lo, hi = min(xs), max(xs)
    if val:
        lo, hi = min(lo, val), max(hi, val)
    if lo < 0 < hi:
        return None
    if lo == 0 or hi == 0:  # some losses are zero
        nonzero = [abs(x) for x in xs if x] + ([abs(val)] if val else [])
        return (min(nonzero), max(nonzero)) if nonzero else (1.0, 1.0)
    return (lo, hi) if lo > 0 else (-hi, -lo)


def _replay_fused(xs: list[float], val: float, c: float) -> list[float]:
    """The fused ``val - d * c`` (``d = float32(val - x)``, ``c = 1 - w``, ``w >= 0.5``) for losses of one sign
    at most 2**28 times every ``val``: the double ``val - d * c`` is then exact, and rounding it once is right.
    (``c`` is a multiple of 2**-24 up to 0.5, and ``d`` a multiple of the last bit of the smaller of ``val`` and
    ``x`` when they are within a factor 2 of each other (``val - x`` is then exact), or at least half the larger
    one otherwise: ``val - d * c`` then spans at most 53 bits while ``x`` is at most 2**29 times ``val``.)"""
    vals: list[float] = []
    append = vals.append
    for x in xs:
        a = val - x
        t = a * _TO_24_BITS
        s = val - (t - (t - a)) * c
        t = s * _TO_24_BITS
        val = t - (t - s)
        append(val)
    return vals


def _replay_checked(xs: list[float], val: float, w: float, fused: bool) -> list[float]:
    """Either branch of torch.lerp, fused or not, for losses of one sign between 2**-60 and 2**60."""
    small = w < 0.5
    k = w if small else w - 1  # exact: -(1 - w)
    vals: list[float] = []
    for x in xs:
        a = val - x
        t = a * _TO_24_BITS
        d = t - (t - a)
        base = x if small else val
        p = d * k  # exact
        if not fused:
            t = p * _TO_24_BITS
            p = t - (t - p)
        s = base + p
        t = s * _TO_24_BITS
        val = t - (t - s)
        if fused and val != s:
            t = s * _TO_25_BITS
            if t - (t - s) == s:  # halfway between two float32 numbers: `base + p` itself may not be
                val = _break_tie(base, p, s, val)
        vals.append(val)
    return vals


def _break_tie(a: float, b: float, s: float, r: float) -> float:
    """``a + b`` rounded once to float32, where ``s``, ``a + b`` rounded to a double, is halfway between the
    float32 numbers ``r`` (what ``s`` rounds to) and ``2 * s - r``."""
    bb = s - a
    err = (a - (s - bb)) + (b - bb)  # a + b - s, exactly (Knuth's two-sum)
    return s + s - r if err and (err > 0) == (s > r) else r


def _replay_with_torch(xs: list[float], val: float, beta: float, device: torch.device) -> list[float]:
    """The replay with torch.lerp itself, one call per batch as fastai: exact whatever the numbers, slower."""
    v = torch.tensor(val, dtype=torch.float32, device=device)
    vals = []
    for x in torch.tensor(xs, dtype=torch.float32, device=device).unbind():
        v = torch.lerp(x, v, beta)
        vals.append(v)
    return torch.stack(vals).tolist()


def _lerp_fuses(device: torch.device) -> bool | None:
    """Whether torch.lerp on `device` rounds its multiply-add once (True) or twice (False), or does neither
    (None: the replay then calls torch.lerp), found out once per device type from a few float32 numbers."""
    if device.type not in _lerp_fused:
        matches = {True: True, False: True}
        for beta, pairs in _LERP_PROBES.items():
            w = to_float32(beta)
            for x, val in pairs:
                x, val = to_float32(x), to_float32(val)
                start, end = torch.tensor([x, val], dtype=torch.float32, device=device).unbind()
                got = torch.lerp(start, end, beta).item()
                for fused in matches:
                    matches[fused] &= got == _replay_checked([x], val, w, fused)[0]
        _lerp_fused[device.type] = True if matches[True] else False if matches[False] else None
    return _lerp_fused[device.type]
