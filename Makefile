# Everything CI runs is a target here. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 4000
export HOST PORT

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed-run: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed-run
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed-run console-assets ## Set up and start the hub (embedded mode) on http://$HOST:$PORT
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py quickstart
	$(PY) -m nerveshub.serve

# The console page's terminal (xterm.js from npm, pinned by the lock file) is
# copied into the git-ignored console/static/console/vendor/. Without npm the hub
# still runs; the console page then says its terminal assets are missing.
console-assets: ## Install the console page's terminal library (needs npm)
	@if command -v npm >/dev/null; then \
		{ npm ci --prefix console/static_src --no-audit --no-fund --loglevel=error && \
		npm run --prefix console/static_src --silent build; } || \
		echo "could not install the terminal library: the console page will say its assets are missing"; \
	else \
		echo "npm not found: the console page will say that its terminal assets are missing"; \
	fi

test: $(VENV)/.installed-dev ## Set up and run the test suite
	$(PY) -m pytest

lint: $(VENV)/.installed-dev ## ruff, mypy and the migrations check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(PY) manage.py makemigrations --check --dry-run

# --strict: a dependency that could not be looked up fails the audit too.
audit: $(VENV)/.installed-dev ## Check the installed dependencies against PyPI's vulnerability advisories
	$(VENV)/bin/pip-audit --strict --skip-editable --progress-spinner off

worker: $(VENV)/.installed-run ## Start a Celery worker (needs REDIS_URL)
	$(VENV)/bin/celery -A nerveshub worker --loglevel INFO

beat: $(VENV)/.installed-run ## Start Celery beat, the periodic backstops (needs REDIS_URL)
	$(VENV)/bin/celery -A nerveshub beat --loglevel INFO

.PHONY: help run console-assets test lint audit worker beat
