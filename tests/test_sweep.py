"""Sweeps of many runs: the report's summary table, scatter and choice of runs, read lightly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actwatch import report
from actwatch.cli import main
from actwatch.events import finals, tags
from actwatch.report import sweep

from .chromium import DevTools, chromium_session
from .sweep_logs import write_sweep
from .tensorboard_server import Server, tensorboard_server

# Reading and drawing event files: no Keras backend involved, so once per make test.
pytestmark = pytest.mark.read_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six runs `lr_00` .. `lr_05` (learning rates 1e-4 .. 1, Adam and SGD in turn) written
    with the real Sink; the higher the rate, the more filters die."""
    root = tmp_path_factory.mktemp("sweep")
    write_sweep(root, runs=6)
    return root


def drawn_runs(figures: Path) -> list[str]:
    """The runs with figures in the report's figures folder (`NN-run-what.png`)."""
    return sorted({p.name.split("-")[1] for p in figures.glob("[0-9]*.png")})


def _rows(page: str) -> int:
    section = page.split('<section id="sweep">', 1)[1].split("</section>", 1)[0]
    return section.count("<tr>") - 1  # the header row


def test_finals_read_every_run_lightly(logs: Path) -> None:
    """Each run's final network figures, its HParams and alert count; no images kept."""
    runs = finals.read_sweep(logs)
    assert [r.name for r in runs] == [f"lr_{i:02d}" for i in range(6)]
    first, last = runs[0], runs[-1]
    assert first.learning_rate == pytest.approx(1e-4) and last.learning_rate == pytest.approx(1.0)
    assert first.optimizer == "Adam" and runs[1].optimizer == "SGD"
    assert first.hparams["batch_size"] == 32 and isinstance(first.hparams["batch_size"], int)
    assert last.final("dead_fraction") > 0.2 > first.final("dead_fraction")  # type: ignore[operator]
    assert last.alerts > 0 == first.alerts
    assert set(finals.FINAL_METRICS) <= set(last.series)
    assert len(last.series["dead_fraction"]) == 4  # every check


def test_report_of_a_sweep_starts_with_the_table_and_draws_three_runs(
    logs: Path, tmp_path: Path
) -> None:
    """The page opens with one row per run and the learning-rate scatter; per-run figures
    only for the highest, median and lowest final dead fraction."""
    page = report.write_report(logs, tmp_path / "r.html", progress=False)
    html = page.read_text()
    assert html.index('<section id="sweep">') < html.index('<section id="runs">')
    assert _rows(html) == 6
    assert 'alt="learning rate against final dead fraction"' in html
    assert "<td>0.0001</td>" in html and "<td>SGD</td>" in html
    assert drawn_runs(tmp_path / "r_figures") == ["lr_00", "lr_03", "lr_05"]
    assert (tmp_path / "r_figures" / "sweep-scatter.png").is_file()


def test_runs_choose_by_name_and_glob(logs: Path, tmp_path: Path) -> None:
    """`runs` globs choose the table's runs; few chosen runs are all drawn; a pattern that
    matches nothing is a ValueError naming the runs."""
    page = report.write_report(logs, tmp_path / "r.html", runs=["lr_0[1]", "lr_05"])
    html = page.read_text()
    assert _rows(html) == 2
    assert "lr_00" not in html
    assert drawn_runs(tmp_path / "r_figures") == ["lr_01", "lr_05"]
    with pytest.raises(ValueError, match=r"'nope\*' matches no run. Runs: lr_00, lr_01"):
        report.write_report(logs, tmp_path / "x.html", runs=["nope*"])


def test_all_figures_draws_every_chosen_run(logs: Path) -> None:
    """`all_figures=True`: every chosen run is drawn (the CLI test draws through it)."""
    runs = finals.read_sweep(logs)
    assert sweep.plan(runs, all_figures=True).drawn == runs
    assert len(sweep.plan(runs).drawn) == sweep.FIGURE_RUNS
    assert sweep.plan(runs, ["lr_0[0-3]"]).drawn == runs[:4]  # few chosen: all drawn


