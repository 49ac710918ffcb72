"""Learner.get_preds's full signature (SPEC §3), and its gathering when batches or the phase are cancelled.

The expected values are fastai 2.8.12's results on the same data and model, written out.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import learnloop.checkpoint
import learnloop.inference
from conftest import synth_learner
from learnloop import (
    Callback,
    CancelBatchException,
    CancelValidException,
    DataLoaders,
    DistributedTrainer,
    Learner,
)
from learnloop.callback import noop
from learnloop.callbacks import GatherPredsCallback

# Ten items x = 0..9, targets x % 3, batches of 4 (4, 4, 2); the model's output for x is (x, x/2 + 1, 2 - x).
X = torch.arange(10.0).reshape(10, 1)
Y = torch.arange(10) % 3
PREDS = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.5, 1.0], [2.0, 2.0, 0.0], [3.0, 2.5, -1.0], [4.0, 3.0, -2.0],
                      [5.0, 3.5, -3.0], [6.0, 4.0, -4.0], [7.0, 4.5, -5.0], [8.0, 5.0, -6.0], [9.0, 5.5, -7.0]])


class SoftmaxCE(nn.CrossEntropyLoss):
    """A cross-entropy loss with an activation, as fastai's: get_preds returns probabilities."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=-1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=-1)


def small_learner(loss_func: Any = None, train: Any = None) -> Learner:
    model = nn.Linear(1, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [0.5], [-1.0]]))
        model.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    ds = TensorDataset(X, Y)
    dls = DataLoaders(train or DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4), device="cpu")
    learn = Learner(dls, model, loss_func=loss_func or nn.CrossEntropyLoss())
    learn.logger = noop
    return learn


# ------------------------------------------------------------------ the signature
def test_the_signature_is_fastais() -> None:
    params = inspect.signature(Learner.get_preds).parameters
    assert list(params) == ["self", "ds_idx", "dl", "with_input", "with_decoded", "with_loss", "act", "inner",
                            "reorder", "cbs", "save_preds", "save_targs", "with_preds", "with_targs", "concat_dim",
                            "pickle_protocol"]
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    assert defaults == {"ds_idx": 1, "dl": None, "with_input": False, "with_decoded": False, "with_loss": False,
                        "act": None, "inner": False, "reorder": True, "cbs": None, "save_preds": None,
                        "save_targs": None, "with_preds": True, "with_targs": True, "concat_dim": 0,
                        "pickle_protocol": 2}
    keyword_only = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == ["save_preds", "save_targs", "with_preds", "with_targs", "concat_dim", "pickle_protocol"]


def test_an_unknown_keyword_is_a_type_error_naming_it() -> None:
    # fastai hands extra keywords to its GatherPredsCallback, which takes no others: a TypeError there too.
    with pytest.raises(TypeError, match="unexpected keyword argument 'shuffle'"):
        small_learner().get_preds(shuffle=False)  # type: ignore[call-arg]


# ------------------------------------------------------------------ with_preds, with_targs
def test_the_defaults_give_fastais_values() -> None:
    preds, targs = small_learner().get_preds()
    assert torch.equal(preds, PREDS) and torch.equal(targs, Y)


def test_with_preds_false_leaves_a_none_in_place_of_the_predictions() -> None:
    learn = small_learner(SoftmaxCE())
    preds, targs = learn.get_preds(with_preds=False)
    assert preds is None and torch.equal(targs, Y)
    # The decoded predictions need the predictions: None too, where fastai leaves them out of the tuple.
    inputs, preds, targs, decoded, losses = learn.get_preds(
        with_preds=False, with_input=True, with_decoded=True, with_loss=True
    )
    assert preds is None and decoded is None and torch.equal(inputs, X) and torch.equal(targs, Y)
    assert torch.allclose(losses, F.cross_entropy(PREDS, Y, reduction="none"))


class _SetReduction(Callback):
    """Sets the loss function's reduction at before_fit and/or after_fit (None: leaves it)."""

    def __init__(self, before: str | None, after: str | None) -> None:
        self.before, self.after = before, after

    def before_fit(self) -> None:
        if self.before is not None:
            self.learn.loss_func.reduction = self.before

    def after_fit(self) -> None:
        if self.after is not None:
            self.learn.loss_func.reduction = self.after


