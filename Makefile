# actwatch: `make demo` and `make test` install everything they need into .venv: actwatch
# with every backend (the tensorflow, jax and torch extras), the demo's photos and the dev tools.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch==2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# The first run (PyTorch, TensorFlow blocked; its eager tiny fits are the cheapest) also runs
# the backend-independent read_path tests.
BACKENDS ?= torch jax tensorflow
PYTEST_ARGS ?=
# pytest-xdist workers per run: one per core, at most 4 (each holds a backend and Keras).
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install demo test lint typecheck clean chromium docs dist

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,tensorflow,jax,torch,demo]' '$(TORCH)'
	touch $(STAMP)

# Two runs side by side: a learning rate that kills filters (the alert fires), then a sane one.
# Each writes TensorBoard logs under ./logs; the second's report compares both.
demo: install
	$(BIN)/actwatch demo --lr 0.5 --epochs 4
	$(BIN)/actwatch demo --lr 0.001

# ruff, and import-linter's contracts (pyproject.toml): the rooms' one-way layering, and a read
# path (events, render, report, dashboard) that imports no Keras and no backend.
lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# One pytest run per backend. Off TensorFlow's backend, `import tensorflow` is made to fail
# (tests/conftest.py), proving actwatch runs without it. Tests marked read_path (no backend
# involved) run in the first run only.
test: lint typecheck chromium
	@set -e; read=1; for b in $(BACKENDS); do \
		echo "=== pytest with KERAS_BACKEND=$$b ==="; \
		block=1; [ "$$b" = tensorflow ] && block=0; \
		KERAS_BACKEND=$$b ACTWATCH_BLOCK_TENSORFLOW=$$block ACTWATCH_READ_PATH=$$read \
			$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal $(PYTEST_ARGS); \
		read=0; \
	done

# The docs site (Sphinx, furo, MyST: docs/conf.py), warnings as errors, into build/docs.
# tests/test_docs.py builds it the same way in `make test`.
docs: install
	KERAS_BACKEND=jax $(BIN)/sphinx-build -W --keep-going -b html docs build/docs

# The sdist and the wheel in dist/, checked by twine. --no-isolation: built with the venv's
# setuptools, so it works offline.
dist: install
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) logs reports build dist src/*.egg-info

# Headless Chromium (Debian's package) for the test that opens the HTML report.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } || \
		echo "chromium could not be installed: the report's browser test will be skipped"
