# Set-up, demo, tests and benchmarks. Everything runs in a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/edgefp demo

lint: setup
	$(BIN)/ruff check edgefp tests benchmarks
	$(BIN)/ruff format --check edgefp tests benchmarks

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: lint
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python -m benchmarks.ood_quality
	$(BIN)/python -m benchmarks.int8
	$(BIN)/python -m benchmarks.link
	$(BIN)/python -m benchmarks.selection

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
