"""MixUp and CutMix: train on blends of two items, with the loss (or the targets) blended in the same proportion.

While training, every batch is paired with a shuffled copy of itself. MixUp blends the inputs
with a weight `lam` per item; CutMix pastes a random box of the partner image, `lam` being the
share of the image that stays. Float targets (regression, one-hot, multi-label) are blended the
same way. Integer targets (class indices) cannot be blended, so the loss is: `learn.loss_func`
is replaced for the training phase by a `MixedLoss` computing
`lam * loss(pred, y) + (1 - lam) * loss(pred, y_partner)` per item, then reducing as the
original loss does. Validation sees the original loss function and unmixed batches.

>>> learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=MixUp(0.4))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch.distributions.beta import Beta

from ..callback import Callback

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["MixHandler", "MixUp", "CutMix", "MixedLoss", "reduce_loss"]

LossFunc = Callable[..., torch.Tensor]


def reduce_loss(loss: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-item losses as `reduction` ('mean', 'sum' or 'none') says."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _reduction_of(loss_func: Any) -> str | None:
    """The loss function's reduction, or None when it has none we can find."""
    reduction = getattr(loss_func, "reduction", None)
    if isinstance(reduction, str):
        return reduction
    if isinstance(loss_func, functools.partial) and "reduction" in loss_func.keywords:
        return str(loss_func.keywords["reduction"])
    param = _reduction_param(loss_func)
    if param is not None:
        return str(param.default) if isinstance(param.default, str) else "mean"
    return None


def _reduction_param(loss_func: Any) -> inspect.Parameter | None:
    try:
        return inspect.signature(loss_func).parameters.get("reduction")
    except (TypeError, ValueError):
        return None


@contextmanager
def unreduced(loss_func: LossFunc) -> Iterator[LossFunc]:
    """`loss_func` computing one loss per item: its `reduction` attribute set to 'none' for the block,
    or a call with `reduction='none'`. A ValueError when the loss offers neither."""
    if isinstance(getattr(loss_func, "reduction", None), str):
        old = loss_func.reduction  # type: ignore[attr-defined]
        loss_func.reduction = "none"  # type: ignore[attr-defined]
        try:
            yield loss_func
        finally:
            loss_func.reduction = old  # type: ignore[attr-defined]
    elif _reduction_param(loss_func) is not None:
        yield functools.partial(loss_func, reduction="none")
    else:
        raise ValueError(_cannot_unreduce(loss_func))


def _cannot_unreduce(loss_func: Any) -> str:
    return (
        f"MixUp/CutMix cannot mix the loss {loss_func!r}: with integer targets (class indices) the loss of "
        "each item must be computed on both targets, which needs a loss that returns one value per item, "
        "i.e. an nn.Module with a `reduction` attribute (nn.CrossEntropyLoss(), CrossEntropyLossFlat(), "
        "LabelSmoothingCrossEntropy()) or a function taking `reduction='none'` (F.cross_entropy). "
        "Use one of those, or give float (one-hot) targets, which are mixed directly."
    )


