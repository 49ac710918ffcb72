"""The `learnloop` command: train a model, predict with it, show a run.

  learnloop train                                    a small CNN on the bundled 8x8 digits (about 10 s on a CPU)
  learnloop train --data houses.csv --target price   an MLP on your CSV file (task inferred from the target)
  learnloop predict runs/<run> new_houses.csv        predictions for new rows, as CSV
  learnloop show runs/<run>                          a run's settings and epoch table
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import select
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import __version__, recipe, runs
from .checkpoint import CheckpointError
from .learner import Learner
from .models import CNN_WIDTHS, MLP_HIDDEN
from .recipe import CSV_EPOCHS, CSV_STEPS, DIGITS_EPOCHS, OPTIMIZERS, POLICIES, ConfigError, TrainConfig
from .tabular import MAX_INFERRED_CLASSES, CSVError, read_csv
from .warn import NonFiniteLossWarning

__all__ = ["main", "build_parser", "train", "predict", "show"]

EXIT_CODES = ("exit codes: 0 success; 1 failure (a file's contents cannot be used as asked, training failed); "
              "2 usage error (unknown option or value, missing file); 130 stopped by Ctrl-C (train writes its "
              "checkpoint first); 141 the output's reader closed it (`| head`)")


def _checked(kind: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: `kind(text)`, refused with "<what>, got <text>" unless `ok` accepts it."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `learnloop` command."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="learnloop", description=__doc__, epilog=EXIT_CODES, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"learnloop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,predict,show}")
    t = commands.add_parser("train", help="train a model, print the epoch table, save a run directory",
                            description="Train a model and save everything about the run in a run directory.",
                            epilog=EXIT_CODES)
    positive_float = _checked(float, lambda v: 0 < v < float("inf"), "must be a number > 0")
    non_negative = _checked(float, lambda v: 0 <= v < float("inf"), "must be a number >= 0")
    positive_int = _checked(int, lambda v: v >= 1, "must be a whole number >= 1")
    d = t.add_argument_group("data")
    d.add_argument("--data", default="digits", help="'digits' (bundled 8x8 handwritten digits, the default) or a "
                   "CSV file with a header row (delimiter , ; tab or |, detected)")
    d.add_argument("--target", metavar="COLUMN", help="CSV: the column to predict (required with a CSV file)")
    d.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                   help="CSV: auto (the default) picks classification when the target is not numeric, or is whole "
                   f"numbers with at most {MAX_INFERRED_CLASSES} distinct values, and regression otherwise")
    fraction = _checked(float, lambda v: 0 < v < 1, "must be a fraction strictly between 0 and 1")
    d.add_argument("--valid-pct", type=fraction, default=0.2,
                   help="fraction of the rows held out for validation (default: 0.2)")
    d.add_argument("--drop", nargs="+", action="extend", default=[], metavar="COLUMN",
                   help="CSV: columns to leave out (ids, free text, ...)")
    d.add_argument("--categorical", nargs="+", action="extend", default=[], metavar="COLUMN",
                   help="CSV: non-numeric feature columns to one-hot encode")
    m = t.add_argument_group("model")
    m.add_argument("--arch", choices=("auto", "cnn", "mlp"), default="auto",
                   help="cnn: small CNN (images only), mlp: multi-layer perceptron; auto: cnn for digits, mlp for CSV")
    m.add_argument("--hidden", nargs="+", type=positive_int, metavar="WIDTH", help="layer widths (default: cnn "
                   f"{' '.join(map(str, CNN_WIDTHS))}, mlp {' '.join(map(str, MLP_HIDDEN))})")
    o = t.add_argument_group("training")
    o.add_argument("--epochs", type=positive_int, help=f"epochs (default: {DIGITS_EPOCHS} for digits; for a CSV, "
                   f"enough for ~{CSV_STEPS} steps, between {CSV_EPOCHS[0]} and {CSV_EPOCHS[1]})")
    o.add_argument("--bs", type=positive_int, help="batch size (default: 64; for a small CSV, a tenth of the "
                   "training rows, at least 8)")
    o.add_argument("--lr", type=positive_float, default=1e-2,
                   help="(peak) learning rate (default: 0.01)")
    o.add_argument("--lr-find", action="store_true", help="choose the lr with the lr finder (valley); "
                   "saves lr_find.png")
    o.add_argument("--policy", choices=POLICIES, default="one_cycle", help="lr schedule: one_cycle (the default), "
                   "flat_cos, sgdr (restarts; cycles of 1, 2, 4, ... units summing to --epochs) or fit (constant)")
    o.add_argument("--opt", choices=list(OPTIMIZERS), default="adam", help="optimizer (default: adam)")
    o.add_argument("--wd", type=non_negative, help="weight decay (default: the "
                   "optimizer's: 0.01 for adam and ranger, 0 for the others)")
    precision = o.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="mixed precision, float16 with loss scaling")
    precision.add_argument("--bf16", action="store_true", help="mixed precision, bfloat16")
    o.add_argument("--mixup", type=positive_float, nargs="?", const=0.4,
                   metavar="ALPHA", help="train on MixUp blends of pairs of items (ALPHA defaults to 0.4)")
    o.add_argument("--seed", type=int, default=42, help="random seed: same seed, same run (default: 42)")
    o.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: cuda when available, else cpu)")
    o.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<date>-<time>)")
    o.add_argument("--resume", type=Path, metavar="RUN_DIR", help="carry on an interrupted run from its last "
                   "checkpoint, with the settings of its config.json (only --device may be given with it)")
    p = commands.add_parser("predict", help="predict the target of new rows with a trained model",
                            description="Write the rows of INPUT with a <target>_pred column (and <target>_prob, "
                            "the predicted class's probability).", epilog=EXIT_CODES)
    p.add_argument("model", type=Path, help="a run directory (uses its model.pth) or a model file in one")
    p.add_argument("input", type=Path, help="CSV file with the columns the model was trained on")
    p.add_argument("--out", type=Path, metavar="FILE", help="where to write the predictions (default: stdout)")
    s = commands.add_parser("show", help="print a run's settings and epoch table", epilog=EXIT_CODES)
    s.add_argument("run", type=Path, help="a run directory")
    for command in (t, p, s):  # main() reports an option a command does not know with the command's own usage
        command.set_defaults(command_parser=command)
    return parser


# ------------------------------------------------------------------------------------------- commands
def train(args: argparse.Namespace) -> Learner:
    """`learnloop train`: the options as a TrainConfig, trained by `learnloop.recipe.train`."""
    if args.resume is not None:
        return _resume(args)
    precision: Literal["fp32", "fp16", "bf16"] = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"precision", "out"}
    config = TrainConfig(**{n: getattr(args, n) for n in names}, precision=precision,
                         out=str(args.out) if args.out else None)
    return _trained(*recipe.train(config))


def _trained(learn: Learner, out: Path) -> Learner:
    """`learn`, when its run has a model to predict with: a run that diverged (no model.pth, its weights hold NaN) is
    a failure, exit code 1, so that `learnloop train ... && learnloop predict ...` stops there."""
    if not (out / runs.BEST_MODEL).exists():
        raise runs.RunError(f"{out} has no {runs.BEST_MODEL}: its training diverged (see above).")
    return learn


def _resume(args: argparse.Namespace) -> Learner:
    if args.resume.is_file():  # a model or checkpoint file: "no such run directory" sent the user looking for one
        try:
            hint = f" ({runs.open_run(args.resume).path} for this file)"
        except runs.RunError:
            hint = ""
        raise ConfigError(f"--resume {args.resume}: is a file; --resume takes a run directory, the one that holds "
                          f"{runs.CONFIG}{hint}, and carries the run on from its last checkpoint.")
    if not args.resume.is_dir():
        raise ConfigError(f"--resume {args.resume}: no such run directory.")
    run = runs.open_run(args.resume)
    defaults, fields = TrainConfig(), {f.name for f in dataclasses.fields(TrainConfig)}
    given = [f"--{name.replace('_', '-')}" for name in sorted(fields - {"precision", "device", "out"})
             if getattr(args, name) != getattr(defaults, name)]
    given += [f"--{name}" for name in ("fp16", "bf16", "out") if getattr(args, name)]
    if given:
        raise ConfigError(f"--resume carries on with the settings in {run.path / runs.CONFIG}; leave out "
                          f"{', '.join(given)} (only --device may change).")
    if "data" not in run.config:  # TrainConfig's default would train on the digits instead
        raise runs.RunError(f"{run.path / runs.CONFIG} does not say what data the run trained on (no 'data'): it is "
                            "not a config.json that `learnloop train` wrote.")
    config = TrainConfig(**{k: v for k, v in run.config.items() if k in fields})
    config = dataclasses.replace(config, data=_resume_data(run, config.data), out=str(run.path),
                                 device=args.device or config.device)
    return _trained(*recipe.train(config, resume=True))


def _resume_data(run: runs.Run, data: str) -> str:
    """The data file of a run to resume: the one it trained on (config.json's absolute `data_path`) when it is still
    there, else `data` as given then (relative to where it was trained: the run and its file moved together)."""
    if data == "digits":
        return data
    recorded = run.config.get("data_path")
    if isinstance(recorded, str) and Path(recorded).is_file():
        return recorded
    if Path(data).is_file():
        return data
    where = f" nor at {recorded}" if isinstance(recorded, str) and recorded != data else ""
    raise ConfigError(f"the run in {run.path} trained on {data}, which is not a file from {Path.cwd()}{where}: put it "
                      "back, or carry the run on from the directory it was trained in.")


# ------------------------------------------------------------------------------------- predict, show
def predict(args: argparse.Namespace) -> None:
    """Write the rows of `args.input` with the model's predictions."""
    if not args.model.exists():
        raise ConfigError(f"{args.model}: no such run directory or model file.")
    if args.out is not None and args.out.is_dir():  # found only once the predictions were made: "[Errno 21]"
        raise ConfigError(f"--out {args.out}: is a directory; --out takes the CSV file to write, such as "
                          f"{args.out / 'predictions.csv'}.")
    run = runs.open_run(args.model)
    table = read_csv(recipe.existing_file(args.input, "INPUT", "a CSV file with the columns the model was trained on"))
    prep = run.prep
    x = prep.transform(table)
    model = run.load_model()
    with torch.no_grad():
        outputs = torch.cat([model(xb) for xb in x.split(1024)])
    preds, probs = prep.decode(outputs)
    extra = [f"{prep.target}_pred"] + ([f"{prep.target}_prob"] if probs is not None else [])
    out = sys.stdout if args.out is None else args.out.open("w", newline="")
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*table.columns, *extra])
        for i, row in enumerate(table.rows):
            pred = preds[i] if probs is not None else str(np.float32(preds[i]))  # float32's shortest exact form
            writer.writerow([*row, pred, *([f"{probs[i]:.6f}"] if probs is not None else [])])
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out is not None:
        print(f"wrote {len(preds)} predictions to {args.out}", file=sys.stderr)


