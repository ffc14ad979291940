"""The actwatch tab of TensorBoard, measured against issue 11's targets.

    .venv/bin/python benchmarks/dashboard.py [--source logs] [--checks 100] [--gigabytes 1]
        [--screenshot docs/dashboard.png]

Logs: the demo's two runs (`make demo` writes them to ./logs: lr_0.5, lr_0.001) stretched to
`--checks` checks each by writing their checks again, in turn, at later steps (real demo
grids, heatmaps, scalars and alerts, 10 layers, 4 probes; about 1 MB a check), and one run of
about `--gigabytes` GB the same way. When --source holds no demo runs, the demo is trained first
(`actwatch demo --lr 0.5 --epochs 4` and `--lr 0.001 --epochs 4`, a few minutes).

Figures, with a PASS/FAIL line per target:
- first paint: from navigating headless Chromium to `http://127.0.0.1:PORT/#actwatch` until the
  tab has drawn both runs with every grid of the step loaded (TensorBoard's own page load
  included), cold browser cache: the very first opening (the plugin indexes the runs then),
  then three more; also for the plugin's page alone;
- one slider step: from moving the slider to a step not shown before until every grid and
  heatmap of both runs (2 x 10 layers x 2 images) has loaded;
- indexing the ~1 GB run (`RunIndex.refresh` in this process), cold (the file evicted from the
  page cache with posix_fadvise) and warm, and re-indexing after 10 checks were appended;
- TensorBoard's RSS (its Python process; the Rust data server is another process) on the 1 GB
  run: without the plugin (the plugins of installed packages left out), against with it after
  the tab's API served the run: runs, every metric, and every grid of 100 steps.
TensorFlow is blocked in the TensorBoard process (as in the JAX and PyTorch test runs).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ACTWATCH_BLOCK_TENSORFLOW", "1")

from tensorboard.compat.proto import event_pb2  # noqa: E402

from actwatch.dashboard.events_index import RunIndex  # noqa: E402
from actwatch.events.records import EVENT_FILE_PREFIX, RecordWriter, read_records  # noqa: E402
from tests.chromium import DevTools, chromium_session  # noqa: E402
from tests.tensorboard_server import Server, tensorboard_server  # noqa: E402

TARGETS = {"first paint": 2.0, "slider step": 0.300, "index 1 GB": 10.0, "RSS growth": 50.0}
DEMO_RUNS = ("lr_0.5", "lr_0.001")
CHECK_TAG = "dead_fraction/"  # a check writes it for every watched layer


def ensure_demo(source: Path) -> list[Path]:
    runs = [source / name for name in DEMO_RUNS]
    if all(any(r.glob(f"{EVENT_FILE_PREFIX}*")) for r in runs if r.is_dir()) and all(
        r.is_dir() for r in runs
    ):
        return runs
    print(f"training the demo into {source} (no demo runs there)", flush=True)
    for lr in ("0.5", "0.001"):
        subprocess.run(
            [str(ROOT / ".venv/bin/actwatch"), "demo", "--lr", lr, "--epochs", "4",
             "--log-dir", str(source), "--report", os.devnull],
            check=True,
        )  # fmt: skip
    return runs


def stretch(source_run: Path, target_run: Path, checks: int) -> int:
    """Write `checks` checks into a new events file in `target_run`, the source run's checks
    in turn at steps 0, s, 2s, ... (s the source's step between checks). Returns bytes."""
    by_step, steps, stride = source_checks(source_run)
    target_run.mkdir(parents=True, exist_ok=True)
    writer = RecordWriter(target_run / f"{EVENT_FILE_PREFIX}0.bench.actwatch")
    writer.write(
        event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
    )
    append_checks(writer, by_step, steps, stride, 0, checks)
    size = writer.bytes_written
    writer.close()
    return size


def append_checks(
    writer: RecordWriter,
    by_step: dict[int, list[event_pb2.Event]],
    steps: list[int],
    stride: int,
    first: int,
    count: int,
) -> None:
    for check in range(first, first + count):
        source = steps[check % len(steps)]
        for e in by_step[source]:
            copy = event_pb2.Event()
            copy.CopyFrom(e)
            copy.step = check * stride + (e.step - source)  # update ratios: the step after
            writer.write(copy.SerializeToString())


def source_checks(source_run: Path) -> tuple[dict[int, list[event_pb2.Event]], list[int], int]:
    """`({check step: its events}, check steps, step between checks)` of the source run. A
    check is a step with a `dead_fraction/...` scalar; events of the steps after it (the
    update ratios, written at the step after a check) go with it."""
    events = []
    for file in sorted(source_run.glob(f"{EVENT_FILE_PREFIX}*")):
        events += [event_pb2.Event.FromString(r.payload) for r in read_records(file)]
    summaries = [e for e in events if e.HasField("summary") and len(e.summary.value) > 1]
    steps = sorted(
        {e.step for e in summaries if any(v.tag.startswith(CHECK_TAG) for v in e.summary.value)}
    ) or sorted({e.step for e in summaries})
    by_step: dict[int, list[event_pb2.Event]] = {s: [] for s in steps}
    for e in summaries:
        i = bisect.bisect_right(steps, e.step) - 1
        if i >= 0:
            by_step[steps[i]].append(e)
    return by_step, steps, (steps[1] - steps[0] if len(steps) > 1 else 1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def children_rss_mb(pid: int) -> float:
    total = 0.0
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            total += rss_mb(int(cpid)) + children_rss_mb(int(cpid))
    return total


_IDLE = """(() => { const d = %s; if (!d || !d.body) return false;
  return d.body.dataset.state === 'idle' && d.querySelectorAll('.aw-run').length === 2 &&
    d.querySelectorAll('img.aw-img').length > 0 && [...d.images].every(i => i.complete); })()"""
_FRAME = "(document.querySelector('iframe') || {}).contentDocument"


def wait_idle(chromium: DevTools, doc: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not chromium.evaluate(_IDLE % doc):
        if time.monotonic() > deadline:
            raise TimeoutError("the actwatch tab did not finish loading")
        time.sleep(0.01)


def first_paint(chromium: DevTools, url: str, doc: str) -> float:
    chromium.open("about:blank")  # a new document each time, not a same-page hash change
    chromium.call("Network.clearBrowserCache")
    start = time.perf_counter()
    chromium.call("Page.navigate", url=url)
    wait_idle(chromium, doc)
    return time.perf_counter() - start


_STEP = """new Promise((resolve) => {
  const d = %s; const s = d.querySelector('.aw-slider'); const t0 = performance.now();
  s.value = '%d'; s.dispatchEvent(new Event('input'));
  const done = () => d.body.dataset.state === 'idle' && [...d.images].every(i => i.complete);
  const poll = () =>
    done() ? resolve([performance.now() - t0, d.images.length]) : setTimeout(poll, 2);
  poll();
})"""


def slider_steps(chromium: DevTools, doc: str, indices: list[int]) -> list[tuple[float, int]]:
    out = []
    for index in indices:
        result = chromium.call(
            "Runtime.evaluate", expression=_STEP % (doc, index), awaitPromise=True,
            returnByValue=True,
        )  # fmt: skip
        ms, images = result["result"]["value"]
        out.append((ms / 1000, images))
    return out


def report(name: str, value: float, unit: str, note: str = "") -> None:
    target = TARGETS.get(name)
    verdict = ""
    if target is not None:
        verdict = ("PASS" if value <= target else "FAIL") + f" (target <= {target:g} {unit})"
    print(f"{name:>14}: {value:8.3f} {unit}  {verdict} {note}".rstrip(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT / "logs")
    parser.add_argument("--checks", type=int, default=100)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=None, help="where logs go (a temp dir)")
    parser.add_argument(
        "--screenshot", type=Path, default=None, help="a PNG of the tab over --source's runs"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="actwatch-dashboard-bench-"))
    sources = ensure_demo(args.source)
    if args.screenshot:
        shoot(args.source, args.screenshot)

    # Logs -------------------------------------------------------------------------------
    demo = work / "demo"
    for run in sources:
        if not (demo / run.name).exists():
            size = stretch(run, demo / run.name, args.checks)
            print(f"wrote {demo / run.name}: {args.checks} checks, {size / 1e6:.0f} MB")
    big = work / "big" / "run"
    by_step, steps, stride = source_checks(sources[0])
    per_check = sum(e.ByteSize() + 16 for s in steps for e in by_step[s]) / len(steps)
    big_checks = max(1, round(args.gigabytes * 1e9 / per_check))
    if not big.exists():
        t0 = time.perf_counter()
        size = stretch(sources[0], big, big_checks)
        print(f"wrote {big}: {big_checks} checks, {size / 1e9:.2f} GB in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    (big_file,) = big.glob(f"{EVENT_FILE_PREFIX}*")
    gb = big_file.stat().st_size / 1e9

    # Indexing ---------------------------------------------------------------------------
    for cache in ("cold", "warm"):
        if cache == "cold":  # drop this one file from the page cache (its pages are clean)
            with open(big_file, "rb") as handle:
                os.fsync(handle.fileno())
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        run = RunIndex(name="run", path=big)
        t0 = time.perf_counter()
        run.refresh()
        seconds = time.perf_counter() - t0
        report("index 1 GB", seconds / gb, "s",
               f"({cache}: {gb:.2f} GB, {len(run.steps)} checks in {seconds:.2f} s, "
               f"{gb * 1e3 / seconds:.0f} MB/s)")  # fmt: skip
    writer = RecordWriter(big_file)
    append_checks(writer, by_step, steps, stride, big_checks, 10)
    appended = writer.bytes_written
    writer.close()
    before = run.bytes_read
    t0 = time.perf_counter()
    run.refresh()
    seconds = time.perf_counter() - t0
    assert run.bytes_read - before == appended, "re-indexing read more than what was appended"
    report("re-index", seconds, "s", f"(10 checks appended, {appended / 1e6:.1f} MB read)")
    del run

    # The page ---------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        with (
            tensorboard_server(demo, scratch_dir / "tb.log", load_fast="true") as server,
            chromium_session(scratch_dir, window="1400,1000") as chromium,
        ):
            chromium.call("Network.enable")
            chromium.call("Network.setCacheDisabled", cacheDisabled=False)
            unindexed = first_paint(chromium, f"{server.url}/#actwatch", _FRAME)
            report("first paint", unindexed, "s",
                   "(the very first opening: the 2 runs are indexed meanwhile)")  # fmt: skip
            paints = [first_paint(chromium, f"{server.url}/#actwatch", _FRAME) for _ in range(3)]
            report("first paint", statistics.median(paints), "s",
                   f"(TensorBoard's page + the tab, median of "
                   f"{[round(p, 2) for p in paints]})")  # fmt: skip
            alone = [
                first_paint(chromium, f"{server.url}/data/plugin_entry.html?name=actwatch",
                            "document")
                for _ in range(3)
            ]  # fmt: skip
            report("tab alone", statistics.median(alone), "s",
                   f"(the plugin's page, median of {[round(p, 2) for p in alone]})")  # fmt: skip
            count = int(chromium.evaluate("document.querySelector('.aw-slider').max")) + 1
            indices = [i for i in range(1, count, max(1, count // 20))][:20]
            timings = slider_steps(chromium, "document", indices)
            values = [t for t, _ in timings]
            report("slider step", statistics.median(values), "s",
                   f"(median of {len(values)} steps never shown before; max {max(values):.3f} s; "
                   f"{timings[0][1]} images each)")  # fmt: skip

        # RSS on the 1 GB run ------------------------------------------------------------
        with tensorboard_server(
            work / "big", scratch_dir / "tb1.log", load_fast="true", dynamic_plugins=False
        ) as server:
            wait_loaded(server)
            baseline = rss_mb(server.process.pid)
            listing = server.json("/data/plugins_listing")
            assert "actwatch" not in listing, "the baseline has the plugin"
        with tensorboard_server(work / "big", scratch_dir / "tb2.log", load_fast="true") as server:
            wait_loaded(server)
            pid = server.process.pid
            rss_start = rss_mb(pid)
            runs = server.json("/data/plugin/actwatch/runs")
            info = runs["run"]
            for metric in info["metrics"]:
                server.json("/data/plugin/actwatch/scalars", run="run", metric=metric)
            server.json("/data/plugin/actwatch/alerts", run="run")
            images = 0
            for step in info["steps"][:: max(1, len(info["steps"]) // 100)][:100]:
                for layer in info["drawn"]:
                    for kind in ("filters", "heatmap"):
                        status, _, _ = server.get(
                            "/data/plugin/actwatch/image", run="run",
                            tag=f"{kind}/{layer}/probe_0", step=step,
                        )  # fmt: skip
                        images += status == 200
            rss_after = rss_mb(pid)
            report("RSS growth", rss_after - baseline, "MB",
                   f"(TensorBoard without the plugin {baseline:.0f} MB; with it {rss_start:.0f} MB "
                   f"once loaded (the 1 GB run indexed meanwhile), {rss_after:.0f} MB after runs, "
                   f"{len(info['metrics'])} metrics and {images} images; data server "
                   f"{children_rss_mb(pid):.0f} MB)")  # fmt: skip


def wait_loaded(server: Server, timeout: float = 600) -> None:
    """Until TensorBoard's own loader has read the run (its scalars route lists it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tags = server.json("/data/plugin/scalars/tags")
        if tags.get("run"):
            time.sleep(2)
            return
        time.sleep(1)
    raise TimeoutError("TensorBoard did not load the run")


def shoot(logdir: Path, path: Path) -> None:
    """The tab over the demo's own runs (`logdir`, not stretched) side by side at the step of
    the first alert, into `path` (PNG)."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        tensorboard_server(logdir, Path(scratch) / "tb.log", load_fast="true") as server,
        chromium_session(Path(scratch), window="1400,1000") as chromium,
    ):
        runs = server.json("/data/plugin/actwatch/runs")
        alerts = [
            a["step"] for r in runs for a in server.json("/data/plugin/actwatch/alerts", run=r)
        ]
        steps = sorted({s for r in runs.values() for s in r["steps"]})
        chromium.open(f"{server.url}/#actwatch")
        wait_idle(chromium, _FRAME)
        slider_steps(chromium, _FRAME, [steps.index(min(alerts, default=steps[-1]))])
        shot = chromium.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot of {logdir}: {path}")


if __name__ == "__main__":
    main()
