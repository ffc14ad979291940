"""The report's section of transformers' pictures: token norms and attention of probe 0.

The PNGs written at the checks are put in the page as they are (no redrawing: the attention
matrices' token labels stay sharp), per layer at the first and last check that has them, runs
side by side, and written next to the page too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from actwatch.events import tags
from actwatch.events.runs import RunLog
from actwatch.render import html as _html

__all__ = ["NOTE", "picture_rows"]

#: What the section shows, above its rows.
NOTE = """<p class="note">Vision transformers: each patch token's L2 norm over the probe image
(high-norm tokens, Darcet et al. 2024, are hot spots), and per head the class token's attention
over the patches (the mean over queries without a class token), each head scaled to its own
range; class and register tokens set aside. Text models: each head's attention matrix, queries
as rows and keys as columns, labelled by token, brightness sqrt(weight). Probe 0, at the first
and the last check with pictures.</p>"""

_WHAT = {tags.TOKENS: "token norms", tags.ATTENTION: "attention"}


def picture_rows(
    runs: Sequence[RunLog],
    layers: Sequence[str],
    prefixes: Mapping[str, str],
    figures_dir: Path,
    figure: Callable[[bytes, str, str], str],
    caption: Callable[[RunLog], str],
) -> list[str]:
    """One `<h3>` and a row of runs per layer and kind that has pictures in some run.

    `figure(png, alt, caption)` makes a figure's markup, `caption(log)` a run's caption.
    """
    rows = []
    for number, layer in enumerate(layers):
        for kind in (tags.TOKENS, tags.ATTENTION):
            if not any(log.pictures.get(kind, {}).get(layer) for log in runs):
                continue
            cells = []
            for log in runs:
                found = log.pictures.get(kind, {}).get(layer, {})
                if not found:
                    cells.append(f'<p class="missing">{caption(log)}: no {_WHAT[kind]}</p>')
                    continue
                steps = sorted(found)
                picks = [steps[0], steps[-1]] if len(steps) > 1 else steps
                cell = ""
                for step in picks:
                    name = (
                        f"{prefixes[log.name]}-{kind}-{number:02d}-{_html.slug(layer)}"
                        f"-step{step}.png"
                    )
                    _html.write_png(figures_dir / name, found[step])
                    alt = f"{_WHAT[kind]} of {layer} in run {log.name} at step {step}"
                    cell += figure(found[step], alt, f"{caption(log)}, step {step}")
                cells.append(cell)
            title = f"{_html.esc(layer)}: {_WHAT[kind]}"
            rows.append(f'<h3>{title}</h3><div class="runs">' + "".join(
                f"<div>{c}</div>" for c in cells) + "</div>")  # fmt: skip
    return rows
