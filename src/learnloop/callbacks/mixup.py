"""MixUp and CutMix: train on blends of two items, with the loss (or the targets) blended in the same proportion.

While training, every batch is paired with a shuffled copy of itself. MixUp blends the inputs
with a weight `lam` per item; CutMix pastes a random box of the partner image, `lam` being the
share of the image that stays. The handler keeps fastai's attributes: `lam`, the partners' targets
`yb1`, `stack_y`, and while training `old_lf` (the loss function) and `lf` (the mixed loss). When
`stack_y` is False (float targets: regression, one-hot, multi-label) the targets are blended like
the inputs; when it is True (the loss takes class indices, fastai's `y_int`, or the targets are not
floats and cannot be blended) the loss is mixed instead: `learn.loss_func` is replaced for the
training phase by a `MixedLoss` (mixed_loss.py) calling `lf`, i.e. `lam * loss(pred, y) + (1 - lam) * loss(pred, y1)`
per item, then reduced as the original loss does. Validation sees the original loss function and
unmixed batches; a `validate()` or `get_preds()` called inside a fit leaves the fit's `MixedLoss` in place, which
is the plain loss there.

Two handlers on one learner blend float targets one after the other; with class indices, whose loss each would mix,
they are a ValueError.

A `MixHandler` subclass written for fastai works as it is: its `before_batch` sets `self.lam` and
`self.yb1`, blends `learn.xb`, and blends `learn.yb` unless `self.stack_y`.

>>> learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=MixUp(0.4))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.distributions.beta import Beta

from ..callback import Callback
from ..errors import to_number
from .mixed_loss import LossFunc as LossFunc
from .mixed_loss import MixedLoss, _cannot_unreduce, _reduction_of, _reduction_param, reduce_loss, unreduced

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["MixHandler", "MixUp", "CutMix", "MixedLoss", "reduce_loss"]


def _lerp_per_item(start: torch.Tensor, end: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """`start + lam * (end - start)`, `lam` holding one weight per item (the first axis) or a scalar."""
    lam = lam.to(device=start.device, dtype=start.dtype)
    if lam.numel() == 1:  # one weight for the batch (CutMix's, of shape (1,) as fastai's)
        return torch.lerp(start, end, lam.reshape(()))
    if start.ndim == 0:  # a loss that reduces whatever its `reduction` says: one value per weight, as fastai's lerp
        return torch.lerp(start, end, lam)
    bs = lam.shape[0]
    if start.shape[0] == bs:
        return torch.lerp(start, end, _unsqueeze_to(lam, start))
    # A flattened loss (sequences: bs * seq_len values) : weigh each item's block of values.
    flat = torch.lerp(start.reshape(bs, -1), end.reshape(bs, -1), lam[:, None])
    return flat.reshape(start.shape)


def _unsqueeze_to(lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`lam` of shape (bs,) viewed as (bs, 1, ..., 1) to broadcast against `x`."""
    return lam.reshape(lam.shape[0], *([1] * (x.ndim - 1)))


