"""Pick a learning rate with the lr finder, then train with the 1cycle policy and save the plots.

    python examples/lr_find_one_cycle.py            # plots go to runs/example-lr-find/

`lr_find` trains for up to 100 batches with the lr growing exponentially, records the loss, puts the model and
optimizer back exactly as they were, and suggests an lr ("valley": the middle of the longest descent).
`fit_one_cycle` warms the lr up to that value over the first quarter of training, then anneals it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from learnloop import CrossEntropyLossFlat, DataLoaders, Learner, accuracy, minimum, steep, valley
from learnloop.datasets import digits
from learnloop.models import SimpleCNN

OUT = Path("runs/example-lr-find")


def main() -> None:
    torch.manual_seed(0)
    train_ds, valid_ds = digits()
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=64, seed=0, device="cpu")
    learn = Learner(dls, SimpleCNN(n_classes=10), loss_func=CrossEntropyLossFlat(), metrics=accuracy)

    before = [p.detach().clone() for p in learn.model.parameters()]
    suggested = learn.lr_find(show_plot=False, suggest_funcs=(valley, minimum, steep))
    print("lr_find suggests", {name: f"{lr:.2e}" for name, lr in suggested._asdict().items()})  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))  # restored

    OUT.mkdir(parents=True, exist_ok=True)
    learn.recorder.plot_lr_find(fname=OUT / "lr_find.png")  # the sweep stays in the recorder until the next fit

    lr = suggested.valley  # type: ignore[union-attr]
    assert math.isfinite(lr) and 1e-5 < lr < 1
    learn.fit_one_cycle(4, lr_max=lr)
    learn.recorder.plot_sched(fname=OUT / "schedule.png")  # lr up then down, momentum the other way
    learn.recorder.plot_loss(fname=OUT / "loss.png")
    lrs = learn.recorder.hps["lr"]
    print(f"lr went {lrs[0]:.2e} -> {max(lrs):.2e} -> {lrs[-1]:.2e}; plots in {OUT}/")
    assert abs(max(lrs) - lr) / lr < 0.01 and lrs[-1] < lr / 100
    assert learn.recorder.values[-1][-1] > 0.85


if __name__ == "__main__":
    main()
