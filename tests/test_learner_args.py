"""What a Learner refuses when it is built or trained with arguments it cannot use (learner_args.py, errors.to_lr),
before anything is kept: the learner stays usable."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import synth_dls, synth_learner
from learnloop import Callback, CheckpointCallback, Learner
from learnloop.callbacks import EarlyStoppingCallback, GradientClip
from learnloop.errors import (
    ArgumentError,
    InputError,
    ValueTypeError,
    WrongKindError,
    to_epochs,
    to_lr,
    to_number,
    to_whole,
)
from learnloop.optimizer import Adam, OptimWrapper


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"loss_func": nn.MSELoss}, r"loss_func is the class MSELoss; pass an instance: loss_func=MSELoss\(\)"),
    ({"loss_func": "mse"}, r"loss_func must be callable as loss_func\(pred, target\), got 'mse'"),
    ({"opt_func": torch.optim.SGD}, r"opt_func is torch.optim.SGD, a torch optimizer: wrap it, "
                                    r"opt_func=partial\(OptimWrapper, opt=torch.optim.SGD\)"),
    ({"opt_func": "adam"}, r"opt_func must be callable as opt_func\(params, lr=...\), got 'adam'"),
    ({"wd": "0.1"}, r"wd must be a number .*got '0.1'"),
    ({"lr": "1e-3"}, r"lr must be a number, a slice or a list of numbers .*got '1e-3'"),
])
def test_a_learner_refuses_functions_and_numbers_it_cannot_use(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Learner(synth_dls(), nn.Linear(2, 1), **{"loss_func": nn.MSELoss(), **kwargs})


def test_a_built_optimizer_and_a_wrapped_torch_one_are_accepted() -> None:
    model = nn.Linear(2, 1)
    built = OptimWrapper(model.parameters(), opt=torch.optim.SGD, lr=0.1)
    synth_learner(opt_func=built).fit(1)
    synth_learner(opt_func=functools.partial(OptimWrapper, opt=torch.optim.SGD)).fit(1)


def test_loaders_given_in_place_of_dataloaders_are_refused_with_the_fix() -> None:
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    with pytest.raises(TypeError, match=r"got a torch DataLoader: pass DataLoaders\(train_dl, valid_dl\)"):
        Learner(DataLoader(TensorDataset(x, y), batch_size=4), nn.Linear(2, 1), loss_func=nn.MSELoss())
    with pytest.raises(TypeError, match=r"got a tuple of tensors: .*DataLoaders.from_tensors"):
        Learner((x, y), nn.Linear(2, 1), loss_func=nn.MSELoss())
    loaders = (DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x, y), batch_size=4))
    Learner(loaders, nn.Linear(2, 1), loss_func=nn.MSELoss()).fit(1)  # a (train, valid) pair is fine
    learn = Learner(None, nn.Linear(2, 1), loss_func=nn.MSELoss())  # fastai allows it (an inference learner)
    with pytest.raises(AttributeError, match=r"no data to train on \(dls=None\)"):  # fastai's type
        learn.fit(1)


def test_a_bad_weight_decay_leaves_the_learner_able_to_train() -> None:
    learn = synth_learner()
    with pytest.raises(TypeError, match=r"wd must be a number .*got '0.1'"):
        learn.fit(1, wd="0.1")
    with pytest.raises(ValueError, match=r"wd must be a finite number, got inf"):
        learn.fit(1, wd=float("inf"))
    learn.fit(1, wd=[0.01])  # one per parameter group
    learn.fit(1)
    assert learn.opt.hypers[0]["wd"] == 0.01


def test_learning_rates_are_checked_alike_by_every_fit_method() -> None:
    learn = synth_learner()
    for fit in (learn.fit, learn.fit_one_cycle, learn.fit_flat_cos):
        with pytest.raises(ValueError, match=r"must be a finite, non-negative learning rate, got inf"):
            fit(1, float("inf"))
        with pytest.raises(TypeError, match=r"must be a number, a slice or a list of numbers"):
            fit(1, "1e-2")
    with pytest.raises(TypeError, match="LRFinder: end_lr must be a number"):
        learn.lr_find(end_lr="10", show_plot=False)
    with pytest.raises(TypeError, match=r"fine_tune: base_lr is one number, got slice\(0.001, 0.01, None\)"):
        learn.fine_tune(1, base_lr=slice(1e-3, 1e-2))
    learn.fit(1, torch.tensor(0.01))  # a 0-dim tensor or a numpy number is a number, in fit as in fit_one_cycle
    assert learn.opt.hypers[0]["lr"] == pytest.approx(0.01) and type(learn.opt.hypers[0]["lr"]) is float
    learn.fit_one_cycle(1, np.float32(0.01))


def test_to_lr_keeps_the_form_and_makes_python_numbers() -> None:
    assert to_lr(slice(np.float64(1e-4), torch.tensor(0.5))) == slice(1e-4, 0.5)
    assert to_lr(slice(None, 3)) == slice(None, 3) and type(to_lr(np.int64(3))) is int
    assert to_lr((1e-3, 1e-2)) == (1e-3, 1e-2) and to_lr(np.array([1e-3, 1e-2])) == [1e-3, 1e-2]
    with pytest.raises(ArgumentError, match=r"fine_tune: base_lr must be a number, .* got True"):
        to_lr(True, "base_lr", "fine_tune")
    with pytest.raises(InputError, match=r"lr must be a finite, non-negative learning rate, got \[0.1, nan\]"):
        to_lr([0.1, float("nan")])
    with pytest.raises(InputError, match=r"a slice of learning rates needs its stop"):
        to_lr(slice(1e-3, None))
    with pytest.raises(TypeError, match=r"a slice of learning rates needs its stop"):  # fastai's fit: a TypeError
        synth_learner().fit(1, slice(None))


def test_a_0_dim_numpy_array_is_a_number_as_a_0_dim_tensor_is() -> None:
    # np.array(2) (what numpy reductions give) is taken by fastai's range(n_epoch), float() and arithmetic; learnloop
    # refused it where it took torch.tensor(2).
    learn = synth_learner(cbs=[GradientClip(max_norm=np.array(1.0)), EarlyStoppingCallback(patience=np.array(3))])
    learn.fit(np.array(2), lr=np.array(0.01), wd=np.array(0.1))
    assert learn.epoch == 1 and learn.opt.hypers[0]["lr"] == 0.01 and type(learn.opt.hypers[0]["wd"]) is float
    learn.fit_sgdr(np.array(1), np.array(1), lr_max=np.array(0.01))
    learn.fine_tune(np.array(1), base_lr=np.array(2e-3), freeze_epochs=np.array(0))
    assert Learner(synth_dls(), nn.Linear(2, 1), loss_func=nn.MSELoss(), lr=np.array(0.01)).lr == 0.01
    assert (to_number(np.array(3), "n_acc", "GradientAccumulation"), to_lr(np.array(0.5))) == (3, 0.5)
    assert type(to_whole(np.array(2), "n_inp", "DataLoaders", "the number of inputs")) is int
    for wrong in (np.array(2.0), np.array(True)):
        with pytest.raises(ValueTypeError, match=r"n_epoch must be a whole number of epochs >= 0, got array\("):
            learn.fit(wrong)
    with pytest.raises(ArgumentError, match=r"lr must be a number, .* got array\(True\)"):
        to_lr(np.array(True))
    with pytest.raises(ValueTypeError, match=r"num_it is a whole number of batches >= 1, got array\(10\.\)"):
        learn.lr_find(num_it=np.array(10.0), show_plot=False)
    assert CheckpointCallback(every_n_iters=np.array(2), keep_last=np.array(1)).every_n_iters == 2


def _state(learn: Learner) -> tuple[Any, ...]:
    """What a refused call must leave as it was: the weights, which train, and the optimizer's hyper-parameters."""
    opt = None if learn.opt is None else repr(learn.opt.hypers)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    return opt, [p.requires_grad for p in learn.model.parameters()], weights


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[:2] == b[:2] and all(torch.equal(x, y) for x, y in zip(a[2], b[2], strict=True))


