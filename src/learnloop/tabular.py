"""Tabular data from CSV files, without pandas: read, infer the task, normalise, and preprocess new rows alike.

Everything the preprocessing learns from the training rows (feature columns, normalisation statistics,
categories, class names, target statistics) lives in a :class:`TabularPreprocessor`, a plain dataclass that
round-trips through JSON: a saved run preprocesses new rows exactly as it did its training rows.

>>> data = load_csv("houses.csv", target="price")          # split, task inferred, features normalised
>>> dls = DataLoaders.from_dsets(data.train, data.valid, bs=64)
>>> prep = data.prep                                      # prep.task == 'regression'
>>> x_new = prep.transform(read_csv("new_houses.csv"))   # the same columns, statistics and order
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .csvtable import MISSING_VALUES, CSVError, CSVTable, column_list, parse_numbers, read_csv

__all__ = [
    "CSVError",
    "CSVTable",
    "MAX_INFERRED_CLASSES",
    "MISSING_VALUES",
    "TabularData",
    "TabularPreprocessor",
    "Task",
    "infer_task",
    "load_csv",
    "read_csv",
]

Task = Literal["classification", "regression"]

MAX_INFERRED_CLASSES = 20
"""A numeric target whose values are all whole numbers, with at most this many distinct values, is a class label."""


def _class_name(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


def infer_task(cells: Sequence[str]) -> Task:
    """'classification' when the target is not numeric, or when its values are all whole numbers with at most
    `MAX_INFERRED_CLASSES` distinct values; 'regression' otherwise."""
    values, bad = parse_numbers(cells)
    if bad is not None:
        return "classification"
    values = values[np.isfinite(values)]
    whole = bool(np.all(values == np.round(values)))
    return "classification" if whole and len(np.unique(values)) <= MAX_INFERRED_CLASSES else "regression"


@dataclass
class TabularPreprocessor:
    """What turns a CSV table into model inputs and targets, learnt from the training rows.

    Inputs are the `numeric` columns, normalised with `means` and `stds` (a missing cell becomes the mean,
    so 0), then one one-hot block per `categorical` column (a missing or unseen category is all zeros),
    reshaped to `input_shape` when one is given (an image). Targets are class indices into `classes`, or
    floats for regression (`target_mean` / `target_std` let a model output them in the target's units).
    """

    target: str
    task: Task
    numeric: list[str]
    means: list[float]
    stds: list[float]
    categorical: dict[str, list[str]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    input_shape: list[int] | None = None

    @property
    def n_inputs(self) -> int:
        """Number of input features (numeric columns plus one per category)."""
        return len(self.numeric) + sum(len(levels) for levels in self.categorical.values())

    @property
    def n_outputs(self) -> int:
        """Outputs a model needs: one per class, or one for regression."""
        return len(self.classes) if self.task == "classification" else 1

    @property
    def features(self) -> list[str]:
        """The columns the inputs are made of."""
        return [*self.numeric, *self.categorical]

    def transform(self, table: CSVTable) -> torch.Tensor:
        """The model inputs for every row of `table` (float32); other columns than the features are ignored."""
        missing = [c for c in self.features if c not in table.columns]
        if missing:
            raise CSVError(
                f"{table.name} lacks the column(s) {column_list(missing)} that the model was trained on; "
                f"it needs all of {column_list(self.features)}."
            )
        blocks: list[np.ndarray] = []
        if self.numeric:
            x = np.stack([_feature(table, c, fitted=True) for c in self.numeric], axis=1)
            x = (x - np.asarray(self.means)) / np.asarray(self.stds)
            blocks.append(np.nan_to_num(x, nan=0.0))
        for name, levels in self.categorical.items():
            index = {level: i for i, level in enumerate(levels)}
            onehot = np.zeros((len(table.rows), len(levels)))
            for row, cell in enumerate(table.column(name)):
                if cell in index:
                    onehot[row, index[cell]] = 1.0
            blocks.append(onehot)
        x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table.rows), 0))
        out = torch.from_numpy(x.astype(np.float32))
        return out.reshape(-1, *self.input_shape) if self.input_shape else out

    def targets(self, table: CSVTable) -> torch.Tensor:
        """Class indices (int64) or float32 values of the target column; a CSVError for unknown or missing ones."""
        table.check_columns([self.target], "The target column")
        cells = table.column(self.target)
        if self.task == "regression":
            values, bad = table.numbers(self.target)
            if bad is not None:
                raise CSVError(
                    f"The target column {self.target!r} of {table.name} must be numeric for regression, but line "
                    f"{table.line(bad)} holds {cells[bad]!r}. Use --task classification if it is a class label."
                )
            if np.isnan(values).any():
                raise CSVError(f"The target column {self.target!r} of {table.name} has missing values.")
            if np.isinf(values).any():  # the loss, the target's statistics and every prediction would be inf or nan
                row = int(np.flatnonzero(np.isinf(values))[0])
                raise CSVError(
                    f"The target column {self.target!r} of {table.name} must hold finite numbers for regression, but "
                    f"line {table.line(row)} holds {cells[row]!r}. Correct that row or leave it out."
                )
            return torch.from_numpy(values.astype(np.float32))
        index = {name: i for i, name in enumerate(self.classes)}
        labels = _labels(cells)
        unknown = sorted({label for label in labels if label not in index})
        if unknown:
            raise CSVError(
                f"The target column {self.target!r} of {table.name} holds {column_list(unknown)}, which are not among "
                f"the classes {column_list(self.classes)}."
            )
        return torch.tensor([index[label] for label in labels], dtype=torch.int64)

    def decode(self, outputs: torch.Tensor) -> tuple[list[str | float], list[float] | None]:
        """The model's raw outputs as predictions: class names and their probabilities, or values."""
        if self.task == "regression":
            values = outputs if outputs.ndim == 1 else outputs.flatten(1)[:, 0]  # reshape(n, -1) fails on no rows
            return [float(v) for v in values], None
        probs = torch.softmax(outputs.float(), dim=-1)
        best, index = probs.max(dim=-1)
        return [self.classes[int(i)] for i in index], [float(p) for p in best]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict` rebuilds the preprocessor."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TabularPreprocessor:
        """The preprocessor `to_dict` described."""
        return cls(**state)

    @classmethod
    def fit(
        cls,
        table: CSVTable,
        target: str,
        task: Task | Literal["auto"] = "auto",
        drop: Sequence[str] = (),
        categorical: Sequence[str] = (),
        classes: Sequence[str] | None = None,
    ) -> TabularPreprocessor:
        """Learn the preprocessing from the (training) rows of `table`; every column but `target` and `drop`
        is a feature, numeric unless listed in `categorical`. `classes` (default: the target's values) are
        the class names of a classification."""
        table.check_columns([target], "The target column")
        if not table.rows:  # no statistics to learn (a classification said "a single value ()", a regression nan)
            raise CSVError(f"{table.name} has no rows to learn the preprocessing from: fit needs the training rows.")
        table.check_columns(drop, "The column to drop")
        table.check_columns(categorical, "The categorical column")
        if target in categorical:  # it would be one-hot encoded as an input too: the model would read the answer
            raise CSVError(
                f"The target column {target!r} is also listed as categorical: --categorical (categorical=) names "
                "feature columns to one-hot encode as inputs. Leave the target out of it: a non-numeric target is "
                "a class label already (--task classification makes a numeric one so)."
            )
        if target in drop:  # the target is never a feature: dropping it did nothing, and the user meant something
            raise CSVError(
                f"The target column {target!r} is also listed in --drop (drop=), which leaves feature columns out; "
                "the target is never a feature. Leave it out of --drop, or name another --target."
            )
        if both := [c for c in categorical if c in drop]:
            raise CSVError(
                f"The column(s) {column_list(both)} are both dropped and categorical: --drop (drop=) leaves a "
                "column out, --categorical (categorical=) one-hot encodes it as an input. Name each in one of them."
            )
        features = [c for c in table.columns if c != target and c not in drop]
        if not features:
            raise CSVError(f"{table.name} has no feature columns left besides the target {target!r}.")
        numeric = [c for c in features if c not in categorical]
        x = np.stack([_feature(table, c) for c in numeric], axis=1) if numeric else np.zeros((len(table.rows), 0))
        observed = ~np.isnan(x)
        counts = observed.sum(axis=0)
        means = np.where(counts > 0, np.nansum(x, axis=0) / np.maximum(counts, 1), 0.0)
        # A constant column becomes all zeros, not nan: its value is its mean, exactly (a sum's rounding would
        # leave a std of ~1e-10 for large values, which would blow a new row's small difference up to ~1e7).
        low = np.min(np.where(observed, x, np.inf), axis=0, initial=np.inf)
        constant = ~(np.max(np.where(observed, x, -np.inf), axis=0, initial=-np.inf) > low)
        means = np.where(constant & (counts > 0), low, means)
        stds = np.sqrt(np.nansum((x - means) ** 2, axis=0) / np.maximum(counts, 1))
        stds = np.where(~constant & (stds > 1e-12), stds, 1.0)
        levels = {c: sorted({cell for cell in table.column(c) if cell.lower() not in MISSING_VALUES})
                  for c in categorical}
        cells = table.column(target)
        resolved: Task = infer_task(cells) if task == "auto" else task
        prep = cls(target, resolved, numeric, means.tolist(), stds.tolist(), levels)
        if resolved == "classification":
            prep.classes = list(classes) if classes is not None else _sorted_classes(_labels(cells))
            if len(prep.classes) < 2:
                raise CSVError(
                    f"The target column {target!r} of {table.name} holds a single value ({column_list(prep.classes)}): "
                    "there is nothing to learn."
                )
        else:
            y = prep.targets(table).double()
            prep.target_mean, prep.target_std = float(y.mean()), float(y.std(unbiased=False)) or 1.0
        return prep


def _feature(table: CSVTable, name: str, fitted: bool = False) -> np.ndarray:
    """The column's numbers (nan where missing or infinite); a CSVError at a cell that is not a number, whose advice
    is for training options, or, once `fitted`, for the cell (new rows need every column the model was trained on)."""
    values, bad = table.numbers(name)
    if bad is not None:
        cell = table.rows[bad][table.columns.index(name)]
        if fitted:
            raise CSVError(
                f"The column {name!r} of {table.name} must be numeric, as it was in the training rows, but line "
                f"{table.line(bad)} holds {cell!r}. Correct that cell, or empty it (a missing value is filled with "
                "the training mean)."
            )
        raise CSVError(
            f"The column {name!r} of {table.name} is not numeric: line {table.line(bad)} holds {cell!r}. "
            f"Leave it out with --drop {_quote(name)} (in Python: drop=[{name!r}]), or one-hot encode it with "
            f"--categorical {_quote(name)} (categorical=[{name!r}])."
        )
    return np.where(np.isfinite(values), values, math.nan)  # inf is as unusable as a missing value


def _quote(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").replace(".", "").isalnum() else repr(name)


def _labels(cells: Sequence[str]) -> list[str]:
    """Class names of target cells: a number in a canonical form ('1.0', '01' and '1' are the same class '1'), any
    other cell as it is ('True' stays 'True'). Cell by cell, so that any subset of the rows (a training or validation
    split, new rows) names a cell as all the rows do, whatever else the column holds."""
    names: dict[str, str] = {}
    for cell in cells:
        if cell not in names:
            try:
                names[cell] = _class_name(float(cell))
            except ValueError:
                names[cell] = cell
    return [names[cell] for cell in cells]


def _is_number(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return False
    return True


def _sorted_classes(labels: Iterable[str]) -> list[str]:
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


class TabularData(NamedTuple):
    """What `load_csv` returns: training and validation datasets `(x, y)` and the preprocessing."""

    train: TensorDataset
    valid: TensorDataset
    prep: TabularPreprocessor
    notes: list[str]


def load_csv(
    path: str | Path,
    target: str,
    valid_pct: float = 0.2,
    seed: int = 42,
    task: Task | Literal["auto"] = "auto",
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
) -> TabularData:
    """Read a CSV file and split its rows at random (seeded) into training and validation datasets.

    `target` is the column to predict; `valid_pct` the share of the rows held out for validation, drawn with
    `seed`; `task` 'classification', 'regression' or 'auto' (as `learnloop train --task`: classification when the
    target is not numeric, or whole numbers with at most 20 distinct values); `drop` the columns to leave out;
    `categorical` the non-numeric feature columns to one-hot encode. Returns `TabularData(train, valid, prep,
    notes)`. Rows whose target is missing are left out. The preprocessing is learnt from the training rows only.
    `notes` says what was inferred or filled in, for the user to read.
    """
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct is the fraction of rows kept for validation, in (0, 1); got {valid_pct!r}.")
    table = read_csv(path)
    table.check_columns([target], "The target column")
    notes: list[str] = []
    labelled = [i for i, cell in enumerate(table.column(target)) if cell.lower() not in MISSING_VALUES]
    if len(labelled) < len(table.rows):
        notes.append(f"left out {len(table.rows) - len(labelled)} rows whose target {target!r} is missing")
        table = table.select(labelled)
    n = len(table.rows)
    n_valid = min(max(round(n * valid_pct), 1), n - 2)
    if n_valid < 1:
        raise CSVError(f"{table.name} has {n} labelled rows: at least 3 are needed (2 to train, 1 to validate).")
    # Everything is checked on all rows first, so that messages point at the first bad line of the file;
    # the task and the classes come from all rows too (a rare class may fall entirely in the validation split).
    empty = [c for c in table.columns if c not in (target, *drop, *categorical)
             and all(cell.lower() in MISSING_VALUES for cell in table.column(c))]
    if empty:  # nothing to learn from, and all-missing would be all-mean: leave them out, and say so
        notes.append(f"left out the column(s) {column_list(empty)}, which hold no values")
        drop = [*drop, *empty]
    whole = TabularPreprocessor.fit(table, target, task=task, drop=drop, categorical=categorical)
    order = np.random.default_rng(seed).permutation(n)
    train, valid = table.select(sorted(order[n_valid:].tolist())), table.select(sorted(order[:n_valid].tolist()))
    # A column with values only in validation rows has no training statistics (it would pass unscaled) and taught
    # the model nothing (all training cells filled): leave it out too.
    unseen = [c for c in whole.numeric if np.isnan(_feature(train, c)).all()]
    if unseen:
        notes.append(f"left out the column(s) {column_list(unseen)}, which hold no values in the training rows")
        drop = [*drop, *unseen]
    prep = TabularPreprocessor.fit(train, target, whole.task, drop, categorical, whole.classes)
    # Numbers as written (True / False, which infer_task reads as 1 / 0, keep their names: no numbers to regress).
    if task == "auto" and whole.task == "classification" and all(_is_number(c) for c in whole.classes):
        notes.append(f"the target holds whole numbers with at most {MAX_INFERRED_CLASSES} distinct values, so it "
                     "is taken as a class label (--task regression to predict it as a number)")
    elif whole.task == "classification" and len(whole.classes) > max(MAX_INFERRED_CLASSES, n // 4):
        notes.append(f"the target has {len(whole.classes)} classes for {n} rows: if it is a number, use "
                     "--task regression")
    n_missing = sum(int(np.isnan(_feature(table, c)).sum()) for c in prep.numeric)
    if n_missing:
        notes.append(f"filled {n_missing} missing feature values with their column's training mean")
    datasets = [TensorDataset(prep.transform(t), prep.targets(t)) for t in (train, valid)]
    return TabularData(datasets[0], datasets[1], prep, notes)
