"""Self-contained HTML pages with inline PNGs, shared by `actwatch report` and `actwatch inspect`.

Pages carry every image inline as a `data:` URI and a Content-Security-Policy that allows no
script and no network access at all, so a page can be mailed or archived as one file, and a
name from a log that slipped past `html.escape` could still not run. Every text that comes
from a log or a model goes through `esc` (texts drawn by matplotlib: `figures.plain`).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["esc", "img", "page", "slug", "table", "write_png"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 1600px;
       padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { margin: 1.2rem 0 .4rem; font-family: ui-monospace, monospace; font-size: 1rem; }
nav a { margin-right: 1rem; }
.note { color: #555; max-width: 75em; }
.runs { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(0, 1fr); gap: 1rem; }
figure { margin: 0; }
figcaption { font-size: .85rem; color: #444; margin-top: .2rem; }
figcaption .run, td.name, .alerts h3 { font-family: ui-monospace, monospace; }
img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: .6rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; }
td.name { text-align: left; }
.missing { color: #888; font-style: italic; }
.alerts ol { padding-left: 1.4rem; }
.alerts li { margin-bottom: .4rem; }
code { background: #f3f3f3; padding: 0 .2rem; }
"""


def esc(text: object) -> str:
    """`text` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe version of `text` (never empty)."""
    return _UNSAFE.sub("-", text).strip("-.")[:limit] or "x"


def write_png(path: Path, png: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def img(png: bytes, alt: str) -> str:
    """An `<img>` with `png` inline as a data URI; `alt` is escaped."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, names: int = 1) -> str:
    """An HTML table; the first `names` columns are left-aligned text, all cells escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="name">{esc(c)}</td>' if i < names else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete HTML document: `title` is escaped, `body` is trusted markup."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
