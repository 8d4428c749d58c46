# vxdeploy developer targets. Everything runs in .venv at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make test` runs the suite in TEST_WORKERS processes (pytest-xdist), each test file whole on one
# worker so that a file's module-level runs happen once; TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PYTEST_ARGS ?= $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# The tested versions of everything (.ci/lock.py writes it; pyproject.toml has the ranges).
LOCK := containers/constraints.txt
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
# On a machine without an NVIDIA driver, torch comes from PyTorch's CPU index (PyPI's default torch
# wheel is the multi-GB CUDA build). Where that index is unreachable, pip's find-links still serve
# a local CPU wheel (this VM's /opt/wheels). Set TORCH_INDEX_URL= to take PyPI's build.
TORCH_INDEX_URL ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
# mypy resolves vxdeploy.components / vxdeploy.pipelines through these links to the folders.
LAYOUT := build/layout/vxdeploy

.PHONY: setup demo test compile check-compiled lint format bench images clean gpu-check gpu-wheels lock layout

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade -c $(LOCK) pip setuptools wheel
	$(BIN)/python -m pip install -q --no-deps $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) 'torch==$(TORCH_VERSION)'
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[all,dev]'
	# nvidia-pytriton carries a real tritonserver binary for the local serve check; its numpy<2 pin
	# does not apply to that binary, so it goes outside the environment's sys.path
	# (.venv/share/vxdeploy/pytriton, without its dependencies): `pip check` stays clean.
	$(BIN)/python -m vxdeploy.components.package.triton_install
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## run the whole pipeline locally on the embedded digits model
	$(BIN)/vxdeploy run --local

test: setup  ## the test suite (GPU tests skip without a GPU)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

compile: setup  ## regenerate compiled/optimize_and_deploy.yaml
	$(BIN)/python -m vxdeploy.pipelines.compile

check-compiled: setup  ## fail when compiled/ differs from what the source compiles to
	$(BIN)/python -m vxdeploy.pipelines.compile --check

layout:  ## build/layout/vxdeploy/{components,pipelines,compiled}: links mypy reads the package through
	mkdir -p $(LAYOUT) && for d in components pipelines compiled; do ln -sfn ../../../$$d $(LAYOUT)/$$d; done

lock: setup  ## rewrite containers/constraints.txt from this environment (after changing a range in pyproject.toml)
	$(BIN)/python .ci/lock.py

lint: setup layout
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
	# and vxdeploy itself (pure Python): the lent machine imports the package as installed.
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w .whl .

images:  ## build and push the containers (needs a Docker daemon; REGISTRY=...)
	bash containers/build.sh

clean:
	rm -rf vxdeploy-runs benchmarks/results .pytest_cache .mypy_cache .ruff_cache
