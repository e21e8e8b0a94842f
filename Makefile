# Two commands do all the set-up: `make up` runs the system, `make test` checks it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test files run in two processes (most tests wait on servers, not on the CPU); TEST_JOBS=0 runs one.
TEST_JOBS ?= 2

.PHONY: up test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/ecpds up

test: $(STAMP)
	bash tests/peers/install.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core workflows activities workers portal cli
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy core workflows activities workers portal cli

bench: $(STAMP)
	bash tests/peers/install.sh
	$(BIN)/python bench/dissemination.py
	$(BIN)/python bench/portal.py
	$(BIN)/python bench/protocols.py
	$(BIN)/python bench/submit.py
	$(BIN)/python bench/acquisition.py
	$(BIN)/python bench/notify.py
	$(BIN)/python bench/console.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) build *.egg-info
