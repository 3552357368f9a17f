#!/usr/bin/env bash
# FP8 at CP2 on one 2-GPU node (issue #13 item 4), one device call of ~8 min: Index-1.9B-32K through
# the trainer (benchmarks/train_throughput.py), bf16 baselines (reset and concat packing) against FP8
# variants: recipe delayed / tensorwise / blockwise, FP8 attention (cuDNN FP8, concat rows only),
# first and last layer kept bf16. The variants and their order: benchmarks/fp8_variants.py.
#   OUT=/path/to/results bash benchmarks/fp8_h100x2.sh
#   VARIANTS="fp8_blockwise_reset bf16_reset" OUT=... bash benchmarks/fp8_h100x2.sh   # a subset (a second call)
#   PROFILE=fp8_delayed_reset VARIANTS="fp8_delayed_reset" OUT=... bash benchmarks/fp8_h100x2.sh
#     # that variant's last step under the torch profiler, broken down by benchmarks/step_profile.py
#     # (+ step_profile.md/.json/.png: GPU time per kernel category, FP8 casts included; compare with
#     # benchmarks/gpu_x2_session.sh's bf16 profile)
# Needs Transformer Engine and megatron-core importable on the node (the `gpu` extra or the NGC container).
# Writes 4 files (7 with PROFILE): $OUT/fp8.jsonl (one record per variant), fp8_summary.md (the table), fp8_summary.png,
# fp8_runs.log (every variant's console, one after the other). Each variant: 8 steps of 2 x 32K rows,
# the first 2 left out of the medians (6 measured). Time: the variants share BUDGET_S seconds (default
# 400); one is started only if the time left covers the last successful variant's duration (90 s
# assumed for the first), and is killed 30 s after the budget ends: with the node setup the call
# stays under ~9.5 min.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:?set OUT to a results directory}"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-400}"
PROFILE="${PROFILE:-}"
RUN_ROOT="${RUN_ROOT:-/tmp}"  # run directories: $RUN_ROOT/megaindex-bench-<variant>
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
  [ "$envs" = - ] && envs=""  # fp8_variants.py list: '-' = no environment
  if [ -n "${VARIANTS:-}" ] && [[ " $VARIANTS " != *" $name "* ]]; then continue; fi
  left=$(( BUDGET_S - ($(date +%s) - start) ))
  if [ "$left" -lt "$expected" ]; then
    echo "== $name: not started, ${left}s of the ${BUDGET_S}s budget left, a variant takes ~${expected}s" | tee -a "$LOG"
    continue
  fi
  profile=()
  [ "$name" = "$PROFILE" ] && profile=("train.profile_steps=[$STEPS,$STEPS]")
  echo "== $name ($envs) $overrides ${profile[*]}" | tee -a "$LOG"
  t0=$(date +%s)
  run_dir="$RUN_ROOT/megaindex-bench-$name"
  rm -rf "$run_dir/profile"
  # shellcheck disable=SC2086  # envs and overrides are word lists
  env $envs BENCH_RUN_DIR="$run_dir" timeout "$(( left + 30 ))" \
      "$PY" -m torch.distributed.run --nproc-per-node 2 benchmarks/train_throughput.py --name "$name" \
      --steps "$STEPS" --warmup 2 --sequences-per-step "$ROWS" --out "$OUT/fp8.jsonl" $overrides "${profile[@]}" \
      < /dev/null >> "$LOG" 2>&1  # stdin: not the loop's variant list
  rc=$?
  if [ ${#profile[@]} -gt 0 ]; then
    traces=("$run_dir/profile/trace_steps$STEPS-${STEPS}_rank"*.json)
    if [ -e "${traces[0]}" ]; then
      timeout 180 "$PY" benchmarks/step_profile.py "${traces[@]}" --out-dir "$OUT" \
          --title "CP2 32K, $name, step $STEPS of $STEPS ($(date -u +%F))" >> "$LOG" 2>&1 || echo "== step_profile failed" | tee -a "$LOG"
    else
      echo "== $name: no profiler trace in $run_dir/profile" | tee -a "$LOG"
    fi
  fi
  if [ "$rc" -eq 0 ]; then expected=$(( $(date +%s) - t0 )); grep "^RESULT" "$LOG" | tail -1 | cut -c1-300
  else { echo "== $name failed (exit $rc; 124 = out of time), its last lines:"; tail -5 "$LOG"; } | tee -a "$LOG"; fi
done < <("$PY" benchmarks/fp8_variants.py list)
"$PY" benchmarks/fp8_variants.py summary "$OUT/fp8.jsonl" --md "$OUT/fp8_summary.md" --png "$OUT/fp8_summary.png"
