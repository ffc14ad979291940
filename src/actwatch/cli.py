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
        size=args.size,
        data_dir=args.data,
        seed=args.seed,
    )
    print()
    print(f"Trained for {result.seconds:.1f} s; {result.alerts} alert(s).")
    print(f"TensorBoard logs: {result.log_dir}")
    print("Open them with:")
    print(f"  tensorboard --logdir {args.log_dir} --samples_per_plugin=images=1000")
    from .report import write_report

    page = write_report(args.log_dir, args.report)
    print(f"Report of every run under {args.log_dir}: {page.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    page = write_report(args.logdir, args.output)
    print(f"Report written to {page.resolve()}")
    print(f"Figures: {page.resolve().with_name(page.stem + '_figures')}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect_model

    page = inspect_model(
        args.model,
        args.images,
        args.output,
        layers=args.layers,
        preprocess=args.preprocess,
        max_filters=args.max_filters,
    )
    print(f"Filter grids, heatmaps and statistics written to {page.parent.resolve()}")
    print(f"Open {page.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actwatch", description="Watch a CNN's activations while it trains."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train the demo CNN with the monitor on generated data (or --data DIR)"
    )
    demo.add_argument(
        "--lr",
        type=_positive_float,
        default=1e-3,
        help="Adam learning rate; 0.5 kills filters (default: 0.001)",
    )
    demo.add_argument("--epochs", type=_positive_int, default=8, help="epochs (default: 8)")
    demo.add_argument(
        "--samples",
        type=_positive_int,
        default=2000,
        help="generated training images (default: 2000)",
    )
    demo.add_argument(
        "--size",
        type=_positive_int,
        default=64,
        help="image side in pixels, at least 32 for the 5 pooling blocks (default: 64)",
    )
    demo.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="an image folder with one sub-folder per class, instead of generated data",
    )
    demo.add_argument("--log-dir", default="logs", help="where runs go (default: ./logs)")
    demo.add_argument("--run", default=None, help="run name (default: lr_<lr>)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--report",
        default=os.path.join("reports", "report.html"),
        metavar="FILE",
        help="the HTML report of every run under --log-dir, written when training ends "
        "(default: reports/report.html)",
    )
    demo.set_defaults(func=_demo)

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML page (and PNG figures) from actwatch's event files",
        description="Read actwatch's event files under LOGDIR (every folder holding "
        "events.out.tfevents.* files is a run; runs are compared side by side) and write one "
        "self-contained HTML page: sparsity curves, dead filters per layer and step, filter "
        "grids at the first, middle and last check, and the alerts. The figures are also "
        "written as PNG files in the folder <output stem>_figures next to the page.",
    )
    report.add_argument(
        "logdir",
        metavar="LOGDIR",
        help="an ActivationMonitor log_dir, or a folder above several runs",
    )
    report.add_argument(
        "-o",
        "--output",
        default="report.html",
        metavar="FILE",
        help="the HTML file to write (default: report.html)",
    )
    report.set_defaults(func=_report)

    from .inspection import PREPROCESS

    inspect = commands.add_parser(
        "inspect",
        help="filter grids, heatmaps and statistics of a saved model on some images",
        description="Load MODEL (a .keras file, with safe_mode=True: no code from the file "
        "runs), run the images through it once and write filter grids and heatmaps per image "
        "(PNG), and a statistics table over all images (stats.png and stats.html, which also "
        "shows every figure).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--preprocess choices (images are read as raw 0-255 pixels):\n"
        + "\n".join(f"  {k:<9} {v}" for k, v in PREPROCESS.items()),
    )
    inspect.add_argument("model", metavar="MODEL", help="a model saved with model.save('m.keras')")
    inspect.add_argument(
        "images", metavar="IMAGE", nargs="+", help="image files (resized to the model's input size)"
    )
    inspect.add_argument(
        "--layers",
        nargs="+",
        default=None,
        metavar="LAYER",
        help="layer paths or regular expressions (default: every convolution, "
        "pooling and activation layer)",
    )
    inspect.add_argument(
        "-o",
        "--output",
        default="inspect",
        metavar="DIR",
        help="output folder (default: ./inspect)",
    )
    inspect.add_argument(
        "--preprocess",
        choices=sorted(PREPROCESS),
        default="none",
        help="how to scale the raw 0-255 pixels for the model (default: none)",
    )
    inspect.add_argument(
        "--max-filters",
        type=_positive_int,
        default=64,
        help="filters drawn per layer (default: 64)",
    )
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except (ValueError, OSError) as exc:
        # Our errors say what was received and what to do: show them without a traceback.
        parser.exit(2, f"actwatch {args.command}: error: {exc}\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