class MixedLoss:
    """The loss function MixUp/CutMix put in `learn.loss_func` while training.

    On a batch the handler mixed, it blends the original loss on the item's target and on its
    partner's target; otherwise (validation, or a batch it did not prepare) it is exactly the
    original loss. `activation`, `decodes` and `reduction` are the original's.
    """

    def __init__(self, original: LossFunc, handler: MixHandler) -> None:
        self.original = original
        self.handler = handler

    def __call__(self, pred: Any, *yb: Any, **kwargs: Any) -> torch.Tensor:
        handler = self.handler
        mix = handler._pending
        # Left behind by a fit that raised, or called outside a mixed training batch: the plain loss.
        if mix is None or handler.learn is None or not handler.learn.training:
            return self.original(pred, *yb, **kwargs)
        lam, partner_yb = mix
        reduction = kwargs.pop("reduction", None) or _reduction_of(self.original) or "mean"
        with unreduced(self.original) as per_item:
            mixed = _lerp_per_item(per_item(pred, *partner_yb, **kwargs), per_item(pred, *yb, **kwargs), lam)
        return reduce_loss(mixed, reduction)

    @property
    def reduction(self) -> str:
        """The original loss's `reduction` attribute (an AttributeError when it has none); settable."""
        reduction = getattr(self.original, "reduction", None)
        if not isinstance(reduction, str):
            raise AttributeError(f"{self.original!r} has no `reduction` attribute")
        return reduction

    @reduction.setter
    def reduction(self, value: str) -> None:
        self.original.reduction = value  # type: ignore[attr-defined]

    @property
    def activation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The original loss's activation, if it has one."""
        return getattr(self.original, "activation", None)

    @property
    def decodes(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The original loss's decoding, if it has one."""
        return getattr(self.original, "decodes", None)

    def __repr__(self) -> str:
        return f"MixedLoss({self.original!r})"


def _lerp_per_item(start: torch.Tensor, end: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """`start + lam * (end - start)`, `lam` holding one weight per item (the first axis) or a scalar."""
    if lam.ndim == 0 or start.ndim == 0:
        return torch.lerp(start, end, lam.to(start.dtype))
    bs = lam.shape[0]
    if start.shape[0] == bs:
        return torch.lerp(start, end, _unsqueeze_to(lam, start).to(start.dtype))
    # A flattened loss (sequences: bs * seq_len values) : weigh each item's block of values.
    flat = torch.lerp(start.reshape(bs, -1), end.reshape(bs, -1), lam[:, None].to(start.dtype))
    return flat.reshape(start.shape)


def _unsqueeze_to(lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`lam` of shape (bs,) viewed as (bs, 1, ..., 1) to broadcast against `x`."""
    return lam.reshape(lam.shape[0], *([1] * (x.ndim - 1)))


class MixHandler(Callback):
    """Base of MixUp and CutMix: samples `lam` from Beta(alpha, alpha) and mixes the loss or the targets.

    Subclasses implement `before_batch`, setting `learn.xb` and calling `_mix_targets`.
    """

    run_valid = False

    def __init__(self, alpha: float = 0.5) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0 (the Beta(alpha, alpha) distribution), got {alpha}.")
        self.alpha = alpha
        self.distrib = Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
        # (lam, partner targets) of the training batch in flight, read by MixedLoss.
        self._pending: tuple[torch.Tensor, tuple[Any, ...]] | None = None
        self._installed: MixedLoss | None = None
        self._can_unreduce = True

    # ------------------------------------------------------------ outer events
    def before_fit(self) -> None:
        learn = self.learn
        # A fit that raised (anything but a cancel exception skips after_fit) may have left a MixedLoss
        # behind, from this handler or another one: unwrap it rather than wrapping it again.
        while isinstance(learn.loss_func, MixedLoss):
            learn.loss_func = learn.loss_func.original
        self._installed, self._pending = None, None
        loss_func = learn.loss_func
        self._can_unreduce = isinstance(getattr(loss_func, "reduction", None), str) or (
            _reduction_param(loss_func) is not None
        )
        if not self._can_unreduce and _targets_look_integer(learn):
            raise ValueError(_cannot_unreduce(loss_func))

    def before_train(self) -> None:
        self._install()

    def after_train(self) -> None:
        self._uninstall()

    def after_epoch(self) -> None:
        self._uninstall()  # CancelEpochException raised while training skips after_train

    def after_cancel_fit(self) -> None:
        self._uninstall()

    def after_fit(self) -> None:
        self._uninstall()
        self._pending = None

    # ------------------------------------------------------------ batch events
    def after_loss(self) -> None:
        self._pending = None

    def after_cancel_batch(self) -> None:
        self._pending = None

    def _install(self) -> None:
        learn = self.learn
        if self._installed is not None and learn.loss_func is self._installed:
            return
        self._installed = MixedLoss(learn.loss_func, self)
        learn.loss_func = self._installed

    def _uninstall(self) -> None:
        learn = self.learn
        installed = self._installed
        if installed is not None and learn is not None and learn.loss_func is installed:
            learn.loss_func = installed.original
        self._installed = None

    def _shuffle(self, bs: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(bs).to(device)

    def _mix_targets(self, lam: torch.Tensor, shuffle: torch.Tensor) -> None:
        """Blend float targets with their partners; for integer targets, leave the blending to MixedLoss."""
        learn = self.learn
        yb = learn.yb
        partner = tuple(y[shuffle] for y in yb)
        if all(isinstance(y, torch.Tensor) and y.is_floating_point() for y in yb):
            learn.yb = tuple(torch.lerp(p, y, _broadcast(lam, y)) for p, y in zip(partner, yb, strict=True))
            return
        if not self._can_unreduce:
            loss_func = learn.loss_func
            raise ValueError(_cannot_unreduce(loss_func.original if isinstance(loss_func, MixedLoss) else loss_func))
        self._pending = (lam, partner)


def _broadcast(lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    lam = lam.to(device=x.device, dtype=x.dtype)
    return lam if lam.ndim == 0 else _unsqueeze_to(lam, x)


def _targets_look_integer(learn: Learner) -> bool:
    """Whether the training targets are known, before any batch is drawn, to be class indices."""
    loss_func = learn.loss_func
    if getattr(loss_func, "y_int", False):
        return True
    dataset = getattr(learn.dls.train, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and tensors and isinstance(tensors[-1], torch.Tensor):
        return not tensors[-1].is_floating_point()
    return False


def _check_batch(learn: Learner, name: str) -> torch.Tensor:
    if not learn.yb:
        raise ValueError(f"{name} needs targets to mix, but the batch has none (learn.yb is empty).")
    x = learn.xb[0]
    for i, xi in enumerate(learn.xb):
        if not (isinstance(xi, torch.Tensor) and xi.is_floating_point()):
            raise TypeError(
                f"{name} blends the inputs, so they must be float tensors; input {i} is "
                f"{getattr(xi, 'dtype', type(xi).__name__)}."
            )
    return x


class MixUp(MixHandler):
    """mixup (Zhang et al., 2017): each training input becomes `lam * x + (1 - lam) * x_partner`.

    `lam` is drawn per item from Beta(alpha, alpha) and folded to `max(lam, 1 - lam)`, so the
    item itself always dominates its blend.
    """

    def __init__(self, alpha: float = 0.4) -> None:
        super().__init__(alpha)

    def before_batch(self) -> None:
        learn = self.learn
        x = _check_batch(learn, "MixUp")
        bs = x.shape[0]
        lam = self.distrib.sample((bs,))
        lam = torch.maximum(lam, 1 - lam).to(x.device)
        shuffle = self._shuffle(bs, x.device)
        learn.xb = tuple(torch.lerp(xi[shuffle], xi, _broadcast(lam, xi)) for xi in learn.xb)
        self._mix_targets(lam, shuffle)


class CutMix(MixHandler):
    """CutMix (Yun et al., 2019): a random box of each training image is replaced by its partner's.

    The box covers a share `1 - lam` of the image, `lam` drawn once per batch from
    Beta(alpha, alpha); `lam` is then corrected to the share actually kept after clipping the box
    to the image. Inputs are images `(bs, channels, height, width)`.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha)

    def before_batch(self) -> None:
        learn = self.learn
        x = _check_batch(learn, "CutMix")
        if x.ndim != 4:
            raise ValueError(f"CutMix expects image batches (bs, channels, height, width), got shape {tuple(x.shape)}.")
        bs, _, height, width = x.shape
        lam = float(self.distrib.sample())
        shuffle = self._shuffle(bs, x.device)
        x1, y1, x2, y2 = self.rand_bbox(width, height, lam)
        mixed = x.clone()  # the batch may be a view of the dataset: never write into it
        mixed[..., y1:y2, x1:x2] = x[shuffle][..., y1:y2, x1:x2]
        learn.xb = (mixed, *learn.xb[1:])
        kept = 1 - ((x2 - x1) * (y2 - y1)) / float(width * height)
        self._mix_targets(torch.tensor(kept, device=x.device), shuffle)

    def rand_bbox(self, width: int, height: int, lam: float) -> tuple[int, int, int, int]:
        """A box `(x1, y1, x2, y2)` of area about `(1 - lam) * width * height` at a uniform random centre,
        clipped to the image."""
        cut = (1.0 - lam) ** 0.5
        cut_w, cut_h = round(width * cut), round(height * cut)
        cx = int(torch.randint(0, width, (1,)))
        cy = int(torch.randint(0, height, (1,)))
        x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
        y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
        return x1, y1, x2, y2
