"""What a trained model gets wrong: fastai 2.8's `Interpretation`, `ClassificationInterpretation` and
`SegmentationInterpretation`.

`from_learner` runs the model once over a loader (the validation set by default) and keeps each item's loss;
`top_losses` ranks the items by it and `interp[idxs]` runs the model again on those items to return their inputs,
predictions, targets, decoded predictions and losses. `ClassificationInterpretation` also keeps the predicted and
actual classes, for the confusion matrix, the most confused pairs and scikit-learn's report.

There is no DataLoaders vocab in learnloop, so the class names are, in order of preference: `vocab=`, the
`learn.dls.vocab` you set, the interpreted dataset's `classes` (torchvision's datasets have one), else the class
indices `0 .. n-1`, `n` the width of the predictions along the loss function's class axis (of the first
predictions of a model of several outputs).

>>> interp = ClassificationInterpretation.from_learner(learn, vocab=["cat", "dog"])
>>> interp.most_confused()      # [('cat', 'dog', 7), ('dog', 'cat', 2)]: (actual, predicted, count)
>>> interp.plot_confusion_matrix(fname="confusion.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, Subset

from .data import unshuffled
from .errors import InputError
from .metrics.sklearn_metrics import _sklearn_metric
from .plots import _pyplot, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .learner import Learner

__all__ = ["ClassificationInterpretation", "Interpretation", "SegmentationInterpretation"]

Activation = Callable[[Tensor], Tensor]


class Interpretation:
    """A model's loss on each item of a loader (`losses`, in dataset order), to find the items it gets most wrong.

    `dl` is read in dataset order, `losses[i]` being the loss of `dl.dataset[i]`; `act` replaces the loss
    function's activation of the predictions (as in `get_preds`).
    """

    def __init__(self, learn: Learner, dl: Iterable[Any], losses: Tensor, act: Activation | None = None) -> None:
        self.learn, self.losses, self.act = learn, losses, act
        self.dl: Any = dl

    @classmethod
    def from_learner(
        cls, learn: Learner, ds_idx: int = 1, dl: Iterable[Any] | None = None, act: Activation | None = None
    ) -> Self:
        """The interpretation of `learn`'s model over `learn.dls[ds_idx]`, or over `dl`, both read in dataset order
        (unshuffled, the last partial batch kept). A loader whose own sampler picks the items (indices given as
        the sampler) is read over the Subset of those items, in the sampler's order: `interp.dl.dataset`."""
        loader = _in_order(learn, ds_idx, dl)
        _, _, losses = learn.get_preds(dl=loader, with_loss=True, with_preds=False, with_targs=False, act=act)
        return cls(learn, loader, _required(losses, "losses", _loader_name(ds_idx, dl)), act)

    def __getitem__(self, idxs: int | slice | Sequence[int] | Tensor) -> tuple[Any, Tensor, Any, Tensor, Tensor]:
        """`(inputs, preds, targets, decoded, losses)` of the items at `idxs` (indices into the dataset, a slice
        of it: `interp[:]` is every item, or a boolean mask over the items: `interp[interp.losses > 2]`), the model
        run again on them; needs a torch DataLoader over a map-style dataset."""
        index, dl = _index_list(idxs, len(self.losses)), self.dl
        dataset = _dataset(dl, "interp[idxs]", batched=True)  # dl is a torch DataLoader from here on
        subset = DataLoader(
            Subset(dataset, index), batch_size=dl.batch_size, shuffle=False,
            num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
        )
        inps, preds, targs, decoded = self.learn.get_preds(dl=subset, with_input=True, with_decoded=True, act=self.act)
        return inps, preds, targs, decoded, self.losses[index]

    def top_losses(
        self, k: int | None = None, largest: bool = True, items: bool = False
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, list[Any]]:
        """The `k` largest losses (all by default; the smallest with `largest=False`), sorted, and their items'
        indices; with `items`, the dataset's items at those indices (`dl.dataset[i]`) too, as a list."""
        n = len(self.losses)
        if k is not None and not 0 <= k <= n:
            raise InputError(f"top_losses(k={k}): there are {n} losses; give k between 0 and {n}, or None for all.")
        losses, idx = self.losses.topk(n if k is None else k, largest=largest)
        if not items:
            return losses, idx
        dataset = _dataset(self.dl, "top_losses(items=True)")
        return losses, idx, [dataset[i] for i in idx.tolist()]