@pytest.mark.parametrize(
    ("before", "after", "left"), [("sum", "mean", "mean"), ("sum", None, "sum"), (None, "sum", "sum")]
)
def test_with_loss_makes_the_loss_unreduced_inside_before_fit_and_after_fit(before: Any, after: Any, left: str) -> None:
    # As fastai: 'none' is set after the callbacks' before_fit and the reduction put back before their after_fit, so
    # a callback that changes it for the run still gets per-item losses, and its after_fit's change stays.
    learn = small_learner()
    learn.add_cb(_SetReduction(before, after))
    _, _, losses = learn.get_preds(with_loss=True)
    assert torch.allclose(losses, F.cross_entropy(PREDS, Y, reduction="none"))
    assert learn.loss_func.reduction == left


def test_with_targs_false_leaves_a_none_in_place_of_the_targets() -> None:
    preds, targs = small_learner().get_preds(with_targs=False)
    assert torch.equal(preds, PREDS) and targs is None


# ------------------------------------------------------------------ concat_dim
def _sequence_first(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items], 1), torch.stack([y for _, y in items], 1)


class _PerStep(nn.Module):
    """(seq, bs, 2) -> (seq, bs, 3): (a, -b, a + b) at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., 0], -x[..., 1], x.sum(-1)], -1)


def _step_loss(pred: torch.Tensor, targ: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(pred.transpose(1, 2), targ, reduction=reduction)


def test_concat_dim_concatenates_the_batches_along_that_dimension() -> None:
    # Six sequences of two steps, batched sequence-first (batch dimension 1) in batches of 4 and 2.
    ds = TensorDataset(torch.arange(24.0).reshape(6, 2, 2), (torch.arange(12) % 3).reshape(6, 2))
    dl = DataLoader(ds, batch_size=4, collate_fn=_sequence_first)
    learn = Learner(DataLoaders(dl, dl, device="cpu"), _PerStep(), loss_func=_step_loss)
    learn.logger = noop
    inputs, preds, targs, losses = learn.get_preds(concat_dim=1, with_input=True, with_loss=True)
    assert torch.equal(inputs, torch.arange(24.0).reshape(6, 2, 2).transpose(0, 1))
    assert torch.equal(preds, torch.tensor([
        [[0.0, -1.0, 1.0], [4.0, -5.0, 9.0], [8.0, -9.0, 17.0], [12.0, -13.0, 25.0], [16.0, -17.0, 33.0],
         [20.0, -21.0, 41.0]],
        [[2.0, -3.0, 5.0], [6.0, -7.0, 13.0], [10.0, -11.0, 21.0], [14.0, -15.0, 29.0], [18.0, -19.0, 37.0],
         [22.0, -23.0, 45.0]],
    ]))
    assert torch.equal(targs, torch.tensor([[0, 2, 1, 0, 2, 1], [1, 0, 2, 1, 0, 2]]))
    # The losses along dimension 0 whatever concat_dim says; "per item" reads the batch size off the target's
    # first dimension (here the 2 steps), so each batch gives two values, as in fastai.
    assert torch.allclose(losses, torch.tensor([10.1036, 14.7625, 31.0000, 9.5000]), atol=1e-4)


# ------------------------------------------------------------------ save_preds, save_targs, pickle_protocol
def _pickle_protocol(file: Path) -> int:
    with zipfile.ZipFile(file) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert data[0] == 0x80  # PROTO opcode, then the protocol number
    return data[1]


def test_save_preds_and_targs_write_each_batch_and_still_return_them(tmp_path: Path) -> None:
    learn = small_learner(SoftmaxCE())
    preds, targs = learn.get_preds(save_preds=tmp_path / "preds", save_targs=str(tmp_path / "targs"))  # str too
    assert torch.allclose(preds, F.softmax(PREDS, dim=-1)) and torch.equal(targs, Y)
    for folder in ("preds", "targs"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["0", "1", "2"]
    for i, rows in enumerate([slice(0, 4), slice(4, 8), slice(8, 10)]):
        saved = torch.load(tmp_path / "preds" / str(i))
        assert type(saved) is torch.Tensor and torch.equal(saved, PREDS[rows])  # as the model made them: no softmax
        assert torch.equal(torch.load(tmp_path / "targs" / str(i)), Y[rows])
        assert _pickle_protocol(tmp_path / "preds" / str(i)) == 2


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 3")  # torch.load's note on a protocol not its own
def test_save_preds_without_keeping_them_and_the_pickle_protocol(tmp_path: Path) -> None:
    learn = small_learner()
    assert learn.get_preds(save_preds=tmp_path / "p", with_preds=False, with_targs=False, pickle_protocol=3) == (
        None, None
    )
    assert _pickle_protocol(tmp_path / "p" / "0") == 3
    assert torch.equal(torch.load(tmp_path / "p" / "2"), PREDS[8:])


def test_save_preds_that_fail_to_be_written_leave_the_files_of_an_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fastai writes with torch.save in place: a write that failed halfway (a full disk) left a truncated file over
    # a good one.
    learn = small_learner()
    learn.get_preds(save_preds=tmp_path / "p")
    saved = (tmp_path / "p" / "0").read_bytes()

    def save_half_then_fail(obj: Any, f: Any, **kwargs: Any) -> None:
        with open(f, "wb") if isinstance(f, (str, Path)) else contextlib.nullcontext(f) as out:
            out.write(saved[: len(saved) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        learn.get_preds(save_preds=tmp_path / "p")
    assert (tmp_path / "p" / "0").read_bytes() == saved
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["0", "1", "2"]  # no temporary file left behind


def test_save_preds_writes_each_batch_without_a_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Atomic, but not learn.save's durable write: its two fsyncs at every batch made get_preds(save_preds=...) several
    # times slower than fastai's plain torch.save.
    synced: list[int] = []
    monkeypatch.setattr(learnloop.checkpoint.os, "fsync", synced.append)
    small_learner().get_preds(save_preds=tmp_path / "p", save_targs=tmp_path / "t")
    assert synced == []
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["0", "1", "2"]


# ------------------------------------------------------------------ reorder
def test_reorder_changes_nothing_the_dataset_is_read_in_order_and_a_given_dl_as_it_comes() -> None:
    shuffled = DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True, drop_last=True, generator=torch.Generator())
    learn = small_learner(train=shuffled)
    for reorder in (True, False):
        inputs, preds, targs = learn.get_preds(ds_idx=0, reorder=reorder, with_input=True)
        assert torch.equal(inputs, X) and torch.equal(preds, PREDS) and torch.equal(targs, Y)
    # A shuffled torch DataLoader given as `dl`: its shuffled order, reorder or not (as fastai, which can reorder
    # only its own loaders). The inputs x = 0..9 show the order.
    orders = []
    for reorder in (True, False):
        shuffled.generator.manual_seed(1)  # type: ignore[union-attr]
        expected = torch.cat([x for x, _ in shuffled])
        shuffled.generator.manual_seed(1)  # type: ignore[union-attr]
        inputs, preds, _ = learn.get_preds(dl=shuffled, reorder=reorder, with_input=True)
        assert torch.equal(inputs, expected) and inputs.shape == (8, 1)
        assert torch.equal(preds, PREDS[inputs.flatten().long()])
        orders.append(inputs)
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[0].sort(dim=0).values)


# ------------------------------------------------------------------ cancelled batches and phases
class _CancelBatch(Callback):
    def __init__(self, event: str, order: int, at: int = 1) -> None:
        self.order, self.at = order, at
        setattr(self, event, self._cancel)

    def _cancel(self) -> None:
        if self.learn.iter == self.at:
            raise CancelBatchException


@pytest.mark.parametrize("order", [-5, 5])  # before and after GatherPredsCallback (0)
def test_a_batch_cancelled_before_its_prediction_is_left_out(order: int) -> None:
    learn = small_learner()
    kept = torch.tensor([0, 1, 2, 3, 8, 9])  # the second batch (items 4..7) never reached the model
    for at in (0, 1):  # the first batch too: no prediction is left in the learner from before
        cancel = _CancelBatch("before_batch", order, at)
        inputs, preds, targs, decoded, losses = learn.get_preds(
            cbs=cancel, with_input=True, with_decoded=True, with_loss=True
        )
        kept = torch.tensor([4, 5, 6, 7, 8, 9]) if at == 0 else torch.tensor([0, 1, 2, 3, 8, 9])
        assert torch.equal(inputs, X[kept]) and torch.equal(preds, PREDS[kept]) and torch.equal(decoded, PREDS[kept])
        assert torch.equal(targs, Y[kept])
        assert torch.allclose(losses, F.cross_entropy(PREDS[kept], Y[kept], reduction="none"))
    # After a fit, and inside one (FetchPredsCallback's inner call), likewise.
    learn.fit(1, lr=0.0)
    preds, targs = learn.get_preds(cbs=_CancelBatch("before_batch", order))
    assert torch.equal(preds, PREDS[kept]) and torch.equal(targs, Y[kept])


def test_a_batch_cancelled_after_its_prediction_keeps_it() -> None:
    learn = small_learner()
    preds, targs, losses = learn.get_preds(cbs=_CancelBatch("after_pred", -5), with_loss=True)
    assert torch.equal(preds, PREDS) and torch.equal(targs, Y)
    expected = F.cross_entropy(PREDS, Y, reduction="none")
    expected[4:8] = float("nan")  # the second batch's loss was never computed
    assert torch.allclose(losses, expected, equal_nan=True)
    # Cancelled after its loss: the loss is kept too.
    preds, targs, losses = learn.get_preds(cbs=_CancelBatch("after_loss", -5), with_loss=True)
    assert torch.equal(preds, PREDS) and torch.allclose(losses, F.cross_entropy(PREDS, Y, reduction="none"))


def test_the_nan_losses_take_the_shape_of_the_computed_ones() -> None:
    learn = synth_learner(n_valid=16, bs=4)  # MSE: a per-item loss shaped like the output, (bs, 1)
    preds, targs, losses = learn.get_preds(cbs=_CancelBatch("after_pred", -5, at=0), with_loss=True)
    assert losses.shape == (16, 1) and losses[:4].isnan().all() and not losses[4:].isnan().any()
    assert torch.allclose(losses[4:], (preds[4:] - targs[4:]) ** 2)


class _CancelValid(Callback):
    def __init__(self, order: int) -> None:
        self.order = order

    def before_validate(self) -> None:
        raise CancelValidException


@pytest.mark.parametrize("order", [-5, 5])
def test_a_validation_phase_cancelled_at_its_start_gives_nones(order: int) -> None:
    learn = small_learner(SoftmaxCE())
    # Cancelled after GatherPredsCallback (order 0) set up, no batch gathered: fastai's empty list of losses.
    losses = None if order < 0 else []
    assert learn.get_preds(cbs=_CancelValid(order), with_input=True, with_decoded=True, with_loss=True) == (
        None, None, None, None, losses
    )
    preds, _ = learn.get_preds()  # and the next call gathers as usual
    assert torch.allclose(preds, F.softmax(PREDS, dim=-1))


def test_an_empty_loader_gives_nones_and_an_empty_list_of_losses_as_fastai() -> None:
    learn = small_learner()
    empty = DataLoader(TensorDataset(X[:0], Y[:0]), batch_size=4)
    assert learn.get_preds(dl=empty, with_input=True, with_loss=True) == (None, None, None, [])
    gather = GatherPredsCallback(with_loss=True)
    learn.validate(dl=empty, cbs=gather)
    assert gather.all_tensors() == [None, None, []]


def test_keep_first_keeps_what_the_first_batches_gathered_as_a_cancel_there_would() -> None:
    # DistributedTrainer's tool for a phase one rank cancelled: the batches are kept only when asked.
    learn = small_learner()
    gather = GatherPredsCallback(with_input=True)  # (validate's loss is reduced: no per-item losses to gather)
    learn.validate(cbs=gather)
    assert gather.batches_seen == 0  # keep_batches off: nothing held after the phase
    gather.keep_batches = True
    learn.validate(cbs=[gather, _CancelBatch("before_batch", -5)])  # batch 1 (items 4..7) never reached the model
    assert gather.batches_seen == 3
    gather.keep_first(2)
    kept = torch.tensor([0, 1, 2, 3])
    assert torch.equal(gather.inputs, X[kept]) and torch.equal(gather.preds, PREDS[kept])
    assert torch.equal(gather.targets, Y[kept])
    gather.keep_first(0)  # the batches are let go once cut: a second cut changes nothing
    assert torch.equal(gather.preds, PREDS[kept]) and gather.batches_seen == 0
    learn.validate(cbs=gather)
    gather.keep_first(0)  # none of the batches: as a phase cancelled at its first batch
    assert gather.all_tensors() == [None, None, None]
    learn.validate(cbs=gather)
    gather.forget_batches()
    assert gather.batches_seen == 0 and torch.equal(gather.preds, PREDS)


def test_gather_preds_callback_in_a_fit_gathers_the_validation_phases_only() -> None:
    learn = small_learner()
    gather = GatherPredsCallback(with_input=True)
    learn.fit(2, lr=0.0, cbs=gather)
    assert torch.equal(gather.preds, PREDS) and torch.equal(gather.targets, Y) and torch.equal(gather.inputs, X)


def test_the_inputs_are_taken_as_they_stand_at_gather_preds_before_batch() -> None:
    # Order 0: what callbacks of lower order made of the batch, before those of higher order change it.
    def scale(factor: float) -> Any:
        def before_batch() -> None:
            learn.xb = (learn.xb[0] * factor,)
        return before_batch

    learn = small_learner()
    early, late = Callback(before_batch=scale(2.0)), Callback(before_batch=scale(10.0))
    early.order, late.order = -1, 1
    inputs, preds, _ = learn.get_preds(cbs=[early, late], with_input=True)
    assert torch.equal(inputs, X * 2) and torch.equal(preds, learn.model(X * 20).detach())


# ------------------------------------------------------------------ distributed
@pytest.mark.parametrize("kwargs", [{"concat_dim": 1}, {"save_preds": "p"}, {"save_targs": "t"}])
def test_what_a_distributed_job_cannot_combine_is_refused(monkeypatch: pytest.MonkeyPatch, kwargs: Any) -> None:
    learn = small_learner()
    learn.add_cb(DistributedTrainer())
    monkeypatch.setattr(learnloop.inference, "is_distributed", lambda: True)
    with pytest.raises(NotImplementedError, match="distributed job"):
        learn.get_preds(**kwargs)
    preds, _ = learn.get_preds()  # the defaults are fine (a single process here: the trainer stands by)
    assert torch.equal(preds, PREDS)


# ------------------------------------------------------------------ all_tensors
@pytest.mark.parametrize(
    ("kwargs", "shapes"),
    [
        ({}, [(10, 3), (10,)]),
        ({"with_preds": False}, [None, (10,)]),
        ({"with_targs": False}, [(10, 3), None]),
        ({"with_input": True, "with_loss": True}, [(10, 1), (10, 3), (10,), (10,)]),
        ({"with_input": True, "with_preds": False, "with_targs": False}, [(10, 1), None, None]),
    ],
)
def test_all_tensors_lists_inputs_preds_targets_losses_as_fastai(
    kwargs: dict[str, bool], shapes: list[tuple[int, ...] | None]
) -> None:
    # fastai 2.8.12's rule: preds and targets always have a place (None when not kept), inputs and losses when asked.
    learn = small_learner()
    cb = GatherPredsCallback(**kwargs)
    with learn.loss_not_reduced():  # as get_preds does: per-item losses
        learn.validate(cbs=cb)
    tensors = cb.all_tensors()
    assert [None if t is None else tuple(t.shape) for t in tensors] == shapes
    preds = tensors[1 if kwargs.get("with_input") else 0]
    assert preds is None or torch.equal(preds, PREDS)


def test_without_preds_the_callback_keeps_none_where_fastai_keeps_an_empty_list() -> None:
    # A deliberate difference: get_preds reads `preds`, and returns None in its place (its documented result).
    learn = small_learner()
    cb = GatherPredsCallback(with_preds=False, with_targs=False)
    learn.validate(cbs=cb)
    assert cb.preds is None and cb.targets is None
    assert learn.get_preds(with_preds=False, with_targs=False) == (None, None)


@pytest.mark.parametrize("method", ["get_preds", "validate"])
def test_a_ds_idx_past_the_loaders_is_an_index_error_that_says_how_many(method: str) -> None:
    learn = small_learner()
    # fastai's is a bare "list index out of range"; the type stays an IndexError
    with pytest.raises(IndexError, match=rf"{method}\(ds_idx=2\): dls has 2 loaders.*pass {method}\(dl=\.\.\.\)"):
        getattr(learn, method)(ds_idx=2)
    assert getattr(learn, method)(ds_idx=-1) is not None  # negative indices count from the end, as a list's


@pytest.mark.parametrize("method", ["get_preds", "validate"])
def test_a_dataset_as_dl_is_warned_of(method: str) -> None:
    learn = small_learner()
    # iterated, a Dataset gives single items, each run through the model as a batch, as in fastai
    items = TensorDataset(X, Y[:, None])
    with pytest.warns(UserWarning, match=rf"{method}\(dl=\.\.\.\): dl is a Dataset \(TensorDataset\), not a loader "
                                         r"of batches: each of its items goes through the model as a batch"):
        getattr(learn, method)(dl=items)
    batches = [(X[:4], Y[:4]), (X[4:], Y[4:])]  # a plain list of batches is a loader of batches
    preds, targs = learn.get_preds(dl=batches)
    assert torch.equal(targs, Y) and preds.shape == (10, 3)


def test_dict_outputs_are_joined_key_by_key_as_fastai() -> None:
    # A HuggingFace-style model returns a dict: fastai's to_concat joins each key (get_preds(reorder=False) there);
    # learnloop returned the list of the batches' dicts.
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(1, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.lin(x), "hidden": x * 2}

    learn = small_learner(loss_func=lambda out, y: F.cross_entropy(out["logits"], y))
    learn.model = DictModel()
    preds, targs = learn.get_preds()
    assert isinstance(preds, dict) and preds["logits"].shape == (10, 3) and torch.equal(preds["hidden"], X * 2)
    assert torch.equal(targs, Y)


def test_predictions_of_different_lengths_come_back_item_by_item_as_fastai() -> None:
    # Sequences padded per batch: fastai's to_concat gives one list of the items; learnloop raised torch's error.
    batches = [(torch.ones(2, 5, 1), torch.zeros(2, 5, 3)), (torch.ones(1, 7, 1), torch.zeros(1, 7, 3))]
    learn = small_learner(loss_func=nn.MSELoss())
    preds, targs = learn.get_preds(dl=batches)
    assert isinstance(preds, list) and [tuple(p.shape) for p in preds] == [(5, 3), (5, 3), (7, 3)]
    assert [tuple(t.shape) for t in targs] == [(5, 3), (5, 3), (7, 3)]


def test_a_model_returning_the_same_object_twice_has_each_batch_gathered() -> None:
    # A model returning its input, over a list holding one batch three times: each prediction is the last one's
    # object, which the gatherer took for a batch cancelled before the model ran (fastai gathers all three).
    class Passthrough(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    x = torch.arange(4.0).reshape(2, 2)
    learn = small_learner(loss_func=nn.MSELoss())
    learn.model = Passthrough()
    preds, targs, losses = learn.get_preds(dl=[(x, x)] * 3, with_loss=True)
    assert torch.equal(preds, torch.cat([x] * 3)) and torch.equal(targs, preds)
    assert torch.equal(losses, torch.zeros(6))
    # Cancelled before the model ran, the repeated object is still left out.
    preds, _ = learn.get_preds(dl=[(x, x)] * 3, cbs=_CancelBatch("before_batch", -5, 1))
    assert len(preds) == 4


@pytest.mark.parametrize("dl", [5, "abc", b"ab", object()])
def test_a_dl_that_is_not_a_loader_of_batches_is_refused_before_any_event(dl: Any) -> None:
    # fastai: "'int' object is not iterable", or a string's characters run through the model (a TypeError there).
    learn = synth_learner()
    log: list[str] = []
    learn.add_cb(Callback(before_fit=lambda: log.append("before_fit")))
    for method in (learn.get_preds, learn.validate):
        with pytest.raises(TypeError, match=r"\(dl=.*\): dl must be a loader of batches, such as a torch DataLoader"):
            method(dl=dl)
    assert log == []
    learn.get_preds(dl=[(torch.randn(4, 2), torch.randn(4, 1))])  # a list of batches is a loader


def test_a_ds_idx_that_is_not_an_index_says_what_it_is() -> None:
    learn = synth_learner()
    with pytest.raises(TypeError, match=r"get_preds\(ds_idx='valid'\): ds_idx is the index of a loader in dls"):
        learn.get_preds(ds_idx="valid")
    with pytest.raises(TypeError, match=r"validate\(ds_idx=1.0\): ds_idx is the index of a loader"):
        learn.validate(ds_idx=1.0)  # type: ignore[arg-type]
