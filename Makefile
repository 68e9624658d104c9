# litefleet: `make demo` runs the story, `make test` runs every test. Both install what they need first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

.PHONY: setup demo demo-agent test test-fast test-e2e test-browser lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[control,ssh,dev,bench]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: setup
	infra/setup-host.sh
	$(PY) -m control_plane.demo

demo-agent: setup
	$(PY) -m agent_image.demo

test: setup
	$(PY) -m pytest -q --durations=30

test-fast: setup
	$(PY) -m pytest -q tests/unit

E2E ?= tests/e2e
test-e2e: setup
	$(PY) -m pytest -q $(E2E)

test-browser: setup
	$(PY) -m pytest -q -s tests/browser

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy agent_image control_plane tenants bench infra
	$(VENV)/bin/mypy --strict agent_image control_plane

bench: setup
	$(PY) bench/runtime.py
	$(PY) bench/agent_container.py
	$(PY) bench/agent_start_profile.py
	$(PY) bench/runtimes.py
	$(PY) bench/durability.py
	$(PY) bench/fleet.py
	$(PY) bench/pool.py
	mkdir -p var/bench && $(PY) bench/warm_moves.py --sizes 1,50,500 | tee var/bench/warm_moves.jsonl
	$(PY) bench/move_chart.py var/bench/warm_moves.jsonl --output var/bench/move-downtime.png
	$(PY) bench/observer.py --agents 100 --modes follow,periodic
	$(PY) bench/lag.py --agents 100
	$(PY) bench/control_plane_start.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
