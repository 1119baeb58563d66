# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export REFLEX_USE_NPM := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test venv lock clean

venv: $(STAMP)

# requirements.lock is `uv export` of uv.lock (see `make lock`); pip installs it with hashes,
# so a fresh machine needs only python3 and PyPI.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/observatory up --demo --port $${PORT:-3000}

test: $(STAMP)
	bash scripts/test.sh

# Regenerate the lock after changing pyproject.toml (needs `uv`, e.g. `pip install uv`).
lock:
	uv lock
	uv export --frozen --format requirements-txt --extra test --no-emit-project --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .web .observatory tests/artifacts
