PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: install install-dev test test-fast lint typecheck format up clean compose-check

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

# torch is installed first, pinned, so that nothing later can pull another build.
# `make up` needs the runtime only; `make test` adds the test, lint and benchmark tools.
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/pip install -q -e '.[test]'
	touch $(DEV)

install: $(RUNTIME)

install-dev: $(DEV)

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

typecheck: $(DEV)
	$(BIN)/mypy
	@echo "type: ignore lines: $$(git grep -c 'type: *ignore' -- router services shared | awk -F: '{s+=$$2} END {print s+0}')"

format: $(DEV)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Everything: unit, parity, cluster and packaging tests (~20 min on 2 cores).
test: lint
	$(BIN)/python -m pytest -q

# The inner loop: unit tests only (< 2 min on 2 cores).
test-fast: $(DEV)
	$(BIN)/python -m pytest -q -m unit

# The whole local cluster on the bundled demo model (flags: make up ARGS="--encoders 2").
up: $(RUNTIME)
	$(BIN)/epd up $(ARGS)

# The image built and docker-compose.yml run for real against podman, asked about a picture through
# the router (root; podman, runc, mmdebstrap; minutes; not part of `make test`): docker/compose-check.sh.
compose-check: $(DEV)
	PYTHON=$(CURDIR)/$(BIN)/python docker/compose-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist
