# Headwater developer entry points. Everything is installed through project files:
# pyproject.toml (Python, into .venv), requirements/oldest.txt (the oldest supported
# grpcio/protobuf and the pinned code generator, into .venv-oldest) and package-lock.json
# (the buf CLI, via npm ci).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OLDEST    := .venv-oldest
OLDEST_PY := $(OLDEST)/bin/python
OLDEST_STAMP := $(OLDEST)/.installed
NODE_STAMP := node_modules/.installed
NODE_WORKER := examples/node_worker
NODE_WORKER_STAMP := $(NODE_WORKER)/node_modules/.installed
# Test processes for the suite (pytest-xdist; each test file stays on one of them).
TEST_PROCESSES ?= 2

.PHONY: setup postgres demo test test-oldest lint proto bench soak docs clean ui-vendor browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The floors of pyproject.toml, installed exactly, plus the pinned generator of
# `make proto`. The project goes in with --no-deps: its own requirements would pull the
# newest grpcio and protobuf over the floors.
$(OLDEST_STAMP): requirements/oldest.txt pyproject.toml
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip
	$(OLDEST_PY) -m pip install --quiet -r requirements/oldest.txt
	$(OLDEST_PY) -m pip install --quiet --no-deps -e .
	touch $(OLDEST_STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The Node.js worker example (its own package-lock.json; the e2e tests start it).
$(NODE_WORKER_STAMP): $(NODE_WORKER)/package.json $(NODE_WORKER)/package-lock.json
	npm ci --prefix $(NODE_WORKER) --no-audit --no-fund --loglevel=error
	touch $(NODE_WORKER_STAMP)

# PostgreSQL for the PostgreSQL store's tests and benchmarks: Debian's package (initdb and
# pg_ctl; the tests start their own server in a temporary directory, as the package's
# postgres user when run as root). Installed with apt-get when missing and we are root
# (CI); otherwise say how, and those tests are skipped (outside CI only).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing PostgreSQL (apt-get install postgresql)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "make: PostgreSQL is not installed (sudo apt-get install postgresql); its tests are skipped" >&2; \
	fi

setup: $(STAMP) $(OLDEST_STAMP) $(NODE_STAMP) $(NODE_WORKER_STAMP) postgres

## ui-vendor: copy the web UI's front-end libraries from node_modules (package-lock.json
## pins them) into the package; the copies are committed, so installing Headwater needs
## no npm and the UI fetches nothing at run time. tests/test_http_api.py checks they match.
UI_VENDOR := runtime/headwater_runtime/server/http/static/vendor
ui-vendor: $(NODE_STAMP)
	mkdir -p $(UI_VENDOR)
	cp node_modules/@dagrejs/dagre/dist/dagre.min.js $(UI_VENDOR)/dagre.min.js
	cp node_modules/@dagrejs/dagre/LICENSE $(UI_VENDOR)/dagre.LICENSE

## browser: Debian's chromium and chromium-driver, for the web UI's browser test
## (tests/test_browser.py); installed with apt-get when missing (CI runs as root).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; \
	else \
		echo "make browser: run as root, or: sudo apt-get install chromium chromium-driver" >&2; \
		exit 1; \
	fi

## demo: set up and run the main example embedded (no server needed)
demo: $(STAMP)
	$(PY) examples/quickstart.py

## test: set up and run lint, the proto checks and the whole test suite (in CI, with
## CI set, the browser is installed first: the browser test must run there, not skip)
test: setup
	@if [ -n "$$CI" ]; then $(MAKE) --no-print-directory browser; fi
	node_modules/.bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	npm --prefix $(NODE_WORKER) test --silent
	$(MAKE) --no-print-directory test-oldest
	@# pytest exits 5 when it collected no test: fail loudly rather than pass quietly.
	@$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

# The part of the suite that covers the contract, the server (in-process and as a
# subprocess), the worker, the client, schedules (croniter), the compiler (cloudpickle)
# and TLS, credentials and roles (gRPC's TLS and auth context at the oldest grpcio),
# run with exactly the oldest grpcio, protobuf, cloudpickle and croniter that
# pyproject.toml allows. Not the Dask, OpenTelemetry, PostgreSQL or numpy tests: those
# extras are not installed there (the server tests run on SQLite only).
OLDEST_TESTS := tests/test_contract.py tests/test_payloads.py tests/test_payload_service.py \
	tests/test_client.py tests/test_server_protocol.py tests/test_worker.py \
	tests/test_run_manager.py tests/test_compiler.py tests/test_remote_task.py \
	tests/test_schedule_times.py tests/test_schedules_server.py tests/test_schedules_e2e.py \
	tests/test_slices.py tests/test_limits.py \
	tests/test_graph_builds.py tests/test_subflows_server.py \
	tests/test_tls.py tests/test_security_matrix.py tests/test_worker_privilege.py \
	tests/test_http_security.py

## test-oldest: run the contract and server tests against the oldest supported versions
test-oldest: $(OLDEST_STAMP)
	@$(OLDEST_PY) -c "import grpc, google.protobuf as p; \
	print(f'oldest supported versions: grpcio {grpc.__version__}, protobuf {p.__version__}')"
	HEADWATER_TEST_STORES=sqlite $(OLDEST_PY) -m pytest -q -p no:cacheprovider $(OLDEST_TESTS)

## proto: regenerate the Python code from proto/ into python_sdk/headwater/v1/
proto: $(OLDEST_STAMP)
	rm -f python_sdk/headwater/v1/*_pb2*.py python_sdk/headwater/v1/*_pb2*.pyi
	$(OLDEST_PY) proto/generate.py python_sdk

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

## soak: the fault suite (tests/test_faults.py, in `make test` at its small size) longer:
## more rounds, runs, kills and faults, a new seed each time (printed with the figures).
## Any HW_FAULT_* variable set in the environment wins, e.g.
## `HW_FAULT_SEED=7 HW_FAULT_ROUNDS=20 make soak`. Not run by `make test` or CI.
soak: $(STAMP)
	HW_FAULT_SEED=$${HW_FAULT_SEED:-$$(date +%s)} \
	HW_FAULT_ROUNDS=$${HW_FAULT_ROUNDS:-6} HW_FAULT_RUNS=$${HW_FAULT_RUNS:-3} \
	HW_FAULT_KILLS=$${HW_FAULT_KILLS:-6} HW_FAULT_WIDTH=$${HW_FAULT_WIDTH:-200} \
	HW_FAULT_WORKER_ROUNDS=$${HW_FAULT_WORKER_ROUNDS:-4} \
	HW_FAULT_WORKER_TASKS=$${HW_FAULT_WORKER_TASKS:-120} \
	HW_FAULT_DISK_ROUNDS=$${HW_FAULT_DISK_ROUNDS:-6} \
	HW_FAULT_TIMEOUT=$${HW_FAULT_TIMEOUT:-3600} \
	$(PY) -m pytest -p no:cacheprovider tests/test_faults.py

lint: setup
	node_modules/.bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) $(OLDEST) node_modules $(NODE_WORKER)/node_modules .pytest_cache .ruff_cache
