"""Sweeps for the tests: runs written with the real Sink by `benchmarks/sweep.py`'s generator."""

from __future__ import annotations

from pathlib import Path

from benchmarks.sweep import write_run


def write_sweep(root: Path, *, runs: int, checks: int = 4, layers: int = 2) -> list[str]:
    """`runs` runs `lr_00`, `lr_01`, ... under `root` (learning rates 1e-4 .. 1 on a log
    grid, Adam and SGD in turn, more dead filters the higher the rate); their names."""
    names = [f"lr_{i:02d}" for i in range(runs)]
    for index, name in enumerate(names):
        write_run(root / name, index, runs, checks, layers)
    return names
