#!/usr/bin/env bash
# The GSM8K CPU recipe, measured (docs/gsm8k_cpu.md, `make gsm8k-cpu`):
#   1. `mathrl train -c gsm8k/cpu`: 40 SFT warm-up steps, then GRPO (timed);
#   2. an SFT-only control of equal time: the warm-up checkpoint continued with plain SFT
#      on GSM8K's worked solutions (other batches: seed 1) for as long as GRPO ran
#      (SFT_STEPS x ~15 s/step on 2 cores; the default matches the measured GRPO time);
#   3. greedy evals of the base model, the warm-up checkpoint, the RL result and the
#      control on the same seeded LIMIT test problems, then one table + plot
#      (bench/gsm8k_cpu_table.py: OUT/table.md, OUT/gsm8k_cpu.png).
# Needs GSM8K: MATHRL_GSM8K=dir with train/test.jsonl, or `mathrl data prepare gsm8k`.
# Every phase is skipped when its output exists, so a rerun after a crash resumes.
set -euo pipefail
OUT=${OUT:-runs/gsm8k_cpu}
MATHRL=${MATHRL:-mathrl}
LIMIT=${LIMIT:-500}
SFT_STEPS=${SFT_STEPS:-50}
EVAL_ARGS=(-c gsm8k/cpu --split test --limit "$LIMIT" --set rollout.max_new_tokens=256 --quiet)
mkdir -p "$OUT"
log() { echo "[gsm8k-cpu $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/timings.txt"; }

timed() {  # timed NAME CMD...: run CMD unless $OUT/NAME.done exists, log its wall time
  local name=$1; shift
  if [[ -e "$OUT/$name.done" ]]; then log "$name: done before, skipped"; return; fi
  local t0; t0=$(date +%s)
  log "$name: $*"
  "$@"
  local dt=$(( $(date +%s) - t0 ))
  echo "$dt" > "$OUT/$name.done"
  log "$name: ${dt} s"
}

timed train "$MATHRL" train -c gsm8k/cpu --out "$OUT/rl" ${RESUME:+--resume}
timed eval_rl "$MATHRL" eval --model "$OUT/rl" "${EVAL_ARGS[@]}" --out "$OUT/eval_rl"
warm=$(ls -d "$OUT"/rl/warmup_sft/checkpoints/step_* | tail -1)
timed eval_warmup "$MATHRL" eval --model "$warm" "${EVAL_ARGS[@]}" --out "$OUT/eval_warmup"
timed eval_base "$MATHRL" eval --model smollm2-135m-instruct "${EVAL_ARGS[@]}" --out "$OUT/eval_base"
timed sft_control "$MATHRL" sft -c gsm8k/cpu --set model.path="$warm/model" --set seed=1 \
  --steps "$SFT_STEPS" --out "$OUT/sft_control"
timed eval_sft "$MATHRL" eval --model "$OUT/sft_control" "${EVAL_ARGS[@]}" --out "$OUT/eval_sft"
"${PYTHON:-python}" bench/gsm8k_cpu_table.py "$OUT" --plot "$OUT/gsm8k_cpu.png" | tee "$OUT/table.md"
log "all phases done; timings in $OUT/timings.txt, table in $OUT/table.md"
