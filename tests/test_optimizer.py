"""The generic Optimizer's API: hypers, freezing, state, state_dict, zero_grad, errors, torch parity."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from learnloop.errors import ArgumentError, InputError
from learnloop.optimizer import (
    SGD,
    Adam,
    Lamb,
    Larc,
    Optimizer,
    OptimWrapper,
    RMSProp,
    average_grad,
    momentum_step,
    ranger,
    sgd_step,
    stepper_defaults,
    weight_decay,
    with_defaults,
)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and spinning threads slow a busy machine down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def three_groups() -> list[list[torch.Tensor]]:
    torch.manual_seed(0)
    return [[torch.randn(3, requires_grad=True)] for _ in range(3)]


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2))


def groups_of(model: nn.Sequential) -> list[list[nn.Parameter]]:
    return [list(model[0].parameters()), list(model[1].parameters()), list(model[3].parameters())]


def fit(model: nn.Module, opt: Any, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 2, generator=gen)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


# -- construction and hyper-parameters ---------------------------------------------------------------
def test_params_forms_and_defaults() -> None:
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    one = SGD([p, q], lr=0.1)
    assert one.param_lists == [[p, q]] and one.hypers == [{"wd": 0.0, "mom": 0.0, "lr": 0.1}]
    assert SGD(iter([[p], [q]]), lr=0.1).param_lists == [[p], [q]]
    torch_style = SGD([{"params": [p], "lr": 0.5}, {"params": [q]}], lr=0.1)
    assert [h["lr"] for h in torch_style.hypers] == [0.5, 0.1]
    adam = Adam([p], lr=1e-3)
    assert adam.hypers[0] == {"wd": 0.01, "mom": 0.9, "sqr_mom": 0.99, "lr": 1e-3, "eps": 1e-5}


def test_groups_may_be_generators_and_anything_but_tensors_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt = SGD([model[0].parameters(), model[1].parameters()], lr=0.1)
    assert opt.param_lists == [list(model[0].parameters()), list(model[1].parameters())]
    # Modules where parameters belong (a splitter's slip) have no gradient: fastai leaves them untrained silently.
    for params in ([model[0], model[1]], model[0], [{"params": [model[0]]}], [[1.0]]):
        with pytest.raises(ArgumentError, match=r"The optimizer got (the module Linear|1\.0) where it needs a "
                                                 r"parameter tensor.*\[params\(m\[0\]\), params\(m\[1\]\)\]"):
            SGD(params, lr=0.1)


def test_a_bare_tensor_among_groups_is_a_group_of_one_parameter() -> None:
    """fastai reads ``[[w1, w2], w3]`` (a splitter returning a head's weight as it is) as two groups, the second
    holding w3; it was split into w3's rows, views without gradients, so w3 never trained."""
    w1, w2, w3 = (nn.Parameter(torch.ones(2, 2)) for _ in range(3))
    opt = SGD([[w1, w2], w3], lr=0.1)
    assert opt.param_lists == [[w1, w2], [w3]]
    w3.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(w3.detach(), torch.full((2, 2), 0.9))


def test_a_parameter_list_is_parameters_not_a_module() -> None:
    # nn.ParameterList is a Module, but torch.optim and fastai read it as its parameters: one group, or one per list.
    first, second = (nn.ParameterList([nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))]) for _ in range(2))
    assert SGD(first, lr=0.1).param_lists == [list(first)]
    assert SGD([first, second], lr=0.1).param_lists == [list(first), list(second)]
    assert SGD([{"params": first}], lr=0.1).param_lists == [list(first)]


def test_train_bn_false_on_the_optimizer_is_warned_of_as_having_no_effect() -> None:
    """fastai's Optimizer ignores train_bn with a warning; learnloop's ignored it silently."""
    p = nn.Parameter(torch.ones(2))
    with pytest.warns(UserWarning, match=r"train_bn=False\) has no effect.*Learner\(train_bn=\.\.\.\)"):
        Optimizer([p], sgd_step, train_bn=False, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Optimizer([p], sgd_step, train_bn=True, lr=0.1)


def test_a_single_tensor_is_one_parameter_and_a_single_stepper_a_chain_of_one() -> None:
    """fastai wraps them: ``SGD(p, lr)`` steps p itself, not the rows of p; ``Optimizer(p, sgd_step)`` works."""
    p = torch.ones(3, requires_grad=True)
    for opt in (SGD(p, lr=0.1), Optimizer(p, sgd_step, lr=0.1), SGD([{"params": p}], lr=0.1)):
        assert opt.param_lists == [[p]] and opt.cbs[-1] is sgd_step
        p.grad = torch.ones(3)
        with torch.no_grad():
            p.fill_(1.0)
        opt.step()
        assert torch.equal(p.detach(), torch.full((3,), 0.9))
    matrix = torch.ones(2, 3, requires_grad=True)
    opt = Adam(matrix, lr=0.1)
    assert opt.param_lists == [[matrix]]
    opt.add_param_group({"params": p})
    opt.param_groups[0]["params"] = matrix
    assert opt.param_lists == [[matrix], [p]]


@pytest.mark.parametrize("cbs", [[sgd_step, 5], 5, "sgd_step", [None]])
def test_a_stepper_that_cannot_be_called_is_refused_when_the_optimizer_is_made(cbs: Any) -> None:
    # fastai's is made, then fails at the first step with "'int' object is not callable" (a TypeError)
    p = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match=r"Optimizer: cbs are the stepper functions, .* got (5|'s'|None)"):
        Optimizer([p], cbs, lr=0.1)


