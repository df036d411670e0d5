# The two commands a new user runs (see README):
#   make demo   - build the image and run the demo stack
#   make test   - every test: lint, types, unit, integration (real kernel), e2e (real Compose)
# Both run as root on Debian 12 and prepare the host first (e2e/prepare-host.sh, idempotent).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: test demo venv lint unit integration e2e prepare clean

prepare:
	bash e2e/prepare-host.sh

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check anchord bus workers tests e2e benchmarks
	$(BIN)/mypy

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv
	$(BIN)/python -m pytest tests/integration

e2e: venv prepare
	$(BIN)/python -m pytest e2e

test: prepare venv lint
	$(BIN)/python -m pytest tests/unit tests/integration e2e

demo: prepare venv
	bash e2e/demo.sh

clean:
	rm -rf $(VENV) .build

# `make report` - the benchmarks (issue 14), NOT part of `make test`: builds the images, runs
# every measurement on this machine (each section under the shared Docker lock) and writes
# docs/benchmarks.md and docs/bench/ (plots, results.json). A short run:
#   make report REPORT_ARGS=--quick
.PHONY: report
$(BIN)/.bench-installed: $(BIN)/.installed setup.cfg
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

report: prepare $(BIN)/.bench-installed
	command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3
	$(BIN)/python -m benchmarks.report $(REPORT_ARGS)