@pytest.mark.parametrize(("n_epoch", "kind"), [(1.5, TypeError), ("2", TypeError), (-1, ValueError)])
def test_a_number_of_epochs_that_is_not_one_is_refused_by_every_fit_method(n_epoch: Any, kind: type) -> None:
    # fastai's fit fails on 1.5 or "2" with a TypeError and trains nothing for -1; learnloop refuses all three with
    # a ValueTypeError (a ValueError and a TypeError), before the optimizer or the model is touched.
    learn = synth_learner()
    learn.fit(1)
    before = _state(learn)
    for fit in (learn.fit, learn.fit_one_cycle, learn.fit_flat_cos):
        with pytest.raises(kind, match=rf"n_epoch must be a whole number of epochs >= 0, got {n_epoch!r}") as info:
            fit(n_epoch, 0.5)
        assert isinstance(info.value, ValueTypeError) and _same(_state(learn), before)
    learn.fit(np.int64(1))  # a numpy integer is a whole number
    assert to_epochs(torch.tensor(2)) == 2


@pytest.mark.parametrize("arg", ["epochs", "freeze_epochs"])
def test_fine_tune_checks_both_lengths_before_its_frozen_fit(arg: str) -> None:
    # fine_tune(-1) trained its frozen epoch (and froze the model) before the second fit refused -1.
    learn = synth_learner(splitter=lambda m: [[m.weight], [m.bias]])
    learn.fit(1)
    before = _state(learn)
    with pytest.raises(ValueError, match=rf"fine_tune: {arg} must be a whole number of epochs >= 0, got -1"):
        learn.fine_tune(**{"epochs": 1, arg: -1})
    assert _same(_state(learn), before)


