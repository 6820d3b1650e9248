# Two entry points (see README): `make demo` and `make test`. Both set up everything:
# virtualenv + pinned requirements, then the local stack (idempotent), then the job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: demo test bench up down status venv lint clean-local metrics metrics-down graphs

$(STAMP): requirements.txt requirements-dev.txt
	@command -v redis-server >/dev/null && command -v wrk >/dev/null || \
		(echo "installing redis-server and wrk (Debian packages)"; \
		apt-get install -y -q redis-server wrk >/dev/null)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

up: venv
	$(PY) -m scripts.stack up

status: venv
	$(PY) -m scripts.stack status

down:
	@test -x $(PY) && $(PY) -m scripts.apps down || true
	@test -x $(PY) && $(PY) -m scripts.metrics_stack down || true
	@test -x $(PY) && $(PY) -m scripts.stack down || true

demo: venv
	$(PY) -m scripts.stack up --metrics
	$(PY) -m scripts.demo

bench: up
	$(PY) -m scripts.replay --quiet
	$(PY) -m scripts.bench_learning
	$(PY) -m scripts.bench_stream
	$(PY) -m scripts.bench_pipeline
	$(PY) -m scripts.bench_serving
	$(PY) -m scripts.bench_e2e

test: up
	$(PY) -m pytest -q

metrics: venv
	$(PY) -m scripts.metrics_stack up

metrics-down:
	@test -x $(PY) && $(PY) -m scripts.metrics_stack down || true

graphs: venv
	$(PY) -m scripts.graphs --out .local/graphs --from -10min

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy  # models/, streams/, common/, the servers, devstack/, experiments/ (see pyproject.toml)

clean-local: down
	rm -rf .local
