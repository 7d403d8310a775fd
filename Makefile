# virtbus: `make run` starts the embedded stack, `make test` runs the whole suite.
# Both install what is missing first (system packages as root, a venv in .venv/).
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= --durations=25
# `make run HYPERVISOR=qemu`: the nodes run real QEMU/KVM (root and /dev/kvm), not the test driver
HYPERVISOR ?= test

.PHONY: setup run test lint typecheck layers unit fuzz bench clean

setup:
	@bash scripts/setup.sh

run: setup
	$(BIN)/virtbus up --data-dir .virtbus --port 4222 --hypervisor $(HYPERVISOR)

lint: setup
	$(BIN)/ruff check events bus orchestrator workers virtctl bench virtbus tests
	$(BIN)/ruff format --check events bus orchestrator workers virtctl bench virtbus tests

typecheck: setup
	$(BIN)/mypy

layers: setup
	$(BIN)/lint-imports

unit: setup
	@bash scripts/unit.sh $(PYTEST_ARGS)

test: lint typecheck layers unit

# The long fuzzing campaign (docs/fuzzing.md): `make test` runs the same properties, seeded and
# bounded (hypothesis profile "ci"); this runs 25k manifests and thousands of bus commands.
FUZZ_TESTS := tests/contract/test_fuzz_manifest.py tests/node/test_fuzz_domain.py tests/control/test_fuzz_bus.py
fuzz: setup
	VIRTBUS_FUZZ=campaign $(BIN)/pytest $(FUZZ_TESTS) -q -s --hypothesis-show-statistics

bench: setup
	$(BIN)/virtbus bench log

clean:
	rm -rf $(VENV) .virtbus .pytest_cache .mypy_cache .ruff_cache
