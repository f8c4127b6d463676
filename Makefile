# segattr: one-command setup, reproduction, tests and benchmarks.
# Every install step lives here, so a fresh machine with Python 3.11 and make needs nothing else.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
STAMP   := $(VENV)/.installed-stamp

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0

.PHONY: setup browser reproduce test test-unit test-notebooks bench bench-ig bench-sft lab clean-results help

help:
	@echo "make reproduce [PROFILE=tiny|smoke|paper]  run the notebooks in order with papermill"
	@echo "make test                                  unit tests + every notebook on the smoke profile (nbval)"
	@echo "make bench                                 IG engine + SFT step-cost benchmarks -> results/benchmarks/"
	@echo "make lab                                   open JupyterLab on notebooks/"
	@echo "make browser                               install Debian's chromium for the segment viewer's render test"

# torch is installed first and pinned to the CPU build available here; an unpinned torch would pull
# several GB of CUDA packages. The stamp is re-made whenever the pins change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (segattr)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium renders the segment viewer's HTML in tests/test_viewer.py (skipped without it).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

reproduce: $(STAMP)
	$(PY) -m segattr_utils.reproduce --profile $(PROFILE)

test: test-unit test-notebooks

test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

test-notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m segattr_utils.reproduce --profile smoke --nbval --fresh

bench: bench-ig bench-sft

bench-ig: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ig.py --out results/benchmarks

bench-sft: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_sft.py --out results/benchmarks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-results:
	rm -rf results/smoke
