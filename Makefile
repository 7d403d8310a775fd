# virtbus: `make run` starts the embedded stack, `make test` runs the whole suite.
# Both install what is missing first (system packages as root, a venv in .venv/).
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# `make run HYPERVISOR=qemu`: the nodes run real QEMU/KVM (root and /dev/kvm), not the test driver
HYPERVISOR ?= test

.PHONY: setup run test lint typecheck layers unit bench clean

setup:
	@bash scripts/setup.sh

run: setup
	$(BIN)/virtbus up --data-dir .virtbus --port 4222 --hypervisor $(HYPERVISOR)

lint: setup
	$(BIN)/ruff check events orchestrator workers tests
	$(BIN)/ruff format --check events orchestrator workers tests

typecheck: setup
	$(BIN)/mypy

layers: setup
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck layers unit

bench: setup
	$(BIN)/virtbus bench log

clean:
	rm -rf $(VENV) .virtbus .pytest_cache .mypy_cache .ruff_cache
