"""Run the Python examples of the docs as written: the one runner of tests/test_readme.py (the
README and the docstrings) and tests/test_docs.py (the docs site's pages).

Snippets run in a fresh Python process (so a name that only exists because some other test
imported a submodule cannot make them pass). The prelude runs once; each snippet gets a fresh
namespace holding the prelude's names and nothing from the snippets before it. Snippets run in
order, each in its `folder` (a working directory under the test's tmp_path): the snippets of
one page share a folder, as a reader following the page would (a report call reads the logs
the `fit` above it wrote).

The prelude (`PRELUDE`) defines the names the prose assumes:

- `actwatch` (the package only, as the first block imports it), `keras`, `np`;
- `model`: a compiled CNN on 16x16x3 images (Conv-ReLU-MaxPool twice, global pooling,
  a 3-way softmax Dense head), small enough that an `epochs=20` fit takes seconds;
- `x_train`, `y_train`: 32 images in [0, 1) and their labels (one batch per epoch);
- `x_val`, `x`: 16 more images;
- files in every working directory: `cat.jpg` and `dog.jpg` (48x64 photos of noise) and
  `model.keras` (the model, saved).

Docstring examples also see their module's globals (the `inspect_model` example is written
inside `actwatch.inspection`).
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

ROOT = Path(__file__).resolve().parent.parent
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

#: A call misspelled on purpose: the runner must report it as failing.
CANARY = "import actwatch\nactwatch.report.write_reprot('logs', 'canary.html')\n"

# The runner, executed with `python -c` in the working directory. It reads the prelude and
# the snippets as JSON on stdin and prints one JSON line per snippet.
RUNNER = r"""
import importlib, json, logging, os, sys, time, traceback, warnings

if os.environ.get("ACTWATCH_BLOCK_TENSORFLOW") == "1":
    sys.modules["tensorflow"] = None  # as tests/conftest.py: prove it runs without TensorFlow

job = json.load(sys.stdin)
import actwatch  # the package only: a submodule the docs use must come with it

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
        if not os.path.exists(os.path.join(folder, name)):
            os.link(name, os.path.join(folder, name))
for snippet in job["snippets"]:
    namespace = {}
    if snippet["module"]:
        namespace.update(vars(importlib.import_module(snippet["module"])))
    namespace.update(base)
    problems.records.clear()
    os.chdir(snippet["folder"])
    start = time.perf_counter()
    try:
        exec(compile(snippet["code"], snippet["where"], "exec"), namespace)
        error = None
    except BaseException:
        error = traceback.format_exc(limit=-3)
    os.chdir(home)
    seconds = round(time.perf_counter() - start, 2)
    print(json.dumps({"where": snippet["where"], "error": error, "logged": problems.records,
                      "seconds": seconds}), flush=True)
"""


@dataclass(frozen=True)
class Snippet:
    """Python code from the docs: where it is (file:line), the code, the module whose
    docstring holds it (None for a Markdown page), and the working directory it runs in."""

    where: str
    code: str
    module: str | None = None
    folder: str = "readme"


_FENCE = re.compile(r"^([ \t]*)```([\w{}-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
_INLINE_CALL = re.compile(r"`(actwatch\.[\w.]+\([^`]*\))`")
_CALLS_ACTWATCH = re.compile(r"\bactwatch\.\w+\(|^import actwatch", re.M)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def fences(text: str) -> list[tuple[int, str, str]]:
    """(first code line, language, dedented code) of every fenced block of Markdown text."""
    return [
        (_line(text, m.start(3)), m.group(2), textwrap.dedent(m.group(3)))
        for m in _FENCE.finditer(text)
    ]


def markdown_snippets(path: Path, folder: str) -> list[Snippet]:
    """A Markdown page's ```python blocks and inline `actwatch.*(...)` calls, in page order,
    all run in `folder`."""
    text = path.read_text("utf-8")
    name = path.relative_to(ROOT).as_posix()
    found = [
        (line, Snippet(f"{name}:{line}", code, None, folder))
        for line, language, code in fences(text)
        if language == "python"
    ]
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # lines kept
    for m in _INLINE_CALL.finditer(prose):
        line = _line(prose, m.start())
        found.append((line, Snippet(f"{name}:{line}", m.group(1), None, folder)))
    return [snippet for _, snippet in sorted(found, key=lambda item: item[0])]


def unmarked_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, language) of code blocks calling actwatch that are not fenced as ```python."""
    return [
        (line, language)
        for line, language, code in fences(path.read_text("utf-8"))
        if language != "python" and _CALLS_ACTWATCH.search(code)
    ]


def module_name(path: Path) -> str:
    """`actwatch.fit.callback` for src/actwatch/fit/callback.py (`actwatch` for __init__)."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def docstring_snippets(paths: list[Path], folder: str = "docstrings") -> list[Snippet]:
    """The ```python blocks in the docstrings of these modules of actwatch."""
    return [
        Snippet(f"{path.relative_to(ROOT).as_posix()}:{line}", code, module_name(path), folder)
        for path in paths
        for line, language, code in fences(path.read_text("utf-8"))
        if language == "python"
    ]


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


def assert_all_ran(results: list[dict[str, object]]) -> None:
    """No snippet raised, and no check failed inside a monitor while they ran."""
    failures = {r["where"]: r["error"] for r in results if r["error"]}
    assert failures == {}, "\n".join(f"{w}:\n{e}" for w, e in failures.items())
    logged = {r["where"]: r["logged"] for r in results if r["logged"]}
    assert logged == {}, f"a check failed inside the monitor: {logged}"