class MixHandler(Callback):
    """Base of MixUp and CutMix: samples `lam` from Beta(alpha, alpha) and mixes the loss or the targets.

    Subclasses implement `before_batch`: set `self.lam` (one weight per item, or one for the batch)
    and `self.yb1` (the partners' targets), blend `learn.xb`, and blend `learn.yb` unless
    `self.stack_y`, as fastai's do; MixUp and CutMix call `_mix_targets` for the targets.
    """

    run_valid = False

    # fastai's attributes, set by the first training phase or batch (absent before, as in fastai).
    lam: Any  # the weight of each item (its partner gets 1 - lam): a tensor of shape (bs,) or (1,), or a float
    old_lf: Any  # the learner's loss function, set at before_train

    def __init__(self, alpha: float = 0.5) -> None:
        alpha = to_number(alpha, "alpha", type(self).__name__)  # a string: fastai's TypeError, with a sentence
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0 (the Beta(alpha, alpha) distribution), got {alpha}.")
        self.alpha = alpha
        self.distrib = Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
        self._yb1: tuple[Any, ...] | None = None
        self._mixed = False  # `yb1` was set for the training batch in flight (read by MixedLoss)
        self._stack_y: bool | None = None  # set by hand; None: decided by the loss function and the targets
        self._decided_stack_y: bool | None = None  # the value last decided, read once the callback is removed
        self._installed: MixedLoss | None = None
        self._can_unreduce = True

    # ------------------------------------------------------------ fastai's attributes
    @property
    def yb1(self) -> tuple[Any, ...]:
        """The targets of the partners of the batch's items (fastai's name); set by `before_batch`."""
        if self._yb1 is None:
            raise AttributeError(f"{type(self).__name__}.yb1 is set by the first mixed training batch")
        return self._yb1

    @yb1.setter
    def yb1(self, value: tuple[Any, ...]) -> None:
        self._yb1, self._mixed = value, True

    @property
    def stack_y(self) -> bool:
        """Whether the loss is mixed (computed on both targets, blended by `lam`) rather than the targets.

        True when the loss function takes class indices (its `y_int`, fastai's rule) or when the
        batch's targets are not all float tensors, which cannot be blended (fastai fails on those);
        assign it to decide for every batch. Once the callback is off the learner (after `fit(cbs=...)`),
        the value last decided, as fastai's attribute; an AttributeError before any decision, as in fastai.
        """
        if self._stack_y is not None:
            return self._stack_y
        learn = self.learn
        if learn is None:
            if self._decided_stack_y is None:  # not decided yet: absent, as fastai's before its first before_train
                raise AttributeError("stack_y")  # Callback.__getattr__ then raises the usual no-attribute error
            return self._decided_stack_y
        if getattr(getattr(self, "old_lf", learn.loss_func), "y_int", False):
            decided = True
        else:
            targets = [y for y in learn.yb if y is not None]
            decided = bool(targets) and not all(isinstance(y, torch.Tensor) and y.is_floating_point()
                                                for y in targets)
        self._decided_stack_y = decided
        return decided

    @stack_y.setter
    def stack_y(self, value: bool) -> None:
        self._stack_y = value

    def lf(self, pred: Any, *yb: Any, **kwargs: Any) -> torch.Tensor:
        """fastai's mixed loss: `old_lf` on the partners' targets `yb1` and on `yb`, blended per item by `lam`,
        reduced as `old_lf` reduces; the plain `old_lf` outside training."""
        if not self.learn.training:
            return self.old_lf(pred, *yb, **kwargs)
        reduction = kwargs.pop("reduction", None) or _reduction_of(self.old_lf) or "mean"
        lam = self.lam if isinstance(self.lam, torch.Tensor) else torch.tensor(float(self.lam))
        with unreduced(self.old_lf) as per_item:  # `pred` may be a tuple (a model with auxiliary outputs)
            mixed = _lerp_per_item(per_item(pred, *self.yb1, **kwargs), per_item(pred, *yb, **kwargs), lam)
        return reduce_loss(mixed, reduction)

    # ------------------------------------------------------------ outer events
    def before_fit(self) -> None:
        learn = self.learn
        if learn._nested_run:  # validate() or get_preds() inside a fit: the fit's MixedLoss (plain there) carries on
            return
        # A fit that raised (anything but a cancel exception skips after_fit) may have left a MixedLoss
        # behind, from this handler or another one: unwrap it rather than wrapping it again.
        while isinstance(learn.loss_func, MixedLoss):
            learn.loss_func = learn.loss_func.original
        self._installed, self._mixed = None, False
        loss_func = learn.loss_func
        self._can_unreduce = isinstance(getattr(loss_func, "reduction", None), str) or (
            _reduction_param(loss_func) is not None
        )
        if not self._can_unreduce and _targets_look_integer(learn):
            raise ValueError(_cannot_unreduce(loss_func))

    def before_train(self) -> None:
        learn = self.learn
        _check_not_mixed_by_another(self, learn.loss_func)
        if not isinstance(learn.loss_func, MixedLoss):
            self.old_lf = learn.loss_func
        # As fastai's, the loss function is replaced when the loss is to be mixed: here when that is known before
        # any batch (the loss's `y_int`, integer tensors in the dataset), else by the first batch that needs it.
        if self._stack_y or (self._stack_y is None and (getattr(self.old_lf, "y_int", False)
                                                        or _targets_are_float(learn) is False)):
            self._install()

    def after_train(self) -> None:
        self._uninstall()

    def after_cancel_train(self) -> None:
        self._uninstall()  # before after_train, as fastai's: a later callback's after_cancel_train sees the loss

    def after_epoch(self) -> None:
        if not self.learn._nested_run:
            self._uninstall()  # CancelEpochException raised while training skips after_train

    def after_cancel_fit(self) -> None:
        if not self.learn._nested_run:
            self._uninstall()

    def after_fit(self) -> None:
        if not self.learn._nested_run:  # the end of a validate() inside a fit, which goes on training mixed
            self._uninstall()
            self._mixed = False

    # ------------------------------------------------------------ batch events
    def after_pred(self) -> None:
        # A batch whose loss must be mixed (class indices) where the targets' type was not known before it.
        if self._mixed and self._installed is None and self.stack_y:
            self._install()

    def after_loss(self) -> None:
        self._mixed = False

    def after_cancel_batch(self) -> None:
        self._mixed = False

    def _install(self) -> None:
        learn = self.learn
        if self._installed is not None and learn.loss_func is self._installed:
            return
        _check_not_mixed_by_another(self, learn.loss_func)
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
        """Set `lam` and `yb1`; blend the targets with their partners' unless `stack_y` (then MixedLoss mixes)."""
        learn = self.learn
        yb = learn.yb
        self.lam, self.yb1 = lam, tuple(y[shuffle] for y in yb)
        if not self.stack_y:
            learn.yb = tuple(torch.lerp(p, y, _broadcast(lam, y)) for p, y in zip(self.yb1, yb, strict=True))
        elif not self._can_unreduce:
            raise ValueError(_cannot_unreduce(self.old_lf))


