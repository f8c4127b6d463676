# segattr: one-command setup, reproduction, tests and benchmarks.
# Every install step lives here, so a fresh machine with Python 3.11 and make needs nothing else.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
STAMP   := $(VENV)/.installed-stamp

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-gpu browser reproduce test lint format test-unit test-notebooks bench bench-ig bench-sft bench-ig-memory lab clean-results help

help:
	@echo "make setup-gpu                             the paper profile's GPU packages (vLLM, DeepSpeed, bitsandbytes)"
	@echo "make reproduce [PROFILE=tiny|smoke|paper]  run the notebooks in order with papermill"
	@echo "make test                                  lint + unit tests + every notebook on the smoke profile (nbval)"
	@echo "make lint                                  ruff check + ruff format --check on segattr_utils, tests, benchmarks"
	@echo "make format                                ruff check --fix + ruff format on the same folders"
	@echo "make bench                                 IG engine + SFT step-cost benchmarks -> results/benchmarks/,"
	@echo "                                           IG memory at 7B widths vs the estimator -> benchmarks/results/"
	@echo "make lab                                   open JupyterLab on notebooks/"
	@echo "make browser                               install Debian's chromium for the segment viewer's render test"

# The exact tested set comes from constraints.txt (pyproject.toml declares ranges). torch is installed
# first, as the CPU build available here; an unconstrained torch would pull several GB of CUDA
# packages. The stamp is re-made whenever pyproject.toml or constraints.txt changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,notebooks]" -c constraints.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (segattr)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# A Linux x86_64 machine with CUDA 13 drivers: pyproject.toml's gpu extra with constraints-gpu.txt (the tested set
# with numpy 2.3.5, as vLLM needs). A CPU build of torch is uninstalled first, so that pip installs PyPI's CUDA
# build of the same version (pip's find-links must not offer the CPU wheel there).
setup-gpu: $(STAMP)
	$(PY) -c "import sys, torch; sys.exit(torch.version.cuda is None)" || $(PY) -m pip uninstall --quiet -y torch
	$(PY) -m pip install --quiet -e ".[gpu]" -c constraints-gpu.txt

# Headless Chromium renders the segment viewer's HTML in tests/test_viewer.py (skipped without it).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

reproduce: $(STAMP)
	$(PY) -m segattr_utils.reproduce --profile $(PROFILE)

test: lint test-unit test-notebooks

LINT_PATHS := segattr_utils tests benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Fixes first (import sorting, pyupgrade), then the formatter, so the result passes `make lint`;
# violations ruff cannot fix are listed and left for a person.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix --exit-zero $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

test-notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m segattr_utils.reproduce --profile smoke --nbval --fresh

bench: bench-ig bench-sft bench-ig-memory

bench-ig: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ig.py --out results/benchmarks

bench-sft: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_sft.py --out results/benchmarks

# Resumable: rows already in benchmarks/results/ig_memory.csv are not measured again (--fresh redoes them).
bench-ig-memory: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ig_memory.py --out benchmarks/results

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-results:
	rm -rf results/smoke