def test_momentums_of_the_wrong_length_are_refused_before_the_optimizer_changes() -> None:
    learn = synth_learner()
    learn.fit(1, lr=0.5)
    before = _state(learn)
    with pytest.raises(TypeError, match=r"fit_one_cycle: moms is \(start, middle, end\) of the momentum cycle, got "
                                        r"\(0.9,\)"):  # fastai: a TypeError (combined_cos() missing arguments)
        learn.fit_one_cycle(1, moms=(0.9,))
    with pytest.raises(ValueError, match=r"learn.moms is \(start, middle, end\)"):
        Learner(synth_dls(), learn.model, loss_func=nn.MSELoss(), moms=(0.9, 0.8)).fine_tune(1)
    assert _same(_state(learn), before)


def test_fit_refusing_its_lr_or_wd_leaves_the_optimizer_as_it_was() -> None:
    # fit set wd, then the lr: one lr per group for an optimizer of one group was refused after wd had changed
    # (as in fastai's fit). Each is refused now with the hyper-parameters as they were.
    learn = synth_learner()
    learn.fit(1, lr=0.5)
    before = _state(learn)
    with pytest.raises(ValueError, match=r"set_hyper\('lr'\): got 2 values but the optimizer has 1 parameter groups"):
        learn.fit(1, lr=[0.1, 0.2], wd=0.5)
    with pytest.raises(ValueError, match=r"got 2 values but the optimizer has 1 parameter groups"):
        learn.fit(1, lr=0.1, wd=[0.1, 0.2])
    assert _same(_state(learn), before)


def test_a_start_epoch_that_is_not_a_number_is_refused_with_a_sentence() -> None:
    learn = synth_learner()
    with pytest.raises(ArgumentError, match=r"fit: start_epoch must be a number .*got '1'"):  # fastai: a TypeError
        learn.fit(2, start_epoch="1")


