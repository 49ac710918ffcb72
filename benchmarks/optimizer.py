"""Time ``opt.step()`` of learnloop's Adam and SGD against torch.optim's AdamW and SGD.

A model of ~5M parameters in 50 tensors gets its gradients once; each contender owns a copy of the
parameters (sharing the gradient tensors) and is stepped in interleaved rounds so that drifts in
machine load hit every contender alike. Prints a markdown table of median ms/step and the ratio to
the fastest torch.optim counterpart.

    python benchmarks/optimizer.py                 # torch's default number of threads
    python benchmarks/optimizer.py --threads 1     # single-threaded
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from learnloop.optimizer import SGD, Adam

LR, MOM, SQR_MOM, EPS, WD = 1e-4, 0.9, 0.99, 1e-5, 0.01


def make_params(n_layers: int, width: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and biases of ``n_layers`` square linear layers, with fixed random gradients."""
    gen = torch.Generator().manual_seed(0)
    shapes = [s for _ in range(n_layers) for s in ((width, width), (width,))]
    params = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
    return params, grads


def contender(factory: Callable[[list[torch.Tensor]], Any], base: list[torch.Tensor],
              grads: list[torch.Tensor]) -> Any:
    """An optimizer over a private copy of ``base`` whose gradients are ``grads``."""
    params = [torch.nn.Parameter(p.clone()) for p in base]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return factory(params)


def learnloop_opt(fn: Callable[..., Any], implementation: str, **kw: Any) -> Callable[[list[torch.Tensor]], Any]:
    def build(params: list[torch.Tensor]) -> Any:
        opt = fn(params, **kw)
        opt.implementation = implementation
        return opt

    return build


def contenders() -> dict[str, dict[str, Callable[[list[torch.Tensor]], Any]]]:
    """Per benchmark: name -> factory; torch.optim entries are prefixed ``torch``."""
    adamw = dict(lr=LR, betas=(MOM, SQR_MOM), eps=EPS, weight_decay=WD)
    sgd = dict(lr=LR, momentum=MOM)
    return {
        "Adam": {
            "torch AdamW for-loop": lambda ps: torch.optim.AdamW(ps, foreach=False, **adamw),
            "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, foreach=True, **adamw),
            "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, fused=True, **adamw),
            "learnloop Adam (auto: fused)": learnloop_opt(Adam, "auto", lr=LR, mom=MOM, sqr_mom=SQR_MOM, eps=EPS,
                                                          wd=WD),
            "learnloop Adam (foreach)": learnloop_opt(Adam, "foreach", lr=LR, mom=MOM, sqr_mom=SQR_MOM, eps=EPS,
                                                      wd=WD),
            "learnloop Adam (per-param)": learnloop_opt(Adam, "per_param", lr=LR, mom=MOM, sqr_mom=SQR_MOM,
                                                        eps=EPS, wd=WD),
        },
        "SGD mom=0.9": {
            "torch SGD for-loop": lambda ps: torch.optim.SGD(ps, foreach=False, **sgd),
            "torch SGD foreach": lambda ps: torch.optim.SGD(ps, foreach=True, **sgd),
            "torch SGD fused": lambda ps: torch.optim.SGD(ps, fused=True, **sgd),
            "learnloop SGD (auto: fused)": learnloop_opt(SGD, "auto", lr=LR, mom=MOM),
            "learnloop SGD (foreach)": learnloop_opt(SGD, "foreach", lr=LR, mom=MOM),
            "learnloop SGD (per-param)": learnloop_opt(SGD, "per_param", lr=LR, mom=MOM),
        },
    }


def time_steps(opt: Any, n: int) -> float:
    """Milliseconds per ``opt.step()`` over ``n`` steps."""
    start = time.perf_counter()
    for _ in range(n):
        opt.step()
    return (time.perf_counter() - start) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per contender per round")
    parser.add_argument("--layers", type=int, default=25, help="linear layers (2 tensors each)")
    parser.add_argument("--width", type=int, default=440, help="layer width (25 x 440 -> 4.85M params)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base, grads = make_params(args.layers, args.width)
    n_params = sum(p.numel() for p in base)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n_params / 1e6:.2f}M parameters "
          f"in {len(base)} tensors, {args.rounds} rounds x {args.steps} steps\n")
    print("| benchmark | optimizer | ms/step (median) | vs fastest torch |")
    print("|---|---|---:|---:|")
    for bench, factories in contenders().items():
        opts = {name: contender(f, base, grads) for name, f in factories.items()}
        for opt in opts.values():  # warm up: allocate state, first-call overheads
            time_steps(opt, 2)
        times: dict[str, list[float]] = {name: [] for name in opts}
        for _ in range(args.rounds):
            for name, opt in opts.items():
                times[name].append(time_steps(opt, args.steps))
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        best_torch = min(m for name, m in medians.items() if name.startswith("torch"))
        for name, m in medians.items():
            print(f"| {bench} | {name} | {m:.2f} | {m / best_torch:.2f}x |")


if __name__ == "__main__":
    main()
