"""The `actwatch` command: `demo`, `report` and `inspect`."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

__all__ = ["main"]

# TensorFlow's C++ log level when the user has not set one: errors only.
TF_LOG_LEVEL = "2"

# What TensorFlow's native code writes to stderr while it loads and finds its devices, and says
# nothing a user of actwatch acts on: absl/TSL INFO and WARNING lines ("oneDNN custom operations
# are on", "Could not find cuda drivers", CPU instructions, "computation placer already
# registered"), absl's notice that it logs before being initialized, the CPU-instructions
# line's continuation, and the ERROR lines of a machine without a GPU (cuInit) or with CUDA
# plugins registered twice.
_START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IW] "
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|(E\d{4} [\d:.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: E ).*(failed call to cuInit"
    r"|Unable to register cu\w+ factory|computation placer already registered)"
)


@contextlib.contextmanager
def _native_stderr_filtered(noise: re.Pattern[str]) -> Iterator[None]:
    """Hold back what is written to file descriptor 2 inside the block, then pass on every
    line that `noise` does not match (Python's own warnings and errors included).

    Native code writes to the descriptor directly, so neither `sys.stderr` nor Python's
    logging can filter it.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr (pythonw) or fd 2 closed
        saved = -1
    if saved < 0:
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not noise.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _load_backend_quietly() -> None:
    """Load Keras and its backend with TensorFlow's C++ start-up notices held back.

    `TF_CPP_MIN_LOG_LEVEL` (set here to "2", errors only, unless the user set it) quiets
    TensorFlow's later C++ logs, but TensorFlow 2.21 writes its start-up notices through absl
    before that setting is read, to file descriptor 2: so Keras loads its backend, and
    TensorFlow finds its devices (where a machine without a GPU logs `failed call to cuInit`),
    with those lines held back (`_START_UP_NOISE`). Setting `TF_ENABLE_ONEDNN_OPTS=0` would
    silence the oneDNN notice too, but it changes TensorFlow's numerics: not done. A user's own
    `TF_CPP_MIN_LOG_LEVEL` wins, and then nothing is filtered (`TF_CPP_MIN_LOG_LEVEL=0 actwatch
    ...` shows TensorFlow's whole start-up log).
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = TF_LOG_LEVEL
    with _native_stderr_filtered(_START_UP_NOISE):
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()


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
    from actwatch.demo import run_demo

    default_run = f"lr_{args.lr:g}" + ("_redo" if args.revive else "")
    run_dir = os.path.join(args.log_dir, args.run or default_run)
    result = run_demo(
        log_dir=run_dir,
        lr=args.lr,
        epochs=args.epochs,
        samples=args.samples,
        size=args.size,
        data_dir=args.data,
        seed=args.seed,
        revive=args.revive,
    )
    print()
    print(f"Trained for {result.seconds:.1f} s; {result.alerts} alert(s).")
    print(f"TensorBoard logs: {result.log_dir}")
    print("Open them with:")
    print(f"  tensorboard --logdir {args.log_dir}")
    print("and open its actwatch tab: every check of every layer, runs side by side.")
    from actwatch.report import write_report

    page = write_report(args.log_dir, args.report)
    print(f"Report of every run under {args.log_dir}: {page.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from actwatch.report import write_report

    page = write_report(args.logdir, args.output, runs=args.runs, all_figures=args.all_figures)
    print(f"Report written to {page.resolve()}")
    print(f"Figures: {page.resolve().with_name(page.stem + '_figures')}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from actwatch.inspection import import_modules, inspect_model

    import_modules(args.imports)
    page = inspect_model(
        args.model,
        args.images,
        args.output,
        layers=args.layers,
        preprocess=args.preprocess,
        max_filters=args.max_filters,
        inference=args.inference,
    )
    print(f"Filter grids, heatmaps and statistics written to {page.parent.resolve()}")
    print(f"Open {page.resolve()}")
    return 0


def _preprocess_choices(load: bool) -> dict[str, str]:
    """`inspect --preprocess`'s choices; {} without `load` (importing them imports Keras)."""
    if not load:
        return {}
    from actwatch.inspection import PREPROCESS

    return PREPROCESS


def build_parser(*, keras: bool = True) -> argparse.ArgumentParser:
    """The command line; `keras=False` leaves `inspect`'s choices out (no Keras import)."""
    parser = argparse.ArgumentParser(
        prog="actwatch",
        description="Watch a CNN's activations while it trains.",
        epilog="TensorFlow's C++ start-up log (oneDNN, CUDA notices) is held back and its C++ "
        "log level set to errors only (TF_CPP_MIN_LOG_LEVEL=2). Set TF_CPP_MIN_LOG_LEVEL "
        "yourself to choose: TF_CPP_MIN_LOG_LEVEL=0 shows everything.",
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
    demo.add_argument(
        "--revive",
        action="store_true",
        help="re-initialise filters that stay dead (ReDo: revive='redo'), keeping the "
        "network's output unchanged at that instant",
    )
    demo.add_argument(
        "--run", default=None, help="run name (default: lr_<lr>, lr_<lr>_redo with --revive)"
    )
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
    report.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN",
        help="run names or globs (quoted: 'lr_*') to put in the sweep table; their figures "
        "are drawn when few (default: every run; figures of the highest, median and lowest "
        "final dead fraction)",
    )
    report.add_argument(
        "--all-figures",
        action="store_true",
        help="draw the figures of every chosen run (slow for a sweep of many runs)",
    )
    report.set_defaults(func=_report)

    PREPROCESS = _preprocess_choices(keras)
    inspect = commands.add_parser(
        "inspect",
        help="filter grids, heatmaps and statistics of a saved model on some images",
        description="Load MODEL (a .keras file, with safe_mode=True: no code from the file "
        "runs; custom layers load once --import registered them), run the images through it "
        "once and write filter grids and heatmaps per image "
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
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a dotted name, looked up from the current folder, or a .py file) "
        "before loading MODEL, so that the custom layers it registers with "
        "@keras.saving.register_keras_serializable() load; repeat it for several modules. "
        "Its code runs: import only your own modules",
    )
    inspect.add_argument(
        "--inference",
        action="store_true",
        help="look at the model as predict runs it (BatchNormalization on its moving "
        "statistics, what an exported model computes); default: as training sees it",
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
    arguments = sys.argv[1:] if argv is None else list(argv)
    keras = arguments[:1] != ["report"]  # the report reads event files: no Keras, no backend
    if keras:
        _load_backend_quietly()
    parser = build_parser(keras=keras)
    args = parser.parse_args(arguments)
    try:
        result: int = args.func(args)
    except (ValueError, OSError) as exc:
        # Our errors say what was received and what to do: show them without a traceback.
        parser.exit(2, f"actwatch {args.command}: error: {exc}\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
