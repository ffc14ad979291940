"""The `actwatch` tab of TensorBoard: a dynamic plugin serving a small data API and one page.

TensorBoard finds the plugin through the entry point group `tensorboard_plugins` (see
pyproject.toml) whenever actwatch is installed. The page (`static/index.js`, a plain ES
module) runs in TensorBoard's plugin iframe and reads only the routes below, all under
`/data/plugin/actwatch/`:

- `runs`: `{run: {"layers": [...], "steps": [...], "probes": n, ...}}`, the runs with actwatch
  data; each also has `"metrics"` (every per-layer scalar metric found), `"drawn"` (the layers
  with pictures: filter grids, heatmaps, token norms, attention), `"tail_bytes"` (bytes
  after the last whole record of its files: a record being written), `"damaged_bytes"`
  (bytes of damaged records skipped: lost) and `"version"` (changes when an image already
  served may have changed);
- `scalars?run=R&metric=M`: `{"layers": [...], "steps": [...], "values": [[v per step] per
  layer]}` over the steps the metric was written at, `v` a float or null (no value at that
  step, or not finite);
- `image?run=R&tag=T&step=S`: the PNG of image tag T (`filters/...`, `heatmap/...`,
  `tokens/...`, `attention/...`) at step S (kept an hour by browsers: the page adds
  `&v={version}`, which the route ignores);
- `images?run=R`: `{tag: [steps]}` of every image tag of the run;
- `alerts?run=R`: `[{"step", "layer", "kind", "message"}]` in step order;
- `sweep`: every run's final network figures, learning rate, optimizer, alert count and
  sparkline values, for the run table (`runs_table`).

A missing or malformed parameter is answered 400, an unknown run, metric, tag or step 404,
an unexpected failure 500 (logged), always as JSON `{"error": "..."}`. Runs are looked up by
name among the directories found under the log directory, so no parameter names a path. The
data come from the events files under `context.logdir`, indexed by `events_index.LogdirIndex`,
not from TensorBoard's data provider: it keeps 10 images per tag by default, and under the
default fast loader `context.multiplexer` is None. No TensorFlow import.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, cast

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from actwatch._logging import logger
from actwatch.dashboard.events_index import LogdirIndex, RunIndex
from actwatch.dashboard.runs_table import RunsTable

__all__ = ["PLUGIN_NAME", "ActwatchPlugin"]

PLUGIN_NAME = "actwatch"
_STATIC = {"/index.js": "text/javascript; charset=utf-8", "/style.css": "text/css; charset=utf-8"}
_STATIC["/runs.js"] = _STATIC["/index.js"]  # the run table (runs_table.py)
#: is_active() looks at most at this many directory entries (it must answer fast), at most
#: once in this many seconds while no actwatch data is found.
_ACTIVE_SCAN_LIMIT = 20_000
_ACTIVE_SCAN_EVERY = 5.0
_STEP = re.compile(r"-?[0-9]{1,19}")


class _BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ActwatchPlugin(base_plugin.TBPlugin):  # type: ignore[misc]
    """The `actwatch` tab: every check, every layer, scrubbed by step."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._logdir: str = context.logdir or ""
        self._index = LogdirIndex(self._logdir) if self._logdir else None
        self._active = False
        self._active_scanned = -math.inf
        self._table = RunsTable()
        if self._index is not None:
            # Index while TensorBoard starts, so the tab's first opening finds it ready.
            threading.Thread(target=self._first_index, name="actwatch-index", daemon=True).start()

    def _first_index(self) -> None:
        assert self._index is not None
        try:
            self._index.refresh(force=True)
            if self._index.runs():
                self._active = True
        except Exception:  # the page's requests index again, and report what fails
            logger.exception("actwatch: indexing %s failed", self._logdir)

    # TensorBoard's plugin interface ----------------------------------------------------------

    def get_plugin_apps(self) -> dict[str, Any]:
        apps = {path: _wsgi(self._static) for path in _STATIC}
        for path, handler in {
            "/runs": self._runs,
            "/scalars": self._scalars,
            "/image": self._image,
            "/images": self._image_steps,
            "/alerts": self._alerts,
            "/sweep": self._sweep,
        }.items():
            apps[path] = _wsgi(functools.partial(self._answer, handler))
        return apps

    def is_active(self) -> bool:
        """True once an actwatch events file (named `*.actwatch`) is under the log directory.

        Looks at file names only (at most `_ACTIVE_SCAN_LIMIT` entries, at most once in
        `_ACTIVE_SCAN_EVERY` seconds), never reads a file nor waits for the indexer; the
        indexer also marks the plugin active when it finds actwatch data.
        """
        if self._active or self._index is None:
            return self._active
        now = time.monotonic()
        if now - self._active_scanned < _ACTIVE_SCAN_EVERY:
            return False
        self._active_scanned = now
        seen = 0
        for _, _, files in os.walk(self._logdir):
            seen += len(files) + 1
            if any(f.endswith(".actwatch") and f.startswith("events.out") for f in files):
                self._active = True
                break
            if seen > _ACTIVE_SCAN_LIMIT:
                break
        return self._active

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="actwatch")

    # Routes -------------------------------------------------------------------------------

    def _static(self, request: wrappers.Request) -> wrappers.Response:
        path = request.path[request.path.rfind("/") :]
        content = resources.files(__package__).joinpath("static", path[1:]).read_bytes()
        return _respond(request, content, _STATIC[path])

    def _answer(
        self, handler: Callable[[Mapping[str, str]], tuple[Any, str]], request: wrappers.Request
    ) -> wrappers.Response:
        """`handler`'s answer to `request`'s query, or a JSON error (400 or 404)."""
        try:
            if self._index is None:
                raise _BadRequest(404, "TensorBoard was started without --logdir")
            self._index.refresh()
            with self._index.lock:
                body, mime = handler(request.args)
        except _BadRequest as exc:
            return _respond(request, {"error": str(exc)}, "application/json", code=exc.code)
        except Exception as exc:  # a JSON error, not TensorBoard's page with a traceback
            logger.exception("actwatch: %s failed", request.full_path)
            error = {"error": f"the actwatch plugin failed: {type(exc).__name__}"}
            return _respond(request, error, "application/json", code=500)
        # An image of a step never changes: let the browser keep it a while.
        return _respond(request, body, mime, expires=3600 if mime == "image/png" else 0)

    def _run(self, args: Mapping[str, str]) -> RunIndex:
        name = _required(args, "run")
        assert self._index is not None
        run = self._index.run(name)
        if run is None:
            raise _BadRequest(404, f"no run {name!r} with actwatch data under the log directory")
        return run

    def _runs(self, args: Mapping[str, str]) -> tuple[Any, str]:
        assert self._index is not None
        return {
            name: {
                "layers": run.layers,
                "steps": run.steps,
                "probes": run.probes,
                "metrics": run.metrics,
                "drawn": run.drawn,
                "tail_bytes": run.tail_bytes,
                "damaged_bytes": run.damaged_bytes,
                "version": run.version,
            }
            for name, run in self._index.runs().items()
        }, "application/json"

    def _sweep(self, args: Mapping[str, str]) -> tuple[Any, str]:
        assert self._index is not None
        runs = {name: run.path for name, run in self._index.runs().items()}
        return self._table.rows(runs), "application/json"

    def _scalars(self, args: Mapping[str, str]) -> tuple[Any, str]:
        run = self._run(args)
        metric = _required(args, "metric")
        series = run.series(metric)
        if not series:
            raise _BadRequest(
                404, f"run {run.name!r} has no per-layer metric {metric!r}; it has {run.metrics}"
            )
        # The metric's own steps: a metric may be written at other steps than the activation
        # checks (after an update, say).
        steps = sorted({step for values in series.values() for step in values.steps})
        layers = [layer for layer in run.layers if layer in series]
        values = [[_finite(series[layer].get(step)) for step in steps] for layer in layers]
        return {"layers": layers, "steps": steps, "values": values}, "application/json"

    def _image(self, args: Mapping[str, str]) -> tuple[Any, str]:
        run = self._run(args)
        tag = _required(args, "tag")
        step = _step(args)
        if tag not in run.images:
            raise _BadRequest(404, f"run {run.name!r} has no image tag {tag!r}")
        if run.images[tag].get(step) is None:
            raise _BadRequest(404, f"run {run.name!r} has no image {tag!r} at step {step}")
        png = run.read_image(tag, step)
        if png is None:
            raise _BadRequest(404, f"the image {tag!r} at step {step} could not be read again")
        return png, "image/png"

    def _image_steps(self, args: Mapping[str, str]) -> tuple[Any, str]:
        run = self._run(args)
        return {tag: list(steps.steps) for tag, steps in run.images.items()}, "application/json"

    def _alerts(self, args: Mapping[str, str]) -> tuple[Any, str]:
        run = self._run(args)
        return [
            {"step": a.step, "layer": a.layer, "kind": a.kind, "message": a.message}
            for a in run.alert_list()
        ], "application/json"


def _wsgi(handler: Callable[[wrappers.Request], wrappers.Response]) -> Any:
    """A WSGI app answering each request with `handler`."""
    return wrappers.Request.application(handler)  # type: ignore[arg-type]


def _respond(request: wrappers.Request, body: Any, mime: str, **kwargs: Any) -> wrappers.Response:
    """TensorBoard's response: Content-Type, `X-Content-Type-Options: nosniff`, caching."""
    return cast(wrappers.Response, http_util.Respond(request, body, mime, **kwargs))


def _required(args: Mapping[str, str], name: str) -> str:
    value = args.get(name)
    if value is None or value == "":
        raise _BadRequest(400, f"missing query parameter {name!r}")
    return value


def _step(args: Mapping[str, str]) -> int:
    text = _required(args, "step")
    if not _STEP.fullmatch(text):  # int() would take " 1", "1_0" and other digits
        raise _BadRequest(400, f"step must be an integer; got {text!r}")
    return int(text)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
