# segattr: one-command setup, reproduction, tests and benchmarks.
# Every install step lives here, so a fresh machine with Python 3.11 and make needs nothing else.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
STAMP   := $(VENV)/.installed-stamp

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-gpu browser reproduce robustness test test-fast lint format test-unit test-unit-fast test-notebooks test-import test-dry-run bench bench-ig bench-sft bench-sft-epochs bench-ig-memory gpu-hours gpu-checks lab clean-results help

help:
	@echo "make setup-gpu                             the paper profile's GPU packages (vLLM, DeepSpeed, bitsandbytes)"
	@echo "make reproduce [PROFILE=tiny|smoke|paper]  run the notebooks in order with papermill"
	@echo "make robustness [PROFILE=tiny|smoke]       rerun the notebooks with the profile's robustness.seeds; the noise floor"
	@echo "                                           of the headline numbers -> results/robustness/<profile>/report.md"
	@echo "make test                                  lint + unit tests + every notebook on the smoke profile (nbval)"
	@echo "                                           + notebooks 00-07 on an imported trace file (test-import)"
	@echo "                                           + the paper profile's notebooks on local stand-ins (test-dry-run)"
	@echo "make test-fast                             lint + the unit tests without the slow ones (no notebooks): the quick loop"
	@echo "make lint                                  ruff check + ruff format --check on segattr_utils, tests, benchmarks;"
	@echo "                                           mypy on segattr_utils (settings in pyproject.toml [tool.mypy])"
	@echo "make format                                ruff check --fix + ruff format on the same folders"
	@echo "make bench                                 IG engine, IG memory at 7B widths vs the estimator, SFT step cost,"
	@echo "                                           GPU-hours estimate -> results/benchmarks/"
	@echo "make bench-sft-epochs                      what fewer SFT epochs cost on the tiny profile (after make reproduce)"
	@echo "make gpu-hours                             the paper profile's GPU-hours per stage (an estimate) -> results/benchmarks/"
	@echo "make gpu-checks                            the GPU checks (needs a GPU and make setup-gpu) -> results/gpu_checks.json"
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

# Headless Chromium renders the segment viewer's HTML in tests/report/test_viewer.py (skipped without it, unless
# SEGATTR_REQUIRE_CHROMIUM=1 as in .ci/run). Debian's package: Ubuntu ships Chromium only as a snap, which containers cannot run.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

reproduce: $(STAMP)
	$(PY) -m segattr_utils.reproduce --profile $(PROFILE)

# The noise floor: each seed of the profile's robustness.seeds retrains the base model and reruns every notebook
# (resumable; results/robustness/<profile>/seed-<s>/), the main run in results/<profile>/ is read as one more draw,
# and the report lands in results/robustness/<profile>/report.md. Not part of test or reproduce (tiny: hours).
robustness: $(STAMP)
	$(PY) -m segattr_utils.robustness --profile $(PROFILE)

test: lint test-unit test-notebooks test-import test-dry-run

# The quick loop while editing: lint (with the type check) and the unit tests, less the pipeline passes
# (test-notebooks, test-import, test-dry-run) and the tests marked slow (each is still in make test).
test-fast: lint test-unit-fast

LINT_PATHS := segattr_utils tests benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# Fixes first (import sorting, pyupgrade), then the formatter, so the result passes `make lint`;
# violations ruff cannot fix are listed and left for a person.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix --exit-zero $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not dry_run and not import_smoke" tests

test-unit-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not dry_run and not import_smoke and not slow" tests

# notebooks 00-09 on the paper profile with local stand-ins (tiny models, LIMO and benchmark files, a fake
# vLLM, accelerate on the CPU); see tests/dry_run/test_paper_dry_run.py
test-dry-run: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m dry_run tests/dry_run

test-notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m segattr_utils.reproduce --profile smoke --nbval --fresh

# notebooks 00-07 of the smoke profile on an R1-format trace file (data.traces) that tests/fixtures/r1_traces.py
# writes with its profile into pytest's temporary folder (results there too, never in results/smoke); 00 trains
# the smoke model the later stages use. See tests/data/test_import_smoke.py
test-import: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m import_smoke tests/data

bench: bench-ig bench-sft bench-ig-memory gpu-hours

bench-ig: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ig.py --out results/benchmarks

bench-sft: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_sft.py --out results/benchmarks

# What fewer SFT epochs cost (tiny.yaml's training.sft.epochs): needs results/<profile>/ up to notebook 05 (a
# make reproduce); 8 fine-tuning runs and their evaluations, about 6 min on 2 cores. Not part of make bench.
bench-sft-epochs: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/sft_epochs.py --profile $(PROFILE) --out results/benchmarks

# Arithmetic only (seconds): paper.yaml's settings and the stated assumptions -> GPU-hours and wall time.
gpu-hours: $(STAMP)
	$(PY) benchmarks/gpu_hours.py --out results/benchmarks/gpu_hours.md

# On a GPU machine after `make setup-gpu`; random weights of the real configs, nothing downloaded.
gpu-checks: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu_checks.py --out results/gpu_checks.json

# Resumable: rows already in results/benchmarks/ig_memory.csv are not measured again (--fresh redoes them).
bench-ig-memory: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ig_memory.py --out results/benchmarks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-results:
	rm -rf results/smoke
