# Tidings: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install Tidings with its dev tools

infra-up: venv ## start local Kafka (KRaft, from Maven Central) and Redis in the background
	$(PY) -m devstack.infra up

infra-down: ## stop the local Kafka and Redis that infra-up started
	@if [ -x $(PY) ]; then $(PY) -m devstack.infra down; else python3 -m devstack.infra down; fi

infra-status: ## show whether local Kafka and Redis are up
	$(PY) -m devstack.infra status

topics: venv ## create every topic on the configured cluster
	$(VENV)/bin/tidings topics create

run: venv ## the whole pipeline with local sinks; prints each delivery until Ctrl-C
	$(PY) -m devstack.demo run

demo: venv ## publish the demo events, wait for every expected outcome, print a summary
	$(PY) -m devstack.demo demo

lint: venv ## ruff and mypy (strict on the packages)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: venv lint browser ## lint, then the whole test suite on real Kafka, Redis, SMTP and HTTP
	$(PY) -m pytest

chaos: venv ## the chaos suite at full size on private servers; reports in .local/chaos/ (not part of make test)
	TIDINGS_CHAOS_EVENTS=full $(PY) -m pytest -m chaos

chaos-ci: venv ## the chaos suite with 400 events per scenario (what CI runs, about 8 minutes)
	TIDINGS_CHAOS_EVENTS=$${TIDINGS_CHAOS_EVENTS:-400} $(PY) -m pytest -m chaos

browser: tests/browser/node_modules/.package-lock.json ## npm packages of the browser test (playwright-core; uses /usr/bin/chromium)

tests/browser/node_modules/.package-lock.json: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

unit: venv ## only the tests that need no Kafka or Redis
	$(PY) -m pytest -m "not integration and not chaos"

bench: venv infra-up ## benchmarks B1-B6 on local Kafka, Redis, nginx and SMTP (under 10 min); see docs/performance.md
	$(PY) tests/perf/bench.py $(BENCH_ARGS)

manifests: venv ## regenerate the generated files of deploy/k8s/base (topics, consumers, config, alerts)
	$(PY) -m devstack.manifests

clean: infra-down ## stop local servers and remove .local and caches
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache

.PHONY: help venv infra-up infra-down infra-status topics run demo lint test chaos chaos-ci unit browser bench manifests clean
