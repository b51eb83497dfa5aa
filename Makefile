# carp-sidecar — `make help` lists the targets. Everything installs what it needs (run as root).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make demo` installs only what `carp-sidecar lab` runs (Apache, ip, curl, a venv);
# `make deps` (test, bench...) the rest: the tests' ucarp, keepalived, Prometheus, BIRD, FRR...
DEMO_APT_PACKAGES := python3-venv apache2 iproute2 curl rsync libapache2-mod-php
APT_PACKAGES := $(DEMO_APT_PACKAGES) ucarp tshark tcpdump prometheus keepalived procps net-tools nftables docker-compose openssl faketime bird2 frr prometheus-blackbox-exporter
IMAGE ?= localhost/carp-sidecar
# invoke-rc.d and deb-systemd-invoke ask it before starting a service (exit 101: do not)
POLICY_RC_D ?= /usr/sbin/policy-rc.d
PYTEST_ARGS ?=

.PHONY: help deps venv lint typecheck unit deploy-check integration test demo docs bench chaos dist image image-test clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# One stamp per package set. kubectl renders the kustomize base in the tests (deps only): any
# kubectl will do (Debian's kubernetes-client, or one the machine already has, which that
# package would conflict with).
.stamp-apt-demo: PACKAGES := $(DEMO_APT_PACKAGES)
.stamp-apt: PACKAGES := $(APT_PACKAGES)
.stamp-apt: KUBECTL := kubernetes-client
.stamp-apt .stamp-apt-demo: Makefile
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (apt-get and network namespaces)"; exit 2; fi
	@# The host's services are never touched: packages are installed with a policy-rc.d that
	@# forbids starting services, and nothing is stopped, disabled or masked; a host Apache's
	@# enabled modules are put back as they were (libapache2-mod-php switches its MPM to
	@# prefork and enables PHP: the lab's Apache loads its own modules). The tests and
	@# the lab run their own Apache, ucarp, keepalived and Prometheus in network namespaces.
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	$(if $(KUBECTL),command -v kubectl >/dev/null || missing="$$missing $(KUBECTL)";) \
	if [ -n "$$(echo $$missing)" ]; then \
	  echo "installing Debian packages (their services not started): $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; policy=$(POLICY_RC_D); ours=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; ours=1; fi; \
	  mods=/etc/apache2/mods-enabled; kept=$$(mktemp -d); \
	  [ -d $$mods ] && cp -a $$mods/. $$kept/; \
	  apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $$missing >/dev/null; \
	  status=$$?; [ -n "$$ours" ] && rm -f $$policy; \
	  if [ -n "$$(ls -A $$kept)" ]; then rm -f $$mods/*; cp -a $$kept/. $$mods/; fi; rm -rf $$kept; \
	  [ $$status = 0 ] || exit $$status; \
	fi
	@touch $@

deps: .stamp-apt $(VENV)/.stamp-test ## install Debian packages and the .venv

$(BIN)/python:
	$(PY) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }  # no half-made venv to skip next time
	$(BIN)/pip install -q --upgrade pip

# One .venv, one stamp per set of extras: `make demo` installs the project with the lab's
# (matplotlib) only; `make venv`, before or after it, adds the test tools to the same .venv.
# (Not bin/carp-sidecar as the stamp: either install writes it.)
$(VENV)/.stamp-lab: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[lab]'
	@touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.stamp-test ## create .venv with the project and its test tools

lint: venv ## ruff, and the import contracts of pyproject.toml (import-linter)
	$(BIN)/ruff check sidecar tests grafana docs/gen
	$(BIN)/lint-imports

typecheck: venv ## mypy --strict on the package
	$(BIN)/mypy --strict sidecar

unit: venv ## the pure unit suite: no root, no external tools, in parallel (under 15 s)
	$(BIN)/pytest -q -n auto tests/unit $(PYTEST_ARGS)

deploy-check: deps ## the shipped files through their own tools (hadolint, kubectl, promtool, systemd-analyze, compose)
	$(BIN)/pytest -q tests/deploy $(PYTEST_ARGS)

integration: deps ## root + netns tests (real ucarp, apache, prometheus)
	$(BIN)/pytest -q -m "integration and not image" tests/integration $(PYTEST_ARGS)

test: deps lint typecheck ## lint, types, unit, deploy-file and integration tests (not the image: image-test)
	$(BIN)/pytest -q -n auto tests/unit tests/deploy $(PYTEST_ARGS)
	$(BIN)/pytest -q -m "not image" --durations=25 tests/integration $(PYTEST_ARGS)

demo: .stamp-apt-demo $(VENV)/.stamp-lab ## two-node failover lab on this machine (network namespaces, Apache, carp-sidecar)
	$(BIN)/carp-sidecar lab $(LAB_ARGS)

docs: venv ## the documentation site into build/site: reference pages from the code, mkdocs --strict
	$(BIN)/python docs/gen/reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# Start-up is timed on the package as a user installs it (a wheel, its bytecode compiled by pip),
# not on the editable .venv: that one imports setuptools' finder in every interpreter (~16 ms)
# and, where PYTHONDONTWRITEBYTECODE is set, compiles the sources on every start.
# It runs on Debian's python3 where there is one: what a systemd install on Debian
# (deploy/systemd) and CI's image run (the default image's python:3.11-slim is a source build).
# This machine's pyenv build runs the same code ~9 % slower (paired A/B, `python -c pass` to
# check-config). bench_startup prints which one it measured.
BENCH_VENV := build/bench-venv
BENCH_PY ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PY))
$(BENCH_VENV)/bin/carp-sidecar: pyproject.toml $(shell find sidecar -name '*.py') | .stamp-apt
	rm -rf $(BENCH_VENV)
	$(BENCH_PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check .

bench: deps $(BENCH_VENV)/bin/carp-sidecar ## codec/import benchmarks, failover downtime vs ucarp and keepalived, replication, VRRP in keepalived groups
	$(BIN)/python tests/bench/bench_codec.py
	$(BIN)/python tests/bench/bench_failover.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/bench_instances.py --json docs/bench-instances.json
	$(BIN)/python tests/bench/bench_subsecond.py --merge docs/bench-results.json
	$(BIN)/python tests/bench/bench_routed.py --merge docs/bench-results.json
	$(BENCH_VENV)/bin/python tests/bench/bench_startup.py --merge docs/bench-results.json
	$(BIN)/python tests/bench/bench_together.py --merge docs/bench-results.json
	$(BIN)/python tests/bench/bench_sync.py --merge docs/bench-results.json
	$(BIN)/python tests/bench/bench_restart.py --merge docs/bench-results.json --containers
	$(BIN)/python tests/bench/bench_vrrp.py --soak 10 --merge docs/bench-results.json

chaos: deps ## the long adversarial run (~35 min): floods, scrape storm, 10 min of faults, 200k fuzz cases
	HYPOTHESIS_PROFILE=chaos $(BIN)/pytest -q -p no:cacheprovider tests/unit/test_fuzz_receive.py
	$(BIN)/python tests/chaos/chaos.py --json docs/chaos-results.json $(CHAOS_ARGS)

dist: venv ## build the wheel and the sdist into dist/
	$(BIN)/python -m build --outdir dist .

image: ## build the container image with Podman (localhost/carp-sidecar)
	IMAGE=$(IMAGE) bash .ci/build-image.sh

image-test: deps image ## build the image and run it in network namespaces
	IMAGE=$(IMAGE) $(BIN)/pytest -q -s -m image tests/integration $(PYTEST_ARGS)

clean: ## remove the venv and caches
	rm -rf $(VENV) build dist .stamp-* .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
