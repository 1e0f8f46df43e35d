# Two commands do all set-up on a fresh machine:
#   make demo   create .venv if missing, install genad, find defects in examples/ (no API key)
#   make test   same set-up (plus a real LMM server for the tests), then the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genad-installed
SERVER_STAMP := $(VENV)/.genad-test-server-installed

.PHONY: demo test lint format install clean bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a several-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

# The tests drive a real OpenAI-compatible server (tests/llama_server.py): llama-cpp-python's server
# builds llama.cpp from source (several minutes on 2 cores; pip keeps the built wheel).
$(SERVER_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q -e '.[test-server]'
	touch $(SERVER_STAMP)

demo: $(STAMP)
	$(VENV)/bin/genad detect examples/magnetic_tile/test --normal examples/magnetic_tile/train/good --out demo-out

test: $(STAMP) $(SERVER_STAMP) lint
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest -q

# ruff (lint + format) and mypy, as `make test` runs them; `make format` applies ruff's fixes.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts

clean:
	rm -rf $(VENV) demo-out
