# SecDOOD — every target bootstraps .venv itself (torch==2.13.0 CPU wheel first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.secdood-installed
PROTOS := $(wildcard proto/secdood/v1/*.proto)

.PHONY: help venv proto demo test test-slow test-postgres docker compose-env test-docker arm64-smoke lint bench clean

help:
	@echo "make demo       train (or reuse) the default model and show the product end to end"
	@echo "make test       the test suite (under 15 minutes on 2 cores)"
	@echo "make test-slow  the slower checks (marked 'slow')"
	@echo "make test-postgres  registry tests against a real PostgreSQL server it starts"
	@echo "make docker     server + device images from a local Debian base, offline wheels"
	@echo "make compose-env  .env with random keys for docker compose"
	@echo "make test-docker  the compose deployment end to end (builds the images first)"
	@echo "make arm64-smoke  the device client on arm64 under qemu against a local server"
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
	$(BIN)/python -m pytest -q -m 'slow and not docker'

# The registry on a throw-away PostgreSQL cluster (initdb + pg_ctl on a loopback port).
test-postgres: proto
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| scripts/ensure-debian-packages postgresql
	$(BIN)/python -m pytest -q -m postgres tests/registry

# Images without a container registry: debootstrap base + offline wheelhouse (docker/).
docker: proto
	scripts/docker-build

compose-env:
	scripts/compose-env

test-docker: docker
	$(BIN)/python -m pytest -q -m docker tests/deploy/test_docker_compose_flow.py

arm64-smoke: proto
	scripts/arm64-smoke

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@for f in docker/Dockerfile*; do [ -f "$$f" ] && $(BIN)/hadolint "$$f"; done; true

# Every benchmark in quick mode (each writes bench/results/*.json and its BENCHMARKS.md section).
bench: proto
	$(BIN)/python -m bench.ood_baselines --quick
	$(BIN)/python -m bench.base_model --quick
	$(BIN)/python -m bench.personalization --quick
	$(BIN)/python -m bench.personal_threshold --quick
	$(BIN)/python -m bench.newcomer --quick
	$(BIN)/python -m bench.device --quick
	$(BIN)/python -m bench.service --quick
	$(BIN)/python -m bench.personalization_latency --quick
	$(BIN)/python -m bench.capacity --quick
	$(BIN)/python -m bench.device_latency --quick
	$(BIN)/python -m bench.methods --quick
	$(BIN)/python -m bench.zoodip --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
