# The two set-up commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit servers bench clean lock

$(STAMP): requirements/dev.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: the greenhouse demo: headwater up (MQTT :1883, dashboard :8080) + 20 simulated sensors
run: $(STAMP)
	VENV=$(VENV) bash scripts/demo.sh

## test: install what the tests need (Debian servers included) and run the whole suite
test: $(STAMP) servers lint typecheck
	$(PY) -m pytest

servers:
	bash scripts/install-test-deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## lock: re-resolve the pinned dependencies (needs `uv`)
lock:
	uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements/dev.lock
	uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements/main.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