def test_a_model_that_is_not_a_module_and_tensors_as_dls_are_also_attribute_errors() -> None:
    # fastai fails reading an attribute of them: code catching its AttributeError still works.
    with pytest.raises(WrongKindError, match=r"model must be a torch.nn.Module, got str"):
        Learner(synth_dls(), "resnet18", loss_func=nn.MSELoss())  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match=r"got a tuple of tensors"):
        Learner((torch.randn(4, 2), torch.randn(4, 1)), nn.Linear(2, 1), loss_func=nn.MSELoss())
    for dls in ("data/", 5):  # fastai: "'str' object has no attribute 'train'" at the first fit
        with pytest.raises(AttributeError, match=r"dls must be a DataLoaders .*got a (str|int): pass DataLoaders\("):
            Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())  # type: ignore[arg-type]


@pytest.mark.parametrize("model_dir", [None, 5])
def test_a_model_dir_that_is_not_a_path_is_refused_when_the_learner_is_made(model_dir: Any) -> None:
    # fastai keeps it and fails at the first save with "unsupported operand type(s) for /: 'PosixPath' and 'int'"
    with pytest.raises(TypeError, match=rf"model_dir is the folder.*a str or a Path, got {model_dir!r}"):
        synth_learner(model_dir=model_dir)
    if model_dir is not None:  # a path of 5: Path(5)'s "expected str, bytes or os.PathLike object, not int" before
        with pytest.raises(ArgumentError, match=r"path is the folder save\(\), export\(\).*a str or a Path, got 5"):
            synth_learner(path=model_dir)


def test_a_splitter_that_cannot_be_called_is_refused_when_the_learner_is_made() -> None:
    with pytest.raises(ArgumentError, match=r"splitter must be a function model -> parameter groups .*got 5"):
        synth_learner(splitter=5)
    with pytest.raises(ArgumentError, match=r"splitter must be a function .*got None"):  # was: at the first fit,
        synth_learner(splitter=None)  # "'NoneType' object is not callable", as fastai's


@pytest.mark.parametrize("n", ["1", 1.5, None])
def test_freeze_to_refuses_what_is_not_a_group_index_and_creates_no_optimizer(n: Any) -> None:
    learn = synth_learner(splitter=lambda m: [[m.weight], [m.bias]])
    with pytest.raises(TypeError, match=rf"freeze_to\(n={n!r}\): n is the index of the first parameter group to "
                                        "train, an int"):  # fastai: a TypeError from its comparison, or slicing
        learn.freeze_to(n)
    assert learn.opt is None
    learn.freeze_to(np.int64(1))
    assert [p.requires_grad for p in learn.model.parameters()] == [False, True]


def test_a_start_epoch_outside_the_fit_is_warned_of_and_run_as_fastai_runs_it() -> None:
    learn, log = synth_learner(), []
    learn.add_cb(Callback(before_epoch=lambda: log.append(learn.epoch), after_batch=lambda: log.append("batch")))
    with pytest.warns(UserWarning, match=r"start_epoch=-1 is outside the fit's 2 epochs: every epoch is trained"):
        learn.fit(2, start_epoch=-1)
    assert log.count("batch") == 2 * 3
    log.clear()
    with pytest.warns(UserWarning, match=r"start_epoch=5 is outside the fit's 2 epochs: no epoch is trained"):
        learn.fit(2, start_epoch=5)
    assert log == [0, 1]  # each epoch begins and is skipped, as fastai's SkipToEpoch does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(2, start_epoch=2)  # every epoch done already, as a resumed fit that had ended: no warning
        learn.fit(2, start_epoch=1.0)  # a float that is a whole number, as fastai takes it


def test_a_model_with_nothing_to_train_says_so() -> None:
    learn = synth_learner()
    learn.model.requires_grad_(False)
    with pytest.raises(ValueError, match="empty parameter list") as info:
        learn.fit(1)
    assert "none that require a gradient (frozen: learn.unfreeze()" in " ".join(info.value.__notes__)


def test_a_splitter_returning_modules_and_a_get_preds_act_not_callable_say_what_to_give() -> None:
    learn = synth_learner(splitter=lambda m: [m])
    with pytest.raises(ArgumentError, match="got the module Linear where it needs a parameter tensor"):
        learn.fit(1)
    calls = []
    learn = synth_learner(cbs=Callback(before_batch=lambda: calls.append(1)))
    with pytest.raises(ArgumentError, match=r"act must be a function .*got 'softmax'"):
        learn.get_preds(act="softmax")
    assert not calls  # refused before any batch runs


