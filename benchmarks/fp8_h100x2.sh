#!/usr/bin/env bash
# FP8 at CP2 on one 2-GPU node (issue #13 item 4), one device call of ~8 min: Index-1.9B-32K through
# the trainer (benchmarks/train_throughput.py), bf16 baselines (reset and concat packing) against FP8
# variants: recipe delayed / tensorwise / blockwise, FP8 attention (cuDNN FP8, concat rows only),
# first and last layer kept bf16. The variants and their order: benchmarks/fp8_variants.py.
#   OUT=/path/to/results bash benchmarks/fp8_h100x2.sh
#   VARIANTS="fp8_blockwise_reset bf16_reset" OUT=... bash benchmarks/fp8_h100x2.sh   # a subset (a second call)
# Writes 4 files: $OUT/fp8.jsonl (one record per variant), fp8_summary.md (the table), fp8_summary.png,
# fp8_runs.log (every variant's console, one after the other). Each variant: 8 steps of 2 x 32K rows,
# the first 2 left out of the medians (6 measured). A variant is started only while less than
# BUDGET_S seconds (default 420) have passed, and is killed after VARIANT_TIMEOUT_S (default 170).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:?set OUT to a results directory}"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-420}"
VARIANT_TIMEOUT_S="${VARIANT_TIMEOUT_S:-170}"
STEPS="${STEPS:-8}"
ROWS="${ROWS:-2}"
mkdir -p "$OUT"
LOG="$OUT/fp8_runs.log"
: > "$LOG"
# the benchmark data, built once before two ranks could race to build it
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import same_work; same_work.ensure_data(str(same_work.FIXTURE_PREFIX))" >> "$LOG" 2>&1
start=$(date +%s)
while IFS=$'\t' read -r name envs overrides; do
  if [ -n "${VARIANTS:-}" ] && [[ " $VARIANTS " != *" $name "* ]]; then continue; fi
  elapsed=$(( $(date +%s) - start ))
  if [ "$elapsed" -ge "$BUDGET_S" ]; then
    echo "== $name: not started, ${elapsed}s of the ${BUDGET_S}s budget spent" | tee -a "$LOG"
    continue
  fi
  echo "== $name ($envs) $overrides" | tee -a "$LOG"
  # shellcheck disable=SC2086  # envs and overrides are word lists
  env $envs BENCH_RUN_DIR="/tmp/megaindex-bench-$name" timeout "$VARIANT_TIMEOUT_S" \
      "$PY" -m torch.distributed.run --nproc-per-node 2 benchmarks/train_throughput.py --name "$name" \
      --steps "$STEPS" --warmup 2 --sequences-per-step "$ROWS" --out "$OUT/fp8.jsonl" $overrides >> "$LOG" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then grep "^RESULT" "$LOG" | tail -1 | cut -c1-300
  else { echo "== $name failed (exit $rc; 124 = VARIANT_TIMEOUT_S), its last lines:"; tail -5 "$LOG"; } | tee -a "$LOG"; fi
done < <("$PY" benchmarks/fp8_variants.py list)
"$PY" benchmarks/fp8_variants.py summary "$OUT/fp8.jsonl" --md "$OUT/fp8_summary.md" --png "$OUT/fp8_summary.png"
