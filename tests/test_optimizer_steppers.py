"""Each per-parameter stepper against hand-computed numbers, and every fast path against them."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from learnloop.optimizer import (
    SGD,
    Adam,
    Lamb,
    Larc,
    Optimizer,
    QHAdam,
    RAdam,
    RMSProp,
    adam_step,
    average_grad,
    average_sqr_grad,
    debias,
    l2_reg,
    lamb_step,
    larc_layer_lr,
    larc_step,
    momentum_step,
    qhadam_step,
    radam_step,
    ranger,
    rms_prop_step,
    sgd_step,
    step_stat,
    weight_decay,
)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and spinning threads slow a busy machine down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def param(values: list[float], grad: list[float]) -> torch.Tensor:
    p = torch.tensor(values, requires_grad=True)
    p.grad = torch.tensor(grad)
    return p


def close(t: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(t.detach().reshape(-1), torch.tensor(expected), rtol=1e-6, atol=1e-7)


# -- per-parameter formulas on hand-computed numbers ---------------------------------------------------
def test_sgd_step() -> None:
    p = param([1.0, 2.0], [0.5, -1.0])
    assert sgd_step(p, lr=0.1) is None
    close(p, [0.95, 2.1])


def test_weight_decay_is_decoupled_and_respects_do_wd() -> None:
    p = param([1.0, 2.0], [0.5, -1.0])
    weight_decay(p, lr=0.1, wd=0.5)
    close(p, [0.95, 1.9])
    close(p.grad, [0.5, -1.0])
    weight_decay(p, lr=0.1, wd=0.5, do_wd=False)
    close(p, [0.95, 1.9])


def test_l2_reg_adds_to_the_gradient() -> None:
    p = param([1.0, 2.0], [0.5, -1.0])
    l2_reg(p, lr=0.1, wd=0.5)
    close(p.grad, [1.0, 0.0])
    close(p, [1.0, 2.0])
    l2_reg(p, lr=0.1, wd=0.5, do_wd=False)
    close(p.grad, [1.0, 0.0])


def test_average_grad_with_and_without_dampening() -> None:
    p = param([0.0], [2.0])
    state = average_grad(p, mom=0.9)
    assert state is not None
    close(state["grad_avg"], [2.0])
    p.grad = torch.tensor([1.0])
    close(average_grad(p, mom=0.9, **state)["grad_avg"], [0.9 * 2 + 1])  # type: ignore[index]
    damped = average_grad(param([0.0], [2.0]), mom=0.9, dampening=True)
    assert damped is not None
    close(damped["grad_avg"], [0.1 * 2])


def test_average_sqr_grad_with_and_without_dampening() -> None:
    state = average_sqr_grad(param([0.0], [2.0]), sqr_mom=0.99)
    assert state is not None
    close(state["sqr_avg"], [0.01 * 4])
    undamped = average_sqr_grad(param([0.0], [2.0]), sqr_mom=0.99, dampening=False)
    assert undamped is not None
    close(undamped["sqr_avg"], [4.0])


def test_momentum_and_rms_prop_steps() -> None:
    p = param([1.0], [2.0])
    momentum_step(p, lr=0.1, grad_avg=torch.tensor([3.0]))
    close(p, [0.7])
    p = param([1.0], [2.0])
    rms_prop_step(p, lr=0.1, sqr_avg=torch.tensor([4.0]), eps=0.5)
    close(p, [1 - 0.1 * 2 / 2.5])
    p = param([1.0], [2.0])
    rms_prop_step(p, lr=0.1, sqr_avg=torch.tensor([4.0]), eps=0.5, grad_avg=torch.tensor([5.0]))
    close(p, [1 - 0.1 * 5 / 2.5])


def test_step_stat_and_debias() -> None:
    assert step_stat(param([0.0], [0.0])) == {"step": 1}
    assert step_stat(param([0.0], [0.0]), step=5) == {"step": 6}
    assert debias(0.9, 0.1, 1) == pytest.approx(0.1)
    assert debias(0.9, 1.0, 2) == pytest.approx(1.9)


def test_adam_step() -> None:
    p = param([1.0], [2.0])
    out = adam_step(p, lr=0.1, mom=0.9, step=1, sqr_mom=0.99, grad_avg=torch.tensor([0.2]),
                    sqr_avg=torch.tensor([0.04]), eps=1e-5)
    assert out is p  # fastai's adam_step returns p
    close(p, [1 - 0.1 * 2.0 / (2.0 + 1e-5)])  # debiased: m = 0.2/0.1 = 2, v = 0.04/0.01 = 4


def test_radam_step_falls_back_to_sgd_then_rectifies() -> None:
    p = param([1.0], [2.0])
    out = radam_step(p, lr=0.1, mom=0.9, step=1, sqr_mom=0.99, grad_avg=torch.tensor([0.2]),
                     sqr_avg=torch.tensor([0.04]), eps=1e-5, beta=0.0)
    assert out is p  # fastai's radam_step returns p, on both branches
    close(p, [1 - 0.1 * 0.2 / 0.1])  # r <= 5 at step 1: momentum SGD with the debiased average
    step, lr = 10, 0.1
    r_inf = 2 / 0.01 - 1
    r = r_inf - 2 * step * 0.99**step / (1 - 0.99**step)
    v = math.sqrt((r - 4) * (r - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * r))
    m_hat, v_hat = 0.5 / (1 - 0.9**step), 0.3 / (1 - 0.99**step)
    p = param([1.0], [2.0])
    out = radam_step(p, lr=lr, mom=0.9, step=step, sqr_mom=0.99, grad_avg=torch.tensor([0.5]),
                     sqr_avg=torch.tensor([0.3]), eps=1e-5, beta=0.0)
    assert out is p
    close(p, [1 - lr * v * m_hat / (math.sqrt(v_hat) + 1e-5)])


def test_qhadam_step() -> None:
    p = param([1.0], [2.0])
    out = qhadam_step(p, lr=0.1, mom=0.9, sqr_mom=0.99, sqr_avg=torch.tensor([0.04]), nu_1=0.7, nu_2=0.5, step=1,
                      grad_avg=torch.tensor([0.2]), eps=1e-8)
    assert out is p  # fastai's qhadam_step returns p
    num = 0.3 * 2 + 0.7 * 2.0
    denom = math.sqrt(0.5 * 4 + 0.5 * 4.0) + 1e-8
    close(p, [1 - 0.1 * num / denom])


def test_larc_layer_lr_and_step() -> None:
    p = param([3.0, 4.0], [0.0, 1.0])  # |p| = 5, |g| = 1
    state = larc_layer_lr(p, lr=0.5, trust_coeff=0.02, wd=0.1, eps=0.0)
    assert state is not None
    close(state["local_lr"], [0.5 * 0.02 * 5 / (1 + 0.5)])
    clipped = larc_layer_lr(p, lr=0.5, trust_coeff=1.0, wd=0.0, eps=0.0)
    unclipped = larc_layer_lr(p, lr=0.5, trust_coeff=1.0, wd=0.0, eps=0.0, clip=False)
    assert clipped is not None and unclipped is not None
    close(clipped["local_lr"], [0.5])
    close(unclipped["local_lr"], [2.5])
    larc_step(p, local_lr=torch.tensor(0.1))
    close(p, [3.0, 3.9])
    larc_step(p, local_lr=0.1, grad_avg=torch.tensor([1.0, 1.0]))
    close(p, [2.9, 3.8])


@pytest.mark.parametrize("implementation", ["per_param", "foreach"])
def test_larc_clipped_with_a_nan_gradient_steps_at_lr_so_only_the_nan_entries_turn_nan(implementation: str) -> None:
    # fastai's min(lr, local_lr) is lr when local_lr is NaN: the entries with a finite gradient stay finite.
    p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    p.grad = torch.tensor([float("nan"), 0.0, 1.0])
    Larc([p], lr=0.1, implementation=implementation).step()
    assert torch.isnan(p[0]) and p[1:].tolist() == pytest.approx([2.0, 2.9])


def test_lamb_step_scales_by_the_trust_ratio() -> None:
    p = param([3.0, 4.0], [0.0, 0.0])
    grad_avg, sqr_avg = torch.tensor([0.1, 0.2]), torch.tensor([0.01, 0.04])
    lamb_step(p, lr=0.1, mom=0.9, step=1, sqr_mom=0.99, grad_avg=grad_avg, sqr_avg=sqr_avg, eps=0.0)
    update = [1.0, 1.0]  # (0.1/0.1) / sqrt(0.01/0.01), (0.2/0.1) / sqrt(0.04/0.01)
    q = min(math.sqrt(12.5) / 1.0, 10)
    close(p, [3 - 0.1 * q * update[0], 4 - 0.1 * q * update[1]])
    zero = param([0.0, 0.0], [0.0, 0.0])
    lamb_step(zero, lr=0.1, mom=0.9, step=1, sqr_mom=0.99, grad_avg=grad_avg, sqr_avg=sqr_avg, eps=0.0)
    close(zero, [-0.1, -0.1])  # rms(p) == 0: trust ratio 1


# -- fast paths against the per-parameter reference -------------------------------------------------------
class TinyNet(nn.Module):
    """Two linear layers, a norm, a parameter used only on even steps and one never used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.norm, self.lin2 = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)
        self.sometimes = nn.Parameter(torch.randn(3) * 0.1)
        self.unused = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor, use_sometimes: bool) -> torch.Tensor:
        out = self.lin2(self.norm(self.lin1(x)).tanh())
        return out + self.sometimes if use_sometimes else out

    def groups(self) -> list[list[nn.Parameter]]:
        return [list(self.lin1.parameters()), [*self.norm.parameters(), self.unused],
                [*self.lin2.parameters(), self.sometimes]]


