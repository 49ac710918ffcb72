"""Regression on a CSV file: from Python with learnloop.tabular, then the same with the `learnloop` command.

    python examples/csv_regression.py               # writes runs/example-csv/bikes.csv and a run directory

The CSV holds daily bike rentals with numeric weather columns, a `season` column of words and a `day` id.
`load_csv` splits the rows (seeded), infers the task from the target (numbers with many distinct values:
regression), normalises the numeric features with the training rows' statistics, one-hot encodes the
categorical columns, and keeps all of it in a JSON-ready `TabularPreprocessor` for new rows.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import torch

from learnloop import DataLoaders, Learner, MSELossFlat, R2Score, rmse
from learnloop.cli import main as learnloop_command
from learnloop.csvtable import CSVTable
from learnloop.models import MLP
from learnloop.tabular import load_csv

OUT = Path("runs/example-csv")


def write_bikes(path: Path, n: int = 600, seed: int = 0) -> Path:
    """A made-up data set: rentals rise with temperature, fall with rain and wind, and depend on the season."""
    rng = np.random.default_rng(seed)
    seasons = ["winter", "spring", "summer", "autumn"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["day", "temperature", "humidity", "wind", "rain_mm", "season", "rentals"])
        for day in range(n):
            season = seasons[(day // 91) % 4]
            temp = {"winter": 3, "spring": 14, "summer": 25, "autumn": 12}[season] + rng.normal(0, 4)
            humidity, wind, rain = rng.uniform(30, 95), rng.gamma(2, 6), max(0.0, rng.normal(1, 4))
            rentals = 2000 + 120 * temp - 8 * humidity - 20 * wind - 90 * rain + (400 if season == "summer" else 0)
            rain_cell = "" if day % 50 == 7 else f"{rain:.1f}"  # a few missing values, as in real files
            writer.writerow([day, f"{temp:.1f}", f"{humidity:.0f}", f"{wind:.1f}", rain_cell, season,
                             round(rentals + rng.normal(0, 150))])
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = write_bikes(OUT / "bikes.csv")

    # ---- from Python
    torch.manual_seed(0)
    data = load_csv(path, target="rentals", drop=["day"], categorical=["season"], valid_pct=0.2, seed=0)
    prep = data.prep
    print(f"task: {prep.task}; inputs: {prep.features} -> {prep.n_inputs} numbers; notes: {data.notes}")
    dls = DataLoaders.from_dsets(data.train, data.valid, bs=32, seed=0, device="cpu")
    # target_stats: the last layer outputs (y - mean) / std, and the model scales it back to rentals.
    model = MLP(prep.n_inputs, 1, hidden=(64, 32), target_stats=(prep.target_mean, prep.target_std))
    learn = Learner(dls, model, loss_func=MSELossFlat(), metrics=[rmse, R2Score()])
    learn.fit_one_cycle(10, 1e-2)
    r2 = learn.recorder.values[-1][-1]
    assert r2 > 0.8, r2

    new_days = CSVTable(["season", "temperature", "humidity", "wind", "rain_mm"],
                        [["summer", "27", "40", "5", "0"], ["winter", "2", "85", "20", "6"]])
    learn.model.eval()
    with torch.no_grad():
        sunny, stormy = learn.model(prep.transform(new_days)).flatten().tolist()
    print(f"predicted rentals: sunny summer day {sunny:.0f}, stormy winter day {stormy:.0f}")
    assert sunny > stormy

    # ---- the same with the command line: `learnloop train ...`, then `learnloop predict ...`
    run = OUT / "run"
    shutil.rmtree(run, ignore_errors=True)  # `learnloop train` refuses to overwrite a run
    argv = ["train", "--data", str(path), "--target", "rentals", "--drop", "day", "--categorical", "season",
            "--epochs", "10", "--out", str(run)]
    print("$ learnloop " + " ".join(argv))
    assert learnloop_command(argv) == 0
    new_csv = OUT / "new_days.csv"
    new_csv.write_text("season,temperature,humidity,wind,rain_mm\nsummer,27,40,5,0\nwinter,2,85,20,6\n")
    print(f"$ learnloop predict {run} {new_csv}")
    assert learnloop_command(["predict", str(run), str(new_csv)]) == 0


if __name__ == "__main__":
    main()
