#!/usr/bin/env bash
# One-shot GPU check of mathrl (see bench/gpu_check.py for what it measures).
#
#   bash bench/gpu_check.sh                       # CUDA, the full check (~5 min on an H200)
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh    # every code path, tiny sizes, on a CPU
#
# On an H200 all steps take ~8.5 min (2026-11-30): env+correct 0.5, e2e fp32 + eval 1.6,
# rollout 3.0, e2e_more 3.3 (two more training runs). To fit 6-min device calls, run it as
#   STEPS=env,correct,e2e,rollout bash bench/gpu_check.sh   then   STEPS=e2e_more ...
# (with the default BUDGET_S the first form skips e2e_more by itself).
#
# Env: OUT (results dir; default ./gpu_check_out), PYTHON (default python3, or .venv's),
# BUDGET_S (python's own time budget, default 330), STEPS (default all), GRPO_STEPS (default 300).
# Run from anywhere: mathrl must be importable (PYTHONPATH=<checkout>/src or installed).
# Writes $OUT/gpu_check.json and per-run logs; run dirs go to $RUNS (default /tmp).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
RUNS="${RUNS:-$(mktemp -d /tmp/gpuchk_runs.XXXX)}"
DEVICE="${DEVICE:-cuda}"
BUDGET_S="${BUDGET_S:-340}"
STEPS="${STEPS:-env,correct,e2e,rollout,e2e_more}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$HERE/../.venv/bin/python" ]; then PYTHON="$HERE/../.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
echo "gpu_check: $(date -u +%FT%TZ) host $(hostname) python $PYTHON device $DEVICE"
echo "PYTHONPATH=${PYTHONPATH:-}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader \
    || echo "FAIL nvidia-smi"
else
  echo "nvidia-smi: not found"
fi
nproc; free -g | head -2
"$PYTHON" -c 'import sys, torch, transformers, tokenizers, safetensors, typer, rich, yaml, matplotlib, numpy, mathrl
print("imports PASS:", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "mathrl", mathrl.__file__)' \
  || echo "imports FAIL"
args=(--device "$DEVICE" --out "$OUT" --runs "$RUNS" --budget-s "$BUDGET_S" --steps "$STEPS")
if [ -n "${GRPO_STEPS:-}" ]; then args+=(--grpo-steps "$GRPO_STEPS"); fi
if [ -n "${QUICK:-}" ]; then args+=(--quick); fi
"$PYTHON" "$HERE/gpu_check.py" "${args[@]}"
rc=$?
echo "gpu_check.py exit $rc"
nvidia-smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader 2>/dev/null || true
exit $rc
