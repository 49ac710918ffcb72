"""Callbacks that change what `get_preds` returns: Monte-Carlo dropout."""

from __future__ import annotations

from torch import nn

from ..callback import Callback

__all__ = ["MCDropoutCallback"]


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of `model` whose class name contains "dropout", in any case (fastai's rule).

    That takes in all of torch's dropout layers (`nn.Dropout`, `Dropout1d/2d/3d`, `AlphaDropout`,
    `FeatureAlphaDropout`) and a user's own (`SpatialDropout`, `MyDropout`); a module with children is not
    a layer but a container, whatever its name, so only its leaves are looked at.
    """
    return [
        m
        for m in model.modules()
        if next(m.children(), None) is None and "dropout" in type(m).__name__.lower()
    ]


class MCDropoutCallback(Callback):
    """Keeps the model's dropout layers in training mode during validation: each `get_preds()` (or `validate()`)
    then gives one Monte-Carlo dropout sample (fastai's callback of that name).

    The rest of the model stays in eval mode (BatchNorm uses its running statistics), and the dropout layers go
    back to eval mode when the phase ends. Stack several calls for an estimate of the model's uncertainty:

    >>> samples = torch.stack([learn.get_preds(cbs=MCDropoutCallback())[0] for _ in range(20)])
    >>> mean, std = samples.mean(0), samples.std(0)
    """

    # Order 0, after TrainEvalCallback (-10), whose before_validate puts the whole model in eval mode first.

    def before_validate(self) -> None:
        for m in _dropout_modules(self.learn.model):
            m.train()

    def after_validate(self) -> None:
        for m in _dropout_modules(self.learn.model):
            m.eval()
