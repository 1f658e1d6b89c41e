# The two commands of the README: `make demo` and `make test`. Both bootstrap themselves.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
CLUSTER ?= ambient

.PHONY: bootstrap demo test lint unit bench clean protos

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@AMBIENT_CLUSTER=$(CLUSTER) $(BIN)/python -m ambient.demo

lint: bootstrap
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python scripts/import_graph.py --check

test: bootstrap lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: bootstrap
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: bootstrap
	$(BIN)/python -m ambient.bench

protos: bootstrap
	$(BIN)/python scripts/gen_protos.py

# Removes what the project's own commands made by default: the cluster of `make demo` (`ambient`, or
# CLUSTER=NAME) and build outputs. Other clusters on the machine are never touched.
clean:
	-AMBIENT_STATE_DIR= $(BIN)/ambient cluster delete --name $(CLUSTER) 2>/dev/null
	rm -rf .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