def test_stepper_defaults_fastai_attribute_and_typed_decorator() -> None:
    def my_step(p: torch.Tensor, lr: float, scale: float, **kwargs: Any) -> None:
        p.data.add_(p.grad, alpha=-lr * scale)

    my_step.defaults = {"scale": 3.0}  # type: ignore[attr-defined]
    p = torch.ones(1, requires_grad=True)
    opt = Optimizer([p], [my_step], lr=0.1)
    assert opt.hypers[0]["scale"] == 3.0
    p.grad = torch.ones(1)
    opt.step()
    assert p.item() == pytest.approx(0.7)
    assert Optimizer([p], [partial(average_grad, dampening=True)]).hypers[0] == {"mom": 0.9}
    with pytest.raises(TypeError, match=r"\['scal'\] are not parameters of my_step"):
        with_defaults(scal=1.0)(my_step)


def test_partial_binding_a_default_steps_with_its_value() -> None:
    # fastai: the partial's mom is used unless a mom hyper-parameter is given (the call's keywords win).
    p = torch.ones(2, requires_grad=True)
    opt = Optimizer([p], [partial(average_grad, mom=0.5), momentum_step], lr=0.1)
    assert opt.hypers[0] == {"lr": 0.1}
    assert stepper_defaults(partial(average_grad, mom=0.5)) == {}
    for _ in range(2):
        p.grad = torch.ones(2)
        opt.step()
    assert opt.state[p]["grad_avg"].tolist() == [1.5, 1.5]  # 0.5 * 1 + 1, not 0.9 * 1 + 1
    opt = Optimizer([p], [partial(average_grad, mom=0.5), momentum_step], lr=0.1, mom=0.9)
    for _ in range(2):
        p.grad = torch.ones(2)
        opt.step()
    assert opt.state[p]["grad_avg"].tolist() == pytest.approx([1.9, 1.9])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, [0.1, 0.1, 0.1]),
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]),
        ((0.5,), [0.5, 0.5, 0.5]),
        (slice(1e-4, 1e-2), [1e-4, 1e-3, 1e-2]),
        (slice(1e-2), [1e-3, 1e-3, 1e-2]),
        (slice(None, 1e-2), [1e-3, 1e-3, 1e-2]),
    ],
)
def test_set_hypers_scalar_list_slice(value: Any, expected: list[float]) -> None:
    opt = SGD(three_groups(), lr=1.0)
    opt.set_hypers(lr=value)
    assert [h["lr"] for h in opt.hypers] == pytest.approx(expected)
    opt.set_hyper("mom", value)
    assert [h["mom"] for h in opt.hypers] == pytest.approx(expected)


def test_set_hyper_spreads_any_iterable_as_fastai() -> None:
    # fastai's L reads a generator, a range or a map as one value per group; stored as it was, the object itself
    # became every group's lr, and the first step failed on it.
    opt = SGD(three_groups(), lr=1.0)
    opt.set_hyper("lr", (x / 10 for x in range(1, 4)))
    assert [h["lr"] for h in opt.hypers] == pytest.approx([0.1, 0.2, 0.3])
    opt.set_hypers(mom=map(float, ["0.5", "0.6", "0.7"]), wd=range(3))
    assert [h["mom"] for h in opt.hypers] == [0.5, 0.6, 0.7] and [h["wd"] for h in opt.hypers] == [0, 1, 2]
    with pytest.raises(ValueError, match="got 2 values but the optimizer has 3 parameter groups"):
        opt.set_hyper("lr", iter([0.1, 0.2]))


@pytest.mark.parametrize("implementation", ["auto", "foreach", "per_param"])
def test_a_zero_dim_numpy_array_is_set_as_its_number(implementation: Any) -> None:
    # A schedule written with numpy (np.where(pct < 0.5, a, b)) returns a 0-d array: stored as it was, every step
    # failed in torch ("received an invalid combination of arguments"); fastai's set_hyper refuses it (TypeError).
    params = three_groups()
    opt = Adam(params, lr=1.0, implementation=implementation)
    opt.set_hypers(lr=np.array(0.01), mom=np.where(True, np.float64(0.8), 0.9), eps=np.asarray(1e-6))
    assert [(type(h["lr"]), h["lr"], h["mom"], h["eps"]) for h in opt.hypers] == [(float, 0.01, 0.8, 1e-6)] * 3
    for p in (p for group in params for p in group):
        p.grad = torch.ones_like(p)
    opt.step()


