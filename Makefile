# The two commands a new user needs:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project with its dev tools

demo: setup  ## whole stack on the built-in synthetic data: worker, Redis, gateway, sample calls
	$(BIN)/python -m services.quickstart $(ARGS)

run: setup  ## only the offline worker, end to end (ETL → train → index → evaluate → publish)
	$(BIN)/python -m offline run $(ARGS)

test: setup  ## the test suite (starts its own Redis server on a free port)
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup  ## all benchmarks (minutes; numbers in the README)
	for b in etl train index publish load; do $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
