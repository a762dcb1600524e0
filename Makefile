# Two commands on a fresh machine: `make serve` and `make test`. Each creates or updates .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned so that pip takes the local CPU wheel instead of resolving a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STORE  ?= models

.PHONY: serve test lint bench bench-rollout bench-torchserve soak clean image-test prometheus-tools perf-analyzer

$(BIN)/modeldock: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH)"
	touch $@

$(STORE)/digits: | $(BIN)/modeldock
	$(BIN)/modeldock demo --store $(STORE)

serve: $(BIN)/modeldock $(STORE)/digits
	$(BIN)/python -c "from model_store.demo import add_labels; add_labels('$(STORE)')"  # a ./models of an earlier release
	$(BIN)/modeldock serve --store $(STORE) --config serve.yaml

lint: $(BIN)/modeldock
	$(BIN)/ruff check model_store server tests bench scripts
	$(BIN)/ruff format --check model_store server tests bench scripts
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# Two test processes, each taking whole files (their module-scoped servers stay in one process).
PYTEST_ARGS ?= -n 2 --dist loadfile
test: lint prometheus-tools
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Debian's prometheus (with promtool) for tests/ops' rule and scrape tests: about 10 s to install.
# Without root or apt-get those tests skip and say why.
prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; } || \
	  echo "prometheus/promtool not installed: the Prometheus tests in tests/ops will skip"

# The image built with podman and run locked down as in k8s/ (needs root; several minutes).
# Triton's perf_analyzer (2.60, a manylinux_2_38 wheel) run through a newer glibc's loader; the
# tests in tests/server/grpc/test_perf_analyzer.py use it when present and skip without it.
perf-analyzer: $(BIN)/modeldock
	test -x $(VENV)/peers/perf_analyzer/perf_analyzer || PIP=$(BIN)/pip scripts/install_perf_analyzer.sh

image-test: $(BIN)/modeldock
	TORCH="$(TORCH)" scripts/image-test.sh

# `make bench PEERS=triton` adds Triton: the nvidia-pytriton wheel's binaries (no dependencies) and
# the numpy 1.x its Python-backend stub needs, in .venv/peers/pytriton. `make test` never needs them.
PYTRITON := 0.7.0
bench: $(BIN)/modeldock
	$(if $(filter triton,$(PEERS)),test -d $(VENV)/peers/pytriton/nvidia_pytriton-$(PYTRITON).dist-info -a -d $(VENV)/peers/pytriton/numpy-1.26.4.dist-info || \
	  $(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/peers/pytriton nvidia-pytriton==$(PYTRITON) numpy==1.26.4)
	$(BIN)/python -m bench.run --out docs $(if $(PEERS),--peers $(PEERS))

# Rollout figures (docs/benchmarks.md, "Rollout"): default rollout settings; about 7 minutes.
bench-rollout: $(BIN)/modeldock
	$(BIN)/python -m bench.rollout --out docs

# Real TorchServe 0.12 beside modeldock on the same archive (docs/benchmarks.md, "Against
# TorchServe"): a parity table, then req/s and p50. Installs TorchServe in .venv/peers/torchserve.
bench-torchserve: $(BIN)/modeldock
	test -x $(VENV)/peers/torchserve/bin/torchserve || VENV=$(VENV)/peers/torchserve scripts/install_torchserve.sh
	$(BIN)/python -m bench.torchserve --out docs

# 10 min at C=32 with hot swaps, then 200 promotions under load, then 100 add/remove cycles of a
# model beside one under load, each with the RSS of every process (docs/soak.md, docs/reliability.md
# "Swap soak" and "Model soak"); about 20 minutes in all.
soak: $(BIN)/modeldock
	$(BIN)/python -m bench.soak --minutes 10 --out docs
	$(BIN)/python -m bench.swap_soak --promotions 200 --out docs
	$(BIN)/python -m bench.model_soak --cycles 100 --out docs
	$(BIN)/python -m bench.pool_soak --models 1000 --fit 50 --seconds 180 --out docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