class ClassificationInterpretation(Interpretation):
    """Interpretation of a classifier: confusion matrix, most confused classes, scikit-learn's report.

    The predicted classes (`decoded`, the loss function's `decodes` of the predictions, else their argmax over
    dimension 1) and the targets (`targs`) are gathered once, when the interpretation is made; the class names are
    `vocab` (see the module's docstring). `outputs` takes `(preds, targs, decoded)` already gathered from
    `learn.get_preds(dl=dl, with_decoded=True, act=act)`, else they are gathered here.
    """

    def __init__(
        self,
        learn: Learner,
        dl: Iterable[Any],
        losses: Tensor,
        act: Activation | None = None,
        *,
        vocab: Sequence[Any] | None = None,
        outputs: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__(learn, dl, losses, act)
        preds, targs, decoded = learn.get_preds(dl=dl, with_decoded=True, act=act) if outputs is None else outputs
        preds = _required(preds, "predictions", type(dl).__name__)
        self.targs: Tensor = _one_target(_required(targs, "targets", type(dl).__name__))
        self.decoded: Tensor = _predicted_classes(decoded, self.targs)
        _check_classes(self.decoded, self.targs)
        self.vocab: list[Any] = _vocab(vocab, learn, dl, _main_output(preds))

    @classmethod
    def from_learner(
        cls,
        learn: Learner,
        ds_idx: int = 1,
        dl: Iterable[Any] | None = None,
        act: Activation | None = None,
        *,
        vocab: Sequence[Any] | None = None,
    ) -> Self:
        """The interpretation of `learn`'s classifier over `learn.dls[ds_idx]` or `dl` (in dataset order), with
        the class names `vocab` when given."""
        loader = _in_order(learn, ds_idx, dl)
        preds, targs, decoded, losses = learn.get_preds(dl=loader, with_decoded=True, with_loss=True, act=act)
        losses = _required(losses, "losses", _loader_name(ds_idx, dl))
        return cls(learn, loader, losses, act, vocab=vocab, outputs=(preds, targs, decoded))

    def confusion_matrix(self) -> np.ndarray:
        """Counts of (actual, predicted) class pairs: row `i` is actual class `i`, column `j` predicted class `j`
        (an int64 array of `len(vocab)` rows and columns; values outside the classes are not counted)."""
        n = len(self.vocab)
        actual, predicted = self.targs.reshape(-1), self.decoded.reshape(-1)
        a, p = actual.long(), predicted.long()
        # Only whole class indices count, as fastai's equality tests with 0..n-1 do (an ignore_index of -100 not).
        keep = (a == actual) & (p == predicted) & (a >= 0) & (a < n) & (p >= 0) & (p < n)
        counts = torch.bincount(a[keep] * n + p[keep], minlength=n * n)
        return counts.reshape(n, n).numpy()

    def plot_confusion_matrix(
        self,
        normalize: bool = False,
        title: str = "Confusion matrix",
        cmap: str = "Blues",
        norm_dec: int = 2,
        plot_txt: bool = True,
        fname: str | Path | None = None,
        **kwargs: Any,
    ) -> Figure:
        """The confusion matrix drawn with `cmap`, each cell's count written in it (`plot_txt`); `normalize`
        divides each row by its total (written with `norm_dec` decimals). `kwargs` go to `plt.figure` (`figsize`,
        `dpi`); saved as a PNG when given `fname`. Returns the Figure."""
        cm: np.ndarray = self.confusion_matrix()
        if normalize:
            with np.errstate(invalid="ignore"):  # a class absent from the targets: a row of nan, as in fastai
                cm = cm.astype(float) / cm.sum(axis=1)[:, None]
        plt = _pyplot()
        fig = plt.figure(**kwargs)
        ax = fig.add_subplot()
        ax.imshow(cm, interpolation="nearest", cmap=cmap)
        ax.set_title(title)
        ticks = np.arange(len(self.vocab))
        ax.set_xticks(ticks, [str(v) for v in self.vocab], rotation=90)
        ax.set_yticks(ticks, [str(v) for v in self.vocab], rotation=0)
        if plot_txt:
            threshold = np.nanmax(cm) / 2 if cm.size and not np.isnan(cm).all() else math.inf
            for (i, j), value in np.ndenumerate(cm):
                text = f"{value:.{norm_dec}f}" if normalize else f"{value}"
                color = "white" if value > threshold else "black"  # light text on the dark cells
                ax.text(j, i, text, horizontalalignment="center", verticalalignment="center", color=color)
        ax.set_ylim(len(self.vocab) - 0.5, -0.5)
        fig.tight_layout()  # before the axis labels, as fastai's: the same layout
        ax.set_ylabel("Actual")
        ax.set_xlabel("Predicted")
        ax.grid(False)
        _save(fig, fname)
        return fig

    def most_confused(self, min_val: int = 1) -> list[tuple[Any, Any, np.int64]]:
        """The off-diagonal cells of the confusion matrix holding at least `min_val` items, as `(actual, predicted,
        count)`, most frequent first (ties in row order)."""
        cm = self.confusion_matrix()
        np.fill_diagonal(cm, 0)
        rows, cols = np.nonzero(cm >= min_val)
        found = [(self.vocab[i], self.vocab[j], cm[i, j]) for i, j in zip(rows.tolist(), cols.tolist(), strict=True)]
        return sorted(found, key=lambda cell: cell[2], reverse=True)

    def print_classification_report(self) -> None:
        """Print scikit-learn's `classification_report` (precision, recall, f1 per class) of the predictions."""
        report = _sklearn_metric("classification_report", "print_classification_report")
        print(
            report(
                self.targs.reshape(-1).numpy(), self.decoded.reshape(-1).numpy(),
                labels=list(range(len(self.vocab))), target_names=[str(v) for v in self.vocab],
            )
        )

    def plot_top_losses(
        self,
        k: int | Sequence[int],
        largest: bool = True,
        nrows: int | None = None,
        ncols: int | None = None,
        figsize: tuple[float, float] | None = None,
        fname: str | Path | None = None,
        **kwargs: Any,
    ) -> Figure:
        """The input images of the `k` largest losses (the smallest with `largest=False`; `k` a list or range picks
        positions in that order), titled prediction/actual/loss/probability of the predicted class. Inputs must be
        images: one tensor of shape `(n, 1 or 3, H, W)` or `(n, H, W)`, drawn rescaled to their own range.
        `kwargs` go to `imshow`. Returns the Figure; saved as a PNG when given `fname`."""
        if isinstance(k, int):
            losses, idx = self.top_losses(k, largest)[:2]
        else:
            losses, idx = self.top_losses(None, largest)[:2]
            losses, idx = losses[list(k)], idx[list(k)]
        if not len(idx):
            raise InputError(f"plot_top_losses(k={k!r}) picks no item to plot; ask for at least one.")
        inps, preds, targs, decoded, _ = self[idx]
        images, preds = _images(inps), _main_output(preds)
        predicted = _predicted_classes(decoded, targs).tolist()
        n = len(images)
        ncols = ncols or (math.ceil(n / nrows) if nrows else max(1, math.ceil(math.sqrt(n))))
        nrows = nrows or max(1, math.ceil(n / ncols))
        plt = _pyplot()
        fig, axs = plt.subplots(nrows, ncols, figsize=figsize or (3 * ncols, 3 * nrows), squeeze=False)
        fig.suptitle("Prediction/Actual/Loss/Probability", weight="bold", size=14)
        flat = list(axs.flat)
        rows = zip(flat, images, predicted, targs.tolist(), losses.tolist(), preds, strict=False)
        for ax, image, pred, actual, loss, prob in rows:
            ax.imshow(image, **({"cmap": "gray", **kwargs} if image.ndim == 2 else kwargs))
            name_pred, name_actual = self._name(pred), self._name(actual)
            ax.set_title(f"{name_pred}/{name_actual} / {loss:.2f} / {prob.max().item():.2f}")
        for ax in flat:
            ax.set_axis_off()
        _save(fig, fname)
        return fig

    def _name(self, cls: Any) -> Any:
        """The vocab's name of the class index `cls` (the index itself when outside the vocab); a one-element row
        (one sigmoid output's `[True]`, its target `[0.0]`) is its element, a whole number an index."""
        if isinstance(cls, list) and len(cls) == 1:
            cls = cls[0]
        if isinstance(cls, (bool, float)) and float(cls).is_integer():
            cls = int(cls)
        return self.vocab[cls] if isinstance(cls, int) and 0 <= cls < len(self.vocab) else cls


class SegmentationInterpretation(Interpretation):
    """Interpretation of a segmentation model: each image's loss is the mean of its pixels' losses."""


def _in_order(learn: Learner, ds_idx: int, dl: Iterable[Any] | None) -> Iterable[Any]:
    # Dataset order, so that losses[i] is the loss of dataset[i] (fastai's own DataLoaders are put back in order);
    # a sampler of the loader's own is read into the Subset of its items, in its order.
    return unshuffled(learn.dls[ds_idx] if dl is None else dl, by_index=True)


def _loader_name(ds_idx: int, dl: Any) -> str:
    return f"learn.dls[{ds_idx}]" if dl is None else type(dl).__name__


def _required(value: Any, what: str, loader: str) -> Any:
    if value is None or (isinstance(value, list) and not value):  # no batch gathered: get_preds' losses are []
        raise InputError(
            f"The interpretation found no {what}: the loader {loader} gave no batches (or none with targets), or a "
            "callback cancelled its validation phase. Pass a loader of (inputs, targets) batches."
        )
    return value


def _one_target(targs: Any) -> Tensor:
    if not isinstance(targs, Tensor):  # a tuple or list: batches of several targets
        raise InputError(
            f"ClassificationInterpretation compares one target per item with the predicted class; these batches have "
            f"{len(targs)} targets. Interpret a loader of (inputs, target) batches, or use Interpretation for the "
            "losses alone."
        )
    return targs


def _check_classes(decoded: Tensor, targs: Tensor) -> None:
    """Refuse fractional values: the confusion matrix would silently count none of them."""
    for name, t in (("predicted classes", decoded), ("targets", targs)):
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise InputError(
                f"ClassificationInterpretation needs class indices, but the {name} hold fractional values (a "
                "regression model, or a loss function without `decodes`, such as torch's nn.BCEWithLogitsLoss): use "
                "a classification loss with decodes (CrossEntropyLossFlat, BCEWithLogitsLossFlat), or Interpretation "
                "for the losses alone."
            )


def _index_list(idxs: int | slice | Sequence[int] | Sequence[bool] | Tensor | np.ndarray, n: int) -> list[int]:
    if isinstance(idxs, slice):  # of the `n` items, as fastai's `interp[:]`
        return list(range(n))[idxs]
    if isinstance(idxs, (int, np.integer)):  # numpy's integers too
        return [int(idxs)]
    items = idxs.reshape(-1).tolist() if isinstance(idxs, (Tensor, np.ndarray)) else list(idxs)
    if items and all(isinstance(i, (bool, np.bool_)) for i in items):  # a mask over the items, as fastai's L takes
        if len(items) != n:
            raise InputError(f"interp[mask]: the mask has {len(items)} values for {n} items; give one per item.")
        return [i for i, keep in enumerate(items) if keep]
    return [int(i) for i in items]


def _dataset(dl: Any, what: str, batched: bool = False) -> Any:
    """`dl`'s map-style dataset (and, when `batched`, `dl` a torch DataLoader that makes batches of it)."""
    dataset = getattr(dl, "dataset", None)
    indexable = dataset is not None and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__")
    if isinstance(dl, DataLoader) and dl.batch_sampler is not None and not isinstance(dl.batch_sampler, BatchSampler):
        raise TypeError(
            f"{what} fetches items by their index, but the interpretation's loader has a custom batch sampler "
            f"({type(dl.batch_sampler).__name__}), whose order learnloop cannot put back, so the losses are not in "
            "dataset order. Make the interpretation from a loader that reads the dataset in order "
            "(from_learner(learn, dl=DataLoader(dataset, bs)))."
        )
    if not indexable or (batched and not (isinstance(dl, DataLoader) and dl.batch_size is not None)):
        raise TypeError(
            f"{what} fetches items by their index, so it needs the interpretation's loader to be a torch DataLoader "
            f"(with a batch_size) over a map-style Dataset (one that takes dataset[i]); got {type(dl).__name__}. "
            "Make the interpretation from such a loader (from_learner(learn, dl=DataLoader(dataset, bs)))."
        )
    return dataset


def _predicted_classes(decoded: Tensor, targs: Tensor) -> Tensor:
    """The decoded predictions as classes: the argmax over dimension 1 when they still hold one score per class
    (a loss without `decodes`, such as torch's `nn.CrossEntropyLoss`)."""
    if decoded.shape != targs.shape and decoded.ndim == targs.ndim + 1 and decoded.is_floating_point():
        decoded = decoded.argmax(dim=1)
    if decoded.numel() != targs.numel():
        raise InputError(
            f"The decoded predictions (shape {tuple(decoded.shape)}) and the targets (shape {tuple(targs.shape)}) "
            "hold different numbers of values, so they cannot be compared class by class: use a loss function whose "
            "decodes gives one class per target (CrossEntropyLossFlat's argmax, say)."
        )
    return decoded


def _main_output(preds: Any) -> Any:
    """The class scores of a model of several outputs (a tuple or list, such as `(logits, aux)`): its first."""
    while isinstance(preds, (tuple, list)) and preds:
        preds = preds[0]
    return preds


def _vocab(vocab: Sequence[Any] | None, learn: Learner, dl: Any, preds: Tensor) -> list[Any]:
    if vocab is not None:
        return list(vocab)
    found = getattr(learn.dls, "vocab", None)
    if found is not None:
        found = list(found)
        # A vocab per target (a list of lists): the last target's classes, as in fastai.
        return list(found[-1]) if found and all(isinstance(v, (list, tuple)) for v in found) else found
    classes = getattr(getattr(dl, "dataset", None), "classes", None)
    if classes is not None:
        return list(classes)
    axis = getattr(learn.loss_func, "axis", 1) if preds.ndim > 1 else 0
    width = preds.shape[axis] if preds.ndim > 1 else 1
    return list(range(width if width > 1 else 2))  # one output (a sigmoid's probability): classes 0 and 1


def _images(inps: Any) -> list[np.ndarray]:
    """Each input as an image for `imshow`: (H, W) for one channel, (H, W, 3) rescaled to [0, 1] for three."""
    shape = tuple(inps.shape) if isinstance(inps, Tensor) else None
    if shape is None or not (len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, 3))):
        raise NotImplementedError(
            f"plot_top_losses draws image inputs, one tensor of shape (n, 1 or 3, H, W) or (n, H, W); these are "
            f"{'of shape ' + str(shape) if shape else type(inps).__name__}. Look at them with interp[idx] instead."
        )
    x = inps.detach().float().cpu()
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 3:
        return [img.numpy() for img in x]
    images = []
    for img in x.permute(0, 2, 3, 1):
        low, high = img.min(), img.max()
        images.append(((img - low) / (high - low) if high > low else torch.zeros_like(img)).numpy())
    return images
