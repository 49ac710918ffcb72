"""MixUp and CutMix: what is mixed, how the loss is mixed, and that the loss function always comes back."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import EventLog, synth_classif_learner, synth_learner
from learnloop import (
    Callback,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    DataLoaders,
    Learner,
)
from learnloop.callback import noop
from learnloop.callbacks.mixup import CutMix, MixedLoss, MixHandler, MixUp
from learnloop.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropy


class FixedBeta:
    """Stands in for the Beta distribution: always the same draws."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def sample(self, shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.values[: shape[0]] if shape else self.values[0]


def fixed(cb: MixUp | CutMix, lams: list[float]) -> MixUp | CutMix:
    """`cb` with known draws: `lams` for lambda and a reversed batch as the partner."""
    cb.distrib = FixedBeta(torch.tensor(lams))  # type: ignore[assignment]
    cb._shuffle = lambda bs, device: torch.arange(bs - 1, -1, -1, device=device)  # type: ignore[method-assign]
    return cb


class Spy(Callback):
    """Keeps, per training/validation batch, the batch before mixing, the batch after, and the loss."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.seen: list[dict[str, Any]] = []

    def before_batch(self) -> None:
        self.seen.append({"training": self.learn.training, "xb": self.learn.xb, "yb": self.learn.yb})

    def after_loss(self) -> None:
        self.seen[-1].update(
            loss=self.learn.loss.clone(), pred=self.learn.pred.detach().clone(), loss_func=self.learn.loss_func,
            mixed_xb=self.learn.xb, mixed_yb=self.learn.yb,
        )


def test_mixup_blends_inputs_per_item_and_mixes_the_loss_for_class_targets() -> None:
    learn = synth_classif_learner(n_train=16, bs=8)
    before, after = Spy(order=-1), Spy(order=1)
    lams = [0.9, 0.2, 0.5, 0.7, 0.6, 0.1, 0.8, 0.55]
    learn.fit(1, cbs=[fixed(MixUp(), lams), before, after])
    lam = torch.tensor([max(v, 1 - v) for v in lams])
    first = before.seen[0]
    x, y = first["xb"][0], first["yb"][0]
    partner = torch.arange(7, -1, -1)
    mixed = after.seen[0]
    torch.testing.assert_close(mixed["mixed_xb"][0], lam[:, None] * x + (1 - lam[:, None]) * x[partner])
    assert torch.equal(mixed["mixed_yb"][0], y)  # class indices are not blended...
    per_item = lam * F.cross_entropy(mixed["pred"], y, reduction="none") + (1 - lam) * F.cross_entropy(
        mixed["pred"], y[partner], reduction="none"
    )
    torch.testing.assert_close(mixed["loss"], per_item.mean())  # ...the loss is
    assert isinstance(mixed["loss_func"], MixedLoss)


def test_mixup_lambda_is_folded_to_the_larger_share() -> None:
    learn = synth_classif_learner(n_train=64, bs=32)
    cb = MixUp(alpha=0.4)
    lams: list[torch.Tensor] = []

    def keep_lam() -> None:
        if learn.training:
            lams.append(cb.lam)

    learn.fit(2, cbs=[cb, Callback(after_pred=keep_lam)])
    assert len(lams) == 4 and all(lam.shape == (32,) for lam in lams)
    assert all(bool((lam >= 0.5).all()) and bool((lam <= 1).all()) for lam in lams)


def test_mixup_blends_float_targets_and_keeps_the_plain_loss() -> None:
    learn = synth_learner(n_train=16, bs=8, loss_func=nn.MSELoss())
    after = Spy(order=1)
    before = Spy(order=-1)
    lams = [0.9, 0.6, 0.7, 0.8, 0.5, 0.6, 0.7, 0.95]
    learn.fit(1, cbs=[fixed(MixUp(), lams), before, after])
    lam = torch.tensor(lams)[:, None]
    y = before.seen[0]["yb"][0]
    torch.testing.assert_close(after.seen[0]["mixed_yb"][0], lam * y + (1 - lam) * y.flip(0))
    torch.testing.assert_close(after.seen[0]["loss"], F.mse_loss(after.seen[0]["pred"], after.seen[0]["mixed_yb"][0]))


def test_validation_is_not_mixed_and_uses_the_original_loss() -> None:
    loss_func = nn.CrossEntropyLoss()
    learn = synth_classif_learner(loss_func=loss_func)
    spy = Spy(order=1)
    learn.fit(1, cbs=[MixUp(), spy])
    valid = [s for s in spy.seen if not s["training"]]
    assert valid and all(s["loss_func"] is loss_func for s in valid)
    assert all(s["mixed_xb"] is s["xb"] for s in valid)
    assert learn.loss_func is loss_func


def test_the_original_loss_function_is_back_after_fit_and_after_a_cancelled_fit() -> None:
    loss_func = nn.CrossEntropyLoss()
    learn = synth_classif_learner(loss_func=loss_func)
    mixup = MixUp()
    learn.add_cb(mixup)
    learn.fit(1)
    assert learn.loss_func is loss_func

    def cancel_fit() -> None:
        if learn.training:
            raise CancelFitException

    learn.fit(1, cbs=Callback(after_batch=cancel_fit))
    assert learn.loss_func is loss_func
    assert learn.loss_func.reduction == "mean"


def test_a_later_callback_sees_the_original_loss_at_after_cancel_train() -> None:
    loss_func = nn.CrossEntropyLoss()
    learn = synth_classif_learner(loss_func=loss_func)
    seen: list[Any] = []

    class StopTraining(Callback):
        order = 10

        def after_loss(self) -> None:
            if self.learn.training:
                raise CancelTrainException

        def after_cancel_train(self) -> None:
            seen.append(self.learn.loss_func)

    learn.fit(1, cbs=[MixUp(), StopTraining()])
    assert seen == [loss_func]  # as fastai's, whose MixHandler puts the loss back at after_cancel_train
    assert learn.loss_func is loss_func


def test_stack_y_keeps_the_value_last_decided_once_the_callback_is_removed() -> None:
    mixup = MixUp()
    with pytest.raises(AttributeError, match="stack_y"):  # nothing decided yet: absent, as in fastai
        mixup.stack_y  # noqa: B018
    learn = synth_classif_learner(loss_func=CrossEntropyLossFlat())
    learn.fit(1, cbs=mixup)
    assert mixup.learn is None and mixup.stack_y is True  # fastai's value after the fit: the loss's y_int
    floats = MixUp()
    synth_learner().fit(1, cbs=floats)
    assert floats.learn is None and floats.stack_y is False
    floats.stack_y = True  # assigned: kept as it is
    assert floats.stack_y is True


def test_cancel_epoch_while_training_restores_the_loss_before_the_next_epoch() -> None:
    loss_func = nn.CrossEntropyLoss()
    learn = synth_classif_learner(loss_func=loss_func)
    seen: list[Any] = []

    def cancel_first_epoch() -> None:
        if learn.training and learn.epoch == 0:
            raise CancelEpochException

    learn.fit(2, cbs=[MixUp(), Callback(after_batch=cancel_first_epoch),
                      Callback(before_epoch=lambda: seen.append(learn.loss_func))])
    assert seen == [loss_func, loss_func]
    assert learn.loss_func is loss_func


def test_an_exception_leaves_an_inert_wrapper_that_the_next_fit_removes() -> None:
    loss_func = nn.CrossEntropyLoss()
    learn = synth_classif_learner(loss_func=loss_func)

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[MixUp(), Callback(after_loss=boom)])
    # A non-cancel exception skips after_fit, so the wrapper is still there; the MixUp that made it
    # was removed with the fit's callbacks, so it computes exactly the original loss.
    wrapper = learn.loss_func
    assert isinstance(wrapper, MixedLoss) and wrapper.original is loss_func
    pred, targ = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    learn.training = True
    torch.testing.assert_close(wrapper(pred, targ), F.cross_entropy(pred, targ))
    assert learn.validate()  # works through the wrapper
    learn.fit(1, cbs=MixUp())
    assert learn.loss_func is loss_func


@pytest.mark.parametrize("loss_func", [nn.CrossEntropyLoss(), F.cross_entropy], ids=["module", "function"])
def test_get_preds_with_loss_inside_a_fit_sees_plain_losses_and_leaves_the_fit_mixed(loss_func: Any) -> None:
    # Called while the MixedLoss is in place (before MixUp's after_train), a nested get_preds gets the plain per-item
    # losses; the fit's next epoch is mixed again, and the loss function is the original after it.
    learn = synth_classif_learner(n_train=16, bs=8, loss_func=loss_func)
    x_valid, y_valid = learn.dls.valid.dataset.tensors
    seen: list[Any] = []

    class Peek(Callback):
        order = -1

        def after_loss(self) -> None:
            if self.learn.training:
                seen.append(self.learn.loss_func)

        def after_train(self) -> None:
            if self.learn.epoch == 0:
                losses = self.learn.get_preds(with_loss=True)[2]
                with torch.no_grad():
                    expected = F.cross_entropy(self.learn.model(x_valid), y_valid, reduction="none")
                torch.testing.assert_close(losses, expected)

    learn.fit(2, cbs=[MixUp(), Peek()])
    assert len(seen) == 4 and all(type(lf) is MixedLoss and lf.original is loss_func for lf in seen)
    assert learn.loss_func is loss_func


def test_mixup_mixes_the_loss_of_a_model_with_auxiliary_outputs() -> None:
    # The model returns a tuple and the loss takes it (auxiliary heads): the mixed loss must not need `pred.device`.
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.main(x), self.aux(x)

    def two_heads(pred: tuple[torch.Tensor, torch.Tensor], targ: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(pred[0], targ, reduction=reduction) + F.cross_entropy(pred[1], targ, reduction=reduction)

    class Check(Callback):
        order = 1

        def after_loss(self) -> None:
            if self.learn.training:
                pred, mix = tuple(p.detach() for p in self.learn.pred), self.learn.mix_up
                per_item = torch.lerp(two_heads(pred, mix.yb1[0], "none"), two_heads(pred, self.learn.yb[0], "none"),
                                      mix.lam)
                seen.append((self.learn.loss, per_item.mean()))

    learn = synth_classif_learner(n_train=16, bs=8, loss_func=two_heads)
    learn.model, seen = TwoHeads(), []
    learn.fit(1, cbs=[MixUp(), Check()])
    assert len(seen) == 2
    for loss, expected in seen:
        torch.testing.assert_close(loss, expected)


def test_mixup_with_a_loss_that_ignores_its_reduction_blends_its_two_values() -> None:
    # The loss has a `reduction` but always returns the batch mean: as in fastai, each item's weight blends the two
    # batch losses, and the mean of those is the loss.
    class MeanCE(nn.Module):
        y_int = True
        reduction = "mean"

        def forward(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(pred, targ)

    learn = synth_classif_learner(n_train=16, bs=8, loss_func=MeanCE())
    spy = Spy(order=1)
    lams = [0.9, 0.2, 0.5, 0.7, 0.6, 0.1, 0.8, 0.55]
    learn.fit(1, cbs=[fixed(MixUp(), lams), spy])
    first = spy.seen[0]
    lam, y, pred = torch.tensor([max(v, 1 - v) for v in lams]), first["yb"][0], first["pred"]
    expected = torch.lerp(F.cross_entropy(pred, y.flip(0)), F.cross_entropy(pred, y), lam).mean()
    torch.testing.assert_close(first["loss"], expected)


def test_mixup_with_label_smoothing() -> None:
    loss_func = LabelSmoothingCrossEntropy(eps=0.1)
    learn = synth_classif_learner(n_train=16, bs=8, loss_func=loss_func)
    before, after = Spy(order=-1), Spy(order=1)
    lams = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.75, 0.65]
    learn.fit(2, cbs=[fixed(MixUp(), lams), before, after])
    y, out = before.seen[0]["yb"][0], after.seen[0]["pred"]
    lam = torch.tensor(lams)
    per_item = lam * F.cross_entropy(out, y, label_smoothing=0.1, reduction="none") + (1 - lam) * F.cross_entropy(
        out, y.flip(0), label_smoothing=0.1, reduction="none"
    )
    torch.testing.assert_close(after.seen[0]["loss"], per_item.mean())
    assert learn.loss_func is loss_func and loss_func.reduction == "mean"
    assert all(torch.isfinite(v[1]) for v in [torch.tensor(r) for r in learn.recorder.values])


def test_mixup_with_a_sum_reduction_and_a_functional_loss() -> None:
    for loss_func in (nn.CrossEntropyLoss(reduction="sum"), functools.partial(F.cross_entropy, reduction="sum"),
                      F.cross_entropy):
        learn = synth_classif_learner(n_train=16, bs=8, loss_func=loss_func)
        after = Spy(order=1)
        before = Spy(order=-1)
        learn.fit(1, cbs=[fixed(MixUp(), [0.7] * 8), before, after])
        y, out = before.seen[0]["yb"][0], after.seen[0]["pred"]
        per_item = 0.7 * F.cross_entropy(out, y, reduction="none") + 0.3 * F.cross_entropy(
            out, y.flip(0), reduction="none")
        expected = per_item.mean() if loss_func is F.cross_entropy else per_item.sum()
        torch.testing.assert_close(after.seen[0]["loss"], expected)
        assert learn.loss_func is loss_func


def test_mixup_on_sequence_targets_weighs_each_items_positions() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, 3, generator=g), torch.randint(0, 4, (8, 5), generator=g)
    dls = DataLoaders.from_tensors(x, y, x, y, bs=8, device="cpu")
    learn = Learner(dls, nn.Linear(3, 4), loss_func=CrossEntropyLossFlat())
    learn.logger = noop
    before, after = Spy(order=-1), Spy(order=1)
    lams = [0.5 + i / 16 for i in range(8)]
    learn.fit(1, cbs=[fixed(MixUp(), lams), before, after])
    out, y = after.seen[0]["pred"], before.seen[0]["yb"][0]
    lam = torch.tensor(lams)[:, None]
    ce = functools.partial(F.cross_entropy, reduction="none")
    per_pos = lam * ce(out.transpose(1, 2), y) + (1 - lam) * ce(out.transpose(1, 2), y.flip(0))
    torch.testing.assert_close(after.seen[0]["loss"], per_pos.mean())


# ----------------------------------------------------------------------------------------- CutMix
def image_learner(**kwargs: Any) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 6, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    dls = DataLoaders.from_tensors(x, y, x[:8], y[:8], bs=8, device="cpu")
    torch.manual_seed(0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), loss_func=nn.CrossEntropyLoss(), **kwargs)
    learn.logger = noop
    return learn


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_the_loss_by_the_kept_area() -> None:
    learn = image_learner()
    data = learn.dls.train.dataset.tensors[0].clone()
    before, after = Spy(order=-1), Spy(order=1)
    cb = CutMix()
    boxes: list[tuple[int, int, int, int]] = []
    rand_bbox = cb.rand_bbox

    def keep_box(width: int, height: int, lam: float) -> tuple[int, int, int, int]:
        boxes.append(rand_bbox(width, height, lam))
        return boxes[-1]

    cb.rand_bbox = keep_box  # type: ignore[method-assign]
    learn.fit(1, cbs=[fixed(cb, [0.6]), before, after])
    x, y = before.seen[0]["xb"][0], before.seen[0]["yb"][0]
    x1, y1, x2, y2 = boxes[0]
    expected = x.clone()
    expected[..., y1:y2, x1:x2] = x.flip(0)[..., y1:y2, x1:x2]
    assert torch.equal(after.seen[0]["mixed_xb"][0], expected)
    kept = 1 - (x2 - x1) * (y2 - y1) / 48
    out = after.seen[0]["pred"]
    ce = functools.partial(F.cross_entropy, reduction="none")
    loss = kept * ce(out, y) + (1 - kept) * ce(out, y.flip(0))
    torch.testing.assert_close(after.seen[0]["loss"], loss.mean())
    assert torch.equal(learn.dls.train.dataset.tensors[0], data)  # the dataset was not written into


def test_cutmix_box_has_about_the_requested_area_and_stays_inside() -> None:
    cb = CutMix()
    torch.manual_seed(0)
    for lam in (0.0, 0.3, 0.75, 1.0):
        for _ in range(20):
            x1, y1, x2, y2 = cb.rand_bbox(40, 30, lam)
            assert 0 <= x1 <= x2 <= 40 and 0 <= y1 <= y2 <= 30
            assert (x2 - x1) <= round(40 * (1 - lam) ** 0.5) and (y2 - y1) <= round(30 * (1 - lam) ** 0.5)


def test_cutmix_lam_is_computed_in_float32_as_fastais() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 7, 9, generator=g), torch.randint(0, 3, (8,), generator=g)
    learn = Learner(DataLoaders.from_tensors(x, y, x, y, bs=8, device="cpu"),
                    nn.Sequential(nn.Flatten(), nn.Linear(63, 3)), loss_func=nn.CrossEntropyLoss())
    learn.logger = noop
    cb = CutMix()
    cb.rand_bbox = lambda width, height, lam: (0, 0, 8, 6)  # type: ignore[method-assign]
    learn.fit(1, cbs=cb)
    # 1 - 48/63 in float32 arithmetic; computed in float64 and then rounded, it is one ulp above.
    expected = torch.ones(1) - torch.tensor([48]) / 63.0
    assert cb.lam.dtype == torch.float32 and torch.equal(cb.lam, expected)
    assert float(expected) != float(torch.tensor(1 - 48 / 63, dtype=torch.float32))


def test_cutmix_box_sides_are_rounded_in_float32_as_fastais(monkeypatch: pytest.MonkeyPatch) -> None:
    # 224 * sqrt(1 - lam) is 119.5 less a float32 rounding: fastai's float32 rounds it to 120, float64 to 119.
    lam = float.fromhex("0x1.6e487ep-1")
    monkeypatch.setattr(torch, "randint", lambda low, high, size: torch.tensor([high // 2]))
    x1, y1, x2, y2 = CutMix().rand_bbox(224, 224, lam)
    assert (x1, y1, x2, y2) == (52, 52, 172, 172)


def test_cutmix_needs_image_batches() -> None:
    learn = synth_classif_learner()
    with pytest.raises(ValueError, match=r"CutMix expects image batches \(bs, channels, height, width\)"):
        learn.fit(1, cbs=CutMix())


# ------------------------------------------------------------------------------------- bad input
def test_integer_targets_with_a_loss_that_cannot_be_unreduced_fail_at_before_fit() -> None:
    learn = synth_classif_learner(loss_func=lambda pred, targ: F.cross_entropy(pred, targ))
    log = EventLog()
    log.order = -100
    w = learn.model.state_dict()["weight"].clone()
    with pytest.raises(ValueError, match=r"cannot mix the loss .* `reduction='none'`"):
        learn.fit(1, cbs=[MixUp(), log])
    assert log.events == ["before_fit"]
    assert torch.equal(learn.model.state_dict()["weight"], w)


def test_integer_targets_discovered_at_the_first_batch_also_get_the_clear_error() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]  # plain lists: nothing to inspect before the first batch
    learn = Learner(DataLoaders(batches, batches, device="cpu"), nn.Linear(4, 3),
                    loss_func=lambda pred, targ: F.cross_entropy(pred, targ))
    learn.logger = noop
    with pytest.raises(ValueError, match="cannot mix the loss <function"):
        learn.fit(1, cbs=MixUp())


@pytest.mark.parametrize("known", [True, False], ids=["targets known at before_train", "at the first batch"])
def test_two_handlers_mixing_the_loss_are_refused(known: bool) -> None:
    # The second wrapped the first's MixedLoss but computed the plain loss on its own partners: the first handler's
    # mix of the class indices was silently left out (or, targets known early, an AttributeError on `old_lf`).
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    if known:
        dls = DataLoaders.from_tensors(x, y, x, y, bs=8, device="cpu")
    else:
        batches = [(x[:8], y[:8]), (x[8:], y[8:])]  # plain lists: nothing to inspect before the first batch
        dls = DataLoaders(batches, batches, device="cpu")
    learn = Learner(dls, nn.Linear(4, 3), loss_func=nn.CrossEntropyLoss())
    learn.logger = noop
    with pytest.raises(ValueError, match="MixUp and MixUp would both mix the loss"):
        learn.fit(1, cbs=[MixUp(), MixUp()])
    learn.fit(1, cbs=MixUp())  # one is fine, and takes off what the refused fit left
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)


def test_two_handlers_blending_float_targets_both_run() -> None:
    learn = synth_learner()
    before, after = Spy(order=-1), Spy(order=1)
    learn.fit(1, cbs=[before, fixed(MixUp(), [0.75] * 16), fixed(MixUp(), [0.6] * 16), after])
    yb, mixed = before.seen[0]["yb"][0], after.seen[0]["mixed_yb"][0]
    once = torch.lerp(yb.flip(0), yb, 0.75)
    assert not torch.allclose(mixed, once)
    assert torch.allclose(mixed, torch.lerp(once.flip(0), once, 0.6))


def test_float_targets_mix_with_any_loss() -> None:
    learn = synth_learner(loss_func=lambda pred, targ: ((pred - targ) ** 2).mean())
    learn.fit(1, cbs=MixUp())
    assert all(torch.isfinite(torch.tensor(v[0])) for v in learn.recorder.values)


def test_integer_inputs_cannot_be_blended() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 10, (16, 4), generator=g), torch.randint(0, 3, (16,), generator=g)
    dls = DataLoaders.from_tensors(x, y, x, y, bs=8, device="cpu")
    learn = Learner(dls, nn.Sequential(nn.Embedding(10, 2), nn.Flatten(), nn.Linear(8, 3)),
                    loss_func=nn.CrossEntropyLoss())
    learn.logger = noop
    with pytest.raises(TypeError, match="MixUp blends the inputs, so they must be float tensors"):
        learn.fit(1, cbs=MixUp())


@pytest.mark.parametrize("cls", [MixUp, CutMix])
@pytest.mark.parametrize("target", ["dict", "strings"])
def test_targets_that_are_not_tensors_are_named(cls: type[MixHandler], target: str) -> None:
    # Indexing them with the shuffle failed with a message about something else: a KeyError showing the shuffle for a
    # dict, "only integer tensors of a single element can be converted to an index" for a list.
    x = torch.randn(4, 1, 2, 2)
    y: Any = {"label": torch.tensor([0, 1, 2, 0])} if target == "dict" else ["a", "b", "c", "a"]
    batches = [(x, y)]
    learn = Learner(DataLoaders(batches, batches, device="cpu"), nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                    loss_func=lambda pred, y: pred.mean())
    learn.logger = noop
    kind = "dict" if target == "dict" else "list"
    with pytest.raises(TypeError, match=rf"{cls.__name__} pairs each item .* so each target must be a tensor whose "
                                        rf"first dimension is the batch; target 0 is a {kind}\."):
        learn.fit(1, cbs=cls())


def test_cutmix_pastes_into_uint8_images_and_leaves_other_inputs_alone() -> None:
    # CutMix copies pixels, it does not blend them: fastai's works on uint8 images, and so must learnloop's.
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 6, 5), dtype=torch.uint8, generator=g)
    ids, y = torch.randint(0, 4, (8,), generator=g), torch.randint(0, 3, (8,), generator=g)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.lin = nn.Embedding(4, 3), nn.Linear(90, 3)

        def forward(self, img: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return self.lin(img.float().flatten(1) / 255) + self.emb(idx)

    batches = [(x, ids, y)]
    learn = Learner(DataLoaders(batches, batches, device="cpu", n_inp=2), Model(), loss_func=nn.CrossEntropyLoss())
    learn.logger = noop
    spy = Spy(order=1)
    learn.fit(1, cbs=[fixed(CutMix(), [0.5]), spy])
    mixed_img, mixed_ids = spy.seen[0]["mixed_xb"]
    assert mixed_img.dtype == torch.uint8 and not torch.equal(mixed_img, x)
    assert torch.equal(mixed_ids, ids)  # only the image is cut


def test_cutmix_needs_a_tensor_as_first_input() -> None:
    batches = [([torch.randn(4, 3)], torch.randint(0, 3, (4,)))]
    learn = Learner(DataLoaders(batches, batches, device="cpu"), nn.Linear(3, 3), loss_func=nn.CrossEntropyLoss())
    learn.logger = noop
    with pytest.raises(ValueError, match=r"CutMix expects image batches .* as the first input, got a list"):
        learn.fit(1, cbs=CutMix())


def test_alpha_must_be_positive() -> None:
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixUp(alpha=0)


# ------------------------------------------------------------------------- fastai's MixHandler API
class ReverseMix(MixHandler):
    """A MixHandler subclass written as one is for fastai: its before_batch sets `lam` and `yb1`, blends the
    inputs, and blends the targets unless `stack_y`; the base class mixes the loss. Each item is paired with
    the batch's reverse, with a fixed weight; `every` > 1 mixes only one batch in `every`."""

    def __init__(self, weight: float, every: int = 1) -> None:
        super().__init__(alpha=1.0)
        self.weight, self.every = weight, every
        self.seen: list[dict[str, Any]] = []

    def before_batch(self) -> None:
        if self.learn.iter % self.every:
            return
        xb, yb = self.learn.xb, self.learn.yb
        bs = yb[0].size(0)
        self.lam = torch.full((bs,), self.weight)
        partner = torch.arange(bs - 1, -1, -1)
        xb1, self.yb1 = tuple(x[partner] for x in xb), tuple(y[partner] for y in yb)
        self.learn.xb = tuple(torch.lerp(x1, x, self.lam.view(-1, *[1] * (x.ndim - 1)))
                              for x1, x in zip(xb1, xb, strict=True))
        if not self.stack_y:
            self.learn.yb = tuple(torch.lerp(y1, y, self.lam.view(-1, *[1] * (y.ndim - 1)))
                                  for y1, y in zip(self.yb1, yb, strict=True))

    def after_loss(self) -> None:
        super().after_loss()
        self.seen.append({"stack_y": self.stack_y, "old_lf": self.old_lf, "loss_func": self.learn.loss_func})


