#!/usr/bin/env bash
# One-shot GPU check of mathrl (see bench/gpu_check.py for what it measures).
#
#   bash bench/gpu_check.sh                       # CUDA: env, decode, memory, split, correct
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh    # every code path, tiny sizes, on a CPU
#
# Sized to finish in < 8 min on one H100/H200 (BUDGET_S=420: python skips what would not
# fit): decode = the 0.5B-shaped bf16 model at batch 64 and 256, model.generate vs the lean
# step vs the static step eager and compiled (COMPILE, default cudagraphs on CUDA), tok/s;
# memory = peak of a forward + backward with and without model.gradient_checkpointing;
# split = the GRPO step's time split of a short quickstart run on the compiled static step.
# No GPU has run this version yet (2026-12-06): only `DEVICE=cpu QUICK=1`, which the slow
# test tests/test_gpu_check.py runs. The older steps stay available by name:
#   STEPS=e2e,rollout,e2e_more bash bench/gpu_check.sh
#
# Env: OUT (results dir; default ./gpu_check_out), PYTHON (default python3, or .venv's),
# BUDGET_S (python's own time budget, default 420), STEPS (default
# env,decode,memory,split,correct), GRPO_STEPS, COMPILE (off / default / cudagraphs).
# Run from anywhere: mathrl must be importable (PYTHONPATH=<checkout>/src or installed).
# Writes $OUT/gpu_check.json and per-run logs; run dirs go to $RUNS (default /tmp).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
RUNS="${RUNS:-$(mktemp -d /tmp/gpuchk_runs.XXXX)}"
DEVICE="${DEVICE:-cuda}"
BUDGET_S="${BUDGET_S:-420}"
STEPS="${STEPS:-env,decode,memory,split,correct}"
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
if [ -n "${COMPILE:-}" ]; then args+=(--compile "$COMPILE"); fi
"$PYTHON" "$HERE/gpu_check.py" "${args[@]}"
rc=$?
echo "gpu_check.py exit $rc"
nvidia-smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader 2>/dev/null || true
exit $rc
