# movierec — every target bootstraps what it needs: the virtualenv, the data, a model.
# Quick start: `make run` (serve on :5000) and `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MOVIEREC := $(VENV)/bin/movierec
# The stamp's name carries the hash of what was installed, so a change to either file reinstalls;
# their mtimes are no prerequisite: a fresh clone, a checkout or a touch reinstalled into VENV
# (a shared one given as VENV=... too), minutes and the package index needed for nothing.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.txt | sha1sum | cut -c1-12)
DATA_DIR ?= data
DATA_SOURCE ?=
MODEL_DIR ?= model
SECRETS := var/secrets.env
LOGIN_BODY := $(dir $(SECRETS))login.json
HOST ?= 127.0.0.1
PORT ?= 5000
PYTEST_ARGS ?=
# pip prints one warning per package for the machine's optional local indexes; hide only those.
QUIET_PIP := { grep -v "^WARNING: Location 'file://" || true; }
# setuptools' notice, on every editable install, that a folder named like a package of ours would
# shadow it (8 lines): a Python warnings filter on that one notice's summary, so every other warning
# and every error of pip and setuptools still shows ("Problem in editable installation." too).
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation.:UserWarning"

# The steps of `make run` and `make test` say what they do and run quietly (@): echoed with its
# command, an error handler read as a failure on a run that worked. `make -n` shows the commands.

.PHONY: help venv data model secrets compose-secrets run serve serve-prod train pipeline evaluate test test-fast lint bench bench-instructions clean

help:
	@echo "make run    set everything up, train a model if none exists, serve on http://$(HOST):$(PORT)"
	@echo "make test   run every test tier (unit, api, integration, model, slow, docker, browser)"
	@echo "other: venv data model secrets (make run's steps) test-fast lint train pipeline evaluate serve serve-prod"
	@echo "       bench bench-instructions clean"
	@echo "Docker: see docs/docker.md (make compose-secrets, then docker compose up --build; deploy-docker.py)"

# pyproject.toml's requires-python; each failure below is one line saying what to do
PY_VERSION_OK := import sys; sys.exit(sys.version_info < (3, 11))
REMAKE_VENV := remove it (rm -rf $(VENV)) and run make again
PIP_FAILED := { echo "make: pip could not install into $(VENV) (its error is above): is the package index reachable (network, proxy, PIP_INDEX_URL)?" >&2; exit 1; }

$(STAMP):
	@$(PYTHON) -c '$(PY_VERSION_OK)' 2>/dev/null || { echo "make: $(PYTHON) is not Python 3.11 or newer (or not found): name one, e.g. make PYTHON=python3.11" >&2; exit 1; }
	@[ ! -e $(VENV) ] || $(PY) -c '$(PY_VERSION_OK)' 2>/dev/null || { echo "make: $(VENV) has no working Python 3.11 or newer (made by another Python, or its Python is gone): $(REMAKE_VENV)" >&2; exit 1; }
	@echo "$(if $(wildcard $(VENV)),updating,creating) $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "installing dependencies into $(VENV) (quiet, about a minute and a half)"
	@$(PY) -m pip install --quiet --upgrade pip setuptools wheel 2>&1 | $(QUIET_PIP) || $(PIP_FAILED)
	@$(QUIET_EDITABLE) $(PY) -m pip install --quiet -c requirements.txt -e '.[dev]' 2>&1 | $(QUIET_PIP) || $(PIP_FAILED)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# Installed once (the stamp), checked every time: a virtualenv whose Python was removed or moved
# failed at its first command with "cannot execute: required file not found".
venv: $(STAMP)
	@$(PY) -c '$(PY_VERSION_OK)' 2>/dev/null || { echo "make: $(VENV) is broken ($(PY) does not run): $(REMAKE_VENV)" >&2; exit 1; }

# DATA_SOURCE: a directory (either layout) or the GroupLens zip to take ml-100k from, for a machine
# that reaches neither PyPI nor GroupLens (the fetch's error says --source, which make cannot take).
# Said only when ml-100k could not be obtained (data fetch exits 3), not after data was refused (1).
data: venv
	@echo "fetching ml-100k into $(DATA_DIR)/ (once: later runs check it)"
	@$(MOVIEREC) data fetch --data-dir $(DATA_DIR) $(if $(DATA_SOURCE),--source '$(DATA_SOURCE)') \
		|| { status=$$?; [ $$status -ne 3 ] || echo "make: to take ml-100k from a copy you have: make $(or $(MAKECMDGOALS),data) DATA_SOURCE=DIR-OR-ZIP" >&2; exit $$status; }

# A bundle exists after this; training happens only when the model store has none.
model: data
	@echo "training a model into $(MODEL_DIR)/ if it has none (about a minute)"
	@$(MOVIEREC) train --if-missing --data-dir $(DATA_DIR) --model-dir $(MODEL_DIR)

