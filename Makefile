# The two commands of the README: `make serve` and `make test`. Both set everything up on a fresh
# machine (a virtualenv in .venv, PyTorch, Kiln, and for the tests the JS client) and are safe to rerun.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# one build for CPU and CUDA machines alike: where CUDA is available pip picks the CUDA wheel
TORCH := torch==2.13.0
ARGS ?=
comma := ,

.PHONY: serve test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# on a host with an NVIDIA driver, also the `cuda` extra (torchao: FP8 for `acceleration: regular/high`)
EXTRAS := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "[cuda]")

$(VENV)/.serve-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet --editable ".$(EXTRAS)"
	touch $@

$(VENV)/.test-deps: pyproject.toml tests/js/package-lock.json $(VENV)/.serve-deps
	$(BIN)/python -m pip install --quiet --editable ".[test$(if $(EXTRAS),$(comma)cuda)]"
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

serve: $(VENV)/.serve-deps
	$(BIN)/kiln serve $(ARGS)

# two pytest processes (pytest-xdist), each taking a whole test file at a time, so a file's tests
# share its servers and fixed ports; TEST_WORKERS=0 runs everything in one process
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(VENV)/.test-deps
	$(PYTEST) $(ARGS)

# the inner loop: everything but the tests marked slow (server processes, diffusion models, fuzzing)
test-fast: $(VENV)/.test-deps
	$(PYTEST) -m "not slow" $(ARGS)

bench: $(VENV)/.test-deps
	$(BIN)/python -m bench.queue_overhead $(ARGS)

clean:
	rm -rf $(VENV) tests/js/node_modules
