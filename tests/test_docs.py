"""The docs site builds without a warning, every example of its pages runs as written, and
Troubleshooting quotes every error and warning actwatch can show.

- `test_docs_build_strictly`: `sphinx-build -W --keep-going` (as `make docs`) into a temporary
  folder: a broken link, an unknown directive or a docstring autodoc cannot parse fails it.
- `test_docs_examples_run_as_written`: every ```python block and every inline call written as
  `actwatch.<name>(...)` of `docs/*.md`, and the ```python blocks of the docstrings the
  API pages render (beyond the top-level modules' that tests/test_readme.py runs), run through
  the runner shared with the README's test (`tests/snippets.py`, which describes the
  prelude). Each page's snippets run in page order in a working directory of their own.
  The examples are the same on every backend: they run once per `make test`, in the JAX run
  (those that tokenize with KerasHub, which runs on TensorFlow, in the TensorFlow run).
- `test_troubleshooting_quotes_every_message`: the text of every `raise SomethingError(...)`
  and every `actwatch: ...` log message in `src/actwatch` appears in docs/troubleshooting.md
  (the first `QUOTED` characters of its longest literal piece, whitespace aside), so a new
  message cannot go undocumented.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import keras
import pytest

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

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
TROUBLESHOOTING = DOCS / "troubleshooting.md"

#: Snippets that cannot run as written, by where they are, with the reason. Keep it short:
#: the same page shows a runnable equivalent.
ILLUSTRATIVE: dict[str, str] = {
    "docs/storage.md:8": "trains into a real S3 bucket (the memory:// example below runs)",
    "docs/distributed.md:30": "two processes: test_distributed.py runs it as two processes",
    "docs/distributed.md:66": "needs 4 host devices set before JAX starts: test_distributed.py",
}

#: Messages users cannot meet (internal invariants, callers inside actwatch), by file:first
#: words, with the reason they are not in Troubleshooting.
INTERNAL = {
    "check/extract.py:make_gradient_runner": "an internal invariant of the check pipeline",
    "events/log_dir.py:unreachable": "an assertion",
    "events/records.py:": "RecordError, caught by the readers (the warning is documented)",
    "events/sink.py:Invalid value for argument `priority`": "the sink's caller is actwatch",
    "events/sink.py:this Sink is closed": "the sink's caller is actwatch",
    "render/png.py:encode_png": "the renderer's caller is actwatch",
    "render/tiles.py:": "the renderer's caller is actwatch",
    "__init__.py:module ": "Python's own AttributeError wording",
    "fit/callback.py:": "Python's own AttributeError wording",
    "__main__.py:": "the command's exit status",
}


#: How much of a message's longest literal piece Troubleshooting must quote, in characters.
QUOTED = 40


def _pieces(node: ast.expr) -> list[str]:
    """The literal pieces of a message expression (formatted values split them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.split(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfg]", node.value)
    if isinstance(node, ast.JoinedStr):
        out = [""]
        for value in node.values:
            if isinstance(value, ast.Constant):
                out[-1] += str(value.value)
            else:
                out.append("")
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _pieces(node.left), _pieces(node.right)
        return [*left[:-1], left[-1] + right[0], *right[1:]]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _pieces(node.left)
    return [""]


def messages() -> dict[str, str]:
    """`{file:line: longest literal piece}` of every message a user can meet."""
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            message = None
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                call = node.exc
                if isinstance(call.func, ast.Name) and call.func.id.endswith("Error"):
                    message = call.args[0] if call.args else None
            elif isinstance(node, ast.Call) and node.args:
                first = node.args[0]
                text = "".join(_pieces(first))
                callee = ast.unparse(node.func)
                if text.startswith("actwatch: ") and not callee.endswith(("info", "debug")):
                    message = first
                if callee in ("WarnOnce", "logger.info", "logger.debug"):
                    message = None
            if message is None:
                continue
            pieces = _pieces(message)
            full = "".join(pieces)
            if any(f"{name}:{full}".startswith(key) for key in INTERNAL):
                continue
            longest = max((" ".join(p.split()) for p in pieces), key=len)
            longest = longest.removeprefix("actwatch: ").lstrip(" .,;:)]`'")
            if len(longest) >= 12:
                found[f"{name}:{node.lineno}"] = longest[:QUOTED]
    return found


def page_snippets() -> list[Snippet]:
    """Every page's snippets, each page in its own folder."""
    return [s for page in PAGES for s in markdown_snippets(page, page.stem)]


def autodoc_files() -> list[Path]:
    """The source files of what the docs pages document with autodoc."""
    targets = set()
    for page in PAGES:
        targets |= set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", page.read_text("utf-8"), re.M))
    files = set()
    for target in sorted(targets):
        module, _, name = target.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, ValueError):
            obj = importlib.import_module(target)
        files.add(Path(inspect.getsourcefile(obj) or ""))
    return sorted(files)


