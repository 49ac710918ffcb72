"""OptimWrapper (torch.optim behind learnloop's API), Lookahead and ranger."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

import learnloop.optimizer
from learnloop.errors import InputError
from learnloop.optimizer import (
    PYTORCH_HP_MAP,
    SGD,
    Lookahead,
    Optimizer,
    OptimWrapper,
    RAdam,
    detuplify_pg,
    pytorch_hp_map,
    ranger,
    set_item_pg,
)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and spinning threads slow a busy machine down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def three_groups() -> list[list[nn.Parameter]]:
    torch.manual_seed(0)
    return [[nn.Parameter(torch.randn(3))] for _ in range(3)]


def set_grads(groups: list[list[nn.Parameter]], value: float = 1.0) -> None:
    for g in groups:
        for p in g:
            p.grad = torch.full_like(p, value)


# -- OptimWrapper --------------------------------------------------------------------------------------------
def test_opt_func_partial_builds_groups_and_maps_names() -> None:
    groups = three_groups()
    opt = partial(OptimWrapper, opt=torch.optim.AdamW)(groups, lr=1e-3)
    assert isinstance(opt.opt, torch.optim.AdamW) and len(opt.opt.param_groups) == 3
    h = opt.hypers[-1]
    assert (h["lr"], h["mom"], h["sqr_mom"], h["eps"], h["wd"]) == (1e-3, 0.9, 0.999, 1e-8, 0.01)
    assert opt.param_lists == groups


@pytest.mark.parametrize(
    ("cls", "torch_key", "name", "value", "expected"),
    [
        (torch.optim.AdamW, "betas", "mom", 0.8, (0.8, 0.999)),
        (torch.optim.AdamW, "betas", "sqr_mom", 0.95, (0.9, 0.95)),
        (torch.optim.AdamW, "weight_decay", "wd", 0.1, 0.1),
        (torch.optim.SGD, "momentum", "mom", 0.7, 0.7),
        (torch.optim.RMSprop, "alpha", "sqr_mom", 0.9, 0.9),
    ],
)
def test_hyper_mapping_both_ways(cls: type, torch_key: str, name: str, value: float, expected: object) -> None:
    opt = OptimWrapper(three_groups(), opt=cls, lr=0.1)
    opt.set_hypers(**{name: value})
    assert all(g[torch_key] == expected for g in opt.opt.param_groups)
    assert all(h[name] == value for h in opt.hypers)
    opt.opt.param_groups[0][torch_key] = expected  # torch -> learnloop reads through
    assert opt.hypers[0][name] == value


def test_hyper_views_read_the_same_names_every_time() -> None:
    # A view remembers how each name maps to torch's key (the Recorder reads "lr" every batch): the second and
    # later reads give the live values, and "params" is refused every time, not only the first.
    opt = OptimWrapper(three_groups(), opt=torch.optim.AdamW, lr=0.1)
    view = opt.hypers[0]
    for expected in (0.9, 0.5):
        opt.opt.param_groups[0]["betas"] = (expected, 0.99)
        assert (view["mom"], view["sqr_mom"], view["lr"]) == (expected, 0.99, 0.1)
    for _ in range(2):
        with pytest.raises(KeyError):
            view["params"]


def test_wrapper_discriminative_lrs_and_errors() -> None:
    opt = OptimWrapper(three_groups(), opt=torch.optim.SGD, lr=0.1, momentum=0.9)
    opt.set_hypers(lr=slice(1e-4, 1e-2))
    assert [g["lr"] for g in opt.opt.param_groups] == pytest.approx([1e-4, 1e-3, 1e-2])
    opt.set_hypers(lr=slice(1e-2))
    assert [h["lr"] for h in opt.hypers] == pytest.approx([1e-3, 1e-3, 1e-2])
    with pytest.raises(KeyError, match=r"unknown hyper-parameter 'sqr_mom'; valid names: \[.*'mom'"):
        opt.set_hypers(sqr_mom=0.9)  # torch SGD has no second moment
    with pytest.raises(ValueError, match="got 2 values but the optimizer has 3"):
        opt.set_hypers(lr=[0.1, 0.2])
    with pytest.raises(ValueError, match="non-negative"):
        opt.set_hypers(lr=-1.0)
    with pytest.raises(InputError, match="the learning rate cannot be None"):  # fastai: an AssertionError
        opt.set_hypers(lr=None)
    with pytest.raises(InputError, match="the learning rate cannot be None"):
        opt.set_hyper("lr", None)
    assert [g["lr"] for g in opt.opt.param_groups] == pytest.approx([1e-3, 1e-3, 1e-2])
    with pytest.raises(ValueError, match="just pass in `opt`"):
        OptimWrapper(three_groups(), opt=torch.optim.SGD(three_groups()[0], lr=0.1))


def test_wrapper_steps_like_the_bare_torch_optimizer() -> None:
    groups, bare_groups = three_groups(), three_groups()
    opt = OptimWrapper(groups, opt=torch.optim.AdamW, lr=0.1)
    bare = torch.optim.AdamW([{"params": g} for g in bare_groups], lr=0.1)
    for _ in range(3):
        set_grads(groups)
        set_grads(bare_groups)
        opt.step()
        bare.step()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(groups, bare_groups, strict=True))
    opt.zero_grad()
    assert groups[0][0].grad is None


def test_wrapper_step_and_zero_grad_take_torchs_arguments() -> None:
    groups = three_groups()
    opt = OptimWrapper(groups, opt=torch.optim.SGD, lr=0.1)
    set_grads(groups)
    assert opt.step(lambda: 3.5) == 3.5  # the closure's loss, as torch returns it
    opt.zero_grad(set_to_none=False)
    assert torch.equal(groups[0][0].grad, torch.zeros(3))
    opt.zero_grad(False)
    assert groups[0][0].grad is not None
    opt.zero_grad()
    assert groups[0][0].grad is None


def test_wrapper_steps_through_a_patched_torch_step() -> None:
    """A torch LR scheduler wraps `opt.step` on the instance to know it ran: the wrapper's step goes through it."""
    groups = three_groups()
    opt = OptimWrapper(groups, opt=torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt.opt, step_size=1, gamma=0.5)
    set_grads(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when the scheduler steps before an optimizer step it saw
        opt.step()
        sched.step()
    assert opt.opt._opt_called  # type: ignore[attr-defined]  # the scheduler's wrapper ran
    assert opt.hypers[0]["lr"] == pytest.approx(0.05)


def test_wrapper_step_is_looked_up_at_each_call() -> None:
    groups = three_groups()
    opt = OptimWrapper(groups, opt=torch.optim.SGD, lr=0.1)
    calls: list[object] = []
    opt.opt.step = calls.append  # type: ignore[method-assign,assignment]
    opt.step(None)
    assert calls == [None]


def test_a_wrapper_subclass_can_override_step_and_zero_grad() -> None:
    class Counting(OptimWrapper):
        steps = zeros = 0

        def step(self, closure: object = None) -> None:
            self.steps += 1
            self.opt.step()

        def zero_grad(self, set_to_none: bool = True) -> None:
            self.zeros += 1
            self.opt.zero_grad(set_to_none)

    groups = three_groups()
    opt = Counting(groups, opt=torch.optim.SGD, lr=0.1)
    set_grads(groups)
    opt.step()
    opt.zero_grad()
    assert (opt.steps, opt.zeros) == (1, 1) and groups[0][0].grad is None


def test_wrapper_freeze_force_train_state_dict_and_clear_state() -> None:
    groups = three_groups()
    opt = OptimWrapper(groups, opt=torch.optim.AdamW, lr=0.1)
    opt.state[groups[0][0]]["force_train"] = True
    opt.freeze()
    assert [g[0].requires_grad for g in groups] == [True, False, True]
    opt.unfreeze()
    set_grads(groups)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    twin_groups = [[nn.Parameter(p.detach().clone()) for p in g] for g in groups]
    twin = OptimWrapper(twin_groups, opt=torch.optim.AdamW, lr=0.1)
    twin.load_state_dict(sd)
    set_grads(groups, 0.5)
    set_grads(twin_groups, 0.5)
    opt.step()
    twin.step()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(groups, twin_groups, strict=True))
    opt.clear_state()
    assert len(opt.opt.state) == 0 and opt.state[groups[0][0]] == {"force_train": True}


