"""ModelResetter, RNNCallback and RNNRegularizer on a small LSTM."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from conftest import EventLog, synth_learner
from learnloop import Callback, DataLoaders, Learner
from learnloop.callback import noop
from learnloop.callbacks.rnn import ModelResetter, RNNCallback, RNNRegularizer, rnn_cbs
from learnloop.losses import CrossEntropyLossFlat


class TinyLSTM(nn.Module):
    """An LSTM language-model-like net returning (output, raw_outputs, outputs), with a hidden state."""

    def __init__(self, log: list[str] | None = None, n_in: int = 3, n_hidden: int = 5, n_out: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, n_hidden, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(n_hidden, n_out)
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset_log = log if log is not None else []

    def reset(self) -> None:
        self.hidden = None
        self.reset_log.append("reset")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        raw, hidden = self.lstm(x, self.hidden)
        self.hidden = (hidden[0].detach(), hidden[1].detach())
        out = self.drop(raw)
        return self.head(out), [raw], [out]


def lstm_learner(log: list[str] | None = None, seq_len: int = 6, **kwargs: Any) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, seq_len, 3, generator=g), torch.randint(0, 4, (32, seq_len), generator=g)
    dls = DataLoaders.from_tensors(x[:16], y[:16], x[16:24], y[16:24], bs=8, device="cpu")
    torch.manual_seed(0)
    learn = Learner(dls, TinyLSTM(log), loss_func=CrossEntropyLossFlat(), **kwargs)
    learn.logger = noop
    return learn


OUTER = {"before_fit", "before_epoch", "before_train", "after_train", "before_validate", "after_validate",
         "after_epoch", "after_fit", "reset"}


def test_model_resetter_resets_before_train_before_validate_and_after_fit() -> None:
    log = EventLog()
    learn = lstm_learner(log=log.events)
    learn.fit(2, cbs=[ModelResetter(), RNNCallback(), log])
    outer = [e for e in log.events if e in OUTER]
    epoch = ["before_epoch", "reset", "before_train", "after_train", "reset", "before_validate", "after_validate",
             "after_epoch"]
    # The first reset is TrainEvalCallback's at before_fit (order -10, before the log's order 100).
    assert outer == ["reset", "before_fit", *epoch * 2, "reset", "after_fit"]


def test_rnn_callback_takes_event_methods_as_keywords() -> None:
    seen: list[str] = []
    learn = lstm_learner()
    learn.fit(1, cbs=[ModelResetter(), RNNCallback(after_fit=lambda cb: seen.append(type(cb).__name__))])
    assert seen == ["RNNCallback"]


def test_model_resetter_needs_a_model_with_reset() -> None:
    learn = synth_learner()
    with pytest.raises(AttributeError, match="ModelResetter calls model.reset\\(\\), but Linear has no reset method"):
        learn.fit(1, cbs=ModelResetter())


class LossSpy(Callback):
    def __init__(self, order: int) -> None:
        self.order = order
        self.seen: list[dict[str, Any]] = []

    def after_loss(self) -> None:
        learn = self.learn
        self.seen.append({"training": learn.training, "loss_grad": learn.loss_grad.detach().clone(),
                          "loss": learn.loss.clone(), "pred": learn.pred})


@pytest.mark.parametrize("alpha, beta", [(2.0, 0.0), (0.0, 1.0), (2.0, 1.0)])
def test_rnn_regularizer_adds_ar_and_tar_to_the_training_loss_only(alpha: float, beta: float) -> None:
    learn = lstm_learner()
    reg = RNNRegularizer(alpha=alpha, beta=beta)
    before, after = LossSpy(order=0), LossSpy(order=2)
    terms: list[torch.Tensor] = []

    def expected_terms() -> None:
        raw, out = reg.raw_out, reg.out
        assert raw is not None and out is not None
        ar = alpha * out.pow(2).mean()
        tar = beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
        terms.append((ar + tar).detach())

    after_split = Callback(after_pred=expected_terms)
    after_split.order = 5
    learn.fit(1, cbs=[ModelResetter(), before, reg, after, after_split])
    assert len(before.seen) == len(after.seen) == 3
    for b, a, term in zip(before.seen, after.seen, terms, strict=True):
        assert isinstance(a["pred"], torch.Tensor) and a["pred"].shape == (8, 6, 4)
        torch.testing.assert_close(a["loss"], b["loss"])  # the logged loss is the plain loss
        if a["training"]:
            torch.testing.assert_close(a["loss_grad"], b["loss_grad"] + term)
            assert term > 0
        else:
            torch.testing.assert_close(a["loss_grad"], b["loss_grad"])


def test_the_regularisation_reaches_the_gradients() -> None:
    grads: dict[float, list[torch.Tensor]] = {}
    for alpha in (0.0, 10.0):
        learn = lstm_learner()

        def keep_first_grads(model: Any = learn.model, alpha: float = alpha) -> None:
            grads.setdefault(alpha, [p.grad.clone() for p in model.lstm.parameters()])

        learn.fit(1, lr=0.0, cbs=[ModelResetter(), RNNRegularizer(alpha=alpha), Callback(before_step=keep_first_grads)])
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0], grads[10.0], strict=True))


def test_tar_needs_two_time_steps() -> None:
    learn = lstm_learner(seq_len=1)
    before, after = LossSpy(order=0), LossSpy(order=2)
    learn.fit(1, cbs=[ModelResetter(), before, RNNRegularizer(beta=1.0), after])
    for b, a in zip(before.seen, after.seen, strict=True):
        torch.testing.assert_close(a["loss_grad"], b["loss_grad"])
        assert torch.isfinite(a["loss_grad"])


def test_rnn_callback_alone_splits_the_output_and_get_preds_works() -> None:
    learn = lstm_learner()
    learn.fit(1, cbs=rnn_cbs())
    assert [type(cb) for cb in rnn_cbs()] == [ModelResetter, RNNCallback]
    learn.add_cbs(rnn_cbs())
    preds, targs = learn.get_preds()
    assert preds.shape == (8, 6, 4) and targs.shape == (8, 6)
    torch.testing.assert_close(preds.sum(-1), torch.ones(8, 6))  # CrossEntropyLossFlat's softmax


def test_rnn_regularizer_after_an_rnn_callback_uses_its_split() -> None:
    learn = lstm_learner()
    cbs = rnn_cbs(alpha=1.0, beta=1.0)
    assert [type(cb) for cb in cbs] == [ModelResetter, RNNCallback, RNNRegularizer]
    before, after = LossSpy(order=0), LossSpy(order=2)
    learn.fit(1, cbs=[*cbs, before, after])
    assert all(a["loss_grad"] > b["loss_grad"] for a, b in zip(after.seen, before.seen, strict=True)
               if a["training"])
    assert cbs[2].out is None  # let go after fit


def test_a_wrong_model_output_is_a_clear_error() -> None:
    class TwoOutputs(TinyLSTM):
        def forward(self, x: torch.Tensor) -> Any:
            return super().forward(x)[:2]

    learn = lstm_learner()
    learn.model = TwoOutputs()
    with pytest.raises(ValueError, match=r"RNNRegularizer expects the model to return a tuple \(output, raw_outputs, "
                                         r"outputs\).*; got a tuple of 2 elements"):
        learn.fit(1, cbs=RNNRegularizer(alpha=1.0))


@pytest.mark.parametrize("cbs", [[RNNCallback()], [RNNRegularizer(alpha=1.0)], rnn_cbs(alpha=1.0)],
                         ids=["RNNCallback", "RNNRegularizer", "rnn_cbs"])
def test_a_model_returning_a_plain_tensor_is_a_clear_error(cbs: list[Callback]) -> None:
    # fastai unpacks the tensor's rows: a ValueError when the batch size is not 3, a wrong split when it is.
    learn = lstm_learner()
    learn.model = nn.Linear(3, 4)
    who = type(cbs[-1]).__name__ if len(cbs) == 1 else "RNNCallback"
    with pytest.raises(ValueError, match=rf"{who} expects the model to return a tuple \(output, raw_outputs, "
                                         rf"outputs\).*; got a Tensor\. A model that returns only its prediction "
                                         rf"needs no {who}"):
        learn.fit(1, cbs=[c for c in cbs if not isinstance(c, ModelResetter)])


class ListOutputs(TinyLSTM):
    """Returns its prediction as a list too (two heads, the last being the one trained), as fastai allows."""

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        output, raw_outputs, outputs = super().forward(x)
        return [output * 0.5, output], raw_outputs, outputs


def test_rnn_callback_keeps_the_last_element_of_a_listy_output() -> None:
    learn = lstm_learner()
    learn.model = ListOutputs()
    expected: list[torch.Tensor] = []
    learn.model.register_forward_hook(lambda module, args, out: expected.append(out[0][-1]))
    preds: list[Any] = []
    spy = Callback(after_pred=lambda: preds.append(learn.pred))
    spy.order = 5
    learn.fit(1, cbs=[*rnn_cbs(alpha=1.0, beta=1.0), spy])
    assert len(preds) == 3 and all(p is e for p, e in zip(preds, expected, strict=True))
    # The regulariser alone splits it the same way.
    learn.fit(1, cbs=[ModelResetter(), RNNRegularizer(alpha=1.0), spy])
    assert len(preds) == 6 and all(p is e for p, e in zip(preds[3:], expected[3:], strict=True))
