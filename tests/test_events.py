"""The loop's event order and cancel semantics (SPEC §1), checked on every cancel path."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

from conftest import EventLog, synth_learner
from learnloop import (
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    Event,
)
from learnloop.events import INNER_LOOP

TRAIN_BATCH = ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
               "before_step", "after_step", "after_batch"]
VALID_BATCH = ["before_batch", "after_pred", "after_loss", "after_batch"]
INNER = {e.value for e in INNER_LOOP}


def plain_fit(n_epoch: int, n_train: int, n_valid: int) -> list[str]:
    epoch = ["before_epoch", "before_train", *TRAIN_BATCH * n_train, "after_train",
             "before_validate", *VALID_BATCH * n_valid, "after_validate", "after_epoch"]
    return ["before_fit", *epoch * n_epoch, "after_fit"]


def test_plain_fit_sequence() -> None:
    learn = synth_learner(n_train=32, n_valid=16, bs=16)
    log = EventLog()
    learn.fit(2, cbs=log)
    assert log.events == plain_fit(2, 2, 1)


def test_validate_and_get_preds_sequence() -> None:
    learn = synth_learner(n_valid=16, bs=16)
    log = EventLog()
    learn.add_cb(log)
    learn.validate()
    expected = ["before_fit", "before_epoch", "before_validate", *VALID_BATCH, "after_validate",
                "after_epoch", "after_fit"]
    assert log.events == expected
    log.events.clear()
    learn.get_preds()
    assert log.events == expected


# ------------------------------------------------------------------ a reference model of the loop
PHASE_EXC = {"fit": CancelFitException, "epoch": CancelEpochException, "train": CancelTrainException,
             "validate": CancelValidException, "batch": CancelBatchException,
             "backward": CancelBackwardException, "step": CancelStepException}


def reference_events(exc: type[Exception], at: str, in_training: bool, n_train: int = 2,
                     n_valid: int = 2) -> tuple[list[str], bool]:
    """What SPEC §1 says happens when `exc` is raised the first time `at` fires (in training or not).

    Returns the events and whether the exception escapes `fit`.
    """
    log: list[str] = []
    state = {"raised": False, "training": False}  # the flag matters only for inner-loop events

    def fire(event: str) -> None:
        log.append(event)
        matches = event == at and (event not in INNER or state["training"] == in_training)
        if not state["raised"] and matches:
            state["raised"] = True
            raise exc

    def phase(name: str, body: Callable[[], None]) -> None:
        try:
            fire(f"before_{name}")
            body()
        except PHASE_EXC[name]:
            fire(f"after_cancel_{name}")
        fire(f"after_{name}")

    def batch() -> None:
        fire("after_pred")
        fire("after_loss")
        if state["training"]:
            phase("backward", lambda: None)
            phase("step", lambda: None)

    def batches(n: int) -> Callable[[], None]:
        return lambda: [phase("batch", batch) for _ in range(n)] and None

    def train() -> None:
        state["training"] = True
        batches(n_train)()

    def validate() -> None:
        state["training"] = False
        batches(n_valid)()

    def epoch() -> None:
        phase("train", train)
        phase("validate", validate)

    def fit() -> None:
        phase("epoch", epoch)

    try:
        phase("fit", fit)
    except Exception as e:  # noqa: BLE001 - the model says which exceptions escape
        assert isinstance(e, exc)
        return log, True
    return log, False


class Raiser(Callback):
    """Raises `exc` the first time `event` fires with the given training flag."""

    order = 200  # after the EventLog, so the raising event is logged first

    def __init__(self, exc: type[Exception], event: str, in_training: bool) -> None:
        self.exc, self.event, self.in_training, self.done = exc, event, in_training, False
        setattr(self, event, self._maybe_raise)

    def _maybe_raise(self) -> None:
        if not self.done and (self.event not in INNER or self.learn.training == self.in_training):
            self.done = True
            raise self.exc


_TRAIN_EVENTS = ["before_fit", "before_epoch", "before_train", *TRAIN_BATCH, "after_train", "before_validate",
                 "after_validate", "after_epoch", "after_fit"]
CASES = [(exc, event, True) for exc in PHASE_EXC.values() for event in _TRAIN_EVENTS] + [
    (exc, event, False) for exc in PHASE_EXC.values() for event in VALID_BATCH
]


@pytest.mark.parametrize("exc,event,in_training", CASES,
                         ids=[f"{e.__name__}-{ev}-{'train' if t else 'valid'}" for e, ev, t in CASES])
def test_cancel_paths_follow_the_spec(exc: type[Exception], event: str, in_training: bool) -> None:
    learn = synth_learner(n_train=32, n_valid=32, bs=16)
    log = EventLog()
    expected, escapes = reference_events(exc, event, in_training)
    learn.add_cbs([log, Raiser(exc, event, in_training)])
    if escapes:
        with pytest.raises(exc):
            learn.fit(1)
    else:
        learn.fit(1)
    assert log.events == expected


# ------------------------------------------------------------------ the consequences SPEC §1 names
def _fit_with(cb: Callback, n_train: int = 32) -> list[str]:
    learn = synth_learner(n_train=n_train, n_valid=16, bs=16)
    log = EventLog()
    cb.order = 200  # after the log, so the raising event is logged
    learn.fit(1, cbs=[log, cb])
    return log.events


def test_cancel_batch_in_step_skips_zero_grad_so_grads_accumulate() -> None:
    learn = synth_learner(n_train=32, bs=16)
    grads: list[torch.Tensor] = []

    class SkipFirstStep(Callback):
        def before_step(self) -> None:
            grads.append(self.learn.model.weight.grad.clone())
            if self.learn.iter == 0:
                raise CancelBatchException

    learn.fit(1, lr=0.0, cbs=SkipFirstStep())
    single = synth_learner(n_train=32, bs=16)
    seen: list[torch.Tensor] = []
    single.fit(1, lr=0.0, cbs=Callback(before_step=lambda: seen.append(single.model.weight.grad.clone())))
    # The second batch's grads are the sum of both batches' grads, since zero_grad was skipped.
    torch.testing.assert_close(grads[1], seen[0] + seen[1])


def test_cancel_backward_still_steps() -> None:
    events = _fit_with(Callback(before_backward=_raise(CancelBackwardException)), n_train=16)
    start = events.index("before_backward")
    assert events[start:start + 5] == ["before_backward", "after_cancel_backward", "after_backward",
                                        "before_step", "after_step"]


def test_cancel_fit_deep_inside_fires_only_fit_events() -> None:
    events = _fit_with(Callback(after_batch=_raise(CancelFitException)), n_train=16)
    assert events[-3:] == ["after_batch", "after_cancel_fit", "after_fit"]
    assert "after_train" not in events and "after_epoch" not in events


def test_cancel_in_own_after_event_escapes_fit() -> None:
    learn = synth_learner()
    with pytest.raises(CancelBatchException):
        learn.fit(1, cbs=Callback(after_batch=_raise(CancelBatchException)))


def test_other_exception_leaves_fit_without_after_fit() -> None:
    learn = synth_learner()
    log = EventLog()
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[log, Callback(after_loss=_raise(RuntimeError("boom")))])
    assert "after_fit" not in log.events and "after_batch" not in log.events


def _raise(exc: type[Exception] | Exception) -> Callable[[], None]:
    def hook() -> None:
        raise exc
    return hook


# ------------------------------------------------------------------ names
def test_event_values_are_hook_names() -> None:
    assert [e.value for e in Event] == [e.name for e in Event]
    assert len(Event) == 24


def test_unknown_event_name_is_named_in_the_error(learn) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="'befor_fit'.*Did you mean 'before_fit'"):
        learn("befor_fit")


def test_an_event_that_is_not_a_string_is_a_type_error_naming_it(learn) -> None:  # noqa: ANN001
    # fastai's getattr: "attribute name must be string, not 'int'"; learnloop's said "'int' object is not iterable"
    for bad in (5, [5], None):
        with pytest.raises(TypeError, match=r"An event is named by a string, such as 'before_fit'.*got (5|None)"):
            learn(bad)


def test_calling_events_by_name_and_list() -> None:
    learn = synth_learner(default_cbs=False)
    log = EventLog()
    learn.add_cb(log)
    learn("before_fit")
    learn(["after_batch", "after_fit"])
    assert log.events == ["before_fit", "after_batch", "after_fit"]


def test_begin_aliases_work_with_a_deprecation_warning(learn) -> None:  # noqa: ANN001
    class OldStyle(Callback):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def begin_fit(self) -> None:
            self.calls.append("fit")

        def begin_batch(self) -> None:
            self.calls.append("batch")

    with pytest.warns(DeprecationWarning, match="begin_(fit|batch).*before_(fit|batch)"):
        cb = OldStyle()
        learn.add_cb(cb)
    learn.fit(1)
    assert cb.calls[0] == "fit" and cb.calls.count("batch") == 3
    with pytest.warns(DeprecationWarning):
        learn("begin_fit")


def test_begin_aliases_as_callback_keywords_work_with_a_deprecation_warning(learn) -> None:  # noqa: ANN001
    calls: list[str] = []
    with pytest.warns(DeprecationWarning, match=r"Callback\(begin_batch=\.\.\.\).*'before_batch'"):
        cb = Callback(begin_batch=lambda: calls.append("batch"))
    learn.fit(1, cbs=cb)
    assert calls == ["batch"] * 3


def test_misspelt_event_method_is_reported_when_added(learn) -> None:  # noqa: ANN001
    class Typo(Callback):
        def before_bacth(self) -> None: ...

    with pytest.warns(UserWarning, match="before_bacth.*never be called.*before_batch"):
        learn.add_cb(Typo())


def test_helper_methods_are_not_reported(learn) -> None:  # noqa: ANN001
    class Helpers(Callback):
        def after_batch_hook(self) -> None: ...

        def compute(self) -> None: ...

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.add_cb(Helpers())


def test_event_is_fastais_name_for_the_event_namespace() -> None:
    from learnloop import event

    assert event is Event and event.after_batch == "after_batch" and len(list(event)) == 24
