#!/usr/bin/env bash
# Issue #13 deliverable 1 in ONE device call on a 2-GPU node (< 9 min), from the repo root, where
# Transformer Engine and megatron-core import (the `gpu` extra or the NGC container; on a node where
# they were unpacked into /tmp/site, `export PYTHONPATH=/tmp/site:$PWD` first):
#
#   OUT=/path/to/results bash benchmarks/gpu_x2_session.sh
#
# (a) the CP2 bf16 32K throughput run (the 439 TFLOP/s record's command: Index-1.9B-32K, 8 x 32K rows
#     per step, packing reset, fixture corpus data) with 10 steps (8 measured after 2) and the
#     torch profiler over step 6 (train.profile_steps=[6,6]); then benchmarks/step_profile.py on
#     both ranks' traces -> table, JSON, PNG, and slim traces that step_profile.py reads back;
# (c) the 2-GPU parity tests: pytest -m gpu tests/test_gpu_train.py -k layout (2-GPU layouts only,
#     the rest of the time budget; -v, so the ones that finished show if the timeout stops it).
# Writes at most 8 files to $OUT: train.jsonl, step_profile.md, step_profile.json, step_profile.png,
# trace_rank0.slim.json.gz, trace_rank1.slim.json.gz, logs.tgz (every log), summary.txt (also printed).
#
# SMOKE=1 runs the same path on CPU with the tiny model (2 ranks over gloo, 3 steps, step 2 profiled):
# a CPU trace has no kernels, so step_profile.py says so and the summary shows it; the GPU tests skip.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:?set OUT to a results directory}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
LOGS=$(mktemp -d /tmp/megaindex-x2-logs.XXXXXX)
RUN=${RUN_DIR:-/tmp/megaindex-bench-cp2_profile}   # the run directory (traces under profile/)
DATA=${DATA:-.bench_data/fixture_pretrain}          # token prefix, built from the fixture corpus if missing
START=$SECONDS
BUDGET=${BUDGET_S:-530}           # the whole script, seconds (a device call allows 600)
status=()

if [ "${SMOKE:-0}" = 1 ]; then
  WORK=(--recipe examples/tiny_long_pt.yaml --steps 3 --warmup 1 --sequences-per-step 4
        parallel.context_parallel_size=2 'train.profile_steps=[2,2]')
  PROFILED=2
else
  WORK=(--steps 10 --warmup 2 --sequences-per-step 8 parallel.context_parallel_size=2 'train.profile_steps=[6,6]')
  PROFILED=6
fi

step() {  # step NAME SECONDS CMD...: run with a timeout, log to $LOGS/NAME.log, record the outcome
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (timeout ${limit}s): $*"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local what="rc=$rc"; [ $rc = 124 ] && what="TIMEOUT after ${limit}s"
  status+=("$name: $what, $((SECONDS - t0)) s")
  echo "   $name: $what ($((SECONDS - t0)) s)"
  return $rc
}

# 0. the benchmark data from the repo's fixture corpus (torchrun's ranks would race to build it)
if [ ! -f "$DATA.bin" ]; then
  step data 120 "$PY" tools/preprocess_data.py tests/fixtures/corpus/pretrain.jsonl -o "$DATA" \
      --tokenizer tests/fixtures/tokenizer.model --quiet
fi

# (a) CP2 throughput with one profiled step, then the profile
rm -rf "$RUN"
export BENCH_RUN_DIR=$RUN
step train 330 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 \
    benchmarks/train_throughput.py --name cp2_profile --data "$DATA" --out "$OUT/train.jsonl" "${WORK[@]}"
grep -h "RESULT" "$LOGS/train.log" | tail -1
traces=("$RUN/profile/trace_steps$PROFILED-${PROFILED}_rank"*.json)
if [ -e "${traces[0]}" ]; then
  ls -la "${traces[@]}" > "$LOGS/traces.txt"
  step step_profile 180 "$PY" benchmarks/step_profile.py "${traces[@]}" --out-dir "$OUT" --slim "$OUT" \
      --title "CP2 bf16 32K, Index-1.9B, 8 x 32K rows per step: step $PROFILED ($(date -u +%F))"
  tail -3 "$LOGS/step_profile.log"
else
  status+=("step_profile: no trace in $RUN/profile")
fi

# (c) the 2-GPU parity tests, in the time left (30 s kept for the logs and the summary)
left=$((BUDGET - (SECONDS - START) - 30))
if [ $left -gt 60 ]; then
  step pytest_layout $left "$PY" -m pytest -m gpu tests/test_gpu_train.py -v -p no:cacheprovider \
      -k "layout and (tp2 or cp2 or pp2 or dp2) and not 4gpu"
  grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" "$LOGS/pytest_layout.log" | tail -15
else
  status+=("pytest_layout: not run, ${left}s left")
fi

# logs and summary
cp "$RUN/metrics.jsonl" "$LOGS/metrics.jsonl" 2>/dev/null
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
{
  echo "gpu_x2_session $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null), $((SECONDS - START)) s"
  printf '%s\n' "${status[@]}"
  echo "-- throughput ($OUT/train.jsonl)"
  "$PY" -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["name"], r["device"], "x", r["gpus"], "tokens/s/GPU %.0f" % r["tokens_per_s_per_gpu"], "TFLOP/s/GPU %.1f causal / %.1f full s2"
          % (r["tflops_per_gpu"], r["tflops_per_gpu_full_s2"]), "steps", [round(t, 2) for t in r["step_times_s"]], "peak GiB", r["peak_mem_gib"])' \
      "$OUT/train.jsonl" 2>&1
  echo "-- profile ($OUT/step_profile.md)"; grep -hE "ms per step|^step_profile:" "$LOGS/step_profile.log" 2>/dev/null
  echo "-- parity"; grep -hE "^(PASSED|FAILED|ERROR)|::test_layout.* (PASSED|FAILED|SKIPPED|ERROR)|[0-9]+ (passed|failed)" "$LOGS/pytest_layout.log" 2>/dev/null | tail -12
} > "$OUT/summary.txt"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
echo "==== summary ($OUT/summary.txt)"
cat "$OUT/summary.txt"