# Random secrets for local runs, created once, readable only by you (never on a command line).
# Each file is written beside its name and renamed: one cut short (a failed step, Ctrl-C) was taken
# for made by every later run. The login body is made again from the secrets when it is missing
# or older than them.
secrets: $(SECRETS) $(LOGIN_BODY)
$(SECRETS):
	@mkdir -p $(dir $(SECRETS)) && umask 077 && $(PYTHON) -c 'import secrets; print("SESSION_PASSWORD=" + secrets.token_urlsafe(12)); print("ADMIN_PASSWORD=" + secrets.token_urlsafe(16)); print("MOVIEREC_JWT_SECRET=" + secrets.token_urlsafe(48))' > $@.tmp
	@mv $@.tmp $@
	@echo "created $@ (mode 600)"
$(LOGIN_BODY): $(SECRETS)
	@umask 077 && . $(SECRETS) && printf '{"session_password": "%s"}\n' "$$SESSION_PASSWORD" > $@.tmp
	@mv $@.tmp $@
	@echo "created $@ (mode 600)"

# docker-compose.yml's secret files, once, into ./secrets (0700; MOVIEREC_SECRETS_DIR to move it):
# mounted under /run/secrets, never in a container's environment (app/compose_secrets.py).
compose-secrets:
	$(PYTHON) -m app.compose_secrets

# The address first: a port taken is one error line, not the login hints followed by it
run: model secrets
	@$(MOVIEREC) serve --check --host $(HOST) --port $(PORT)
	@echo ""
	@echo "movierec is starting on http://$(HOST):$(PORT)"
	@echo "  log in:    TOKEN=\$$(curl -s -X POST -H 'Content-Type: application/json' -d @$(LOGIN_BODY) http://$(HOST):$(PORT)/api/login \\"
	@echo "               | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
	@echo "  then:      curl -s -X POST -H 'Content-Type: application/json' -H \"Authorization: Bearer \$$TOKEN\" \\"
	@echo "               -d '{\"age\": 30, \"gender\": \"M\", \"occupation\": \"programmer\"}' http://$(HOST):$(PORT)/api/recommend"
	@echo "  password:  in $(SECRETS) (SESSION_PASSWORD); API docs at http://$(HOST):$(PORT)/docs"
	@echo "  stop:      Ctrl-C (it serves in the foreground; its log is the JSON lines below)"
	@echo ""
	@set -a && . $(SECRETS) && set +a && ML_MODEL_PATH=$(MODEL_DIR) exec $(MOVIEREC) serve --host $(HOST) --port $(PORT)

serve: model secrets
	set -a && . $(SECRETS) && set +a && ML_MODEL_PATH=$(MODEL_DIR) exec $(MOVIEREC) serve --host $(HOST) --port $(PORT)

# uwsgi and the Python that binds its port (app/listener.py) are the virtualenv's, as in the image
serve-prod: model secrets
	set -a && . $(SECRETS) && set +a && PATH="$(abspath $(VENV))/bin:$$PATH" ML_MODEL_PATH=$(MODEL_DIR) \
		MOVIEREC_HOST=$(HOST) MOVIEREC_PORT=$(PORT) exec scripts/start-uwsgi.sh

train: data
	$(MOVIEREC) train --data-dir $(DATA_DIR) --model-dir $(MODEL_DIR)

# The whole life cycle once (docs/pipeline.md): features, every candidate through Metaflow,
# MLflow registry, promotion gate, champion exported to $(MODEL_DIR), and a service started by
# `make run` reloaded (admin password from $(SECRETS) when it exists; otherwise a warning).
pipeline: data
	set -a && { [ ! -f $(SECRETS) ] || . $(SECRETS); } && set +a && MOVIEREC_SERVICE_URL=http://$(HOST):$(PORT) \
		$(MOVIEREC) pipeline run --data-dir $(DATA_DIR) --model-dir $(MODEL_DIR)

evaluate: data
	$(MOVIEREC) evaluate --data-dir $(DATA_DIR)

# pytest exits 5 when it collected nothing: a broken selection is a failure, not a pass.
test: data
	@echo "running pytest"
	@$(PY) -m pytest $(PYTEST_ARGS) || { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests" >&2; exit $$status; }

test-fast: venv
	$(PY) -m pytest -m "unit or api" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check app tests bench main.py deploy-docker.py monitor-docker.py
	$(VENV)/bin/ruff format --check app tests bench main.py deploy-docker.py monitor-docker.py
	$(VENV)/bin/mypy
	$(VENV)/bin/bandit -q -c pyproject.toml -r app
	$(VENV)/bin/pip-audit --progress-spinner off -r requirements.txt

# serve_bench.py needs wrk (apt-get install wrk) and PostgreSQL; it runs the API under uwsgi on loopback
# (docs/performance.md). Both benchmarks check what they need before the data and the model (minutes
# on a fresh checkout): a prerequisite `model` ran first, and a missing wrk was found after it.
bench: venv
	$(PY) bench/serve_bench.py --check
	@$(MAKE) --no-print-directory model
	$(PY) bench/benchmark.py --data-dir $(DATA_DIR)
	$(PY) bench/serve_bench.py --model-dir $(MODEL_DIR) --data-dir $(DATA_DIR)

# instructions per request under callgrind (needs valgrind): steady where timings drift (~5 min)
bench-instructions: venv
	$(PY) bench/instructions.py --check
	@$(MAKE) --no-print-directory model
	$(PY) bench/instructions.py --model-dir $(MODEL_DIR) --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
