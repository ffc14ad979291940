"""The README's Python examples run as written, and the public names are pinned.

Every ```python block of README.md, every inline call written as `actwatch.<name>(...)` in its
prose, and every ```python block in the docstrings of `src/actwatch` runs in a fresh Python
process (so a name that only exists because some other test imported a submodule cannot make
it pass). The prelude runs once; each snippet gets a fresh namespace holding the prelude's
names and nothing from the snippets before it. The README's snippets run in page order in one
working directory (`readme/`), as a reader following the page would: the report call reads the
logs the `fit` above it wrote. The docstrings' run in another (`docstrings/`).

The prelude (`PRELUDE`) defines the names the prose assumes:

- `actwatch` (the package only, as the first block imports it), `keras`, `np`;
- `model`: a compiled CNN on 16x16x3 images (Conv-ReLU-MaxPool twice, global pooling,
  a 3-way softmax Dense head), small enough that the README's `epochs=20` takes seconds;
- `x_train`, `y_train`: 32 images in [0, 1) and their labels (one batch per epoch);
- `x_val`, `x`: 16 more images;
- files in the working directory: `cat.jpg` and `dog.jpg` (48x64 photos of noise) and
  `model.keras` (the model, saved).

Docstring examples also see their module's globals (the `inspect_model` example is written
inside `actwatch.inspection`). A snippet that cannot run as written is listed in
`ILLUSTRATIVE` with the reason; today there is none.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

import actwatch

from .helpers import read_events

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SRC = ROOT / "src" / "actwatch"

PRELUDE = """
import actwatch
import keras
import numpy as np
from PIL import Image

