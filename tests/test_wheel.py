"""The package as released: the wheel works where TensorFlow is absent, and `make dist`'s
build is complete.

- Built from this checkout and installed into a fresh virtualenv with only its core
  dependencies and `jax[cpu]`, the wheel runs a monitored `fit` and the `actwatch report`
  command. That needs the package index (pip's own configuration; pip's cache makes repeat
  runs fast). On CI (`CI` set) an index that cannot be reached fails the test; elsewhere it
  is skipped, saying why.
- Offline, as `make dist` builds them (`python -m build --no-isolation`), the sdist and the
  wheel pass `twine check --strict`, hold LICENSE and py.typed and the project's URLs, and
  the wheel installed into a fresh virtualenv runs `actwatch demo --epochs 1`.

Both run once per `make test`, in the JAX run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import keras
import pytest

import actwatch

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="the wheel test runs once per make test, in the JAX run",
    ),
]

# What pip prints when the package index cannot be reached: connection errors, or no version
# at all of a requirement ("from versions: none"; a bad pin lists the versions it saw).
OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|Max retries exceeded|ConnectTimeout|ReadTimeout"
    r"|ProxyError|\(from versions: none\)"
)

# Run inside the fresh virtualenv, KERAS_BACKEND=jax: a tiny Functional CNN, a monitored fit.
FIT = """
import sys

import keras
import numpy as np

import actwatch

rng = np.random.default_rng(0)
x = rng.random((32, 16, 16, 3), dtype=np.float32)
y = rng.integers(0, 3, 32)
inputs = keras.Input((16, 16, 3))
h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="wheel_conv1")(inputs)
h = keras.layers.MaxPooling2D(name="wheel_pool1")(h)
h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="wheel_conv2")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
outputs = keras.layers.Dense(3, activation="softmax")(h)
model = keras.Model(inputs, outputs)
model.compile("adam", "sparse_categorical_crossentropy")
monitor = actwatch.ActivationMonitor(x[:2], sys.argv[1], stats_data=x[:16])
model.fit(x, y, epochs=2, batch_size=16, callbacks=[monitor], verbose=0)
print("backend:", keras.backend.backend())
print("actwatch from:", actwatch.__file__)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def _run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,  # type: ignore[call-overload]
    )


def _install(pip: list[str | Path], *requirements: str | Path) -> None:
    """pip install, failing (on CI) or skipping (elsewhere) when the index cannot be reached."""
    done = _run([*pip, "install", "--quiet", *requirements])
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    if OFFLINE.search(output):
        message = (
            "The wheel test could not install its dependencies from the package index "
            f"(pip's configuration; is the network up?):\n{output[-3000:]}"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(f"offline: the package index cannot be reached ({OFFLINE.search(output)[0]})")
    pytest.fail(f"pip install {requirements} failed:\n{output[-5000:]}", pytrace=False)


def test_wheel_without_tensorflow_fits_and_reports(tmp_path: Path) -> None:
    """The wheel, in a fresh virtualenv holding only it, its core dependencies and jax[cpu]
    (TensorFlow absent), trains with `ActivationMonitor` and `actwatch report` writes a page
    naming the watched layers."""
    start = time.perf_counter()
    source = _sources(tmp_path)
    wheel_dir = tmp_path / "dist"
    build = ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheel_dir, source]
    built = _run([sys.executable, "-m", "pip", *build])
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheel_dir.glob("actwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # the licence, the typing marker, one version
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert "actwatch/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    version = re.search(rb"^Version: (\S+)$", metadata, re.MULTILINE)
    assert version is not None and version[1].decode() == actwatch.__version__
    assert b"License-Expression: Apache-2.0" in metadata
    assert b"Classifier: Typing :: Typed" in metadata

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip: list[str | Path] = [python, "-m", "pip"]
    # The versions this test run uses (pip's cache has them); constraints install nothing.
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"])
    assert frozen.returncode == 0, frozen.stderr
    pins = [line for line in frozen.stdout.splitlines() if "==" in line and " @ " not in line]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
    _install(pip, wheel, "jax[cpu]", "--constraint", constraints)

    listed = _run([*pip, "list", "--format=freeze"])
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "actwatch" in installed and "jax" in installed and "keras" in installed
    assert not {n for n in installed if n.startswith("tensorflow")}, sorted(installed)
    assert "scikit-image" not in installed and "torch" not in installed
    spec = _run([python, "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"])
    assert spec.stdout.strip() == "None", spec.stdout + spec.stderr

    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    logs = tmp_path / "logs" / "run1"
    fit = _run([python, "-c", FIT, logs], env=env, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-5000:]
    assert "backend: jax" in fit.stdout
    assert f"actwatch from: {venv}" in fit.stdout
    assert "tensorflow imported: False" in fit.stdout
    assert list(logs.glob("events.out.tfevents.*"))

    page = tmp_path / "site" / "report.html"
    report = _run([venv / "bin" / "actwatch", "report", tmp_path / "logs", "-o", page], env=env)
    assert report.returncode == 0, report.stderr[-5000:]
    assert f"Report written to {page}" in report.stdout
    text = page.read_text(encoding="utf-8")
    for layer in ("wheel_conv1", "wheel_pool1", "wheel_conv2"):
        assert layer in text
    print(f"wheel test: {time.perf_counter() - start:.0f} s")


def _sources(into: Path) -> Path:
    """A copy of what the sdist is built from, so the checkout gets no build/ folder."""
    source = into / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for licence in ROOT.glob("LICEN[CS]E*"):
        shutil.copy2(licence, source / licence.name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return source


def test_dist_holds_licence_and_typing_and_the_wheel_runs_the_demo_offline(tmp_path: Path) -> None:
    """`python -m build --no-isolation` (as `make dist`, offline) makes an sdist and a wheel
    that `twine check --strict` passes, both holding LICENSE and py.typed, with the project's
    URLs; the wheel, installed with `--no-deps` into a fresh virtualenv that sees this
    environment's dependencies (not its editable actwatch), runs `actwatch demo --epochs 1`."""
    start = time.perf_counter()
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, _sources(tmp_path)]
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("actwatch-*.whl")
    (sdist,) = dist.glob("actwatch-*.tar.gz")
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist])
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert "actwatch/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    for url in ("Homepage", "Documentation", "Changelog", "Issues"):
        assert f"Project-URL: {url}, https://github.com/actwatch/actwatch".encode() in metadata
    assert b"Requires-Python: >=3.11" in metadata
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "src/actwatch/py.typed", "pyproject.toml", "PKG-INFO"} <= members

    # A fresh virtualenv; this environment's site-packages joins its path through a .pth
    # line, which does not run that folder's own .pth files (so not the editable actwatch).
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    assert ours, sys.path
    (Path(site.stdout.strip()) / "project_env.pth").write_text(ours[0] + "\n", encoding="utf-8")
    pip = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel]
    installed = _run(pip)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    where = _run([python, "-c", "import actwatch; print(actwatch.__file__)"], env=env)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    demo = [venv / "bin" / "actwatch", "demo", "--epochs", "1", "--samples", "64", "--size", "32"]
    ran = _run(demo, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-5000:]
    assert list((tmp_path / "logs" / "lr_0.001").glob("events.out.tfevents.*"))
    assert (tmp_path / "reports" / "report.html").stat().st_size > 0
    print(f"dist test: {time.perf_counter() - start:.0f} s")