def test_a_splitter_or_an_opt_func_that_returns_nothing_usable_says_so() -> None:
    # fastai: an IndexError for a splitter returning None, an AttributeError ("'NoneType' object has no attribute
    # 'state'") for an opt_func returning None; learnloop's were bare TypeErrors and that AttributeError
    learn = synth_learner(splitter=lambda m: None)
    with pytest.raises(TypeError, match=r"The splitter <lambda> returned None, not parameter groups.*lack a return"):
        learn.fit(1)
    assert learn.opt is None
    learn = synth_learner(opt_func=lambda params, lr: None)
    with pytest.raises(AttributeError, match=r"opt_func <lambda> returned None, not an optimizer"):
        learn.fit(1)
    assert learn.opt is None
    learn = synth_learner(opt_func=lambda params, lr: torch.optim.SGD(params, lr=lr))
    with pytest.raises(WrongKindError, match=r"returned the torch optimizer SGD.*OptimWrapper\(params, opt="):
        learn.fit(1)
    sgd = functools.partial(OptimWrapper, opt=torch.optim.SGD)
    learn = synth_learner(splitter=lambda m: m.parameters(), opt_func=sgd)
    learn.fit(1)  # a generator of parameters, and an OptimWrapper, are fine


def test_a_tensor_given_as_dl_is_refused_before_any_batch() -> None:
    # Its rows went through the model one by one as batches (fastai's splits each row into inputs: a TypeError)
    calls = []
    learn = synth_learner(cbs=Callback(before_batch=lambda: calls.append(1)))
    for method in (learn.get_preds, learn.validate):
        with pytest.raises(TypeError, match=r"dl=<a tensor of shape \(4, 2\)>\): dl must be a loader of batches"):
            method(dl=torch.randn(4, 2))
    assert not calls
    preds, _ = learn.get_preds(dl=[(torch.randn(4, 2),)])  # the inputs as one batch
    assert preds.shape == (4, 1)


def test_get_preds_with_loss_without_a_loss_function_says_so_before_any_batch() -> None:
    calls = []
    learn = synth_learner(cbs=Callback(before_batch=lambda: calls.append(1)))
    learn.loss_func = None
    with pytest.raises(TypeError, match=r"with_loss=True\) computes each item's loss with learn.loss_func, which is"):
        learn.get_preds(with_loss=True)  # fastai: a TypeError, "the first argument must be callable"
    assert not calls


def test_a_string_hyper_parameter_is_refused_by_the_optimizer_before_it_is_kept() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"lr='1e-3': a hyper-parameter is a number .*not a string"):
        Adam(list(model.parameters()), lr="1e-3")
    opt = Adam(list(model.parameters()), lr=1e-3)
    with pytest.raises(TypeError, match=r"wd='0.1': a hyper-parameter is a number"):
        opt.set_hyper("wd", "0.1")
    assert opt.hypers[0]["wd"] == 0.01


def test_a_parameter_listed_twice_is_warned_of() -> None:
    learn = synth_learner(splitter=lambda m: [list(m.parameters()), [m.bias]])
    with pytest.warns(UserWarning, match=r"A parameter of shape \(1,\) is in parameter groups 0 and 1"):
        learn.create_opt()
    w = nn.Parameter(torch.ones(2))
    with pytest.warns(UserWarning, match=r"is twice in parameter group 0"):
        Adam([w, w], lr=0.1)


