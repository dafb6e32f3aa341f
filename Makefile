# Everything installs from the lockfile into .venv; uv itself is bootstrapped into .tools.
# `make install` brings the `train` extra (TensorFlow, Keras, the ONNX exporter) for training and
# the tests; `make install-score` only what scoring needs (ONNX Runtime, no TensorFlow).
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
RUN := $(UV) run --frozen --no-sync

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Two glibc malloc arenas: image decoding in many threads otherwise fragments one arena per
# thread, and memory creeps up with the number of images (BENCHMARKS.md, "Scoring throughput").
export MALLOC_ARENA_MAX ?= 2

.PHONY: install install-score bench-runtimes demo test test-fast lint bench ui up down notify store-stop clean

install: .venv/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra train
	@touch $@

install-score: | $(UV)
	$(UV) sync --frozen --no-dev
	@rm -f .venv/.synced

demo: install
	$(RUN) cxr demo

test: install
	$(RUN) pytest

# The inner loop: everything but the slow tests (Prefect's test API, subprocesses, training,
# ONNX exports, Dask) and the integration tests. `make test` runs them all.
test-fast: install
	$(RUN) pytest -m "not slow and not integration"

lint: install
	$(RUN) ruff check .

bench: install
	$(RUN) python bench/train_throughput.py

# Keras/TensorFlow vs ONNX Runtime vs OpenVINO for scoring (OpenVINO comes from the bench group).
bench-runtimes: install
	$(UV) sync --frozen --extra train --group bench
	$(RUN) python bench/inference_runtimes.py
	@rm -f .venv/.synced

ui: install
	$(RUN) prefect server start --host 127.0.0.1 --port 4200

# Prefect server + UI, embedded S3, a process worker and the deployments, all on 127.0.0.1.
up: install
	$(RUN) python -m deployments.stack up

down: install
	$(RUN) python -m deployments.stack down

# A failed or crashed nightly retraining POSTs {subject, body} to WEBHOOK (the webhook block and
# the automation are created together; see deployments/automations/).
notify: install
	@test -n "$(WEBHOOK)" || { echo "usage: make notify WEBHOOK=https://..." >&2; exit 2; }
	$(RUN) python -m deployments.stack notify --webhook "$(WEBHOOK)"

store-stop: install
	$(RUN) cxr store stop

clean:
	rm -rf .venv $(TOOLS)
