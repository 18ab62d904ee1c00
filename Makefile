# Two commands on a fresh machine: `make demo` and `make test`.
# The environment is created on first use and rebuilt only when pyproject.toml or this file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
DEEPSPEED_VERSION := 0.19.8
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed's CPU collectives op is compiled on first use (about 1.5 min); it is built once with the environment
# into it, so that no training launch (or test) pays for it.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions

.PHONY: demo test lint env clean

env: $(STAMP)

# torch first and pinned (an unpinned torch resolves to a multi-GB CUDA build), then DeepSpeed
# without build isolation (it compiles against the installed torch), then the project.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation deepspeed==$(DEEPSPEED_VERSION)
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	$(PY) -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); b and b.load()"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/capflow demo --workdir demo

test: $(STAMP)
	$(PY) -m pytest tests --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo
