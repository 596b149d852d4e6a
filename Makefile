# cloudamqp-autopilot — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit lint demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install ## RabbitMQ if needed, then a receiver and a worker in the foreground (Ctrl-C stops all)
	$(PY) -m tools.launcher

demo: install ## post sample alarms to the receiver `make run` started, and show the results
	$(PY) -m tools.demo

test: install ## every test (needs RabbitMQ with management, and PostgreSQL)
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

bench: install ## benchmarks against the limits, ratios vs baselines in the same run (docs/benchmarks.md)
	$(PY) -m bench $(BENCH_ARGS)

chaos: install ## the long fault-injection run (tests/chaos); its short run is part of `make test`
	$(PY) -m tests.chaos $(CHAOS_ARGS)
