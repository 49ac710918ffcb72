"""CSV files as tables of strings, without pandas: the csv module, a delimiter sniffer, and number parsing.

>>> table = read_csv("houses.csv")          # header and rows; `,` `;` tab or `|`, UTF-8, UTF-16 or Latin-1
>>> table.columns, len(table.rows)
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CSVError", "CSVTable", "MISSING_VALUES", "read_csv", "parse_numbers", "column_list"]

MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
"""Cells (compared lower-case) read as missing values: filled with the training mean in a feature column."""
_BOOLEANS = {"true": 1.0, "false": 0.0}


class CSVError(ValueError):
    """A CSV file whose contents cannot be used as asked; the message says what to change."""


@dataclass
class CSVTable:
    """A CSV file's header and data rows, as stripped strings; every row has one cell per column.

    `lines[i]` is the line of the file where row `i` is (for messages).
    """

    columns: list[str]
    rows: list[list[str]]
    name: str = "the CSV file"
    lines: list[int] = field(default_factory=list)
    # Parsed numeric columns (`numbers`), kept: preprocessing reads each column several times.
    _parsed: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def line(self, i: int) -> int:
        """The file line of row `i`."""
        return self.lines[i] if self.lines else i + 2

    def column(self, name: str) -> list[str]:
        """The cells of one column."""
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def numbers(self, name: str) -> tuple[np.ndarray, int | None]:
        """`parse_numbers` of one column (computed once per table): float64 values, nan where missing,
        and the row of the first cell that is not a number, if any."""
        if name in self._parsed:
            return self._parsed[name], None
        values, bad = parse_numbers(self.column(name))
        if bad is None:
            self._parsed[name] = values
        return values, bad

    def select(self, index: Iterable[int]) -> CSVTable:
        """The rows at `index`, in that order."""
        index = list(index)
        lines = [self.line(i) for i in index]
        parsed = {name: values[index] for name, values in self._parsed.items()}
        return CSVTable(self.columns, [self.rows[i] for i in index], self.name, lines, parsed)

    def check_columns(self, names: Iterable[str], what: str) -> None:
        """Raise CSVError naming the first of `names` that is not a column, with the columns there are."""
        for name in names:
            if name not in self.columns:
                close = difflib.get_close_matches(name, self.columns, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                columns = column_list(self.columns)
                raise CSVError(f"{what} {name!r} is not a column of {self.name}.{hint} Its columns are: {columns}.")


def read_csv(path: str | Path) -> CSVTable:
    """Read a CSV file with a header row; the delimiter (`,` `;` tab `|`) is detected, UTF-8, UTF-16 with its
    byte-order mark (a spreadsheet's "Unicode text" export) or Latin-1.

    In a file not delimited by commas, numbers written with a decimal comma (`3,14`, the European way that
    goes with `;`) are read as `3.14`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    raw = path.read_bytes()
    try:
        # Latin-1 would read UTF-16's byte-order mark and zero bytes as characters: columns named 'ÿþa\x00'.
        text = raw.decode("utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # every byte is a character: never fails, and right for most legacy files
    name = str(path)
    if not text.strip():
        raise CSVError(f"{name} is empty: a CSV file needs a header row with the column names, then one row per item.")
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    # A blank line (no cell, or a single blank one) is no row; a row of empty cells (`,,`) is a row whose every
    # value is missing: dropping it would make `learnloop predict` write fewer rows than it was given.
    records = [([cell.strip() for cell in row], reader.line_num) for row in reader if len(row) > 1 or _filled(row)]
    while records and not any(records[0][0]):  # empty rows above the header (a spreadsheet's margin) are no header
        records.pop(0)
    if not records:
        raise CSVError(f"{name} has no header row, only empty cells: a CSV file needs a header row with the column "
                       "names, then one row per item.")
    if delimiter != ",":
        records = [([_decimal_point(cell) for cell in row], line) for row, line in records]
    header, rows, lines = records[0][0], [r for r, _ in records[1:]], [n for _, n in records[1:]]
    columns = [c or f"column_{i + 1}" for i, c in enumerate(header)]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise CSVError(
            f"{name} has several columns named {column_list(duplicated)}: rename them so each name is unique."
        )
    if not rows:
        raise CSVError(f"{name} has a header ({column_list(columns)}) but no data rows.")
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(columns):
            raise CSVError(
                f"{name}, line {line}: {len(row)} cells, but the header has {len(columns)} columns. "
                "Check for a missing or extra delimiter, or an unquoted delimiter inside a value."
            )
    return CSVTable(columns, rows, name, lines)


def _filled(row: list[str]) -> bool:
    return any(cell.strip() for cell in row)


_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?")


def _decimal_point(cell: str) -> str:
    return cell.replace(",", ".") if _DECIMAL_COMMA.fullmatch(cell) else cell


def _sniff_delimiter(text: str) -> str:
    """The candidate giving the same number (> 1) of cells on each of the first lines, preferring more cells."""
    sample = [line for line in text.splitlines()[:20] if line.strip()]
    best, best_cells = ",", 1
    for delimiter in (",", ";", "\t", "|"):
        counts = {len(row) for row in csv.reader(sample, delimiter=delimiter)}
        if len(counts) == 1 and (n := counts.pop()) > best_cells:
            best, best_cells = delimiter, n
    return best


def column_list(columns: Sequence[str], limit: int = 30) -> str:
    """Column names quoted and comma-separated, cut after `limit` of them."""
    shown = ", ".join(repr(c) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def parse_numbers(cells: Sequence[str]) -> tuple[np.ndarray, int | None]:
    """Cells as float64 (nan where missing) and the index of the first cell that is not a number, if any."""
    try:
        return np.asarray(cells, dtype=np.float64), None  # the fast path: every cell is a number
    except ValueError:
        pass
    out = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        low = cell.lower()
        if low in MISSING_VALUES:
            out[i] = math.nan
        elif low in _BOOLEANS:
            out[i] = _BOOLEANS[low]
        else:
            try:
                out[i] = float(cell)
            except ValueError:
                return out, i
    return out, None
