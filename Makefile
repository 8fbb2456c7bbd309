# Set-up, demo, tests and benchmarks. Everything runs in a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup firmware-tools browser-tools demo test test-fast lint contract bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

setup: $(BIN)/.installed

# Debian packages the tests need, installed when missing and allowed (root or password-less sudo): the
# firmware's cross compiler, emulator, static analyser and formatter, the MQTT broker of the fleet tests, and
# the browser the review page is tested in. Without them those tests are skipped, saying why; the rest still run.
FIRMWARE_PACKAGES = gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cppcheck clang-format mosquitto
BROWSER_PACKAGES = chromium chromium-driver
# $(call apt_install,commands that must exist,packages,what they are for)
apt_install = @if $(foreach tool,$(1),command -v $(tool) >/dev/null &&) true; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "install $(2) to run $(3)"; exit 0; fi; \
	echo "installing $(2)"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	  --no-install-recommends $(2) >/dev/null

firmware-tools:
	$(call apt_install,arm-none-eabi-gcc qemu-system-arm cppcheck clang-format mosquitto,$(FIRMWARE_PACKAGES),the firmware and fleet tests)

browser-tools:
	$(call apt_install,chromium chromedriver,$(BROWSER_PACKAGES),the review page's browser tests)

demo: setup
	$(BIN)/edgefp demo

lint: setup
	$(BIN)/ruff check edgefp tests benchmarks
	$(BIN)/ruff format --check edgefp tests benchmarks

# The firmware's C header of the host-firmware contract (c/src/efp_contract.h), from the Python definitions.
contract: setup
	$(BIN)/python -m edgefp.firmware_host.firmware.contract

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
pytest = $(BIN)/python -m pytest -q $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

# The whole suite in two runs: the fast subset under its guard (so that it stays fast), then the heavy tests.
test: lint firmware-tools browser-tools
	$(call pytest,--fast)
	$(call pytest,--heavy)

# The fast subset, about a minute: every test but the heavy ones, those that train or convert a model with
# TensorFlow or build or emulate the firmware. A test is heavy when it is marked so or uses a fixture
# declared heavy (tests/conftest.py); under --fast a test that is not and still does such work fails.
test-fast: lint
	$(call pytest,--fast --durations=5)

bench: setup
	$(BIN)/python -m benchmarks.ood_quality
	$(BIN)/python -m benchmarks.int8
	$(BIN)/python -m benchmarks.overhead_scale
	$(BIN)/python -m benchmarks.link
	$(BIN)/python -m benchmarks.many_devices
	$(BIN)/python -m benchmarks.selection
	$(BIN)/python -m benchmarks.firmware
	$(BIN)/python -m benchmarks.signing
	$(BIN)/python -m benchmarks.fleet

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache .hypothesis
