# Every target builds its own virtualenv first, so a fresh clone needs nothing but python3 and make.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv browser demo check test lint bench bench-full clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m devkit.demo

# Tests run on worker processes (pytest-xdist): most of them wait on servers, latency and rate limits,
# not on the CPU. `loadgroup` hands out one test at a time (longest first, tests/conftest.py) and keeps
# each xdist_group on one worker. Override with e.g. `make test PYTEST_N=0` for one process.
PYTEST_N    ?= 2
PYTEST_N_ALL ?= 3
XDIST       = --dist loadgroup

# The inner loop: lint, types, import contracts and every test not marked slow (under 3 minutes on 2 cores).
check: lint
	$(BIN)/pytest -q -ra -n $(PYTEST_N) $(XDIST) -m "not slow"

# The whole suite (what CI runs). Its report.html test drives Debian's chromium (installed if missing).
test: lint browser
	$(BIN)/pytest -q -ra -n $(PYTEST_N_ALL) $(XDIST)

browser: $(STAMP)
	bash .ci/install-browser

lint: $(STAMP)
	$(BIN)/ruff check qwenedit flows tests bench devkit
	$(BIN)/ruff format --check qwenedit flows tests bench devkit
	$(BIN)/mypy qwenedit flows devkit
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench --scale 10

bench-full: $(STAMP)
	$(BIN)/python -m bench --scale 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