def test_slice_with_one_group_gives_the_stop_value() -> None:
    opt = SGD([torch.zeros(1)], lr=1.0)
    opt.set_hypers(lr=slice(1e-4, 1e-2))
    assert opt.hypers[0]["lr"] == 1e-2


def test_set_hypers_errors() -> None:
    opt = SGD(three_groups(), lr=1.0)
    with pytest.raises(ValueError, match="got 2 values but the optimizer has 3 parameter groups"):
        opt.set_hypers(lr=[0.1, 0.2])
    # a float (a schedule's short path), an int, a list, a 0-d tensor (set_hyper takes one)
    for negative in (-0.1, -1, [0.1, -0.1, 0.1], torch.tensor(-0.1), [0.1, torch.tensor(-0.1), 0.1]):
        with pytest.raises(ValueError, match="learning rate must be non-negative"):
            opt.set_hypers(lr=negative)
    with pytest.raises(ValueError, match="non-negative"):
        SGD([torch.zeros(1)], lr=-1.0)
    # fastai refuses a None lr with an AssertionError ("0 values"); InputError is one, and says what to pass.
    for none in (None, [0.1, None, 0.1]):
        with pytest.raises(InputError, match=r"set_hyper\('lr', .*None.*\): the learning rate cannot be None"):
            opt.set_hypers(lr=none)
        with pytest.raises(InputError, match="cannot be None"):
            opt.set_hyper("lr", none)
    with pytest.raises(InputError, match="cannot be None"):
        SGD([torch.zeros(1)], lr=None)  # type: ignore[arg-type]
    assert [h["lr"] for h in opt.hypers] == [1.0] * 3  # nothing was changed by the failed calls
    opt.set_hypers(sqr_mom=0.9)  # the standard names are always accepted (schedules set them)
    opt.set_hyper("lr", 0.25)
    assert [h["lr"] for h in opt.hypers] == [0.25] * 3