def train(opt_func: Callable[..., Any], implementation: str, steps: int = 100) -> list[torch.Tensor]:
    """Train TinyNet to fixed targets; ``do_wd`` False on the norm and the biases.

    The gradients are zeroed in place (the default), but dropped every fourth step, so ``sometimes`` is
    skipped on some of its unused steps (no gradient) and stepped with a zero gradient on the others: its
    step count falls behind the other parameters'.
    """
    model = TinyNet()
    opt = opt_func(model.groups())
    opt.implementation = implementation
    for p in [*model.norm.parameters(), model.lin1.bias, model.lin2.bias]:
        opt.state[p]["do_wd"] = False
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=gen), torch.randn(64, 3, generator=gen)
    for i in range(steps):
        nn.functional.mse_loss(model(x, use_sometimes=i % 2 == 0), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=i % 4 == 0)
    return [p.detach().clone() for p in model.parameters()]


OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "SGD": partial(SGD, lr=0.1, wd=0.01),
    "SGD-mom": partial(SGD, lr=0.05, mom=0.9, wd=0.01),
    "SGD-mom-l2": partial(SGD, lr=0.05, mom=0.9, wd=0.01, decouple_wd=False),
    "RMSProp": partial(RMSProp, lr=1e-3, wd=0.01),
    "RMSProp-mom": partial(RMSProp, lr=1e-3, mom=0.9),
    "Adam": partial(Adam, lr=1e-2),
    "Adam-l2": partial(Adam, lr=1e-2, decouple_wd=False),
    "RAdam": partial(RAdam, lr=1e-2, wd=0.01),
    "RAdam-beta": partial(RAdam, lr=1e-2, beta=10.0),
    "QHAdam": partial(QHAdam, lr=1e-2, wd=0.01),
    "Larc": partial(Larc, lr=0.5, wd=0.01),
    "LARS": partial(Larc, lr=0.5, clip=False, mom=0.0),
    "Lamb": partial(Lamb, lr=1e-2, wd=0.01),
    "ranger": partial(ranger, lr=1e-2),
}


