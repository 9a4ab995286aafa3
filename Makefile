# One command to set up and run each thing a new user wants. Everything lives in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a CUDA machine set TORCH_SPEC="torch>=2.4,<3" to take pip's default.
TORCH_SPEC ?= torch==2.13.0
DEMO_ITERATIONS ?= 3000

.PHONY: install demo train-demo test lint benchmark clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

## install: create .venv with PyTorch (CPU build) and metasweep
install: $(VENV)/.installed

## train-demo: install, then meta-train MAML on sinusoid regression (no Ray, no servers)
train-demo: install
	$(VENV)/bin/metasweep train examples/sinusoid_maml.yaml \
		--set name=demo --set train.iterations=$(DEMO_ITERATIONS) --set train.eval_every=1000

## demo: install, then a small sweep on local Ray, tracked in ./mlflow.db, best model registered
demo: install
	$(VENV)/bin/metasweep sweep examples/sweep_sinusoid_maml.yaml \
		--set name=demo-$$(date +%Y%m%d-%H%M%S) --set train.iterations=1000 --set search.num_samples=4 \
		--set search.grace_period=500 --set train.eval_every=250

## test: install, then run the whole test suite
test: install
	$(VENV)/bin/pytest

## lint: ruff and mypy
lint: install
	$(VENV)/bin/ruff check algorithms orchestrator tests benchmarks
	$(VENV)/bin/ruff format --check algorithms orchestrator tests benchmarks
	$(VENV)/bin/mypy

## benchmark: meta-training throughput of every algorithm against a learn2learn-style baseline
benchmark: install
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
