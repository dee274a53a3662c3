# Meta Chat Platform. `make run` serves it on embedded defaults; `make test` runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test install install-dev browser kubectl promtool bench lint format typecheck stop clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	rm -f $(VENV)/.bench-installed-*
	touch $(BENCH_STAMP)

# Debian's Chromium for the browser tests (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's kubectl (package kubernetes-client) for the deployment test, which renders the Kubernetes
# overlays with `kubectl kustomize` (no cluster is contacted).
kubectl:
	@command -v kubectl >/dev/null 2>&1 || { \
	  echo "installing Debian's kubernetes-client (kubectl) for the deployment test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq kubernetes-client >/dev/null; }

# Debian's promtool (package prometheus) for the metrics tests: `promtool check metrics` on a real
# scrape of /metrics and `promtool check rules` on deploy/prometheus/alerts.yml.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus (promtool) for the metrics tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus >/dev/null; }

run: install
	$(PY) -m config.launcher run

test: install browser kubectl promtool
	$(PY) -m config.launcher test $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(PY) -m bench.run_all $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

# The django-stubs plugin loads the settings: give it a throwaway key and unreachable servers.
typecheck: install
	SECRET_KEY_ID=typecheck SECRET_ENCRYPTION_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= DJANGO_SECRET_KEY=typecheck \
	DATABASE_URL=postgresql://typecheck@127.0.0.1:1/typecheck REDIS_URL=redis://127.0.0.1:1/0 \
	$(PY) -m mypy config tenants events channels_app knowledge conversations  # the same list as config.launcher.TYPED_PACKAGES

stop: install
	$(PY) -c "from config import embedded as e; e.stop_embedded_postgres(); e.stop_embedded_redis()"

clean: stop
	rm -rf var $(VENV)