@pytest.mark.parametrize("loss_func", [CrossEntropyLossFlat(), nn.CrossEntropyLoss()], ids=["y_int", "torch"])
def test_a_fastai_style_subclass_mixes_the_loss_of_class_targets(loss_func: Any) -> None:
    learn = synth_classif_learner(n_train=16, bs=8, loss_func=loss_func)
    before, after = Spy(order=-1), Spy(order=1)
    mix = ReverseMix(0.75)
    learn.fit(1, cbs=[mix, before, after])
    x, y = before.seen[0]["xb"][0], before.seen[0]["yb"][0]
    seen = after.seen[0]
    torch.testing.assert_close(seen["mixed_xb"][0], 0.75 * x + 0.25 * x.flip(0))
    assert torch.equal(seen["mixed_yb"][0], y)  # stack_y: class indices are left alone, the loss is mixed
    ce = functools.partial(F.cross_entropy, reduction="none")
    torch.testing.assert_close(seen["loss"], (0.75 * ce(seen["pred"], y) + 0.25 * ce(seen["pred"], y.flip(0))).mean())
    assert all(s["stack_y"] and s["old_lf"] is loss_func and isinstance(s["loss_func"], MixedLoss) for s in mix.seen)
    assert torch.equal(mix.yb1[0], after.seen[1]["yb"][0].flip(0)) and mix.lam.shape == (8,)  # kept, as fastai's
    assert learn.loss_func is loss_func


