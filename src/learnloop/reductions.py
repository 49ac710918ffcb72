"""Combining what each rank computed on its share: metric totals, stored predictions, recorded losses.

Every function here is a collective over learnloop's control group (:mod:`learnloop.distributed`):
all ranks call it at the same point of the loop, and it returns at once in a single process.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from . import distributed as D
from .nested import map_tensors
from .sharding import interleave
from .warn import warn_caller

__all__ = ["average_losses", "combinable", "gather_preds", "hand_metrics_to_rank_zero", "reduce_metrics"]


def reduce_metrics(metrics: Sequence[Any], warned: set[str] | None = None) -> None:
    """Make each metric's ``value`` the one over every rank's share, in place.

    Averages (``total``/``count``, as AvgMetric and AvgLoss keep them) are summed over the ranks;
    whole-set metrics (``preds``/``targs`` lists, as AccumMetric keeps them) get every rank's items.
    A torchmetrics metric (TorchMetric) syncs itself in ``compute()``. Any other metric keeps its
    own rank's value, with a warning (once per name when `warned` is given).
    """
    means = [m for m in metrics if _is_mean(m)]
    if means:
        # Gathered rather than all-reduced: a rank that saw no batch holds the total 0.0, whatever the shape of
        # the others' (a function of several values); summed in float64, in rank order, alike on every rank.
        local = [(m.total.detach().cpu() if isinstance(m.total, torch.Tensor) else m.total, _plain(m.count))
                 for m in means]
        shares = D.all_gather_objects(local)
        for i, m in enumerate(means):
            totals = [s[i][0] for s in shares]
            # As the counts were (a weighted average's may be fractions): an int count of items stays an int.
            count = sum(s[i][1] for s in shares)
            m.count = torch.tensor(count, dtype=m.count.dtype, device=m.count.device) \
                if isinstance(m.count, torch.Tensor) else count
            tensors = [t for t in totals if isinstance(t, torch.Tensor)]
            if not tensors:  # a total of Python numbers (AvgMetric of a function returning floats) stays one
                m.total = sum(totals)
                continue
            zero = torch.zeros((), dtype=torch.float64)
            total = sum((t.double() if isinstance(t, torch.Tensor) else t for t in totals), zero)
            like = m.total if isinstance(m.total, torch.Tensor) else tensors[0]
            m.total = total.to(device=like.device, dtype=like.dtype)
    for m in metrics:
        if any(m is x for x in means):
            continue
        if _keeps_items(m):
            m.preds, m.targs = _gather_list(m.preds), _gather_list(m.targs)
        elif type(m).__name__ != "TorchMetric" and (warned is None or m.name not in warned):
            if warned is not None:
                warned.add(m.name)
            warn_caller(
                f"Metric {m.name!r} ({type(m).__name__}) cannot be combined over ranks: each rank reports it on "
                "its own share of the data. Give it `total`/`count` (an average) or `preds`/`targs` lists "
                "(a whole-set metric)."
            )


def hand_metrics_to_rank_zero(metrics: Sequence[Any]) -> None:
    """Leave rank 0 holding every rank's running totals of `metrics` so far and the other ranks none, for a checkpoint
    in the middle of a phase: rank 0 writes it and every rank resumes from it (the others then start from nothing,
    see Recorder.load_state_dict), while the run that goes on still counts each item once when the phase's end
    sums the ranks' totals. Metrics that cannot be combined keep each rank's own."""
    shared = [m for m in metrics if combinable(m)]
    reduce_metrics(shared)
    if D.rank() != 0:
        for m in shared:
            m.reset()


def combinable(metric: Any) -> bool:
    """Whether :func:`reduce_metrics` can combine `metric` over the ranks: an average (``total``/``count``) or a
    whole-set metric (``preds``/``targs`` lists)."""
    return _is_mean(metric) or _keeps_items(metric)


def _is_mean(m: Any) -> bool:
    # An average by its attributes, not their values' types: a rank that saw no batch may still hold the total its
    # reset() set (0, an int, where the others hold tensors), and every rank must gather the same metrics.
    return _is_number(getattr(m, "total", None)) and hasattr(m, "count")


def _keeps_items(m: Any) -> bool:
    return isinstance(getattr(m, "preds", None), list) and isinstance(getattr(m, "targs", None), list)


def _is_number(x: Any) -> bool:
    """A tensor, or a Python or numpy number (not a bool): what an average's total may be."""
    return isinstance(x, (torch.Tensor, numbers.Real)) and not isinstance(x, bool)


def _plain(count: Any) -> int | float:
    """An average's count as a Python number: an int when it is whole by type, else a float (weights summed)."""
    if isinstance(count, torch.Tensor):
        count = count.item()
    return int(count) if isinstance(count, numbers.Integral) else float(count)


