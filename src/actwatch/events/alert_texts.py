"""The alerts' text summary: written as Markdown and parsed back (part of the tag scheme,
`tags`, which re-exports every name here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ALERTS", "LoggedAlert", "MarkdownAlert", "alert_texts", "parse_alerts"]

ALERTS = "alerts"


class MarkdownAlert(Protocol):
    """What the format needs of an alert (`actwatch.Alert` is one): its kind and its text."""

    @property
    def kind(self) -> str: ...

    def markdown(self) -> str: ...


def alert_texts(alerts: Sequence[MarkdownAlert]) -> dict[str, tuple[str, str]]:
    """One check's alerts as the Markdown text summary `{ALERTS: (body, description)}`.

    Each alert is one Markdown item `- **{kind}**: {message}`, items apart by a blank line,
    layers quoted in backticks in the message (`parse_alerts` reads them back). Empty when
    there are no alerts: a check without alerts writes no text.
    """
    if not alerts:
        return {}
    body = "\n\n".join(f"- **{a.kind}**: {a.markdown()}" for a in alerts)
    return {ALERTS: (body, "actwatch alerts: what was seen at this check and what to do.")}


@dataclass(frozen=True)
class LoggedAlert:
    """One alert read back from an `ALERTS` text: the check's step, the layer, the kind, the
    message in plain form (the layer in single quotes, as logged), and the item's Markdown as
    written (without its bullet)."""

    step: int
    layer: str
    kind: str
    message: str
    markdown: str


_ALERT_ITEM = re.compile(r"^- \*\*(?P<kind>[^*\n]+)\*\*: (?P<message>.*)$", re.DOTALL)
_QUOTED = re.compile(r"`([^`]+)`")


def parse_alerts(step: int, text: str, layers: Sequence[str]) -> list[LoggedAlert]:
    """The alerts of one check's `ALERTS` text (see `alert_texts`), in order.

    The layer is the longest of `layers` quoted in the message (else the first quoted name);
    an item of another form is kept whole as the message, with no layer or kind.
    """
    out = []
    for item in text.split("\n\n"):
        line = item.strip()
        markdown = line[2:] if line.startswith("- ") else line
        match = _ALERT_ITEM.match(line)
        if match is None:
            if line:
                out.append(LoggedAlert(step, "", "", line, markdown))
            continue
        message = match.group("message")
        quoted = [layer for layer in layers if f"`{layer}`" in message]
        if quoted:
            layer = max(quoted, key=len)
        else:
            first = _QUOTED.search(message)
            layer = first.group(1) if first else ""
        if layer:
            message = message.replace(f"`{layer}`", f"'{layer}'")
        out.append(LoggedAlert(step, layer, match.group("kind"), message, markdown))
    return out
