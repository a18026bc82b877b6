# Two entry points for a fresh machine with Python 3.11 and pip:
#   make demo   - set up .venv and run the embedded-default demo
#   make test   - set up .venv and run the test suite
# Both install the exact versions of constraints.txt (the lock the suite and the demo were verified with).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := constraints.txt
LATEST := .venv-latest

.PHONY: install demo test test-slow test-latest lock bench bench-gpu clean

$(STAMP): setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c $(LOCK) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/simplear-rl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The suite against the newest releases setup.cfg allows (no lock), in its own venv; not run by CI.
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --upgrade pip
	$(LATEST)/bin/python -m pip install --upgrade --upgrade-strategy eager -e ".[test]"
	$(LATEST)/bin/python -m pytest -q

# Rewrite the lock from .venv (after `make test` and `make demo` passed with it).
lock: $(STAMP)
	{ sed -n '/^#/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

bench: $(STAMP)
	$(BIN)/python bench/rollout.py

# One-shot GPU check (CUDA, < 8 minutes): rollout backends at real size and one GRPO step -> bench/gpu_check/
bench-gpu: $(STAMP)
	bench/gpu_check.sh

clean:
	rm -rf $(VENV) $(LATEST) *.egg-info .pytest_cache
