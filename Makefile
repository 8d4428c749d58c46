# vxdeploy developer targets. Everything runs in .venv at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test compile check-compiled lint format bench images clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	# nvidia-pytriton carries a real tritonserver binary for the serve check; its numpy<2 pin
	# does not apply to that binary, so it is installed without dependencies.
	$(BIN)/python -m pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## run the whole pipeline locally on the embedded digits model
	$(BIN)/vxdeploy run --local

test: setup  ## the test suite (GPU tests skip without a GPU)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

compile: setup  ## regenerate compiled/optimize_and_deploy.yaml
	$(BIN)/python -m pipelines.compile

check-compiled: setup  ## fail when compiled/ differs from what the source compiles to
	$(BIN)/python -m pipelines.compile --check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## speed of every candidate vs PyTorch eager; table + benchmarks/results/*.json
	$(BIN)/python -m benchmarks.run

images:  ## build and push the containers (needs a Docker daemon; REGISTRY=...)
	bash containers/build.sh

clean:
	rm -rf vxdeploy-runs benchmarks/results .pytest_cache .mypy_cache .ruff_cache
