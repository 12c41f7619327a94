# The two front-door commands (see README): `make demo` and `make test`.
# Both create .venv on first use and install the project with the pinned torch of this project's machines.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= runs/demo
# One seed takes ~20 min on 2 cores with the peer row; DEMO_SEEDS=3 (the README table) ~65 min.
DEMO_SEEDS ?= 1
# The rows `make demo` runs; DEMO_VARIANTS= (empty) runs every row of the experiment. `peer` (lightly's SimCLR,
# installed on demand: the optional `peer` extra) is the row of an implementation nobody here wrote; drop it from
# the list to run without lightly.
DEMO_VARIANTS ?= random_init,random_init_zero_residual,relicv2_saliency,peer
DEMO_PEER := $(if $(or $(findstring peer,$(DEMO_VARIANTS)),$(if $(DEMO_VARIANTS),,all)),$(VENV)/.peer-installed)

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## The demo experiment on the built-in demo dataset (generated on first use), DEMO_SEEDS seeds: probe the
## default-init random encoder (the baseline) and the zero-init one, pretrain the CPU demo recipe, and probe each
## the same way, and lightly's SimCLR peer on the same encoder and budget (installed first).
demo: setup $(DEMO_PEER)
	$(VENV)/bin/relic-fast experiment --config configs/demo_cpu.toml --seeds $(DEMO_SEEDS) --out $(DEMO_OUT) \
		$(if $(DEMO_VARIANTS),--variants $(DEMO_VARIANTS))

$(VENV)/.peer-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[peer]'
	touch $@

## The whole test suite (what CI runs).
test: setup
	$(PY) -m pytest -q

## Everything but the tests marked slow.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
