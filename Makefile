# modelpress: `make run` starts the service on embedded defaults, `make test` runs the tests,
# `make lint` checks style, the allowed imports between the parts and types (offline),
# `make audit` checks the installed packages for known vulnerabilities (needs pypi.org).
# The first Python >= 3.11 found; `make PYTHON=/path/to/python` chooses another.
PYTHON ?= $(shell for candidate in python3.13 python3.12 python3.11 python3; do \
	command -v $$candidate >/dev/null 2>&1 \
	&& $$candidate -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$candidate; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
# What each target needs, installed into one .venv (docs/deploy.md, "Install profiles"):
# the API alone (`pip install .`), the service (API and CPU worker, `.[worker]`, and the
# `modelpress` command), and the tests and tools on top (`.[worker,dev]`).
API_STAMP     := $(VENV)/.installed-api
SERVICE_STAMP := $(VENV)/.installed-service
STAMP         := $(VENV)/.installed
PIP_INSTALL   := $(BIN)/pip install -q --no-compile -c constraints.txt
# Test processes. 0 runs the suite in this process, which suits two cores best: every test
# process pays for importing torch once. With N > 0 the real-server tests share one of them.
TEST_WORKERS ?= 0

# Some environments set this; without compiled bytecode every process that imports torch
# compiles its modules again, which costs a minute of CPU on a small machine.
unexport PYTHONDONTWRITEBYTECODE
# The time (Unix seconds) by which every test must be over: a test starts only if its timeout
# still fits (the ones marked slow run last). Empty: no deadline. CI sets it from the time it has
# left, e.g. TEST_DEADLINE_AT=$$(( $$(date +%s) + 3600 )) for an hour from now.
TEST_DEADLINE_AT ?=

.PHONY: install install-service run api worker migrate test test-fast lint style audit bench system-packages clean screenshots

$(VENV)/bin/python:
	@test -n "$(PYTHON)" && $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11)); import ensurepip' \
		2>/dev/null || { \
		echo "modelpress needs Python 3.11 or newer with its venv module; found: $(or $(PYTHON),none)"; \
		echo "(looked for python3.13, python3.12, python3.11, python3 on PATH)."; \
		echo "Install one: Debian 12+ / Ubuntu 24.04: apt-get install python3 python3-venv;"; \
		echo "elsewhere https://www.python.org/downloads/ -- or name it: make PYTHON=/path/to/python3.12"; \
		exit 1; } >&2
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(API_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	@# Bytecode is compiled on first import instead, for the modules actually used.
	$(PIP_INSTALL) -e .
	touch $@

$(SERVICE_STAMP): pyproject.toml client/pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[worker]'
	@# The client and CLI (their own package): `modelpress submit` against the running service.
	$(PIP_INSTALL) -e ./client
	touch $(API_STAMP) $@

$(STAMP): pyproject.toml client/pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[worker,dev]'
	@# The tests drive the `modelpress` command too.
	$(PIP_INSTALL) -e ./client
	touch $(API_STAMP) $(SERVICE_STAMP) $@

install: $(STAMP)

# What `make run` needs: the API and a CPU worker, no test tools.
install-service: $(SERVICE_STAMP)

migrate: $(API_STAMP)
	$(BIN)/python -m core migrate

# One API process and one worker on SQLite, a local data folder and an embedded broker.
run: install-service migrate system-packages
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/celery -A worker.celery_app worker -Q cpu,gpu --loglevel INFO & \
	$(BIN)/python -m api

# The API alone needs neither torch nor onnxruntime.
api: migrate
	$(BIN)/python -m api

worker: install-service migrate system-packages
	$(BIN)/celery -A worker.celery_app worker -Q $${MODELPRESS_QUEUES:-cpu} --loglevel INFO

# Debian packages the service and the integration tests use for real (bubblewrap for the job
# sandbox, redis-server, PostgreSQL).
system-packages:
	@bash scripts/system-packages.sh

test: install system-packages
	$(BIN)/python -m pytest -ra --durations=30 -n $(TEST_WORKERS) --dist loadgroup \
		$(if $(TEST_DEADLINE_AT),--deadline-at=$(TEST_DEADLINE_AT))

# The dashboard's screenshots in docs/screenshots/, taken by its browser tests.
screenshots: install system-packages
	MODELPRESS_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/web -k browser

test-fast: install
	$(BIN)/python -m pytest -ra -m "not slow" -n $(TEST_WORKERS) --dist loadgroup

# Offline: the vulnerability audit needs pypi.org, so it is a target of its own.
lint: style
	$(BIN)/mypy api core worker optimizers web client/modelpress

style: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# The allowed imports between api, core, worker and optimizers (pyproject.toml).
	$(BIN)/lint-imports

audit: install
	@# Audits the versions installed here. Local build tags (torch 2.13.0+cpu) are dropped
	@# so a build that is not on PyPI is checked as the release it was built from.
	$(BIN)/python -m pip list --format=freeze --exclude-editable | sed 's/+.*$$//' > $(VENV)/audit-requirements.txt
	@# pip-audit passes when it could look up no package at all (a network without pypi.org):
	@# its JSON report says what it audited, and audit_coverage.py fails such a run.
	rm -f $(VENV)/audit.json
	$(BIN)/pip-audit --vulnerability-service pypi --disable-pip --no-deps --progress-spinner off \
		-r $(VENV)/audit-requirements.txt -f json -o $(VENV)/audit.json; \
	found=$$?; $(BIN)/python scripts/audit_coverage.py $(VENV)/audit.json && exit $$found

bench: install
	$(BIN)/python bench/service_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
