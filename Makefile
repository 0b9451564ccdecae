# SecDOOD — every target bootstraps .venv itself (torch==2.13.0 CPU wheel first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.secdood-installed
PROTOS := $(wildcard proto/secdood/v1/*.proto)

.PHONY: help venv proto demo test test-slow lint bench clean

help:
	@echo "make demo       train (or reuse) the default model and show the product end to end"
	@echo "make test       the test suite (under 15 minutes on 2 cores)"
	@echo "make test-slow  the slower checks (marked 'slow')"
	@echo "make lint       ruff + hadolint"
	@echo "make bench      benchmark scripts (quick mode)"

venv: $(STAMP)

# Re-run only when the dependency list changes.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[server,device,dev]'
	@touch $(STAMP)

# gRPC stubs are generated from proto/ and never edited by hand.
proto: $(STAMP)
	@if [ -n "$(PROTOS)" ]; then $(BIN)/python -m shared.protogen; fi

demo: proto
	$(BIN)/python scripts/demo.py

test: proto
	$(BIN)/python -m pytest -q -x --durations=15

test-slow: proto
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@for f in docker/Dockerfile*; do [ -f "$$f" ] && $(BIN)/hadolint "$$f"; done; true

# Every benchmark in quick mode (each writes bench/results/*.json and its BENCHMARKS.md section).
bench: proto
	$(BIN)/python -m bench.ood_baselines --quick
	$(BIN)/python -m bench.base_model --quick
	$(BIN)/python -m bench.personalization --quick
	$(BIN)/python -m bench.newcomer --quick
	$(BIN)/python -m bench.device --quick
	$(BIN)/python -m bench.service --quick
	$(BIN)/python -m bench.methods --quick
	$(BIN)/python -m bench.zoodip --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
