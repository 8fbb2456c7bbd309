# Set-up, demo, tests and benchmarks. Everything runs in a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup firmware-tools demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

setup: $(BIN)/.installed

# The firmware's cross compiler and emulator (Debian packages), installed when missing and allowed
# (root or password-less sudo); without them the QEMU tests are skipped and the native ones still run.
FIRMWARE_PACKAGES = gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
firmware-tools:
	@if command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "install $(FIRMWARE_PACKAGES) to run the QEMU firmware tests"; exit 0; fi; \
	echo "installing $(FIRMWARE_PACKAGES)"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	  --no-install-recommends $(FIRMWARE_PACKAGES) >/dev/null

demo: setup
	$(BIN)/edgefp demo

lint: setup
	$(BIN)/ruff check edgefp tests benchmarks
	$(BIN)/ruff format --check edgefp tests benchmarks

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: lint firmware-tools
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python -m benchmarks.ood_quality
	$(BIN)/python -m benchmarks.int8
	$(BIN)/python -m benchmarks.link
	$(BIN)/python -m benchmarks.selection
	$(BIN)/python -m benchmarks.firmware

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache .hypothesis
