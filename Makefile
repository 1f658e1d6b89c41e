# The two commands of the README: `make demo` and `make test`. Both bootstrap themselves.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: bootstrap demo test lint unit bench clean protos

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@$(BIN)/python -m ambient.demo

lint: bootstrap
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: bootstrap lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: bootstrap
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: bootstrap
	$(BIN)/python -m ambient.bench

protos: bootstrap
	$(BIN)/python scripts/gen_protos.py

clean:
	-$(BIN)/ambient cluster delete --all 2>/dev/null
	rm -rf .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
