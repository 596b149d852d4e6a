# cloudamqp-autopilot — the two commands a newcomer needs are `make run` and `make test`;
# `make help` lists the others.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two installs, each redone when pyproject.toml changes: the runtime dependencies (`make run`)
# and those plus the dev extras (tests, lint, benchmarks).
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help install install-dev services run demo check test test-unit lint bench chaos clean

help: ## list the targets
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(RUNTIME_STAMP)

install: $(RUNTIME_STAMP) ## .venv with the runtime dependencies (and the autopilot-dlq command)

install-dev: $(DEV_STAMP) ## .venv with the runtime and the development dependencies

services: $(RUNTIME_STAMP) ## start what the tests need where it is missing: RabbitMQ, management, PostgreSQL
	$(PY) -m tools.services

run: $(RUNTIME_STAMP) ## RabbitMQ if needed, then a receiver and a worker in the foreground (Ctrl-C stops all)
	$(PY) -m tools.launcher

demo: $(RUNTIME_STAMP) ## post sample alarms to the receiver `make run` started, and show the results
	$(PY) -m tools.demo

# The same as `autopilot check`: the configuration of this environment (and .env) checked the way
# the worker reads it; CHECK_ARGS="--send-test" sends each notification endpoint a test.
check: $(RUNTIME_STAMP) ## check the set-up before the first alarm: key, instances, plans, URLs, broker, store
	$(PY) -m worker.cli check $(CHECK_ARGS)

# A service that cannot be brought up stops here with one line saying what to install; any
# non-zero pytest status fails the target, 5 (no test collected) included.
# The tests run in TEST_WORKERS processes (pytest-xdist): each has its own vhost, database,
# ports and temporary directory, and most of a test's time is waiting on a broker or a
# subprocess, so more processes than cores pay (`make test TEST_WORKERS=1`: one at a time).
# 6 measured on 2 cores: 8, 10 and 14 starve the CPU (a private broker node's rabbitmqctl and
# the schemathesis run time out, and tests fail).
# tests/conftest.py schedules them (pytest_xdist_make_scheduler) and orders the long ones first.
TEST_WORKERS ?= 6
# Each test process and its fork server (tests/forkserver.py) read the bytecode cache the first
# one wrote, and pytest keeps the test modules it rewrote, even where the environment says
# PYTHONDONTWRITEBYTECODE (without the caches each compiles again: about 2 s of CPU a test process).
test: $(DEV_STAMP) ## every test, in parallel; starts RabbitMQ, its management plugin and PostgreSQL where missing
	$(PY) -m tools.services
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(TEST_WORKERS) $(TEST_ARGS)

test-unit: $(DEV_STAMP) ## the unit tests only (no services needed)
	$(PY) -m pytest tests/unit

lint: $(DEV_STAMP) ## ruff, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(DEV_STAMP) ## benchmarks against the limits, ratios vs baselines in the same run (docs/benchmarks.md)
	$(PY) -m tools.services
	$(PY) -m bench $(BENCH_ARGS)

chaos: $(DEV_STAMP) ## the long fault-injection run (tests/chaos), 3-node cluster included; its short run is part of `make test`
	$(PY) -m tools.services
	$(PY) -m tests.chaos $(CHAOS_ARGS)

clean: ## remove .venv, var/ (the local SQLite store) and the caches
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