def test_a_fastai_style_subclass_blends_float_targets_with_the_plain_loss() -> None:
    loss_func = nn.MSELoss()
    learn = synth_learner(n_train=16, bs=8, loss_func=loss_func)
    before, after = Spy(order=-1), Spy(order=1)
    mix = ReverseMix(0.75)
    learn.fit(1, cbs=[mix, before, after])
    y, seen = before.seen[0]["yb"][0], after.seen[0]
    torch.testing.assert_close(seen["mixed_yb"][0], 0.75 * y + 0.25 * y.flip(0))
    torch.testing.assert_close(seen["loss"], F.mse_loss(seen["pred"], seen["mixed_yb"][0]))
    # As fastai's: float targets known before the first batch leave the loss function as it is.
    assert all(not s["stack_y"] and s["loss_func"] is loss_func for s in mix.seen)


def test_a_subclass_may_override_lf_and_set_stack_y() -> None:
    class HalfLoss(ReverseMix):
        def lf(self, pred: Any, *yb: Any) -> torch.Tensor:
            return super().lf(pred, *yb) / 2

    learn = synth_learner(n_train=16, bs=8)
    mix = HalfLoss(0.75)
    mix.stack_y = True  # float targets, but the loss is mixed rather than the targets
    after = Spy(order=1)
    learn.fit(1, cbs=[mix, after])
    seen = after.seen[0]
    mse = functools.partial(F.mse_loss, reduction="none")
    y = seen["mixed_yb"][0]  # not blended
    per_item = 0.75 * mse(seen["pred"], y) + 0.25 * mse(seen["pred"], y.flip(0))
    torch.testing.assert_close(seen["loss"], per_item.mean() / 2)