def test_a_validation_generator_is_warned_of_when_more_than_one_epoch_reads_it() -> None:
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    learn = synth_learner()
    learn.dls.loaders[1] = ((x, y) for _ in range(1))
    with pytest.warns(UserWarning, match="validation data is an iterator .* the epochs after the first"):
        learn.fit(2)
    assert learn.recorder.values[1][1] is None  # fastai's behaviour, kept: the second epoch had no batch
    learn.dls.loaders[1] = ((x, y) for _ in range(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1)  # one epoch reads it once: fine


def test_a_callback_added_twice_or_to_two_learners_is_warned_of() -> None:
    class Count(Callback):
        def __init__(self) -> None:
            self.n = 0

        def after_batch(self) -> None:
            self.n += 1

    count, learn = Count(), synth_learner()
    learn.add_cb(count)
    with pytest.warns(UserWarning, match=r"is already in learn.cbs: added again, it runs twice at each event"):
        learn.add_cb(count)
    learn.fit(1)
    assert count.n == 2 * 3  # three batches (two training, one validation), twice each: as fastai
    shared, second = Count(), synth_learner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):  # one list of callbacks for learner after learner (k-fold): fine
            synth_learner(cbs=[shared]).fit(1)

    class AddsItselfElsewhere(Callback):
        def before_epoch(self) -> None:
            second.add_cb(self)

    with pytest.warns(UserWarning, match=r"belongs to a Learner that is fitting: it now reads this learner"):
        synth_learner().fit(1, cbs=AddsItselfElsewhere())


@pytest.mark.parametrize("call", [
    lambda learn: learn.fit_one_cycle(1, 0.01, wd="x"),
    lambda learn: learn.fit_one_cycle(1, slice(1e-3, 1e-2), start_epoch="x"),
    lambda learn: learn.fit_flat_cos(1, 0.01, cbs=[5]),
    lambda learn: learn.fit_sgdr(1, 1, 0.01, resume="no-such-checkpoint"),
    lambda learn: learn.fine_tune(1, wd="x"),
    lambda learn: learn.fine_tune(1, cbs=[5]),
    lambda learn: learn.fine_tune(1, div_final=-1.0),
    lambda learn: learn.fine_tune(1, start_epoch="x"),
    lambda learn: learn.fine_tune(1, lr_max=0.1),
], ids=["one_cycle-wd", "one_cycle-start_epoch", "flat_cos-cbs", "sgdr-resume", "fine_tune-wd", "fine_tune-cbs",
        "fine_tune-div_final", "fine_tune-start_epoch", "fine_tune-unknown"])
def test_a_fit_policy_that_fit_refuses_leaves_the_optimizer_and_the_model_as_they_were(call: Any) -> None:
    # The policies set their lr on the optimizer to read it back per group, before fit checked its own arguments:
    # a refused call left the optimizer at that lr (which a plain fit() then trained at), and fine_tune the model
    # frozen.
    learn = synth_learner(splitter=lambda m: [[m.weight], [m.bias]])
    learn.fit(1, lr=0.5)
    before = _state(learn)
    with pytest.raises((TypeError, ValueError, FileNotFoundError)):
        call(learn)
    assert _same(_state(learn), before)


@pytest.mark.parametrize(("arg", "value"), [
    ("div", "25"), ("div_final", None), ("pct_start", "0.3"), ("lr_mult", "10"),
])
def test_a_fit_policy_number_that_is_not_one_is_refused_naming_it(arg: str, value: Any) -> None:
    # fastai's arithmetic fails on them with a TypeError; learnloop compared them with 0 first, a bare
    # "'>' not supported between instances of 'str' and 'int'" that named no argument.
    learn = synth_learner(splitter=lambda m: [[m.weight], [m.bias]])
    learn.fit(1)
    before = _state(learn)
    fits = [learn.fine_tune] if arg == "lr_mult" else [learn.fit_one_cycle, learn.fine_tune]
    fits += [learn.fit_flat_cos] if arg in ("div_final", "pct_start") else []
    for fit in fits:
        with pytest.raises(TypeError, match=rf"{fit.__name__}: {arg} must be a number .*got {value!r}") as info:
            fit(1, **{arg: value})
        assert isinstance(info.value, ValueTypeError) and _same(_state(learn), before)
    learn.fit_one_cycle(1, div=np.array(25.0), pct_start=torch.tensor(0.5), div_final=np.float32(1e4))