@functools.cache
def reference(name: str) -> list[torch.Tensor]:
    """The per-parameter trajectory of ``OPTIMIZERS[name]`` (computed once per test session)."""
    return train(OPTIMIZERS[name], "per_param")


def relative_error(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """The largest ``|a - b| / max(|b|, 0.1)`` over the tensors: relative, but absolute for small tensors.

    ``sometimes``, also stepped with zero gradients, shrinks to a norm of about 0.02, where the fused kernels'
    few-ulp rounding reaches 2e-6 relative (the per-parameter float32 path is itself 2e-6 from float64).
    """
    return max(((a - b).norm() / b.norm().clamp_min(0.1)).item() for a, b in zip(out, ref, strict=True))


@pytest.mark.parametrize("implementation", ["foreach", "auto"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fast_path_matches_per_param_reference(name: str, implementation: str) -> None:
    ref = reference(name)
    out = train(OPTIMIZERS[name], implementation)
    assert relative_error(out, ref) <= 1e-6
    if implementation == "foreach":  # the same float32 operations in the same order: bit for bit, on the CPU
        assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
    assert not torch.equal(ref[0], TinyNet().lin1.weight)  # it did train


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_factory_takes_the_implementation(name: str) -> None:
    opt = OPTIMIZERS[name](TinyNet().groups(), implementation="foreach")
    assert opt.implementation == "foreach"
    with pytest.raises(ValueError, match="implementation must be one of"):
        OPTIMIZERS[name](TinyNet().groups(), implementation="fast")


def test_state_is_the_same_in_every_path_and_untouched_without_grads() -> None:
    states = {}
    for impl in ("per_param", "foreach", "auto"):
        model = TinyNet()
        opt = Adam(model.groups(), lr=1e-2)
        opt.implementation = impl
        for _ in range(3):
            model(torch.ones(2, 6), use_sometimes=False).sum().backward()
            opt.step()
            opt.zero_grad()
        assert opt.state[model.unused] == {} and opt.state[model.sometimes] == {}
        states[impl] = opt.state[model.lin1.weight]
    for impl in ("foreach", "auto"):
        assert states[impl]["step"] == 3 and isinstance(states[impl]["step"], int)
        for key in ("grad_avg", "sqr_avg"):
            torch.testing.assert_close(states[impl][key], states["per_param"][key], rtol=1e-6, atol=1e-9)


def test_builtin_chains_take_the_fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for kernel in ("_fused_adamw_", "_fused_sgd_"):
        real = getattr(torch, kernel)
        monkeypatch.setattr(torch, kernel, lambda *a, _r=real, _k=kernel, **k: (calls.append(_k), _r(*a, **k))[1])
    train(OPTIMIZERS["Adam"], "auto", steps=2)
    train(OPTIMIZERS["SGD-mom"], "auto", steps=2)
    assert "_fused_adamw_" in calls and "_fused_sgd_" in calls
    calls.clear()
    train(OPTIMIZERS["Adam"], "foreach", steps=2)
    assert calls == []


def clip_grad(p: torch.Tensor, **kwargs: Any) -> None:
    """A user stepper (unknown to learnloop): clip the gradient in place."""
    assert p.grad is not None
    p.grad.clamp_(-0.05, 0.05)


def user_average_grad(p: torch.Tensor, mom: float, grad_avg: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """fastai-book style user stepper, equal to the built-in average_grad."""
    assert p.grad is not None
    if grad_avg is None:
        grad_avg = torch.zeros_like(p.grad)
    return {"grad_avg": grad_avg.mul_(mom).add_(p.grad)}


def test_user_stepper_mixed_with_builtins_gives_reference_numbers() -> None:
    mixed = partial(Optimizer, cbs=[weight_decay, user_average_grad, momentum_step], lr=0.05, mom=0.9, wd=0.01)
    ref = reference("SGD-mom")
    for impl in ("auto", "foreach"):
        out = train(mixed, impl)
        assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
    adam_cbs = [clip_grad, weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    clipped = partial(Optimizer, cbs=adam_cbs, lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
    assert relative_error(train(clipped, "auto"), train(clipped, "per_param")) == 0
    assert Optimizer([torch.zeros(1)], adam_cbs, lr=1e-2, eps=1e-5, wd=0.01)._compiled.vectorised is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["SGD-mom", "RMSProp-mom", "Adam", "RAdam", "QHAdam", "Larc", "Lamb"])
def test_half_precision_foreach_path_is_the_per_param_reference_bit_for_bit(name: str, dtype: torch.dtype) -> None:
    # torch's in-place foreach multiply on the CPU rounds a Python number to the tensors' dtype first (a momentum
    # of 0.9 acted as 0.8984375 in bfloat16); Tensor.mul_, which fastai's steppers use, multiplies in float32.
    def run(implementation: str) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(shape, generator=gen).to(dtype).requires_grad_() for shape in [(), (40,), (8, 8)]]
        opt = OPTIMIZERS[name]([params[:1], params[1:]], implementation=implementation)
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
        return [p.detach() for p in params]

    assert all(torch.equal(a, b) for a, b in zip(run("foreach"), run("per_param"), strict=True))


def test_a_partial_binding_nothing_keeps_the_steppers_defaults_in_the_fast_paths() -> None:
    # partial(average_grad) does not dampen: it is not Adam's chain, whose first moment the fused AdamW kernel dampens.
    cbs = [weight_decay, partial(average_grad), average_sqr_grad, step_stat, adam_step]
    undamped = partial(Optimizer, cbs=cbs, lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
    assert undamped([torch.zeros(1)])._compiled.fused is None
    assert Adam([torch.zeros(1)], lr=1e-2)._compiled.fused is not None
    assert relative_error(train(undamped, "auto", steps=5), train(undamped, "per_param", steps=5)) == 0


def test_lamb_foreach_trust_ratio_divides_whole_lists_not_each_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the CPU a foreach op given a list of Python numbers runs one kernel per tensor: dividing the norms so made
    # Lamb's float32 step about 1.5x slower on 50 parameters. The half-precision rounding (test above) is kept.
    scalar_lists: list[int] = []
    real = torch._foreach_div

    def spy(tensors: Any, other: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(other, list) and other and not isinstance(other[0], torch.Tensor):
            scalar_lists.append(len(other))
        return real(tensors, other, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_div", spy)
    out = train(OPTIMIZERS["Lamb"], "foreach", steps=3)
    monkeypatch.undo()
    assert scalar_lists == []
    assert relative_error(out, train(OPTIMIZERS["Lamb"], "per_param", steps=3)) < 1e-6


def _extra_params(layout: str) -> list[torch.Tensor]:
    if layout == "strided slice":  # a parameter that is not dense: every other column of a tensor
        return [torch.randn(4, 6)[:, ::2].detach().requires_grad_()]
    if layout == "transposed grad":  # a gradient assigned by hand, with other strides than its parameter
        return [torch.randn(3, 4, requires_grad=True)]
    return []


@pytest.mark.parametrize("layout", ["strided slice", "transposed grad", "channels_last midway"])
@pytest.mark.parametrize("name", ["Adam", "SGD-mom"])
def test_the_fused_kernels_are_skipped_for_tensors_laid_out_otherwise(name: str, layout: str) -> None:
    """torch's CPU fused kernels walk each tensor as a flat run of its elements: a parameter that is not dense, or
    whose gradient or state has other strides, was stepped on the wrong elements. Such buckets take the foreach path."""
    results = []
    for impl in ("per_param", "auto"):
        torch.manual_seed(0)
        conv = nn.Conv2d(2, 3, 3)
        extra = _extra_params(layout)
        opt = OPTIMIZERS[name]([*extra, *conv.parameters()], implementation=impl)
        for i in range(4):
            if i == 2 and layout == "channels_last midway":
                conv.to(memory_format=torch.channels_last)  # the weight's strides change, its state's do not
            conv(torch.randn(2, 2, 6, 6)).pow(2).mean().backward()
            for p in extra:
                p.grad = torch.randn(4, 3).t() if layout == "transposed grad" else torch.randn(p.shape)
            opt.step()
            opt.zero_grad()
        results.append([p.detach().clone() for p in [*extra, *conv.parameters()]])
    assert relative_error(results[1], results[0]) <= 1e-6


@pytest.mark.parametrize("hyper", ["mom", "sqr_mom"])
@pytest.mark.parametrize("implementation", ["per_param", "foreach", "auto"])
def test_adam_with_a_momentum_of_1_is_fastais_zero_division_in_every_path(hyper: str, implementation: str) -> None:
    """Nothing debiases an average with a momentum of 1: fastai's adam_step divides by zero. The fused kernel did
    not fail but turned every weight into NaN."""
    p = param([1.0, 2.0], [0.5, 0.5])
    opt = Adam([p], lr=0.1, implementation=implementation, **{hyper: 1.0})
    with pytest.raises(ZeroDivisionError):
        opt.step()
    assert not p.isnan().any()


@pytest.mark.parametrize(("name", "cast"), [("Adam", torch.float16), ("SGD-mom", torch.float64)])
def test_state_of_another_dtype_takes_the_foreach_path_and_keeps_the_kernel(name: str, cast: torch.dtype) -> None:
    """A model cast after some steps (`model.half()`) keeps its state in the old dtype, which the fused kernels refuse:
    that failure marked the kernel unsupported for the new dtype for the rest of the process, so every later
    optimizer of that dtype ran the foreach forms (other numbers for Adam in float16)."""
    from learnloop.optimizer import fused

    fused._unsupported.clear()
    model = nn.Linear(4, 3)
    opt = OPTIMIZERS[name](list(model.parameters()), implementation="auto")
    for step in range(4):
        if step == 2:
            model.to(cast)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    assert fused._unsupported == set()
    assert opt.state[model.weight]["grad_avg"].dtype == torch.float32
