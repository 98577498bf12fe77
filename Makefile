# The project's two entry points (see README): `make dryrun` and `make test`.
# Both create .venv on first use. Machines without an NVIDIA GPU get the CPU build of torch
# (constraints/cpu.txt); GPU machines keep the torch they bring or get a CUDA build from PyPI.
# PIP_CONSTRAINT carries the torch pin into pip's isolated build environments too (DeepSpeed ships as
# an sdist; its build needs no torch today, and must never pull a CUDA build if that changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MAKE_START := $(shell date +%s)

.PHONY: dryrun test test-fast lint install clean-venv gpu-check gpu-wheels

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -e '.[dev]'; \
	else \
		PIP_CONSTRAINT=$(CURDIR)/constraints/cpu.txt $(PY) -m pip install -c constraints/cpu.txt -e '.[dev]'; \
	fi
	touch $(STAMP)

install: $(STAMP)

dryrun: $(STAMP)
	$(VENV)/bin/flm dryrun

# lint, format check, type check, the layering contract (docs/architecture.md); then the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# ends with the wall time since make started (lint and tests; the venv too when this make created it)
# and the CPU time of the tests (user, system: pytest and every process it started): the CI budget is
# 20 minutes on 2 cores (issue 26), so the CPU total must stay well under 40 minutes. The tests run on
# TEST_WORKERS pytest-xdist workers, each test file on one worker, files with slow tests first
# (tests/conftest.py); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: lint
	@$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25; rc=$$?; \
	echo "make test: $$(( $$(date +%s) - $(MAKE_START) )) s wall, pytest exit $$rc"; \
	echo "make test: CPU (user system) of this shell, then of the tests (pytest and every process it started):"; \
	times; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The GPU check (bench/gpu_check.py, docs/benchmarks.md): `make gpu-wheels` where a package registry
# is reachable (pip download of the Python 3.12 wheels the GPU machine lacks into .gpu-wheels/),
# then, with that folder carried over, `make gpu-check` on the CUDA machine (no venv, no registry:
# the machine's own python and torch).
gpu-wheels:
	$(PYTHON) bench/gpu_check.py wheels

gpu-check:
	$(PYTHON) bench/gpu_check.py run

clean-venv:
	rm -rf $(VENV)
