# Two commands on a fresh clone (only python3 needed): `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test bench chaos lint install clean-data

# Created only when missing; an existing .venv is reused.
$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements file changed since the last install.
$(STAMP): $(wildcard requirements*.txt) | $(PY)
	$(VENV)/bin/pip install -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m devtools.run_local

# pytest.ini loads tests.servers before pytest-django reads the
# settings, so DATABASE_URL/REDIS_URL exist in time (see tests/servers.py).
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

# Fault-injection suite (README *Reliability*): seeded, bounded, stops everything it started.
# Reproduce one scenario: make chaos ARGS="--seed N --only R3"
chaos: $(STAMP)
	$(PY) -m chaos $(ARGS)

# Byte-compiles everything; uses ruff too when it is installed.
lint: $(STAMP)
	$(PY) -m compileall -q devtools tests $(wildcard queuemanager queues jobs kafkabus consumers api console mirror ops benchmarks chaos)
	@if $(PY) -m ruff --version >/dev/null 2>&1; then $(PY) -m ruff check .; fi

# Local PostgreSQL data, secret key, admin password and local.env (make run recreates them; as root, a
# cluster kept in /var/tmp for a clone under a private folder is replaced on the next start).
clean-data:
	rm -rf .data
