"""Convert scikit-learn's bundled copy of the UCI digits data into ``src/learnloop/data/digits.npz``.

One-off conversion script, kept for provenance; learnloop itself never imports scikit-learn.

Data: UCI Machine Learning Repository, "Optical Recognition of Handwritten Digits"
(E. Alpaydin, C. Kaynak, 1998), licence CC BY 4.0. scikit-learn redistributes its test set
(1,797 rows of 64 pixel counts in 0..16 followed by the label) as ``sklearn/datasets/data/digits.csv.gz``.

Getting the input without installing scikit-learn::

    pip download --no-deps -d /tmp/skl scikit-learn
    python scripts/make_digits.py /tmp/skl/scikit_learn-*.whl

A path to an extracted ``digits.csv.gz`` (or an uncompressed ``digits.csv``) works too, e.g. after
``unzip -j /tmp/skl/scikit_learn-*.whl sklearn/datasets/data/digits.csv.gz -d /tmp/skl``.

Output: ``np.savez_compressed`` with ``images`` (uint8, shape (1797, 8, 8)) and ``labels`` (uint8, (1797,)).
"""

from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

CSV_IN_WHEEL = "sklearn/datasets/data/digits.csv.gz"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "learnloop" / "data" / "digits.npz"
N_ROWS = 1797


def read_csv_bytes(path: Path) -> bytes:
    """Return the uncompressed csv text from a wheel, a ``.csv.gz`` or a plain ``.csv``."""
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            raw = wheel.read(CSV_IN_WHEEL)
    else:
        raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def parse(text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse the csv into (images, labels), checking the shape and value ranges."""
    table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
    if table.shape != (N_ROWS, 65):
        raise ValueError(f"expected a {N_ROWS}x65 table, got shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise ValueError(f"pixel values must lie in 0..16, got {pixels.min()}..{pixels.max()}")
    if set(np.unique(labels).tolist()) != set(range(10)):
        raise ValueError(f"labels must be the digits 0..9, got {np.unique(labels).tolist()}")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels.astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path, help="scikit-learn wheel, digits.csv.gz or digits.csv")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args(argv)

    images, labels = parse(read_csv_bytes(args.source))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    counts = np.bincount(labels, minlength=10).tolist()
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size:,} bytes): images {images.shape}, per-class counts {counts}")


if __name__ == "__main__":
    main()
