#!/usr/bin/env bash
# Create bench/.venv-trl: TRL's GRPOTrainer in its own environment, for bench/bench_grpo.py.
# Pinned to what the measurements in BENCHMARKS.md used. torch first: a bare `torch`
# requirement would pull a multi-GB CUDA build; torch==2.13.0 is the CPU build here.
# transformers is pinned to mathrl's version so both frameworks run the same model code.
# Idempotent: does nothing when the env is complete. Usage: bash bench/setup_trl.sh
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-trl
STAMP="$VENV/.trl-installed"
PY="${PY:-python3}"
[ -f "$STAMP" ] && exit 0
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet \
    trl==1.16.0 transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0
touch "$STAMP"
"$VENV/bin/python" -c "import torch, transformers, trl; print('bench/.venv-trl: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
