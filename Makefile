# The two commands a newcomer needs: `make smoke` (set up + run the whole pipeline offline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export WEBDANCER_HOME ?= $(CURDIR)/.webdancer
export DAGSTER_HOME ?= $(WEBDANCER_HOME)/dagster

.PHONY: setup llama-server smoke learn test test-fast lint ui bench clean

setup:
	bash scripts/bootstrap.sh

# llama.cpp's own server, which scores several runs at once (the learning profile); not needed by smoke.
llama-server: setup
	bash scripts/build_llama_server.sh

smoke: setup
	$(VENV)/bin/webdancer materialize --profile smoke

learn: llama-server
	$(VENV)/bin/webdancer materialize --profile learn

test: llama-server
	$(VENV)/bin/ruff check webdancer_dagster tests benchmarks
	$(VENV)/bin/ruff format --check webdancer_dagster tests benchmarks
	$(VENV)/bin/pytest -m "not gpu" -q

test-fast: llama-server
	$(VENV)/bin/pytest -m "not slow and not gpu" -q

lint: setup
	$(VENV)/bin/ruff check --fix webdancer_dagster tests benchmarks
	$(VENV)/bin/ruff format webdancer_dagster tests benchmarks

ui: setup
	$(VENV)/bin/webdancer ui

bench: setup
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(WEBDANCER_HOME)
