"""The README's Python examples run as written, and the public names are pinned.

Every ```python block of README.md, every inline call written as `actwatch.<name>(...)` in its
prose, and every ```python block in the docstrings of the top-level modules of `src/actwatch`
runs in a fresh Python process, through the runner shared with the docs site's test
(`tests/snippets.py`, which describes the prelude: `model`, `x_train`, `y_train`, `x_val`, `x`,
`cat.jpg`, `dog.jpg`, `model.keras`). The README's snippets run in page order in one working
directory (`readme/`), as a reader following the page would: the report call reads the logs
the `fit` above it wrote. The docstrings' run in another (`docstrings/`).

A snippet that cannot run as written is listed in `ILLUSTRATIVE` with the reason; today there
is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import actwatch

from .helpers import read_events
from .snippets import (
    CANARY,
    ROOT,
    SRC,
    Snippet,
    assert_all_ran,
    docstring_snippets,
    markdown_snippets,
    run_snippets,
    unmarked_blocks,
)

README = ROOT / "README.md"

#: Snippets that cannot run as written, by where they are, with the reason. Keep it empty:
#: fix the README instead.
ILLUSTRATIVE: dict[str, str] = {}


def readme_snippets() -> list[Snippet]:
    """The README's ```python blocks and inline `actwatch.*(...)` calls, in page order."""
    return markdown_snippets(README, "readme")


def top_level_docstring_snippets() -> list[Snippet]:
    """The ```python blocks in the docstrings of actwatch's top-level modules."""
    return docstring_snippets(sorted(SRC.glob("*.py")))


def test_readme_has_the_documented_snippets() -> None:
    """The extractor finds the README's examples: the monitor, the report call, the notebook."""
    code = "\n".join(s.code for s in readme_snippets())
    for call in (
        "actwatch.ActivationMonitor(",
        "model.fit(",
        "actwatch.report.write_report(",
        "actwatch.get_activations(",
        "actwatch.activation_stats(",
        "actwatch.plot_filters(",
        "actwatch.plot_heatmaps(",
    ):
        assert call in code


def test_every_block_calling_actwatch_is_marked_python() -> None:
    """A code block that calls actwatch is fenced as ```python, so this file runs it."""
    assert unmarked_blocks(README) == []


def test_illustrative_snippets_still_exist() -> None:
    """Every snippet excused from running is still in the docs (the list cannot go stale)."""
    where = {s.where for s in readme_snippets() + top_level_docstring_snippets()}
    assert set(ILLUSTRATIVE) <= where


@pytest.mark.slow
def test_readme_and_docstring_examples_run_as_written(tmp_path: Path) -> None:
    """Each README and docstring example runs as written in a fresh process; a misspelled
    call fails; the monitor's fit writes its checks and the report call writes the page."""
    snippets = [
        s for s in readme_snippets() + top_level_docstring_snippets() if s.where not in ILLUSTRATIVE
    ]
    canary = Snippet("canary", CANARY)
    results = run_snippets([*snippets, canary], tmp_path)
    *real, canary_result = results
    assert_all_ran(real)
    assert "AttributeError" in str(canary_result["error"]), "the runner must report failures"
    assert "write_reprot" in str(canary_result["error"])
    # What the first README block promises: checks written for every epoch of its fit.
    events = read_events(tmp_path / "readme" / "logs" / "run1")
    steps = [step for step, _ in events.scalars["network/dead_fraction"]]
    assert steps[0] == 0 and len(steps) >= 2 and steps == sorted(set(steps))
    assert (tmp_path / "readme" / "report.html").stat().st_size > 0


def test_public_names() -> None:
    """`actwatch` exports exactly these names, sorted, each one defined and listed by `dir`;
    a misspelled name is an AttributeError."""
    assert actwatch.__all__ == [
        "ActivationMonitor",
        "ActwatchWarning",
        "Alert",
        "LayerStats",
        "__version__",
        "activation_stats",
        "get_activations",
        "get_gradients",
        "plot_filters",
        "plot_heatmaps",
    ]
    assert actwatch.__all__ == sorted(actwatch.__all__)
    for name in actwatch.__all__:
        assert getattr(actwatch, name) is not None
    assert {*actwatch.__all__, "report"} <= set(dir(actwatch))
    with pytest.raises(AttributeError, match="has no attribute 'ActivationMonitr'"):
        actwatch.ActivationMonitr  # noqa: B018


def test_plain_import_brings_the_report_and_no_tensorflow() -> None:
    """After a bare `import actwatch` (fresh process), `actwatch.report.write_report` exists;
    off the TensorFlow backend, that did not import TensorFlow."""
    code = (
        "import sys, actwatch\n"
        "assert callable(actwatch.report.write_report)\n"
        "print(sys.modules.get('tensorflow') is not None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        assert done.stdout.strip() == "False"
