# mechattr: two commands. `make demo` and `make test` each set up .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU torch by default (no CUDA wheels on machines without a GPU); override with TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.mechattr-installed
# A second venv with TransformerLens 4 (bridge only, no HookedTransformer): `make test-tl4`.
VENV4  ?= .venv-tl4
PY4    := $(VENV4)/bin/python
STAMP4 := $(VENV4)/.mechattr-installed

.PHONY: demo test test-tl4 setup setup-tl4 lint clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@# Respect a torch that is already installed; otherwise install a CPU build unless a GPU is present.
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	  else $(PY) -m pip install -q "$(TORCH_SPEC)"; fi; }
	@$(PY) -m pip install -q -e ".[dev]" "transformer-lens==3.9.*"
	@touch $(STAMP)

setup-tl4: $(STAMP4)

$(STAMP4): pyproject.toml
	@test -x $(PY4) || $(PYTHON) -m venv $(VENV4)
	@$(PY4) -m pip install -q --upgrade pip
	@$(PY4) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY4) -m pip install -q torch; \
	  else $(PY4) -m pip install -q "$(TORCH_SPEC)"; fi; }
	@$(PY4) -m pip install -q -e ".[dev]" "transformer-lens>=4,<5"
	@touch $(STAMP4)

demo: $(STAMP)
	@$(PY) -m mechattr.cli demo --out reports/demo

test: $(STAMP)
	@$(PY) -m pytest -n 2 --dist loadfile

test-tl4: $(STAMP4)
	@$(PY4) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	@$(PY) -m ruff check mechattr tests scripts analyses

bench: $(STAMP)
	@for s in scripts/bench_*.py; do $(PY) $$s || exit 1; done

clean:
	rm -rf $(VENV) $(VENV4) reports .pytest_cache