keras.utils.set_random_seed(0)
_inputs = keras.Input((16, 16, 3), name="image")
_h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(_inputs)
_h = keras.layers.MaxPooling2D(name="pool1")(_h)
_h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(_h)
_h = keras.layers.MaxPooling2D(name="pool2")(_h)
_h = keras.layers.GlobalAveragePooling2D(name="gap")(_h)
model = keras.Model(_inputs, keras.layers.Dense(3, activation="softmax", name="head")(_h))
model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
_rng = np.random.default_rng(0)
x_train = _rng.random((32, 16, 16, 3)).astype("float32")
y_train = _rng.integers(0, 3, 32)
x_val = _rng.random((16, 16, 16, 3)).astype("float32")
x = x_val
for _name in ("cat.jpg", "dog.jpg"):
    Image.fromarray(_rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(_name)
model.save("model.keras")
"""

#: Snippets that cannot run as written, by where they are, with the reason. Keep it empty:
#: fix the README instead.
ILLUSTRATIVE: dict[str, str] = {}

#: A README call misspelled on purpose: the runner must report it as failing.
CANARY = "import actwatch\nactwatch.report.write_reprot('logs', 'canary.html')\n"

# The runner, executed with `python -c` in the working directory. It reads the prelude and
# the snippets as JSON on stdin and prints one JSON line per snippet.
RUNNER = r"""
import importlib, json, logging, os, sys, traceback, warnings

if os.environ.get("ACTWATCH_BLOCK_TENSORFLOW") == "1":
    sys.modules["tensorflow"] = None  # as tests/conftest.py: prove it runs without TensorFlow

job = json.load(sys.stdin)
import actwatch  # the package only: a submodule the README uses must come with it

warnings.simplefilter("error", actwatch.ActwatchWarning)


class Problems(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        if record.exc_info or "failed" in record.getMessage():
            self.records.append(record.getMessage())


problems = Problems()
logging.getLogger("actwatch").addHandler(problems)
home = os.getcwd()
base = {"__name__": "__readme__"}
exec(compile(job["prelude"], "<prelude>", "exec"), base)
for folder in {snippet["folder"] for snippet in job["snippets"]}:
    os.makedirs(folder, exist_ok=True)
    for name in ("cat.jpg", "dog.jpg", "model.keras"):
        os.link(name, os.path.join(folder, name))
for snippet in job["snippets"]:
    namespace = {}
    if snippet["module"]:
        namespace.update(vars(importlib.import_module(snippet["module"])))
    namespace.update(base)
    problems.records.clear()
    os.chdir(snippet["folder"])
    try:
        exec(compile(snippet["code"], snippet["where"], "exec"), namespace)
        error = None
    except BaseException:
        error = traceback.format_exc(limit=-3)
    os.chdir(home)
    print(json.dumps({"where": snippet["where"], "error": error, "logged": problems.records}),
          flush=True)
"""


@dataclass(frozen=True)
class Snippet:
    """Python code from the docs: where it is (file:line), the code, the module whose
    docstring holds it (None for the README), and the working directory it runs in."""

    where: str
    code: str
    module: str | None = None
    folder: str = "readme"


_FENCE = re.compile(r"^([ \t]*)```([\w-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
_INLINE_CALL = re.compile(r"`(actwatch\.[\w.]+\([^`]*\))`")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def fences(text: str) -> list[tuple[int, str, str]]:
    """(first code line, language, dedented code) of every fenced block of Markdown text."""
    return [
        (_line(text, m.start(3)), m.group(2), textwrap.dedent(m.group(3)))
        for m in _FENCE.finditer(text)
    ]


def readme_snippets() -> list[Snippet]:
    """The README's ```python blocks and inline `actwatch.*(...)` calls, in page order."""
    text = README.read_text("utf-8")
    found = [
        (line, Snippet(f"README.md:{line}", code))
        for line, language, code in fences(text)
        if language == "python"
    ]
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # lines kept
    found += [
        (_line(prose, m.start()), Snippet(f"README.md:{_line(prose, m.start())}", m.group(1)))
        for m in _INLINE_CALL.finditer(prose)
    ]
    return [snippet for _, snippet in sorted(found, key=lambda item: item[0])]


def docstring_snippets() -> list[Snippet]:
    """The ```python blocks in the docstrings of actwatch's modules."""
    out = []
    for path in sorted(SRC.glob("*.py")):
        text = path.read_text("utf-8")
        module = "actwatch" if path.stem == "__init__" else f"actwatch.{path.stem}"
        out += [
            Snippet(f"src/actwatch/{path.name}:{line}", code, module, "docstrings")
            for line, language, code in fences(text)
            if language == "python"
        ]
    return out


def run_snippets(snippets: list[Snippet], cwd: Path) -> list[dict[str, object]]:
    """Run `snippets` after the prelude in one fresh process; one result per snippet."""
    job = {"prelude": PRELUDE, "snippets": [asdict(s) for s in snippets]}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["where"] for r in results] == [s.where for s in snippets], done.stderr[-3000:]
    return results


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
    text = README.read_text("utf-8")
    unmarked = [
        (line, language)
        for line, language, code in fences(text)
        if language != "python" and re.search(r"\bactwatch\.\w+\(|^import actwatch", code, re.M)
    ]
    assert unmarked == []


def test_illustrative_snippets_still_exist() -> None:
    """Every snippet excused from running is still in the docs (the list cannot go stale)."""
    where = {s.where for s in readme_snippets() + docstring_snippets()}
    assert set(ILLUSTRATIVE) <= where


@pytest.mark.slow
def test_readme_and_docstring_examples_run_as_written(tmp_path: Path) -> None:
    """Each README and docstring example runs as written in a fresh process; a misspelled
    call fails; the monitor's fit writes its checks and the report call writes the page."""
    snippets = [s for s in readme_snippets() + docstring_snippets() if s.where not in ILLUSTRATIVE]
    canary = Snippet("canary", CANARY)
    results = run_snippets([*snippets, canary], tmp_path)
    *real, canary_result = results
    failures = {r["where"]: r["error"] for r in real if r["error"]}
    assert failures == {}, "\n".join(f"{w}:\n{e}" for w, e in failures.items())
    logged = {r["where"]: r["logged"] for r in real if r["logged"]}
    assert logged == {}, "a check failed inside the monitor"
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
