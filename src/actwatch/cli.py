"""The `actwatch` command: `demo`, `report` and `inspect`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_dir = os.path.join(args.log_dir, args.run or f"lr_{args.lr:g}")
    result = run_demo(
        log_dir=run_dir,
        lr=args.lr,
        epochs=args.epochs,
        samples=args.samples,
        data_dir=args.data,
        seed=args.seed,
    )
    print()
    print(f"Trained for {result.seconds:.1f} s; {result.alerts} alert(s).")
    print(f"TensorBoard logs: {result.log_dir}")
    print("Open them with:")
    print(f"  tensorboard --logdir {args.log_dir} --samples_per_plugin=images=1000")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actwatch", description="Watch a CNN's activations while it trains."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train the demo CNN with the monitor on generated data (or --data DIR)"
    )
    demo.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate; "
                      "0.5 kills filters (default: 0.001)")
    demo.add_argument("--epochs", type=_positive_int, default=8, help="epochs (default: 8)")
    demo.add_argument("--samples", type=_positive_int, default=2000,
                      help="generated training images (default: 2000)")
    demo.add_argument("--data", default=None, metavar="DIR",
                      help="an image folder with one sub-folder per class, instead of "
                      "generated data")
    demo.add_argument("--log-dir", default="logs", help="where runs go (default: ./logs)")
    demo.add_argument("--run", default=None, help="run name (default: lr_<lr>)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
