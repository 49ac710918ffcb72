"""Callbacks for recurrent models: resetting the hidden state, and AR/TAR regularisation (Merity et al., 2017).

A regularised RNN returns `(output, raw_outputs, outputs)`: the prediction, then per layer the
outputs before dropout (`raw_outputs`) and after it (`outputs`); each of the three may be one
tensor or a list (one per layer, say), of which the last is used. Activations are batch-first:
`(batch, time, features)`.

>>> learn = Learner(dls, lstm_model, loss_func=CrossEntropyLossFlat(), cbs=rnn_cbs(alpha=2., beta=1.))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..callback import Callback

__all__ = ["ModelResetter", "RNNCallback", "RNNRegularizer", "rnn_cbs"]


class ModelResetter(Callback):
    """Calls `learn.model.reset()` before training, before validation and after fit (a fresh hidden state)."""

    def before_fit(self) -> None:
        if not callable(getattr(self.learn.model, "reset", None)):
            raise AttributeError(  # the type fastai's call of the missing method raises
                f"ModelResetter calls model.reset(), but {type(self.learn.model).__name__} has no reset method; "
                "give the model one that clears its hidden state, or remove ModelResetter."
            )

    def _reset(self) -> None:
        model: Any = self.learn.model  # nn.Module's attributes are typed as tensors or modules
        model.reset()

    def before_train(self) -> None:
        self._reset()

    def before_validate(self) -> None:
        self._reset()

    def after_fit(self) -> None:
        self._reset()


def _last(o: Any) -> Any:
    return o[-1] if isinstance(o, (list, tuple)) else o


def split_rnn_output(learn: Any, who: str) -> tuple[Any, Any]:
    """Replace `learn.pred = (output, raw_outputs, outputs)` by `output` and return `(raw_out, out)`; of each
    part that is a list or tuple (one element per layer), the last element is kept."""
    pred = learn.pred
    if not isinstance(pred, (tuple, list)) or len(pred) != 3:
        got = (f"a {type(pred).__name__} of {len(pred)} elements" if isinstance(pred, (tuple, list))
               else f"a {type(pred).__name__}")
        raise ValueError(
            f"{who} expects the model to return a tuple (output, raw_outputs, outputs): the prediction, then the "
            f"outputs of the recurrent layers before and after dropout (a tensor, or a list of one per layer); "
            f"got {got}. A model that returns only its prediction needs no {who}."
        )
    output, raw_outputs, outputs = pred
    learn.pred = _last(output)
    return _last(raw_outputs), _last(outputs)


class RNNCallback(Callback):
    """Splits the model's `(output, raw_outputs, outputs)`: `learn.pred` becomes `output`, and the last
    layer's activations are kept as `raw_out` (before dropout) and `out` (after dropout). Of a part that is a
    list or tuple, the last element is kept (as fastai's); a model returning anything but such a triple is a
    ValueError."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        super().__init__(**hooks)  # event methods as keywords, as any Callback takes them
        self.raw_out: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def after_pred(self) -> None:
        _keep(self, *split_rnn_output(self.learn, type(self).__name__))

    def after_fit(self) -> None:
        _keep(self, None, None)  # don't hold the last batch's activations


def _keep(cb: RNNCallback | RNNRegularizer, raw_out: Any, out: Any) -> None:
    # Through __dict__: a model with a layer named `out` would make plain assignment warn that it
    # shadows `learn.out`, which is the model's attribute, not state of the loop.
    cb.__dict__.update(raw_out=raw_out, out=out)


class RNNRegularizer(Callback):
    """Adds activation regularisation (AR) and temporal activation regularisation (TAR) to the training loss.

    At after_pred it splits the model's `(output, raw_outputs, outputs)` as RNNCallback does (or,
    when an RNNCallback ran first, takes what it kept). At after_loss, when training, it adds to
    `learn.loss_grad` (so to the gradients, not to the logged `learn.loss`):

    - `alpha * mean(out ** 2)`, `out` the last layer's output after dropout (AR);
    - `beta * mean((raw_out[:, 1:] - raw_out[:, :-1]) ** 2)`, `raw_out` the last layer's output
      before dropout: the change between consecutive time steps (TAR), when there are at least two.
    """

    order = RNNCallback.order + 1

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        self.alpha, self.beta = alpha, beta
        self.raw_out: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def after_pred(self) -> None:
        splitter = getattr(self.learn, "rnn", None)
        if isinstance(splitter, RNNCallback) and not isinstance(self.learn.pred, (tuple, list)):
            _keep(self, splitter.raw_out, splitter.out)  # the RNNCallback ran first and split the output
        else:
            _keep(self, *split_rnn_output(self.learn, type(self).__name__))

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training or learn.loss_grad is None:
            return
        loss = learn.loss_grad
        if self.alpha and self.out is not None:
            loss = loss + self.alpha * self.out.float().pow(2).mean()
        raw = self.raw_out
        if self.beta and raw is not None and raw.ndim >= 2 and raw.shape[1] > 1:
            loss = loss + self.beta * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        learn.loss_grad = loss

    def after_fit(self) -> None:
        _keep(self, None, None)


def rnn_cbs(alpha: float = 0.0, beta: float = 0.0) -> list[Callback]:
    """The callbacks for (optionally regularised) RNN training: ModelResetter, RNNCallback, and
    RNNRegularizer when `alpha` or `beta` is set."""
    cbs: list[Callback] = [ModelResetter(), RNNCallback()]
    if alpha or beta:
        cbs.append(RNNRegularizer(alpha=alpha, beta=beta))
    return cbs
