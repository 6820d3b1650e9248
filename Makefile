# Two entry points (see README): `make demo` and `make test`. Both set up everything:
# virtualenv + pinned requirements, then the local stack (idempotent), then the job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: demo test up down status venv lint clean-local

$(STAMP): requirements.txt requirements-dev.txt
	@command -v redis-server >/dev/null || (echo "installing redis-server (Debian package)"; \
		apt-get install -y -q redis-server >/dev/null)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

up: venv
	$(PY) -m scripts.stack up

status: venv
	$(PY) -m scripts.stack status

down:
	@test -x $(PY) && $(PY) -m scripts.stack down || true

demo: up
	$(PY) -m scripts.demo

test: up
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

clean-local: down
	rm -rf .local