def test_wrapper_takes_a_single_tensor_as_one_parameter() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = OptimWrapper(p, opt=torch.optim.SGD, lr=0.1)
    assert opt.param_lists == [[p]]
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p.detach(), torch.full((3,), 0.9))


def test_wrapper_takes_a_bare_tensor_among_groups_as_a_group_of_one_parameter() -> None:
    w1, w2 = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    opt = OptimWrapper([[w1], w2], opt=torch.optim.SGD, lr=0.1)  # fastai's: two groups; learnloop's failed in torch
    assert opt.param_lists == [[w1], [w2]]


def test_wrapper_converts_lists_among_group_dicts_and_keeps_the_dicts() -> None:
    a, b = three_groups()[:2]
    opt = OptimWrapper([a, {"params": b, "lr": 0.1}], opt=torch.optim.SGD, lr=0.01)
    assert opt.param_lists == [a, b] and [h["lr"] for h in opt.hypers] == [0.01, 0.1]


def test_wrapper_around_a_built_optimizer() -> None:
    params = three_groups()[0]
    opt = OptimWrapper(opt=torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert opt.hypers[0]["mom"] == 0.9 and opt.param_lists == [params]


# -- Lookahead and ranger -----------------------------------------------------------------------------------
def test_lookahead_pulls_slow_weights_every_k_steps() -> None:
    p = nn.Parameter(torch.zeros(2))
    opt = Lookahead(SGD([p], lr=1.0), k=2, alpha=0.5)
    p.grad = torch.ones(2)
    opt.step()
    assert torch.equal(p.detach(), torch.full((2,), -1.0)) and opt.count == 1
    opt.step()  # fast reached -2; slow = 0 + 0.5 * (-2 - 0) = -1, and fast is reset to slow
    assert torch.equal(p.detach(), torch.full((2,), -1.0))
    assert opt.slow_weights is not None and torch.equal(opt.slow_weights[0][0], torch.full((2,), -1.0))
    opt.step()
    opt.step()  # fast -3; slow = -1 + 0.5 * (-3 + 1) = -2
    assert torch.equal(p.detach(), torch.full((2,), -2.0))
    opt.clear_state()
    assert opt.count == 0 and opt.slow_weights is None


def test_lookahead_takes_a_group_added_after_its_first_step() -> None:
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    opt = Lookahead(SGD([p], lr=1.0), k=2, alpha=0.5)
    p.grad = torch.ones(2)
    opt.step()
    opt.add_param_group({"params": [q]})  # its slow weights are its weights when it joins: 0
    q.grad = torch.ones(3)
    opt.step()  # p: fast -2, slow 0 -> -1; q: fast -1, slow 0 -> -0.5
    assert torch.equal(p.detach(), torch.full((2,), -1.0)) and torch.equal(q.detach(), torch.full((3,), -0.5))
    assert opt.slow_weights is not None and [len(g) for g in opt.slow_weights] == [1, 1]


def test_lookahead_exposes_the_wrapped_api() -> None:
    groups = three_groups()
    opt = ranger(groups, lr=1e-2)
    assert isinstance(opt, Lookahead) and isinstance(opt.opt.cbs, list)
    opt.implementation = "foreach"
    assert opt.opt.implementation == "foreach" and opt.cbs is opt.opt.cbs
    h = opt.hypers[0]
    assert (h["mom"], h["sqr_mom"], h["eps"], h["wd"], h["beta"]) == (0.95, 0.99, 1e-6, 0.01, 0.0)
    opt.set_hypers(lr=slice(1e-3, 1e-1))
    assert [h["lr"] for h in opt.opt.hypers] == pytest.approx([1e-3, 1e-2, 1e-1])
    opt.state[groups[0][0]]["force_train"] = True
    opt.freeze()
    assert opt.frozen_idx == 2 and [g[0].requires_grad for g in groups] == [True, False, True]
    assert opt.param_lists == groups and opt.param_groups[1]["params"] == groups[1]
    with pytest.warns(UserWarning, match="did you mean 'lr'"):  # the wrapped Optimizer's rule: set, and warned of
        opt.set_hypers(lrr=0.1)
    assert opt.opt.hypers[0]["lrr"] == 0.1
    with pytest.raises(ValueError, match="k >= 1"):
        Lookahead(RAdam(groups, lr=0.1), k=0)
    with pytest.raises(TypeError, match=r"Lookahead: alpha must be a number .*got '0.5'"):  # was: '<' not supported
        Lookahead(RAdam(groups, lr=0.1), alpha="0.5")
    with pytest.raises(TypeError, match=r"Lookahead: k must be a number .*got None"):
        Lookahead(RAdam(groups, lr=0.1), k=None)  # type: ignore[arg-type]


def test_lookahead_checks_a_hyper_name_as_the_optimizer_it_wraps() -> None:
    """A ParamScheduler checks its names at before_fit with the optimizer's check_hyper_name: Lookahead's was the
    base class's, which refused a name only a stepper's **kwargs reads (fastai's Lookahead, an Optimizer, takes it)."""

    def scaled_sgd(p: torch.Tensor, lr: float, **kwargs: Any) -> None:
        p.data.add_(p.grad, alpha=-lr * kwargs.get("scale", 1.0))

    opt = Lookahead(Optimizer(three_groups(), [scaled_sgd], lr=0.1))
    opt.check_hyper_name("scale")  # no KeyError, as the wrapped Optimizer's
    wrapped = Lookahead(OptimWrapper(three_groups(), opt=torch.optim.SGD, lr=0.1))
    with pytest.raises(KeyError, match="unknown hyper-parameter 'scale'"):
        wrapped.check_hyper_name("scale")


def test_ranger_takes_fastais_arguments_in_fastais_order() -> None:
    """``ranger(params, lr, mom=0.95, wd=0.01, eps=1e-6, k=6, alpha=0.5, *, sqr_mom, beta, decouple_wd)``."""
    groups = three_groups()
    opt = ranger(groups, 0.1, 0.9, 0.05, 1e-4, 3, 0.2)
    assert (opt.k, opt.alpha) == (3, 0.2)
    assert opt.hypers[0] == {"wd": 0.05, "mom": 0.9, "sqr_mom": 0.99, "beta": 0.0, "lr": 0.1, "eps": 1e-4}
    opt = ranger(groups, lr=0.1, sqr_mom=0.9, beta=5.0, decouple_wd=False)
    assert (opt.k, opt.alpha) == (6, 0.5) and (opt.hypers[0]["sqr_mom"], opt.hypers[0]["beta"]) == (0.9, 5.0)
    assert "l2_reg" in repr(opt)
    with pytest.raises(TypeError):
        ranger(groups, 0.1, 0.9, 0.05, 1e-4, 3, 0.2, 0.99)  # type: ignore[misc]  # sqr_mom is keyword-only


def test_lookahead_zero_grad_zeroes_in_place_whatever_it_wraps() -> None:
    """fastai's Lookahead zeroes in place (its own zero_grad); a bare OptimWrapper keeps torch's default."""
    for inner in (lambda g: RAdam(g, lr=0.1), lambda g: OptimWrapper(g, opt=torch.optim.SGD, lr=0.1)):
        groups = three_groups()
        opt = Lookahead(inner(groups))
        set_grads(groups)
        grads = [g[0].grad for g in groups]
        opt.zero_grad()
        for g, grad in zip(groups, grads, strict=True):
            assert g[0].grad is grad and grad is not None and not grad.any()
        opt.zero_grad(set_to_none=True)
        assert all(g[0].grad is None for g in groups)


def test_lookahead_refuses_a_none_lr() -> None:
    opt = ranger(three_groups(), lr=0.1)
    for set_lr in (lambda: opt.set_hyper("lr", None), lambda: opt.set_hypers(lr=None)):
        with pytest.raises(InputError, match="the learning rate cannot be None"):
            set_lr()
    assert [h["lr"] for h in opt.hypers] == [0.1] * 3


def test_lookahead_load_state_dict_rejects_other_groups() -> None:
    groups = three_groups()
    opt = ranger(groups, lr=0.1)
    set_grads(groups)
    opt.step()
    sd = opt.state_dict()
    bigger = ranger([[nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))], *three_groups()[1:]], lr=0.1)
    with pytest.raises(InputError, match=r"slow weights come in groups of \[1, 1, 1\] parameters but this "
                       r"optimizer has groups of \[2, 1, 1\]"):
        bigger.load_state_dict(sd)
    with pytest.raises(AssertionError):  # fastai's type, from its inner optimizer's check
        bigger.load_state_dict({k: v for k, v in sd.items() if k != "slow_weights"})
    other_shapes = ranger([[nn.Parameter(torch.zeros(2))] for _ in range(3)], lr=0.1)
    with pytest.raises(InputError, match=r"slow weight of parameter 0 of group 0 has shape \(3,\) but the "
                       r"parameter has shape \(2,\)"):
        other_shapes.load_state_dict(sd)


