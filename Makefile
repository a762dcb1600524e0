# Two commands on a fresh machine: `make serve` and `make test`. Each creates or updates .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned so that pip takes the local CPU wheel instead of resolving a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STORE  ?= models

.PHONY: serve test lint bench soak clean

$(BIN)/modeldock: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH)"
	touch $@

$(STORE)/digits: | $(BIN)/modeldock
	$(BIN)/modeldock demo --store $(STORE)

serve: $(BIN)/modeldock $(STORE)/digits
	$(BIN)/modeldock serve --store $(STORE)

lint: $(BIN)/modeldock
	$(BIN)/ruff check model_store server tests bench
	$(BIN)/ruff format --check model_store server tests bench
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: lint
	$(BIN)/pytest -q

bench: $(BIN)/modeldock
	$(BIN)/python -m bench.run --out docs

soak: $(BIN)/modeldock
	$(BIN)/python -m bench.soak --minutes 10 --out docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
