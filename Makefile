PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: install install-dev deps test test-fast lint typecheck format up clean compose-check

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

# The Debian libraries that the mooncake extra's Transfer Engine links even over TCP (libcurl4 too:
# its engine.so needs libcurl.so.4). Silent when ldconfig knows them all; else apt-get as root.
DEB_LIBS := libibverbs1 librdmacm1 libnuma1 libcurl4
DEB_SONAMES := libibverbs.so.1 librdmacm.so.1 libnuma.so.1 libcurl.so.4

deps:
	@missing=; for so in $(DEB_SONAMES); do \
	    PATH="$$PATH:/usr/sbin:/sbin" ldconfig -p | grep -q "^[[:space:]]*$$so " || missing="$$missing $$so"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	echo "make deps: missing$$missing" >&2; \
	if [ "$$(id -u)" != 0 ]; then \
	    echo "make deps: run as root (or: sudo apt-get install $(DEB_LIBS))" >&2; exit 1; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt_install() { apt-get install -y -q --no-install-recommends $(DEB_LIBS); }; \
	if ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 && apt_install; then exit 0; fi; \
	apt-get update -q && apt_install

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

# Everything: unit, parity, cluster and packaging tests (~15-25 min on 2 cores, by host); the 25
# slowest tests are listed at the end, to keep the suite's time in view.
test: deps lint
	$(BIN)/python -m pytest -q --durations=25

# The inner loop: unit tests only (< 2 min on 2 cores).
test-fast: deps $(DEV)
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