def test_param_group_helpers_of_fastai() -> None:
    group = {"params": [torch.zeros(1)], "lr": 0.01, "betas": (0.9, 0.999), "ns": [1, 2], "x": ()}
    assert detuplify_pg(group) == {"lr": 0.01, "betas__0": 0.9, "betas__1": 0.999, "ns__0": 1, "ns__1": 2}
    assert "params" in group  # the group itself is left alone
    pg = {"lr": 0.01, "betas": (0.9, 0.999)}
    assert set_item_pg(pg, "betas__0", 0.95) is pg
    assert pg == {"lr": 0.01, "betas": (0.95, 0.999)}
    assert set_item_pg(pg, "lr", 0.1) == {"lr": 0.1, "betas": (0.95, 0.999)}
    assert set_item_pg({"ns": [1, 2]}, "ns__1", 3) == {"ns": (1, 3)}  # a tuple back, as fastai's
    assert set_item_pg({}, "my__key", 1) == {"my__key": 1}  # no index after "__": a plain key
    with pytest.raises(KeyError, match="mom"):
        set_item_pg({}, "mom__0", 0.9)
    with pytest.raises(InputError, match="'betas__2' sets item 2 of 'betas', which has 2 items"):
        set_item_pg({"betas": (0.9, 0.999)}, "betas__2", 0.9)
    assert pytorch_hp_map is PYTORCH_HP_MAP and pytorch_hp_map["betas__1"] == "sqr_mom"
    names = set(learnloop.optimizer.__all__)
    assert {"detuplify_pg", "set_item_pg", "pytorch_hp_map"} <= names


def test_lookahead_state_dict_round_trip() -> None:
    groups = three_groups()
    opt = ranger(groups, lr=0.1)
    for _ in range(4):
        set_grads(groups)
        opt.step()
    sd = opt.state_dict()
    assert sd["count"] == 4 and len(sd["slow_weights"]) == 3
    twin_groups = [[nn.Parameter(p.detach().clone()) for p in g] for g in groups]
    twin = ranger(twin_groups, lr=0.1)
    twin.load_state_dict(sd)
    assert "count" in sd  # the caller's dict is left alone
    for _ in range(4):
        set_grads(groups, -0.5)
        set_grads(twin_groups, -0.5)
        opt.step()
        twin.step()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(groups, twin_groups, strict=True))


def test_lookahead_over_optim_wrapper() -> None:
    groups = three_groups()
    opt = Lookahead(OptimWrapper(groups, opt=torch.optim.SGD, lr=1.0), k=2)
    set_grads(groups)
    opt.step()
    opt.step()
    assert torch.allclose(groups[0][0], three_groups()[0][0] - 1.0)
    opt.set_hypers(mom=0.5)
    assert opt.opt.opt.param_groups[0]["momentum"] == 0.5


def test_wrapper_hypers_hold_only_their_own_names() -> None:
    # fastai's hypers are torch's keys renamed and tuples split: 'momentum', 'betas' and Adafactor's 'eps' are not
    # among them, so set_hyper refuses them (a KeyError) instead of writing a float over torch's tuple.
    params = [torch.zeros(2, requires_grad=True)]
    sgd = OptimWrapper(params, opt=torch.optim.SGD, lr=0.1, momentum=0.9)
    assert "momentum" not in sgd.hypers[0] and "mom" in sgd.hypers[0]
    with pytest.raises(KeyError, match="unknown hyper-parameter 'momentum'"):
        sgd.set_hyper("momentum", 0.5)
    adam = OptimWrapper(params, opt=torch.optim.Adam, lr=0.1)
    for name in ("betas", "betas__0"):
        assert name not in adam.hypers[0]
        with pytest.raises(KeyError, match=f"unknown hyper-parameter '{name}'"):
            adam.set_hyper(name, 0.5)
    assert adam.opt.param_groups[0]["betas"] == (0.9, 0.999)
    factor = OptimWrapper(params, opt=torch.optim.Adafactor, lr=0.1)
    with pytest.raises(KeyError, match="unknown hyper-parameter 'eps'"):
        factor.set_hyper("eps", 1e-3)
    factor.set_hyper("eps__1", 1e-2)
    assert factor.opt.param_groups[0]["eps"] == (None, 1e-2)
