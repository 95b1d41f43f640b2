# Two entry points: `make demo` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev,cpu]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/outfitter demo $(DEMO_ARGS)

test: $(BIN)/.installed
	$(BIN)/ruff check outfitter tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check outfitter tests bench
	$(BIN)/ruff format --check outfitter tests bench

clean:
	rm -rf $(VENV) outfitter-work
