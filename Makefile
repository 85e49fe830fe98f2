# pushgw: `make dev` runs the gateway on the embedded defaults, `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CODE := pushgw ppns workers

.PHONY: dev test lint typecheck pytest bench-intake clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

dev: $(VENV)/.installed
	$(BIN)/pushgw dev

test: $(VENV)/.installed lint typecheck pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check $(CODE) tests bench
	$(BIN)/ruff format --check $(CODE) tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy --strict $(CODE)

pytest: $(VENV)/.installed
	scripts/ensure-rabbitmq.sh
	scripts/ensure-nghttp2.sh
	scripts/ensure-chromium.sh
	scripts/ensure-promtool.sh
	scripts/ensure-parse-server.sh
	$(BIN)/python -m pytest

bench-intake: $(VENV)/.installed
	scripts/ensure-rabbitmq.sh
	$(BIN)/python bench/intake.py

clean:
	rm -rf $(VENV) .pushgw
