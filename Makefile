# medlm: `make train` runs the quickstart experiment, `make test` the tests; both install first.
PYTHON     ?= python3
VENV       ?= .venv
# the PyTorch build to install when the venv has none (an installed torch is kept), e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
ARGS       ?=
PY         := $(VENV)/bin/python
# the project's runs (mlruns/, logs/): $MEDLM_HOME when set, else this checkout (medlm.utils.project)
PROJECT    := $(or $(MEDLM_HOME),$(CURDIR))
STAMP      := $(VENV)/.medlm-installed

# Offline use of the shared tokenizer files and datasets when they sit beside the project.
SHARED := $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/tiktoken-cache),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken-cache
endif
ifneq ($(wildcard $(SHARED)/data),)
export MEDLM_DATA_DIR ?= $(SHARED)/data
endif

.PHONY: install train test test-fast lint format bench ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	@touch $@

train: install  ## the quickstart run (override anything: make train ARGS="trainer.max_epochs=5")
	$(VENV)/bin/medlm-train experiment=quickstart $(ARGS)

test: install  ## the test suite; MEDLM_REQUIRE_SHARED_DATA=1 turns missing real data into failures
	$(PY) -m pytest $(ARGS)

test-fast: install  ## the tests without the slow end-to-end runs of the console scripts, for the edit-test loop
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: install  ## ruff: lint and formatting (make format fixes what it can)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: install  ## start-up of the commands; training tokens/s (vs a plain loop, the plain loss, uncompiled) and loss memory; generation (vs transformers, bandwidth ceiling); shards
	$(PY) benchmarks/bench_train.py $(ARGS)
	$(PY) benchmarks/bench_generate.py --threads 1
	$(PY) benchmarks/bench_shards.py
	$(PY) benchmarks/bench_startup.py

ui: install  ## browse every run (of $MEDLM_HOME when set, else of this checkout: where medlm-train records them)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(PROJECT)/mlruns/mlflow.db \
		--default-artifact-root $(PROJECT)/mlruns/artifacts --host 127.0.0.1 --port 5000

clean:
	rm -rf logs .cache .pytest_cache
