# vxdeploy developer targets. Everything runs in .venv at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test compile check-compiled lint format bench images clean gpu-check gpu-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	# nvidia-pytriton carries a real tritonserver binary for the local serve check; its numpy<2 pin
	# does not apply to that binary, so it goes outside the environment's sys.path
	# (.venv/share/vxdeploy/pytriton, without its dependencies): `pip check` stays clean.
	$(BIN)/python -m components.package.triton_install
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

# The CPU dry run here; on a GPU machine pass e.g. GPU_CHECK_ARGS="--budget-s 300". On a lent
# GPU it runs through the device tool (no make, no .venv there): see benchmarks/README.md.
GPU_CHECK_ARGS ?= --device cpu --quick
gpu-check: setup  ## GPU evidence: eager/autocast/torch.compile/AOTI accuracy and throughput (benchmarks/gpu_check.py)
	$(BIN)/python -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# pydantic and its needs, for `pytest -m gpu` on a lent GPU machine (Python 3.12, no pydantic,
# no registry); versions are the ones installed here. The folder travels with carry=[".whl"].
gpu-wheels: setup
	rm -rf .whl && $(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $$($(BIN)/python -c "from importlib.metadata import version; \
	  print(*(f'{n}=={version(n)}' for n in ('pydantic', 'pydantic_core', 'annotated-types', 'typing-inspection')))")

images:  ## build and push the containers (needs a Docker daemon; REGISTRY=...)
	bash containers/build.sh

clean:
	rm -rf vxdeploy-runs benchmarks/results .pytest_cache .mypy_cache .ruff_cache