def test_any_hyper_name_is_set_as_in_fastai_and_a_likely_typo_is_warned_of() -> None:
    opt = SGD(three_groups(), lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.set_hypers(noise=0.5)  # read by some stepper through **kwargs, perhaps: fastai sets it, silently
    assert [h["noise"] for h in opt.hypers] == [0.5, 0.5, 0.5]
    with pytest.warns(UserWarning, match=r"set_hyper\('lrr'\): .* did you mean 'lr'\? It is set anyway"):
        opt.set_hypers(lrr=0.1)
    assert opt.hypers[0]["lrr"] == 0.1 and opt.hypers[0]["lr"] == 1.0


def test_a_hyper_a_stepper_needs_may_be_set_after_the_optimizer_is_made() -> None:
    def scaled_step(p: torch.Tensor, lr: float, beta: float, **kwargs: Any) -> None:
        assert p.grad is not None
        p.data.add_(p.grad, alpha=-lr * beta)

    p = torch.ones(2, requires_grad=True)
    opt = Optimizer([p], [scaled_step], lr=0.1)  # no beta yet: fastai sets it later (say in before_fit)
    p.grad = torch.ones(2)
    with pytest.raises(TypeError, match=r"scaled_step needs \['beta'\]"):
        opt.step()  # still missing at the step: the error names the stepper and the name
    opt.set_hyper("beta", 0.5)
    opt.step()
    assert p.tolist() == pytest.approx([0.95, 0.95])


def test_missing_hyper_is_reported_at_the_first_step() -> None:
    # Not at construction: a callback may still set it before the fit's first step, as fastai allows.
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    opt = Optimizer([p], [weight_decay, momentum_step], lr=0.1)
    with pytest.raises(TypeError, match=r"stepper momentum_step needs \['grad_avg'\]"):
        opt.step()

    def needs_beta(p: torch.Tensor, lr: float, beta: float, **kwargs: Any) -> None: ...

    opt = Optimizer([p], [sgd_step, needs_beta], lr=0.1)
    with pytest.raises(TypeError, match=r"needs_beta needs \['beta'\].*Optimizer\(\.\.\., beta=\.\.\.\)"):
        opt.step()
    assert p.tolist() == [0.0, 0.0]  # refused before any stepper ran

    def user_stepper(p: torch.Tensor, **kwargs: Any) -> None: ...

    opt = Optimizer([p], [user_stepper, needs_beta], lr=0.1)  # after a user stepper: found when it is called
    with pytest.raises(TypeError, match=r"needs_beta needs \['beta'\]"):
        opt.step()


@pytest.mark.parametrize("implementation", ["auto", "foreach", "per_param"])
def test_a_hyper_removed_after_the_first_step_is_the_steppers_type_error(implementation: str) -> None:
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    opt = Adam([p], lr=0.1, implementation=implementation)  # type: ignore[arg-type]
    opt.step()
    del opt.hypers[0]["sqr_mom"]  # fastai's per-parameter call raises a TypeError; the fast paths a bare KeyError
    with pytest.raises(TypeError, match=r"average_sqr_grad needs \['sqr_mom'\]"):
        opt.step()
    opt.set_hyper("sqr_mom", 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not this optimizer's hyper-parameters"
        opt.load_state_dict(SGD([torch.zeros(2)], lr=0.1).state_dict())
    before = p.detach().clone()
    with pytest.raises(TypeError, match=r"average_sqr_grad needs \['sqr_mom'\].*defined: \['lr', 'mom', 'wd'\]"):
        opt.step()
    assert torch.equal(p.detach(), before)  # checked before any stepper ran


# -- freezing ---------------------------------------------------------------------------------------------
def test_freeze_unfreeze_and_force_train() -> None:
    groups = three_groups()
    opt = SGD(groups, lr=0.1)
    forced = torch.zeros(1, requires_grad=True)
    groups[0].append(forced)
    opt.state[forced]["force_train"] = True
    opt.freeze()
    assert opt.frozen_idx == 2
    assert [p.requires_grad for g in groups for p in g] == [False, True, False, True]
    opt.freeze_to(-2)
    assert opt.frozen_idx == 1 and [p.requires_grad for g in groups for p in g] == [False, True, True, True]
    opt.unfreeze()
    assert opt.frozen_idx == 0 and all(p.requires_grad for g in groups for p in g)
    opt.freeze_to(-5)  # more groups than there are: none frozen, and fastai's (negative) frozen_idx
    assert opt.frozen_idx == -2 and all(p.requires_grad for g in groups for p in g)
    with pytest.warns(UserWarning, match="whole model is frozen"):
        opt.freeze_to(3)
    with pytest.raises(ValueError, match="at least two parameter groups"):
        SGD([torch.zeros(1)], lr=0.1).freeze()


# -- state ------------------------------------------------------------------------------------------------
def test_state_is_a_sticky_mutable_dict_and_clear_state_keeps_flags() -> None:
    model = net()
    opt = Adam(groups_of(model), lr=1e-2)
    w, b = model[0].weight, model[0].bias
    opt.state[b]["do_wd"] = False
    opt.state[w]["force_train"] = True
    state_w = opt.state[w]
    fit(model, opt, 2)
    assert opt.state[w] is state_w and set(state_w) == {"force_train", "grad_avg", "sqr_avg", "step"}
    opt.clear_state()
    assert opt.state[w] is state_w and state_w == {"force_train": True}
    assert opt.state[b] == {"do_wd": False}


def test_do_wd_false_skips_weight_decay() -> None:
    for impl in ("per_param", "foreach", "auto"):
        p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        opt = Adam([p, q], lr=0.1, wd=0.5)
        opt.implementation = impl  # type: ignore[assignment]
        opt.state[q]["do_wd"] = False
        p.grad, q.grad = torch.zeros(2), torch.zeros(2)
        opt.step()
        assert torch.allclose(p, torch.full((2,), 0.95)) and torch.equal(q, torch.ones(2))


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_zero_grad_zeroes_in_place_by_default_and_drops_on_request() -> None:
    p, q, r = (torch.ones(3, requires_grad=True) for _ in range(3))
    opt = SGD([p, q, r], lr=0.1)
    p.grad = torch.ones(3)
    grad = p.grad
    (r * r).sum().backward(create_graph=True)  # a gradient that is part of a graph
    assert r.grad is not None and r.grad.requires_grad
    opt.zero_grad()
    assert p.grad is grad and torch.equal(grad, torch.zeros(3))  # the same tensor, zeroed (fastai's way)
    assert q.grad is None  # a parameter without a gradient does not get one
    assert torch.equal(r.grad, torch.zeros(3)) and not r.grad.requires_grad and r.grad.grad_fn is None
    opt.zero_grad(set_to_none=True)
    assert p.grad is None and r.grad is None
    opt.zero_grad()  # nothing to zero
    assert p.grad is None


def sgd_after_zero_grad(mom: float, wd: float) -> float:
    """p after SGD(lr=0.1) steps once from 1 with a gradient of 1, then once with the zeroed gradient."""
    lr, p, buf = 0.1, 1.0, 0.0
    for g in (1.0, 0.0):
        p *= 1 - lr * wd
        buf = buf * mom + g
        p -= lr * (buf if mom else g)
    return p


def adam_after_zero_grad(lr: float, wd: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5) -> float:
    """p after Adam steps once from 1 with a gradient of 1, then once with the zeroed gradient."""
    p, avg, sqr = 1.0, 0.0, 0.0
    for step, g in ((1, 1.0), (2, 0.0)):
        p *= 1 - lr * wd
        avg, sqr = mom * avg + (1 - mom) * g, sqr_mom * sqr + (1 - sqr_mom) * g * g
        p -= lr / (1 - mom**step) * avg / ((sqr / (1 - sqr_mom**step)) ** 0.5 + eps)
    return p


@pytest.mark.parametrize("impl", ["per_param", "foreach", "auto"])
def test_a_step_with_zeroed_gradients_still_applies_momentum_and_weight_decay(impl: str) -> None:
    """As after a CancelBackwardException: the step runs on the gradients zero_grad left (zeros, not None)."""
    cases: list[tuple[Callable[..., Any], float]] = [
        (partial(SGD, lr=0.1, mom=0.9, wd=0.1), sgd_after_zero_grad(0.9, 0.1)),  # 0.7911
        (partial(SGD, lr=0.1, wd=0.1), sgd_after_zero_grad(0.0, 0.1)),  # decay only: 0.89 * 0.99
        (partial(Adam, lr=0.1, wd=0.1), adam_after_zero_grad(0.1, 0.1)),
    ]
    for make, expected in cases:
        p = torch.ones(3, requires_grad=True)
        opt = make([p])
        opt.implementation = impl
        p.grad = torch.ones(3)
        opt.step()
        opt.zero_grad()
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full((3,), expected), rtol=1e-6, atol=0)
    assert sgd_after_zero_grad(0.9, 0.1) == pytest.approx(0.7911)


@pytest.mark.parametrize("impl", ["per_param", "foreach", "auto"])
def test_frozen_parameters_keep_zero_gradients_and_are_still_stepped(impl: str) -> None:
    """fastai's zero_grad leaves frozen parameters a zero gradient: weight decay and momentum keep moving them."""
    lr, mom, wd, steps = 0.1, 0.9, 0.1, 3
    model = net()
    opt = SGD(groups_of(model), lr=lr, mom=mom, wd=wd)
    opt.implementation = impl  # type: ignore[assignment]
    fit(model, opt, 2)
    opt.freeze()
    frozen = [*model[0].parameters(), *model[1].parameters()]
    expected = []
    for p in frozen:  # the per-parameter formula with g = 0: p *= 1 - lr*wd; buf = mom*buf; p -= lr*buf
        w, buf = p.detach().clone(), opt.state[p]["grad_avg"].clone()
        for _ in range(steps):
            w = w * (1 - lr * wd)
            buf = buf * mom
            w = w - lr * buf
        expected.append(w)
    fit(model, opt, steps, seed=1)
    for p, w in zip(frozen, expected, strict=True):
        assert not p.requires_grad and p.grad is not None and not p.grad.any()
        torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["per_param", "foreach", "auto"])
