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

.PHONY: setup reproduce test test-unit test-notebooks bench lab clean-results help

help:
	@echo "make reproduce [PROFILE=tiny|smoke|paper]  run the notebooks in order with papermill"
	@echo "make test                                  unit tests + every notebook on the smoke profile (nbval)"
	@echo "make bench                                 IG engine benchmark -> results/benchmarks/"
	@echo "make lab                                   open JupyterLab on notebooks/"

# torch is installed first and pinned to the CPU build available here; an unpinned torch would pull
# several GB of CUDA packages. The stamp is re-made whenever the pins change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (segattr)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

reproduce: $(STAMP)
	$(PY) -m segattr_utils.reproduce --profile $(PROFILE)

test: test-unit test-notebooks

test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

test-notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m segattr_utils.reproduce --profile smoke --nbval --fresh

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ig.py --out results/benchmarks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-results:
	rm -rf results/smoke