def test_a_batch_the_subclass_does_not_mix_gets_the_plain_loss() -> None:
    learn = synth_classif_learner(n_train=32, bs=8)
    after = Spy(order=1)
    learn.fit(1, cbs=[ReverseMix(0.75, every=2), after])
    plain = after.seen[1]  # not mixed: no stale partners from the batch before
    torch.testing.assert_close(plain["loss"], F.cross_entropy(plain["pred"], plain["mixed_yb"][0]))
    mixed = after.seen[2]
    assert not torch.allclose(mixed["loss"], F.cross_entropy(mixed["pred"], mixed["mixed_yb"][0]))


def test_cutmix_lam_has_fastais_shape() -> None:
    learn = image_learner()
    cb = CutMix()
    learn.fit(1, cbs=cb)
    assert isinstance(cb.lam, torch.Tensor) and cb.lam.shape == (1,) and 0 <= float(cb.lam) <= 1
    assert len(cb.yb1) == 1 and cb.yb1[0].shape == (8,)


def test_the_loss_side_lives_in_mixed_loss_and_is_still_importable_from_mixup() -> None:
    from learnloop.callbacks import mixed_loss, mixup

    assert MixedLoss is mixed_loss.MixedLoss and MixedLoss.__module__ == "learnloop.callbacks.mixed_loss"
    for name in ("MixedLoss", "reduce_loss", "unreduced", "LossFunc", "_reduction_of", "_reduction_param",
                 "_cannot_unreduce"):
        assert getattr(mixup, name) is getattr(mixed_loss, name), name


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_an_alpha_that_is_not_a_number_is_refused_with_a_sentence(cls: type[MixHandler]) -> None:
    # fastai: "'<=' not supported between instances of 'str' and 'int'", a TypeError when made.
    with pytest.raises(TypeError, match=rf"{cls.__name__}: alpha must be a number .*got 'x'"):
        cls("x")  # type: ignore[arg-type]
