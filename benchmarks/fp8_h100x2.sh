#!/usr/bin/env bash
# FP8 at CP2 on one 2-GPU node (issue #13 item 4), one device call of ~8 min: Index-1.9B-32K through
# the trainer (benchmarks/train_throughput.py), bf16 baselines (reset and concat packing) against FP8
# variants: recipe delayed / tensorwise / blockwise, FP8 attention (cuDNN FP8, concat rows only),
# first and last layer kept bf16. The variants and their order: benchmarks/fp8_variants.py.
#   OUT=/path/to/results bash benchmarks/fp8_h100x2.sh
#   VARIANTS="fp8_blockwise_reset bf16_reset" OUT=... bash benchmarks/fp8_h100x2.sh   # a subset (a second call)
# Writes 4 files: $OUT/fp8.jsonl (one record per variant), fp8_summary.md (the table), fp8_summary.png,
# fp8_runs.log (every variant's console, one after the other). Each variant: 8 steps of 2 x 32K rows,
# the first 2 left out of the medians (6 measured). Time: the variants share BUDGET_S seconds (default
# 450); one is started only if the time left covers the previous variant's duration (90 s assumed
# for the first) of a successful one, and is killed 30 s after the budget ends, so the call stays under ~8.5 min.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:?set OUT to a results directory}"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-450}"
STEPS="${STEPS:-8}"
ROWS="${ROWS:-2}"
mkdir -p "$OUT"
LOG="$OUT/fp8_runs.log"
: > "$LOG"
# the benchmark data, built once before two ranks could race to build it
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import same_work; same_work.ensure_data(str(same_work.FIXTURE_PREFIX))" >> "$LOG" 2>&1
start=$(date +%s)
expected=90  # seconds one variant takes; then the last one's measured duration
while IFS=$'\t' read -r name envs overrides; do
  if [ -n "${VARIANTS:-}" ] && [[ " $VARIANTS " != *" $name "* ]]; then continue; fi
  left=$(( BUDGET_S - ($(date +%s) - start) ))
  if [ "$left" -lt "$expected" ]; then
    echo "== $name: not started, ${left}s of the ${BUDGET_S}s budget left, a variant takes ~${expected}s" | tee -a "$LOG"
    continue
  fi
  echo "== $name ($envs) $overrides" | tee -a "$LOG"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # envs and overrides are word lists
  env $envs BENCH_RUN_DIR="/tmp/megaindex-bench-$name" timeout "$(( left + 30 ))" \
      "$PY" -m torch.distributed.run --nproc-per-node 2 benchmarks/train_throughput.py --name "$name" \
      --steps "$STEPS" --warmup 2 --sequences-per-step "$ROWS" --out "$OUT/fp8.jsonl" $overrides < /dev/null >> "$LOG" 2>&1  # stdin: the loop's variant list
  rc=$?
  if [ "$rc" -eq 0 ]; then expected=$(( $(date +%s) - t0 )); grep "^RESULT" "$LOG" | tail -1 | cut -c1-300
  else { echo "== $name failed (exit $rc; 124 = out of time), its last lines:"; tail -5 "$LOG"; } | tee -a "$LOG"; fi
done < <("$PY" benchmarks/fp8_variants.py list)
"$PY" benchmarks/fp8_variants.py summary "$OUT/fp8.jsonl" --md "$OUT/fp8_summary.md" --png "$OUT/fp8_summary.png"
