"""Sphinx configuration of actwatch's docs site: `make docs` builds it into build/docs.

Sphinx with the furo theme and MyST (Markdown pages, so the same files read well on GitHub);
the API pages come from the docstrings by autodoc, the one source of the arguments. Built with
warnings as errors (`sphinx-build -W --keep-going`), in `make docs` and in tests/test_docs.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
# The docs do not depend on the backend: JAX imports fastest and never imports TensorFlow;
# else whichever is installed.
if "KERAS_BACKEND" not in os.environ:
    found = [b for b in ("jax", "torch", "tensorflow") if importlib.util.find_spec(b)]
    os.environ["KERAS_BACKEND"] = found[0] if found else "jax"

import actwatch  # noqa: E402

project = "actwatch"
author = "actwatch developers"
copyright = "actwatch developers"
release = actwatch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "build", "Thumbs.db", ".DS_Store"]
html_theme = "furo"
html_title = f"actwatch {release}"
html_static_path: list[str] = []

# MyST: ::: fences for directives (```{...} fences would confuse the examples' extractor),
# anchors for headings (links such as alerts.md#dead-filters work on GitHub and here).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Docstrings are Google style with Markdown-ish code: `name` is code, ```python blocks are
# examples (run by tests/test_readme.py and tests/test_docs.py).
default_role = "code"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}

_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_CODE = re.compile(r"(?<![`\\])`([^`\n]+)`(?!`)")


def _literal(match: re.Match[str]) -> str:
    """`code` as a reST literal; a letter right after it (`Alert`s) is joined by an escape."""
    text = match.string
    before = "\\ " if match.start() > 0 and text[match.start() - 1].isalnum() else ""
    after = "\\ " if match.end() < len(text) and text[match.end()].isalnum() else ""
    return f"{before}``{match.group(1)}``{after}"


def _fences_to_rst(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Turn the docstrings' ```python blocks into reST code blocks, in place."""
    out: list[str] = []
    inside = False
    indent = ""
    for line in lines:
        match = _FENCE.match(line)
        if match and not inside:
            indent = match.group(1)
            out += [f"{indent}.. code-block:: {match.group(2) or 'text'}", ""]
            inside = True
        elif match and inside:
            out.append("")
            inside = False
        elif inside:
            out.append(f"{indent}   {line[len(indent) :]}" if line.strip() else "")
        else:
            out.append(_escape_bars(_CODE.sub(_literal, line)))
    lines[:] = out


def _escape_bars(line: str) -> str:
    """`|a|` outside literals is text, not a reST substitution: escape its bars."""
    parts = re.split(r"(``.*?``)", line)
    return "".join(p if p.startswith("``") else p.replace("|", "\\|") for p in parts)


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _fences_to_rst)