@pytest.mark.read_path
def test_docs_build_strictly(tmp_path: Path) -> None:
    """`sphinx-build -W --keep-going` builds every page and the API from the docstrings (about
    10 s on 2 cores; measured, not asserted: a shared CI is noisy)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    done = subprocess.run(
        [*command, str(DOCS), str(tmp_path / "html"), "-d", str(tmp_path / "doctrees")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    built = {p.stem for p in (tmp_path / "html").glob("*.html")}
    assert {p.stem for p in PAGES} <= built
    api = (tmp_path / "html" / "api.html").read_text("utf-8")
    for name in ("get_activations", "write_report", "LayerStats", "Alert"):
        assert name in api
    arguments = (tmp_path / "html" / "arguments.html").read_text("utf-8")
    assert "stop_on_dead_fraction" in arguments and "update_ratio_bounds" in arguments


@pytest.mark.read_path
def test_every_docs_block_calling_actwatch_is_marked_python() -> None:
    """A code block of a page that calls actwatch is fenced as ```python, so it runs; every
    page is in the site's table of contents."""
    assert {page.name: unmarked_blocks(page) for page in PAGES} == {p.name: [] for p in PAGES}
    index = (DOCS / "index.md").read_text("utf-8")
    assert {p.stem for p in PAGES} - {"index"} <= set(re.findall(r"^([\w-]+)$", index, re.M))


@pytest.mark.read_path
def test_illustrative_snippets_still_exist() -> None:
    """Every snippet excused from running is still in the docs."""
    assert set(ILLUSTRATIVE) <= {s.where for s in page_snippets()}


@pytest.mark.read_path
def test_troubleshooting_quotes_every_message() -> None:
    """Every error and warning text of src/actwatch is quoted in docs/troubleshooting.md."""
    found = messages()
    assert len(found) > 60, "the extractor finds the messages"
    text = " ".join(TROUBLESHOOTING.read_text("utf-8").split())
    missing = {where: piece for where, piece in found.items() if piece not in text}
    assert missing == {}, "quote these in docs/troubleshooting.md:\n" + "\n".join(
        f"{where}: {piece}" for where, piece in missing.items()
    )


def needs_tensorflow(snippet: Snippet) -> bool:
    """KerasHub's tokenizers run on TensorFlow, which the JAX run blocks."""
    return "import keras_hub" in snippet.code


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="examples with KerasHub's tokenizers run in the TensorFlow run",
)
def test_docs_examples_with_tokenizers_run_as_written(tmp_path: Path) -> None:
    """The examples that tokenize with KerasHub (TensorFlow underneath) run as written."""
    snippets = [s for s in page_snippets() if needs_tensorflow(s) and s.where not in ILLUSTRATIVE]
    if not snippets:
        pytest.skip("no docs example uses KerasHub's tokenizers")
    assert_all_ran(run_snippets(snippets, tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the docs examples are the same on every backend: they run in the PyTorch run "
    "(its eager tiny fits are the cheapest)",
)
def test_docs_examples_run_as_written(tmp_path: Path) -> None:
    """Every docs page's example, and every example of the docstrings the API pages render,
    runs as written in a fresh process; a misspelled call fails."""
    top_level = {p for p in SRC.glob("*.py")}  # run by tests/test_readme.py
    deeper = [path for path in autodoc_files() if path not in top_level]
    assert SRC / "fit" / "callback.py" in deeper
    snippets = [*page_snippets(), *docstring_snippets(deeper, "api")]
    snippets = [s for s in snippets if s.where not in ILLUSTRATIVE and not needs_tensorflow(s)]
    assert len(snippets) > 15
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    results = run_snippets([*snippets, Snippet("canary", CANARY)], tmp_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"docs examples: {len(snippets)} snippets, {cpu:.0f} CPU-seconds")
    *real, canary = results
    slowest = sorted(real, key=lambda r: -float(r["seconds"]))[:5]  # type: ignore[arg-type]
    print("slowest docs examples:", [(r["where"], r["seconds"]) for r in slowest])
    assert_all_ran(real)
    assert "write_reprot" in str(canary["error"]), "the runner must report failures"
    assert (tmp_path / "offline" / "report.html").stat().st_size > 0
    assert list((tmp_path / "getting-started" / "logs" / "run1").glob("events.out.tfevents.*"))
