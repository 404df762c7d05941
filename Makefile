# One command to run the whole pipeline, one to run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch; GPU users install their own build first and skip this pin.
TORCH_PIN ?= torch==2.13.0
RUN_ARGS ?=

.PHONY: run test install clean

$(BIN)/mllm-unlearn: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/mllm-unlearn

run: install
	$(BIN)/mllm-unlearn run $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .cache