def test_frozen_parameters_after_clear_state_only_decay(impl: str) -> None:
    """Learner.freeze also clears the state: a frozen Adam parameter then moves by weight decay alone."""
    lr, wd, steps = 0.01, 0.5, 3
    model = net()
    opt = Adam(groups_of(model), lr=lr)
    opt.implementation = impl  # type: ignore[assignment]
    fit(model, opt, 2)
    opt.freeze()
    opt.clear_state()
    opt.set_hypers(wd=wd)
    frozen = [*model[0].parameters(), *model[1].parameters()]
    before = [p.detach().clone() for p in frozen]
    fit(model, opt, steps, seed=1)
    for p, w in zip(frozen, before, strict=True):
        for _ in range(steps):
            w = w * (1 - lr * wd)
        torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)
        assert opt.state[p]["step"] == steps and set(opt.state[p]) == {"grad_avg", "sqr_avg", "step"}
        assert not opt.state[p]["grad_avg"].any()


OPT_FUNCS: dict[str, Callable[..., Any]] = {
    "SGD-mom": partial(SGD, lr=0.05, mom=0.9, wd=0.01),
    "Adam": partial(Adam, lr=1e-2),
    "Adam-foreach": partial(Adam, lr=1e-2),
    "RMSProp": partial(RMSProp, lr=1e-3, mom=0.9),
    "Lamb": partial(Lamb, lr=1e-2),
    "ranger": partial(ranger, lr=1e-2, wd=0.1),
}