def test_cli_report_runs_without_keras(logs: Path, tmp_path: Path) -> None:
    """`actwatch report --runs ... --all-figures` reads event files only: Keras (and with it
    TensorFlow) is never imported."""
    out = tmp_path / "cli.html"
    code = (
        "import sys\nfrom actwatch.cli import main\n"
        f"main(['report', {str(logs)!r}, '-o', {str(out)!r}, '--runs', 'lr_0[45]', "
        "'--all-figures'])\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows(out.read_text()) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(logs), "-o", str(tmp_path / "y.html"), "--runs", "zz"])
    assert exit_info.value.code == 2


def test_plan_picks_and_scatter_without_rates() -> None:
    """Without `all_figures` and with more than four runs: highest, median, lowest; a sweep
    with no learning rate logged has no scatter (said on the page)."""
    runs = [
        finals.RunFinals(name=f"r{i}", path=Path(f"r{i}"), series={"dead_fraction": [(1, d)]})
        for i, d in enumerate([0.1, 0.5, 0.0, 0.9, 0.3])
    ]
    plan = sweep.plan(runs)
    assert [r.name for r in plan.drawn] == ["r2", "r3", "r4"]  # lowest, highest, median
    assert sweep.scatter_figure(runs) is None
    assert "No learning rate logged" in plan.html(None)
    assert tags.network_tag("dead_fraction") == "network/dead_fraction"


# The run table of the actwatch tab -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with tensorboard_server(logs, tmp_path_factory.mktemp("tb") / "tb.log", load_fast="false") as s:
        yield s


def test_sweep_route_lists_every_run_with_final_figures(server: Server, logs: Path) -> None:
    """`/data/plugin/actwatch/sweep`: one row per run, its final figures as `finals` reads
    them, learning rate, optimizer, alerts and a sparkline's values per metric."""
    answer = server.json("/data/plugin/actwatch/sweep")
    assert answer["metrics"] == list(finals.FINAL_METRICS)
    rows = {row["name"]: row for row in answer["runs"]}
    assert sorted(rows) == [f"lr_{i:02d}" for i in range(6)]
    for run in finals.read_sweep(logs):
        row = rows[run.name]
        assert row["final"]["dead_fraction"] == pytest.approx(run.final("dead_fraction"))
        assert row["learning_rate"] == pytest.approx(run.learning_rate)
        assert row["optimizer"] == run.optimizer and row["alerts"] == run.alerts
        assert len(row["series"]["dead_fraction"]) == row["checks"] == 4


def _rows_shown(chromium: DevTools, doc: str) -> list[str]:
    names: list[str] = chromium.evaluate(
        f"[...{doc}.querySelectorAll('.aw-sweep-table tbody tr')].map(r => r.dataset.run)"
    )
    return names


def _until(chromium: DevTools, expression: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not chromium.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.1)


def test_run_table_in_headless_chromium(
    server: Server, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The tab's run table lists every run by final dead fraction (highest first), sorts by
    a clicked column, filters by name, draws a sparkline per metric, and opens two ticked
    runs side by side; no console error."""
    doc = "document.querySelector('iframe').contentDocument"
    runs = finals.read_sweep(logs)
    with chromium_session(tmp_path_factory.mktemp("chromium"), window="1400,1000") as chromium:
        chromium.open(f"{server.url}/#actwatch")
        _until(chromium, f"!!({doc} && {doc}.querySelector('.aw-sweep-table tbody tr'))")
        by_dead = sorted(runs, key=lambda r: (-(r.final("dead_fraction") or 0.0), r.name))
        assert _rows_shown(chromium, doc) == [r.name for r in by_dead]
        assert chromium.evaluate(f"{doc}.querySelectorAll('.aw-sweep svg polyline').length") == 24
        click = f"{doc}.querySelector('.aw-sweep-sort[data-column=\"learning_rate\"]').click()"
        chromium.evaluate(click)
        chromium.evaluate(click)  # the second click: ascending
        assert chromium.evaluate(f"{doc}.querySelector('.aw-sweep-table').dataset.sort") == (
            "learning_rate:asc"
        )
        assert _rows_shown(chromium, doc) == [f"lr_{i:02d}" for i in range(6)]
        chromium.evaluate(
            f"""(() => {{ const f = {doc}.querySelector('.aw-sweep-filter');
            f.value = 'LR_0[1'; f.dispatchEvent(new Event('input')); }})()"""
        )
        assert _rows_shown(chromium, doc) == []  # a substring, not a pattern
        chromium.evaluate(
            f"""(() => {{ const f = {doc}.querySelector('.aw-sweep-filter');
            f.value = 'r_04'; f.dispatchEvent(new Event('input')); }})()"""
        )
        assert _rows_shown(chromium, doc) == ["lr_04"]
        chromium.evaluate(
            f"""(() => {{ const f = {doc}.querySelector('.aw-sweep-filter');
            f.value = ''; f.dispatchEvent(new Event('input')); }})()"""
        )
        for name in ("lr_01", "lr_04"):
            chromium.evaluate(
                f"{doc}.querySelector('.aw-sweep-table tr[data-run=\"{name}\"] input').click()"
            )
        chromium.evaluate(f"{doc}.querySelector('.aw-sweep-open').click()")
        shown = f"[...{doc}.querySelectorAll('.aw-run')].map(r => r.dataset.run).join()"
        _until(chromium, f"{shown} === 'lr_01,lr_04'")
        _until(chromium, f"{doc}.body.dataset.state === 'idle'")
        assert chromium.evaluate(f"{doc}.querySelectorAll('tr.aw-shown').length") == 2
        errors = [e for e in chromium.errors() if "favicon.ico" not in e]
        assert errors == []
