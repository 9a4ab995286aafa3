# One command to set up and run each thing a new user wants. Everything lives in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a CUDA machine set TORCH_SPEC="torch>=2.4,<3" to take pip's default.
TORCH_SPEC ?= torch==2.13.0
DEMO_ITERATIONS ?= 3000

.PHONY: install demo train-demo test check lint docs benchmark clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

## install: create .venv with PyTorch (CPU build) and metasweep
install: $(VENV)/.installed

## train-demo: install, then meta-train MAML on sinusoid regression (no Ray, no servers) into a
## new runs/demo-DATE-TIME; earlier demos are kept
train-demo: install
	$(VENV)/bin/metasweep train examples/sinusoid_maml.yaml \
		--set name=demo-$$(date +%Y%m%d-%H%M%S) --set train.iterations=$(DEMO_ITERATIONS) --set train.eval_every=1000

## demo: install, then a small sweep on local Ray, tracked in ./mlflow.db, best model registered
demo: install
	$(VENV)/bin/metasweep sweep examples/sweep_sinusoid_maml.yaml \
		--set name=demo-$$(date +%Y%m%d-%H%M%S) --set train.iterations=1000 --set search.num_samples=4 \
		--set search.grace_period=500 --set train.eval_every=250

## test: install, lint, then run the whole test suite (what CI runs), in TEST_WORKERS processes
## (pytest-xdist; each test file stays in one of them, so a module's cluster or server is started
## once; TEST_WORKERS=0 runs it in this process)
TEST_WORKERS ?= 2
test: lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

## check: the fast loop: lint, then the unit tests (no servers, no long training, no CLI processes)
check: lint
	$(VENV)/bin/pytest -m "not integration and not slow and not cli" -q

## lint: ruff (lint and format), mypy on both packages (strict on the core), the import contracts
lint: install
	$(VENV)/bin/ruff check algorithms orchestrator tests benchmarks examples
	$(VENV)/bin/ruff format --check algorithms orchestrator tests benchmarks examples
	@# mypy finds modules by folder name; the folders install as metasweep.algorithms/.orchestrator.
	@mkdir -p .lint/metasweep && ln -sfn ../../algorithms .lint/metasweep/algorithms \
		&& ln -sfn ../../orchestrator .lint/metasweep/orchestrator
	$(VENV)/bin/mypy -p metasweep.algorithms -p metasweep.orchestrator
	$(VENV)/bin/lint-imports

## docs: regenerate docs/config.md from the config schema's field descriptions
docs: install
	$(PY) -m metasweep.orchestrator.config > docs/config.md

## benchmark: meta-training throughput of every algorithm against a learn2learn-style baseline
benchmark: install
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .lint .import_linter_cache