@pytest.mark.parametrize("name", list(OPT_FUNCS))
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    def make(groups: list[list[nn.Parameter]]) -> Any:
        opt = OPT_FUNCS[name](groups)
        if name.endswith("foreach"):
            opt.implementation = "foreach"
        return opt

    model = net()
    opt = make(groups_of(model))
    opt.state[model[3].bias]["do_wd"] = False
    fit(model, opt, 7)  # ranger: 7 steps, so the Lookahead count is mid-cycle
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twin = copy.deepcopy(model)
    twin_opt = make(groups_of(twin))
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin_opt.state[twin[3].bias]["do_wd"] is False
    fit(model, opt, 5, seed=1)
    fit(twin, twin_opt, 5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    assert twin_opt.hypers == opt.hypers


def test_load_state_dict_rejects_mismatches() -> None:
    # InputError: a ValueError, and the AssertionError fastai raises for the same state dicts.
    sd = SGD(three_groups(), lr=0.1, mom=0.9).state_dict()
    with pytest.raises(InputError, match="state_dict has 3 parameter groups but this optimizer has 1; load a"):
        SGD([torch.zeros(1)], lr=0.1).load_state_dict(sd)
    with pytest.raises(InputError, match="state for 3 parameters but this optimizer has 4"):
        SGD([[torch.zeros(1)], [torch.zeros(1)], [torch.zeros(1), torch.zeros(1)]], lr=0.1).load_state_dict(sd)
    with pytest.raises(InputError, match=r"groups of \[1, 1, 1\] parameters, this optimizer \[2, 1\]"):
        SGD([[torch.zeros(1), torch.zeros(1)], [torch.zeros(1)]], lr=0.1).load_state_dict(
            {**sd, "hypers": sd["hypers"][:2]}
        )
    with pytest.raises(AssertionError):  # what fastai code catches
        Adam([torch.zeros(1), torch.zeros(1)], lr=0.1).load_state_dict(Adam([torch.zeros(1)], lr=0.1).state_dict())
    opt = SGD(three_groups(), lr=0.1, mom=0.9)
    sd["state"][0]["grad_avg"] = torch.zeros(5)
    with pytest.raises(InputError, match=r"'grad_avg' of parameter 0 has shape \(5,\) but the parameter"):
        opt.load_state_dict(sd)


def test_load_state_dict_of_another_kind_says_what_it_is() -> None:
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(InputError, match=r"keys 'hypers' and 'state'; got keys \['param_groups', 'state'\]: that is "
                                         r"a torch.optim state_dict, which OptimWrapper"):
        SGD([w], lr=0.1).load_state_dict(torch.optim.SGD([w], lr=0.1).state_dict())
    adam = Adam([w], lr=1e-3).state_dict()
    sgd = SGD([w], lr=0.1, mom=0.9)
    with pytest.warns(UserWarning, match=r"hyper-parameters \(.*sqr_mom.*\) are not this optimizer's .*saved from "
                                         r"another optimizer"):
        sgd.load_state_dict(adam)
    assert sgd.hypers[0]["sqr_mom"] == 0.99  # replaced, as fastai does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SGD([w], lr=0.5, mom=0.9).load_state_dict(SGD([w], lr=0.1, mom=0.9).state_dict())  # same kind: silent


# -- torch compatibility -------------------------------------------------------------------------------------
def test_param_groups_is_a_live_torch_style_view() -> None:
    groups = three_groups()
    opt = SGD(groups, lr=0.1)
    pg = opt.param_groups
    assert pg[1]["params"] == groups[1] and pg[1]["lr"] == 0.1 and set(pg[0]) == {"params", "wd", "mom", "lr"}
    pg[2]["lr"] = 0.5  # what torch's lr schedulers do
    assert opt.hypers[2]["lr"] == 0.5
    opt.param_groups = [{"params": g, "lr": 0.2} for g in groups]
    assert [h["lr"] for h in opt.hypers] == [0.2, 0.2, 0.2]
    extra = torch.zeros(1, requires_grad=True)
    opt.add_param_group({"params": [extra], "mom": 0.5})
    assert opt.param_lists[-1] == [extra] and opt.hypers[-1]["mom"] == 0.5 and opt.hypers[-1]["lr"] == 0.1


@pytest.mark.parametrize("lr", [slice(1e-3, 1e-1), slice(1e-1), [1e-3, 1e-1], (1e-3, 1e-1)])
def test_add_param_group_after_a_default_given_per_group(lr: Any) -> None:
    # The group added gets the last group's value, a number: not the slice or list itself, which failed the next step.
    a, b, c = (torch.ones(2, requires_grad=True) for _ in range(3))
    opt = Adam([[a], [b]], lr=lr)
    opt.add_param_group({"params": [c]})
    assert opt.hypers[2]["lr"] == pytest.approx(1e-1) and opt.hypers[2]["mom"] == 0.9
    for p in (a, b, c):
        p.grad = torch.ones(2)
    opt.step()
    assert not torch.equal(c.detach(), torch.ones(2))


def test_closure_is_called() -> None:
    p = torch.ones(1, requires_grad=True)
    opt = SGD([p], lr=0.1)

    def closure() -> torch.Tensor:
        loss = (p * 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 2.0 and p.item() == pytest.approx(0.8)


def trajectory(make_opt: Callable[[list[nn.Parameter]], Any], steps: int = 30) -> list[torch.Tensor]:
    """Parameters after ``steps`` steps on a fixed random sequence of gradients.

    Fixed gradients, not a model's: Adam's update amplifies gradient differences by up to ``lr / eps``
    when gradients are tiny, so two mathematically equal Adams training a network drift apart from
    rounding alone; on the same gradients they agree to rounding.
    """
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(shape)) for shape in [(7, 5), (7,), (2, 7), (2,)]]
    opt = make_opt(params)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (partial(SGD, lr=0.05), partial(torch.optim.SGD, lr=0.05)),
        (partial(SGD, lr=0.05, mom=0.9), partial(torch.optim.SGD, lr=0.05, momentum=0.9)),
        (partial(SGD, lr=0.05, mom=0.9, wd=0.1, decouple_wd=False),
         partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.1)),
        (partial(RMSProp, lr=1e-3), partial(torch.optim.RMSprop, lr=1e-3, alpha=0.99, eps=1e-8)),
        (partial(Adam, lr=1e-2), partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)),
        (partial(Adam, lr=1e-2, mom=0.8, sqr_mom=0.999, eps=1e-8, wd=0.1),
         partial(torch.optim.AdamW, lr=1e-2, betas=(0.8, 0.999), eps=1e-8, weight_decay=0.1)),
        (partial(Adam, lr=1e-2, wd=0.1, decouple_wd=False),
         partial(torch.optim.Adam, lr=1e-2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1)),
    ],
    ids=["SGD", "SGD-mom", "SGD-l2", "RMSProp", "Adam", "Adam-hypers", "Adam-l2"],
)
@pytest.mark.parametrize("implementation", ["per_param", "auto"])
def test_builtins_match_torch_optim(ours: Callable[..., Any], theirs: Callable[..., Any], implementation: str) -> None:
    def make_ours(params: list[nn.Parameter]) -> Optimizer:
        opt = ours(params)
        opt.implementation = implementation
        return opt

    for a, b in zip(trajectory(make_ours), trajectory(theirs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", ["per_param", "auto"])
def test_complex_gradients_are_rejected(implementation: str) -> None:
    p = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    opt = Adam([[torch.zeros(1, requires_grad=True)], [p]], lr=0.1)
    opt.implementation = implementation  # type: ignore[assignment]
    p.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match=r"parameter 0 of group 1 .* is complex; .*view_as_real"):
        opt.step()


@pytest.mark.parametrize("implementation", ["per_param", "foreach", "auto"])
@pytest.mark.parametrize("make", [partial(SGD, mom=0.9, wd=0.1), partial(SGD, mom=0.0), partial(Larc, mom=0.9)])
def test_sparse_gradients_step_as_in_fastai(make: Callable[..., Optimizer], implementation: str) -> None:
    # fastai's SGD (decoupled weight decay) and Larc steppers take nn.Embedding(sparse=True)'s gradients.
    def train(sparse: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        emb, lin = nn.Embedding(6, 3, sparse=sparse), nn.Linear(3, 1)
        opt = make([list(lin.parameters()), [emb.weight]], lr=0.1, implementation=implementation)
        for _ in range(3):
            lin(emb(torch.tensor([1, 2, 2]))).sum().backward()
            opt.step()
            opt.zero_grad()
        return [emb.weight.detach(), lin.weight.detach()]

    sparse, dense = train(sparse=True), train(sparse=False)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    initial = nn.Embedding(6, 3).weight.detach()  # train()'s starting weights
    assert all(not torch.equal(sparse[0][i], initial[i]) for i in (1, 2))  # rows 1 and 2 trained


@pytest.mark.parametrize("implementation", ["per_param", "auto"])
def test_a_stepper_failing_on_a_sparse_gradient_says_where_and_what_to_do(implementation: str) -> None:
    emb = nn.Embedding(4, 2, sparse=True)
    opt = Adam([[torch.zeros(1, requires_grad=True)], [emb.weight]], lr=0.1)
    opt.implementation = implementation  # type: ignore[assignment]
    emb(torch.tensor([1])).sum().backward()
    # fastai's type (torch's NotImplementedError, a RuntimeError), with a note saying what to do
    match = r"parameter 0 of group 1 \(shape \(4, 2\)\) has a sparse gradient.*average_sqr_grad.*SparseAdam"
    with pytest.raises(NotImplementedError, match=match):
        opt.step()


def test_hyper_shadowing_state_names_takes_the_reference_path() -> None:
    p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = SGD([[p], [q]], lr=0.1, wd=0.5)
    opt.hypers[1]["do_wd"] = False  # fastai semantics: hypers override state, so the whole group skips wd
    p.grad, q.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    assert torch.allclose(p, torch.full((2,), 0.95)) and torch.equal(q, torch.ones(2))


def test_editing_cbs_after_construction_is_seen() -> None:
    p = torch.ones(1, requires_grad=True)
    opt = Optimizer([p], [sgd_step], lr=0.1)
    opt.cbs.insert(0, lambda p, **kw: p.grad.mul_(10))
    p.grad = torch.ones(1)
    opt.step()
    assert p.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:A parameter of shape")
@pytest.mark.parametrize("implementation", ["foreach", "auto"])
@pytest.mark.parametrize("make", [partial(Adam, wd=0.1), partial(SGD, mom=0.9, wd=0.1), partial(RMSProp, mom=0.9)])
def test_a_parameter_listed_twice_in_a_group_is_stepped_twice_as_by_the_reference(
    make: Callable[..., Optimizer], implementation: str
) -> None:
    # As fastai's loop (and the warning) says: once per time it is listed, its state too. A foreach op given the
    # same tensor twice updated it once, from a doubled update.
    def train(implementation: str) -> tuple[list[float], dict[str, Any]]:
        a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
        opt = make([[b], [a, b, a]], lr=0.1, implementation=implementation)
        for _ in range(3):
            a.grad, b.grad = torch.full((3,), 0.5), torch.full((2,), -0.25)
            opt.step()
        return a.tolist() + b.tolist(), copy.deepcopy(opt.state[a])

    ours, reference = train(implementation), train("per_param")
    assert ours[0] == pytest.approx(reference[0], rel=1e-6)
    assert ours[1].keys() == reference[1].keys() and ours[1].get("step") == reference[1].get("step")
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:A parameter of shape")
@pytest.mark.parametrize("edit", ["append", "replace", "param_groups"])
def test_a_parameter_listed_twice_after_some_steps_is_stepped_twice_too(edit: str) -> None:
    # Whether a group lists a parameter twice is looked for once per list, not at every step: a group appended to or
    # replaced since is looked at again, and its repeated parameter stepped once per listing, as by the reference.
    def train(implementation: str) -> list[float]:
        a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
        opt = Adam([[a, b]], lr=0.1, implementation=implementation)
        for i in range(4):
            if i == 2:
                if edit == "append":
                    opt.param_lists[0].append(a)
                elif edit == "replace":
                    opt.param_lists[0] = [a, b, a]
                else:
                    opt.param_groups = [{**opt.param_groups[0], "params": [a, b, a]}]
            a.grad, b.grad = torch.full((3,), 0.5), torch.full((2,), -0.25)
            opt.step()
        return a.tolist() + b.tolist() + [opt.state[a]["step"]]

    assert train("foreach") == pytest.approx(train("per_param"), rel=1e-6)


class ListLike:
    """An iterable of parameters that is not a list, as fastcore's ``L`` (which fastai's splitters return)."""

    def __init__(self, items: Any) -> None:
        self.items = list(items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def test_groups_may_be_any_iterable_of_tensors_as_fastais_L() -> None:
    # fastai reads L(L(p1), L(p2)) as two groups; it was one group of two non-tensors, refused as "not a tensor".
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    groups = [list(model[0].parameters()), list(model[1].parameters())]
    for given in (ListLike(ListLike(g) for g in groups), [ListLike(g) for g in groups]):
        assert SGD(given, lr=0.1).param_lists == groups
        wrapper = OptimWrapper(given, opt=torch.optim.SGD, lr=0.1)
        assert wrapper.param_lists == groups
    wrapper = OptimWrapper([model[0].parameters(), model[1].parameters()], opt=torch.optim.SGD, lr=0.1)
    assert wrapper.param_lists == groups
    assert SGD(ListLike(groups[0] + groups[1]), lr=0.1).param_lists == [groups[0] + groups[1]]


def test_a_stepper_argument_held_in_every_parameters_state_is_provided() -> None:
    # fastai calls each stepper with {**state, **hypers}: per-parameter state set before the step (a mask, say)
    # provides a required argument. The check made before the first step refused it as missing.
    def masked_step(p: torch.Tensor, lr: float, mask: torch.Tensor, **kwargs: Any) -> None:
        assert p.grad is not None
        p.data.add_(p.grad * mask, alpha=-lr)

    w, b = torch.ones(2, requires_grad=True), torch.ones(1, requires_grad=True)
    opt = Optimizer([w, b], [weight_decay, masked_step], lr=0.5, wd=0.2)
    opt.state[w]["mask"], opt.state[b]["mask"] = torch.tensor([1.0, 0.0]), torch.tensor([1.0])
    w.grad, b.grad = torch.ones(2), torch.ones(1)
    opt.step()
    assert w.tolist() == pytest.approx([0.4, 0.9]) and b.tolist() == pytest.approx([0.4])
    del opt.state[b]["mask"]  # missing for one parameter: the TypeError naming the stepper, before anything steps
    opt = Optimizer([w, b], [weight_decay, masked_step], lr=0.5, wd=0.2)
    with pytest.raises(TypeError, match=r"stepper .*masked_step needs \['mask'\]"):
        opt.step()
    assert w.tolist() == pytest.approx([0.4, 0.9])
