"""`actwatch report` of a sweep (issue 21): 50 generated runs, time and peak memory.

Writes `--runs` runs with the real background writer (`actwatch.events.sink.Sink`), each as a
monitored CNN of `--layers` watched layers writes them over `--checks` checks: every layer's
scalars (sparsity, dead, dormant, signals), the network's figures, the learning rate, update
ratios, histograms, filter grids and heatmaps of 4 drawn layers for 2 probes (96x96 PNGs),
alerts when filters die, and the HParams head (`actwatch.events.hparams`). The learning rate
runs over a log grid from 1e-4 to 1: the higher the rate, the more filters die. Then it runs
`actwatch report` in a fresh process (the way a user does) and prints its wall time, peak
resident memory (ru_maxrss) and the page's size; `--all-figures` times that too.

    .venv/bin/python benchmarks/sweep.py                     # 50 runs, the default report
    .venv/bin/python benchmarks/sweep.py --runs 50 --all-figures
    .venv/bin/python benchmarks/sweep.py --keep /tmp/sweep   # keep the logs (for the tab)
    .venv/bin/python benchmarks/sweep.py --tab shot.png      # also the tab's run table

`--tab` starts a real TensorBoard and headless Chromium (`tests/`), and times the run table's
first paint (navigation to every row drawn; the server's first read of the runs included) and
a sort by a clicked column, and saves a screenshot.

No Keras and no backend are imported.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from actwatch.events import hparams, tags
from actwatch.events.histograms import HISTOGRAM_EDGES, histogram_buckets
from actwatch.events.sink import Sink

LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "conv5")
DRAWN = ("conv1", "conv2", "conv4", "conv5")


def _image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A smooth image with some noise: compresses as real filter grids do."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.sin(x * rng.uniform(2, 9)) * np.cos(y * rng.uniform(2, 9))
    noisy = base + rng.normal(0, 0.15, (size, size))
    grey = np.clip((noisy + 1.2) * 100, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def write_run(path: Path, index: int, runs: int, checks: int, layers: int) -> None:
    """One run of the sweep; run `index` of `runs` has a learning rate on a log grid."""
    rng = np.random.default_rng(index)
    lr = float(10 ** (-4 + 4 * index / max(1, runs - 1)))
    optimizer = "Adam" if index % 2 == 0 else "SGD"
    watched = LAYERS[:layers]
    head = hparams.summary_values(
        {
            "optimizer": optimizer,
            "learning_rate": lr,
            "lr_schedule": "constant",
            "batch_size": 32,
            "epochs": checks,
            "model": "sweep_cnn",
            "parameters": 120_000,
            "seed": index,
        }
    )
    sink = Sink(str(path), layout=tags.layout(list(watched)), head=head, priority="normal")
    dying = min(1.0, lr * 2.0)  # the share of filters that die by the end
    for check in range(checks):
        step = check * 50
        progress = check / max(1, checks - 1)
        layer_values = {}
        for number, layer in enumerate(watched):
            dead = min(1.0, dying * progress * (0.5 + number / layers)) * (layer.startswith("conv"))
            filters = 16 * (number + 1)
            layer_values[layer] = {
                "zero_fraction": 0.5 + 0.4 * dead + rng.normal(0, 0.01),
                "dead_filters": round(dead * filters),
                "dead_fraction": round(dead * filters) / filters,
                "dormant_fraction": min(1.0, dead + 0.02),
                "hoyer": 0.3 + 0.2 * progress,
                "mean": 0.2 - 0.1 * dead,
                "nonfinite": 0.0,
                "rms": 0.5,
                "channel_mean_sq": 0.1,
                "channel_var": 0.2,
                "max_abs": 4.0,
                "outlier_ratio": 20.0,
            }
        network = {
            m: float(np.mean([v[m] for v in layer_values.values()]))
            for m in ("zero_fraction", "dead_fraction", "dormant_fraction", "hoyer", "mean")
        }
        scalars = tags.scalar_values(layer_values, network, lr)
        ratios = {layer: lr * 1e-2 * (1 - progress * dying) for layer in watched[::2]}
        scalars.update(tags.update_ratio_scalars(ratios))
        texts = {}
        if dying * progress > 0.25 and (check % 5 == 4 or check == checks - 1):
            texts = {tags.ALERTS: (f"- **dead**: layer `{watched[0]}` lost filters", "alerts")}
        counts = np.zeros(HISTOGRAM_EDGES.size - 1)
        histograms = {}
        for layer in watched:
            counts[:] = rng.integers(0, 500, counts.size) * (rng.random(counts.size) > 0.5)
            histograms[tags.histogram_tag(layer)] = (histogram_buckets(counts), "histogram")

        def render(seed: int = index * 1000 + check) -> dict[str, tuple[np.ndarray, str]]:
            r = np.random.default_rng(seed)
            out = {}
            for layer in DRAWN[: max(1, layers // 2)]:
                for probe in range(2):
                    out[tags.filters_tag(layer, probe)] = (_image(r), "filters")
                    out[tags.heatmap_tag(layer, probe)] = (_image(r, 64), "heatmap")
            return out

        sink.submit(step, scalars=scalars, texts=texts, render=render, keep_images=True,
                    histograms=histograms)  # fmt: skip
    sink.close()


def _report(logdir: Path, output: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `actwatch report` in a fresh process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "actwatch", "report", str(logdir), "-o", str(output), *extra],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def tab(logdir: Path, screenshot: Path) -> None:
    """First paint of the run table and the time of one sort, in a real TensorBoard."""
    import base64

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.chromium import chromium_session
    from tests.tensorboard_server import tensorboard_server

    doc = "document.querySelector('iframe').contentDocument"
    rows = (
        f"(() => {{ try {{ return {doc}.querySelectorAll('.aw-sweep-table tbody tr').length; }}"
        " catch (e) { return 0; } })()"
    )
    work = Path(tempfile.mkdtemp(prefix="actwatch-tab-"))
    with (
        tensorboard_server(logdir, work / "tb.log", load_fast="false") as server,
        chromium_session(work, window="1400,1100") as chromium,
    ):
        start = time.perf_counter()
        chromium.call("Page.navigate", url=f"{server.url}/#actwatch")
        while (chromium.evaluate(rows) or 0) < 2:
            time.sleep(0.05)
        paint = time.perf_counter() - start
        sort = chromium.evaluate(
            f"""(() => {{ const t0 = performance.now();
            {doc}.querySelector('.aw-sweep-sort[data-column="learning_rate"]').click();
            return performance.now() - t0; }})()"""
        )
        count = chromium.evaluate(rows)
        time.sleep(1.0)
        shot = chromium.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        # TensorBoard's own HParams tab over the same runs, sorted by the final dead fraction.
        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [{"metric": {"tag": "network/dead_fraction"}, "order": "ORDER_DESC"}],
            "startIndex": 0,
            "sliceSize": 100,
        }
        names: list[str] = []
        deadline = time.perf_counter() + 120
        while len(names) < len(list(logdir.iterdir())) and time.perf_counter() < deadline:
            # TensorBoard loads the runs in the background: wait for all of them.
            groups = _post(f"{server.url}/data/plugin/hparams/session_groups", request)
            names = [g["sessions"][0]["name"] for g in groups["sessionGroups"]]
            time.sleep(1.0)
        loaded = time.perf_counter() - start
        chromium.call("Page.navigate", url=f"{server.url}/#hparams")
        time.sleep(8.0)
        shot = chromium.call("Page.captureScreenshot", format="png")
        hparams_shot = screenshot.with_name(screenshot.stem + "-hparams.png")
        hparams_shot.write_bytes(base64.b64decode(shot["data"]))
    shutil.rmtree(work, ignore_errors=True)
    print(f"tab: {count} rows, first paint {paint:.2f} s, sort by a column {sort:.0f} ms; "
          f"screenshot {screenshot}")  # fmt: skip
    print(f"HParams plugin: {len(names)} session groups {loaded:.1f} s after navigation, by "
          f"final dead fraction: {names[0]} ... {names[-1]}; {hparams_shot}")  # fmt: skip


def _post(url: str, body: dict[str, object]) -> dict[str, Any]:
    import json
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=120) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--all-figures", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    parser.add_argument("--tab", type=Path, metavar="PNG", help="also time the tab's run table")
    parser.add_argument("--no-report", action="store_true", help="skip actwatch report")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="actwatch-sweep-"))
    logdir = root / "logs"
    start = time.perf_counter()
    for index in range(args.runs):
        if (logdir / f"lr_{index:02d}").exists():
            continue  # kept from an earlier --keep
        write_run(logdir / f"lr_{index:02d}", index, args.runs, args.checks, args.layers)
    size = sum(f.stat().st_size for f in logdir.rglob("events.out.tfevents.*"))
    print(f"wrote {args.runs} runs, {args.checks} checks x {args.layers} layers each: "
          f"{size / 2**20:.1f} MB of events in {time.perf_counter() - start:.1f} s")  # fmt: skip
    cases = [("default (summary + 3 runs' figures)", [])]
    if args.all_figures:
        cases.append(("--all-figures", ["--all-figures"]))
    for label, extra in [] if args.no_report else cases:
        page = root / f"report{len(extra)}.html"
        seconds, peak = _report(logdir, page, extra)
        print(f"actwatch report {label}: {seconds:.1f} s, peak RSS {peak:.0f} MB, "
              f"page {page.stat().st_size / 2**20:.1f} MB")  # fmt: skip
    if args.tab is not None:
        tab(logdir, args.tab)
    if args.keep is None:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