def _check_not_mixed_by_another(handler: MixHandler, loss_func: Any) -> None:
    """Refuse to mix a loss another handler mixes already: the mixed loss computes `old_lf`, the plain loss, on this
    handler's targets and partners only, so the other handler's mix of the targets would silently be left out."""
    if isinstance(loss_func, MixedLoss) and loss_func.handler is not handler:
        other = type(loss_func.handler).__name__
        raise ValueError(
            f"{type(handler).__name__} and {other} would both mix the loss (the targets are class indices, which "
            f"cannot be blended): {type(handler).__name__}'s mixed loss would leave out {other}'s mix of the targets. "
            "Train with one of them (with float targets, one-hot say, which are blended, both can run)."
        )


def _broadcast(lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    lam = lam.to(device=x.device, dtype=x.dtype)
    return lam if lam.ndim == 0 else _unsqueeze_to(lam, x)


def _targets_look_integer(learn: Learner) -> bool:
    """Whether the training targets are known, before any batch is drawn, to be class indices."""
    return bool(getattr(learn.loss_func, "y_int", False)) or _targets_are_float(learn) is False


def _targets_are_float(learn: Learner) -> bool | None:
    """Whether the training targets are float tensors, when the dataset says so before any batch (else None)."""
    dataset = getattr(learn.dls.train, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and tensors and isinstance(tensors[-1], torch.Tensor):
        return tensors[-1].is_floating_point()
    return None


def _check_batch(learn: Learner, name: str, blends_inputs: bool = True) -> Any:
    """The batch's first input, once the batch is known to have targets, all tensors, and, when `name` blends the
    inputs, to have only float tensors as inputs."""
    if not learn.yb:
        raise ValueError(f"{name} needs targets to mix, but the batch has none (learn.yb is empty).")
    for i, y in enumerate(learn.yb):
        if not isinstance(y, torch.Tensor):  # indexing it by the shuffle failed with torch's or a dict's message
            raise TypeError(
                f"{name} pairs each item with another by indexing the targets with a shuffle of the batch, so each "
                f"target must be a tensor whose first dimension is the batch; target {i} is a {type(y).__name__}."
            )
    x = learn.xb[0]
    for i, xi in enumerate(learn.xb if blends_inputs else ()):
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
    to the image. The first input is an image batch `(bs, channels, height, width)`, of any dtype (the box is
    pasted, not blended: uint8 images work, as in fastai); the other inputs are left as they are.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha)

    def before_batch(self) -> None:
        learn = self.learn
        x = _check_batch(learn, "CutMix", blends_inputs=False)
        if not (isinstance(x, torch.Tensor) and x.ndim == 4):
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise ValueError(
                f"CutMix expects image batches (bs, channels, height, width) as the first input, got {got}."
            )
        bs, _, height, width = x.shape
        lam = float(self.distrib.sample())
        shuffle = self._shuffle(bs, x.device)
        x1, y1, x2, y2 = self.rand_bbox(width, height, lam)
        mixed = x.clone()  # the batch may be a view of the dataset: never write into it
        mixed[..., y1:y2, x1:x2] = x[shuffle][..., y1:y2, x1:x2]
        learn.xb = (mixed, *learn.xb[1:])
        # The share kept, computed as a tensor of shape (1,) in the default float dtype, as fastai's: in float64
        # then rounded it can be a float32 ulp away from fastai's.
        area = torch.tensor([(x2 - x1) * (y2 - y1)], device=x.device)
        self._mix_targets(1 - area / float(width * height), shuffle)

    def rand_bbox(self, width: int, height: int, lam: float | torch.Tensor) -> tuple[int, int, int, int]:
        """A box `(x1, y1, x2, y2)` of area about `(1 - lam) * width * height` at a uniform random centre,
        clipped to the image."""
        # In float32 (torch's default dtype), as fastai's: the rounding of the sides then matches it to the pixel.
        cut = torch.sqrt(1.0 - torch.as_tensor(lam, dtype=torch.get_default_dtype()))
        cut_w, cut_h = int(torch.round(width * cut)), int(torch.round(height * cut))
        cx = int(torch.randint(0, width, (1,)))
        cy = int(torch.randint(0, height, (1,)))
        x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
        y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
        return x1, y1, x2, y2
