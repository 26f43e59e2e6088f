# Headwater developer entry points. Everything is installed through project files:
# pyproject.toml (Python, into .venv) and package-lock.json (the buf CLI, via npm ci).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
NODE_WORKER := examples/node_worker
NODE_WORKER_STAMP := $(NODE_WORKER)/node_modules/.installed

.PHONY: setup demo test lint proto proto-check bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The Node.js worker example (its own package-lock.json; the e2e tests start it).
$(NODE_WORKER_STAMP): $(NODE_WORKER)/package.json $(NODE_WORKER)/package-lock.json
	npm ci --prefix $(NODE_WORKER) --no-audit --no-fund --loglevel=error
	touch $(NODE_WORKER_STAMP)

setup: $(STAMP) $(NODE_STAMP) $(NODE_WORKER_STAMP)

## demo: set up and run the main example embedded (no server needed)
demo: $(STAMP)
	$(PY) examples/quickstart.py

## test: set up and run lint, the proto checks and the whole test suite
test: setup
	node_modules/.bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	npm --prefix $(NODE_WORKER) test --silent
	@# pytest exits 5 when it collected no test: fail loudly rather than pass quietly.
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

## proto: regenerate the Python code from proto/ into python_sdk/headwater/v1/
proto: $(STAMP)
	$(PY) -m headwater_runtime._protogen python_sdk

## docs: build the API reference (HTML, from the docstrings) into build/docs/api; any
## pdoc warning, or a public name missing from its page, fails the build. `make test`
## runs the same build (tests/test_api_reference.py).
DOCS_OUT := build/docs/api
docs: $(STAMP)
	rm -rf $(DOCS_OUT)
	$(PY) docs/build_api.py $(DOCS_OUT)

## bench: run the benchmark harness and print its table
bench: $(STAMP)
	$(PY) -m benchmarks

lint: setup
	node_modules/.bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) node_modules $(NODE_WORKER)/node_modules .pytest_cache .ruff_cache