def show(args: argparse.Namespace) -> None:
    """Print a run's settings and epoch table."""
    if not args.run.exists():
        raise ConfigError(f"{args.run}: no such run directory.")
    run = runs.open_run(args.run)
    config = dict(run.config)
    print(f"run {run.path}\n  command: {config.pop('command', '?')}")
    width = max(map(len, config), default=0) + 2
    for key, value in config.items():
        print(f"  {key.ljust(width)}{value if isinstance(value, str) else json.dumps(value)}")
    print(f"  {'files'.ljust(width)}{' '.join(sorted(p.name for p in run.path.iterdir()))}")
    rows = run.metrics()  # the header alone when the run was stopped in its first epoch (CSVLogger writes it first)
    table = [rows[0], *([_fmt(c) for c in r] for r in rows[1:])] if rows[1:] else []
    print(runs.format_table(table) if table else "(no epoch finished)")


def _fmt(cell: str) -> str:
    try:
        return cell if cell.isdigit() else f"{float(cell):.6f}"
    except ValueError:
        return cell


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {"train": train, "predict": predict, "show": show}


def _warning_printer(prog: str, args: argparse.Namespace) -> Callable[..., None]:
    """A `warnings.showwarning` for the command line: ``learnloop train: warning: <message>`` on stderr, without
    the file, line and source of the code that warned (the console script's own, for learnloop's warnings)."""
    # The library's advice on a NaN loss is in Python's terms: the command's own instead.
    lower_lr = "Train again with a lower --lr" + (" instead of --lr-find." if getattr(args, "lr_find", False) else ".")

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        kind = "warning" if category is UserWarning else f"warning ({category.__name__})"
        if isinstance(message, NonFiniteLossWarning):
            message = f"{message.what} {lower_lr}"
        print(f"{prog}: {kind}: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `learnloop` command; returns the exit code."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # argparse's parse_args says so with the usage of `learnloop`, which lists no option of the command
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # argparse has printed the usage error (code 2), or --help / --version (0)
        return e.code if isinstance(e.code, int) else 0
    prog = f"learnloop {args.command}"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(prog, args)
            COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"{prog}: error: {e}\n(see `{prog} --help`)", file=sys.stderr)
        return 2
    except BrokenPipeError as e:
        if _stdout_closed():  # its reader stopped (`learnloop show RUN | head`): stop quietly, as cat does
            _silence_stdout()
            return 141  # 128 + SIGPIPE: what the shell reports for a command that a closed pipe ends
        print(f"{prog}: error: {e}", file=sys.stderr)  # another pipe: a failure like any other
        return 1
    except (CSVError, runs.RunError, CheckpointError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (the write end then polls as an error)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows), or no real file: assume it was stdout
        return True


def _silence_stdout() -> None:
    """Point standard output at the null device, so that flushing it at exit does not fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (captured output): nothing is flushed to a pipe at exit
        pass


if __name__ == "__main__":
    sys.exit(main())
