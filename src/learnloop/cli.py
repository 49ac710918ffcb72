"""The `learnloop` command: `learnloop train` trains a model on the bundled digits (or your data)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import optimizer
from .data import DataLoaders
from .datasets import DIGITS_CLASSES, digits
from .learner import Learner
from .metrics import accuracy
from .models import SimpleCNN

__all__ = ["main", "build_parser"]

OPTIMIZERS = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSProp"}


class UserError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `learnloop` command."""
    parser = argparse.ArgumentParser(prog="learnloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model and print the per-epoch table")
    train.add_argument("--data", default="digits", help="the dataset: 'digits' (bundled, the default)")
    train.add_argument("--epochs", type=int, default=8, help="number of epochs (default: 8)")
    train.add_argument("--bs", type=int, default=64, help="batch size (default: 64)")
    train.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: 1e-2)")
    train.add_argument("--wd", type=float, default=None, help="weight decay (default: the optimizer's)")
    train.add_argument("--opt", choices=sorted(OPTIMIZERS), default="adam", help="optimizer (default: adam)")
    train.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    train.add_argument("--device", default=None, help="device, e.g. cpu or cuda (default: cuda when available)")
    train.add_argument("--out", type=Path, default=None, help="run directory for config.json and the model")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}.")
    if args.bs < 1:
        raise UserError(f"--bs must be at least 1, got {args.bs}.")
    if not args.lr > 0:
        raise UserError(f"--lr must be a positive number, got {args.lr}.")
    if args.data != "digits":
        raise UserError(f"Unknown --data {args.data!r}: the bundled dataset is 'digits'.")


def train(args: argparse.Namespace) -> Learner:
    """Train as `learnloop train` does and return the learner."""
    _check_args(args)
    torch.manual_seed(args.seed)
    train_ds, valid_ds = digits()
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=args.bs, seed=args.seed, device=args.device)
    opt_func = getattr(optimizer, OPTIMIZERS[args.opt])
    learn = Learner(dls, SimpleCNN(DIGITS_CLASSES), loss_func=nn.CrossEntropyLoss(), opt_func=opt_func,
                    lr=args.lr, wd=args.wd, metrics=accuracy)
    learn.fit_one_cycle(args.epochs, args.lr)
    if args.out is not None:
        _write_run(learn, args)
    return learn


def _write_run(learn: Learner, args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    learn.path, learn.model_dir = out, Path(".")
    learn.save("model", with_opt=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `learnloop` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            train(args)
    except UserError as e:
        print(f"learnloop: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("learnloop: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
