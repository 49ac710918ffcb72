"""ShowGraphCallback: a live plot of the training and validation losses during a fit (matplotlib)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..callback import Callback, is_side_run
from ..distributed import is_rank_zero

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

__all__ = ["ShowGraphCallback"]


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("ShowGraphCallback needs matplotlib: pip install 'learnloop[plot]'") from e
    return Figure


def _notebook_display() -> Any:
    """IPython's `display` when this process is a Jupyter kernel, else None (a terminal, a script, plain IPython)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    shell = get_ipython()
    return display if shell is not None and getattr(shell, "kernel", None) is not None else None


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


class ShowGraphCallback(Callback):
    """Plots the smoothed training loss of every batch and the validation loss at the end of each epoch, updated
    as each epoch ends (fastai's callback of that name; the `plot` extra).

    The plot is `cb.fig`, a matplotlib Figure made without pyplot: in a Jupyter notebook it is shown below the
    cell and redrawn in place; elsewhere nothing is shown (no window opens, nothing blocks) and
    `cb.fig.savefig("loss.png")` saves it. Each fit starts a new figure; `lr_find()`, `get_preds()` and
    `validate()` leave it alone. The losses are the Recorder's (no Recorder, nothing is drawn).

    >>> learn.fit(5, cbs=ShowGraphCallback())
    """

    order = 65
    run_valid = False

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        super().__init__(**hooks)  # event methods given as keywords, as any Callback's
        _figure_class()  # fail here, where the callback is made, rather than at the fit's start
        self.fig: Figure | None = None
        self.nb_batches: list[int] = []  # the training batches done at each epoch's end (x of the valid losses)
        self.valid_losses: list[float] = []
        self._train_line: Line2D | None = None
        self._valid_line: Line2D | None = None
        self._handle: Any = None  # the notebook output the figure is redrawn in
        self._trained = False  # this epoch's training phase ran (not an epoch skipped on resuming)

    def before_fit(self) -> None:
        # lr_find, get_preds and a validate() inside a fit sit out (after_fit turns `run` back on): the fit's epoch
        # and figure carry on.
        self.run = not is_side_run(self.learn) and not self.learn._nested_run
        if not self.run or not self.learn.create_mbar:  # validate() outside a fit: keep the last fit's figure
            return
        self.nb_batches, self.valid_losses, self._handle = [], [], None
        self.fig = _figure_class()(figsize=(6, 4))
        ax = self.fig.add_subplot()
        (self._train_line,) = ax.plot([], [], label="train")  # fastai's lines: plain, no axis labels
        (self._valid_line,) = ax.plot([], [], label="valid")
        ax.legend(loc="upper right")

    def before_epoch(self) -> None:
        self._trained = False

    def after_train(self) -> None:
        self._trained = True

    def after_epoch(self) -> None:
        rec = getattr(self.learn, "recorder", None)
        if not self._trained or rec is None or self._train_line is None or self._valid_line is None:
            return
        assert self.fig is not None  # made with the lines
        self.nb_batches.append(self.learn.train_iter)
        self.valid_losses.append(self._valid_loss(rec))
        losses = [float(x) for x in rec.losses]
        self._train_line.set_data(range(len(losses)), losses)
        self._valid_line.set_data(self.nb_batches, self.valid_losses)
        # fastai's bounds: the x axis spans the whole fit from the start, guessing the epochs to come from the
        # first one's batches; the y axis starts at 0.
        ax = self.fig.axes[0]
        epochs_left = max(self.learn.n_epoch - self.learn.epoch - 1, 0)
        ax.set_xlim(0, max(epochs_left * self.nb_batches[0] + max(len(losses), self.nb_batches[-1]), 1))
        top = max(_finite(losses) + _finite(self.valid_losses), default=math.nan)
        if top > 0:  # not for NaN/inf losses only: matplotlib would refuse such a limit
            ax.set_ylim(0, top)
        self._show()

    def _valid_loss(self, rec: Any) -> float:
        """This epoch's validation loss in the Recorder's last row (NaN when there is none)."""
        if rec.cancel_valid or "valid_loss" not in rec.metric_names or not rec.values:
            return math.nan
        # The row holds the training columns, then the validation ones; a cancelled training phase has none.
        col = 0 if rec.cancel_train else rec.metric_names.index("valid_loss") - 1  # 'epoch' has no column
        row = rec.values[-1]
        try:
            return float(row[col])
        except (IndexError, TypeError, ValueError):
            return math.nan

    def _show(self) -> None:
        display = _notebook_display()
        if display is None or self.fig is None or not is_rank_zero():
            return
        from IPython.display import Image

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", bbox_inches="tight")
        image = Image(data=buf.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
