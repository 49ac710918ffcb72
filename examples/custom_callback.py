"""A custom callback: watch the gradient norm every batch and stop training once a target accuracy is reached.

    python examples/custom_callback.py

A callback is a class with methods named like events (before_fit, after_backward, after_epoch, ...). It reads
the learner's state through `self.learn` and changes it through `self.learn`; raising a Cancel*Exception skips
the rest of a phase (here, CancelFitException ends the training early).
"""

from __future__ import annotations

import torch

from learnloop import Callback, CancelFitException, CrossEntropyLossFlat, DataLoaders, Learner, accuracy
from learnloop.datasets import digits
from learnloop.models import SimpleCNN


class GradNormMonitor(Callback):
    """Records the global gradient norm after every backward pass, and its mean per epoch."""

    def before_fit(self) -> None:
        self.norms: list[torch.Tensor] = []
        self.per_epoch: list[float] = []

    def after_backward(self) -> None:
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        # Kept as a tensor: no waiting on the device every batch; read once per epoch below.
        self.norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def after_epoch(self) -> None:
        self.per_epoch.append(float(torch.stack(self.norms).mean()))
        self.norms = []


class StopAtAccuracy(Callback):
    """Ends the fit as soon as the validation accuracy reaches `target`."""

    order = 55  # after the Recorder (50), which appends the epoch's [train_loss, valid_loss, accuracy]

    def __init__(self, target: float) -> None:
        self.target = target

    def after_epoch(self) -> None:
        acc = self.learn.recorder.values[-1][-1]
        if acc >= self.target:
            print(f"accuracy {acc:.4f} >= {self.target} after epoch {self.learn.epoch}: stopping")
            raise CancelFitException  # fires after_cancel_fit, then after_fit


def main() -> None:
    torch.manual_seed(0)
    train_ds, valid_ds = digits()
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=64, seed=0, device="cpu")
    monitor = GradNormMonitor()
    learn = Learner(dls, SimpleCNN(n_classes=10), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=monitor)
    learn.show_training_loop()  # every event, and the callbacks that run at it, in order
    learn.fit_one_cycle(10, 1e-2, cbs=StopAtAccuracy(0.95))  # StopAtAccuracy is added for this fit only

    epochs = len(learn.recorder.values)
    print(f"trained {epochs} of 10 epochs; mean gradient norm per epoch: "
          + ", ".join(f"{n:.3f}" for n in monitor.per_epoch))
    assert epochs < 10 and learn.recorder.values[-1][-1] >= 0.95
    assert len(monitor.per_epoch) == epochs
    assert not hasattr(learn, "stop_at_accuracy")  # fit(cbs=...) callbacks are removed after the fit


if __name__ == "__main__":
    main()