def _gather_list(items: list[torch.Tensor]) -> list[torch.Tensor]:
    device = items[0].device if items else None
    local = torch.cat([t.detach().cpu() for t in items]) if items else None
    present = [s for s in D.all_gather_objects(local) if s is not None]
    if not present:
        return []
    merged = torch.cat(present)
    return [merged.to(device) if device is not None else merged]


def gather_preds(gather: Any, in_order: bool) -> None:
    """Give a GatherPredsCallback every rank's predictions, targets, inputs and losses.

    `in_order`: each rank held items ``rank, rank + W, ...`` (a ShardSampler), so dataset order
    is rebuilt; otherwise the shares are put one after the other, in rank order. Each field is merged as
    GatherPredsCallback joined its batches: tuples (a namedtuple too) and dicts field by field, tensors along
    dimension 0, and a list (the items of predictions whose sizes differ between batches) item by item.
    """
    fields = ("preds", "targets", "inputs", "losses")
    # An empty list of losses (a rank that gathered none) is no share: it stays [] only if every rank's is.
    local = [getattr(gather, f) for f in fields]
    shares = D.all_gather_objects(tuple(None if _empty_list(x) else _to_cpu(x) for x in local))
    device = _device_of(gather.preds)
    for i, field in enumerate(fields):
        merged = _merge([s[i] for s in shares], in_order)
        setattr(gather, field, local[i] if merged is None and _empty_list(local[i]) else _to_device(merged, device))


def _empty_list(x: Any) -> bool:
    return isinstance(x, list) and not x


def average_losses(learn: Any, mark: int) -> int:
    """Average over ranks the smoothed training losses the Recorder recorded from index `mark` on.

    A rank that ran on into one more batch before learning of a cancel raised elsewhere recorded one
    more loss (and lr, and scheduled values) and counted one more ``train_iter``; those are dropped,
    as the rank that cancelled did not get that far. Returns the new length of ``recorder.losses``,
    the next call's `mark`.
    """
    recorder = getattr(learn, "recorder", None)
    if recorder is None:
        return mark
    losses = recorder.losses  # computes the pending ones
    n_local = len(losses) - mark
    counts, iters = zip(*D.all_gather_objects((n_local, learn.train_iter)), strict=True)
    learn.train_iter = min(iters)
    n = min(counts)
    extra = n_local - n
    if extra:
        del losses[mark + n :]
        del recorder.lrs[len(recorder.lrs) - extra :]
        recorder.smooth_loss.count -= extra
        scheduler = getattr(learn, "param_scheduler", None)
        for values in getattr(scheduler, "hps", {}).values():
            del values[len(values) - extra :]
    if n:
        total = D.all_reduce_sum(torch.stack([t.detach().double().reshape(()) for t in losses[mark:]]))
        mean = total / D.world_size()
        losses[mark:] = list(mean.float().unbind())
    if n or extra:
        # The running average carries on from the common value (which no longer holds the dropped batches).
        if losses:
            recorder.smooth_loss.set_value(float(losses[-1]))
        else:
            recorder.smooth_loss.reset()
    return len(losses)


def _to_cpu(x: Any) -> Any:
    return map_tensors(lambda t: t.detach().cpu(), x)


def _to_device(x: Any, device: torch.device | None) -> Any:
    return x if device is None else map_tensors(lambda t: t.to(device), x)


def _device_of(x: Any) -> torch.device | None:
    found: list[torch.Tensor] = []
    map_tensors(found.append, x)
    return found[0].device if found else None


def _merge(parts: list[Any], in_order: bool) -> Any:
    """One field of every rank's gathered predictions (None: the rank had none) as one (see gather_preds)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        return {k: _merge([None if p is None else p[k] for p in parts], in_order) for k in first}
    if isinstance(first, tuple):
        fields = [_merge([None if p is None else p[i] for p in parts], in_order) for i in range(len(first))]
        return type(first)(*fields) if hasattr(first, "_fields") else type(first)(fields)
    tensors = all(isinstance(p, torch.Tensor) for p in present)
    if tensors and len({tuple(p.shape[1:]) for p in present}) == 1:
        return interleave(parts) if in_order else torch.cat(present)
    # Items of different sizes (one rank's batches may all have had the same size, so it joined them into a
    # tensor where another kept a list): a list of items, as GatherPredsCallback gives them in one process.
    items = [None if p is None else list(p.unbind(0)) if isinstance(p, torch.Tensor) else list(p) for p in parts]
    if not in_order:
        return [x for p in items if p is not None for x in p]
    out: list[Any] = [None] * sum(len(p) for p in items if p is not None)
    for r, p in enumerate(items):
        if p:
            out[r :: len(items)] = p
    return out
