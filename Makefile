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

.PHONY: install demo test test-slow test-latest lock bench bench-gpu gpu-kit gpu-dryrun clean

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

# One-shot GPU check (CUDA, an 8-minute budget) with this checkout's venv -> bench/gpu_check/. On the GPU image:
# `make gpu-kit` here, then there `bench/gpu_check.sh --kit .whl/gpu-kit --out DIR` (see docs/gpu.md).
bench-gpu: $(STAMP)
	bench/gpu_check.sh

# The GPU kit: the wheels the GPU machine's fixed image (bench/gpu_image.txt) lacks or has at a version we refuse,
# for CPython 3.12 manylinux x86_64, with MANIFEST.md saying why each is there (<= 55 MiB; git-ignored).
# Any python with pip and `packaging` runs it; KIT_PYTHON_VERSION picks another interpreter version.
GPU_KIT := .whl/gpu-kit
KIT_PYTHON_VERSION ?= 3.12
gpu-kit:
	$(PYTHON) bench/gpu_kit.py --out $(GPU_KIT) --python_version $(KIT_PYTHON_VERSION)

# A CPU dry run of the GPU path: .venv-gpu holds the image's versions (bench/gpu_image.txt; torch 2.11, transformers
# 5.17, no trl/datasets), the kit goes in with `pip install --no-index --no-deps --target` exactly as on the image,
# then (1) without the kit the version guard must refuse transformers 5.17 with exit 2, (2) the check's CPU path runs
# end to end, (3) the sampler-exactness, compiled-backend and a tiny GRPO test pass there. Output: bench/gpu_dryrun/.
# GPU_PYTHON: a CPython 3.12 like the image's (pyenv's if `python3.12` is not on PATH); else set it to any python3
# and the kit is fetched for that version.
GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed-stamp
GPU_PYTHON ?= $(firstword $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null) $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3)
DRYRUN := bench/gpu_dryrun

$(GPU_STAMP): bench/gpu_image.txt
	$(GPU_PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -r bench/gpu_image.txt
	touch $(GPU_STAMP)

gpu-dryrun: $(GPU_STAMP)
	bench/gpu_dryrun.sh $(GPU_VENV)/bin/python $(GPU_KIT) $(DRYRUN)

clean:
	rm -rf $(VENV) $(LATEST) $(GPU_VENV) *.egg-info .pytest_cache
