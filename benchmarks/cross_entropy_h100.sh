#!/usr/bin/env bash
# Fused cross-entropy on one 80 GiB GPU (issue #13 item 3), ~4 min: the head + loss alone per
# model.cross_entropy_fusion (benchmarks/cross_entropy.py), then Index-1.9B-32K through the trainer on
# one GPU (concat packing: one causal 32K document per row, the HF baseline's work; 2 x 32K per step)
# with full recompute, unfused vs TE's fused cross-entropy, and with TE's kernel recomputing only 26 of
# the 36 layers (block method; the 8 GiB the kernel frees pay for the other 10 layers' activations).
#   OUT=/path/to/results bash benchmarks/cross_entropy_h100.sh    # $OUT/cross_entropy.jsonl, train.jsonl, cross_entropy.png, logs
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:?set OUT to a results directory}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
"$PY" benchmarks/cross_entropy.py --out "$OUT/cross_entropy.jsonl" > "$OUT/cross_entropy.log" 2>&1
grep RESULT "$OUT/cross_entropy.log" || tail -20 "$OUT/cross_entropy.log"
run() {
  local name=$1; shift
  # data: the repo's fixture corpus (benchmarks/same_work.py builds it on first use)
  BENCH_RUN_DIR="/tmp/megaindex-bench-$name" "$PY" benchmarks/train_throughput.py --name "$name" --steps 4 --warmup 2 \
      --sequences-per-step 2 --out "$OUT/train.jsonl" parallel.context_parallel_size=1 data.packing=concat \
      train.recompute_granularity=full "$@" > "$OUT/$name.log" 2>&1
  grep RESULT "$OUT/$name.log" || tail -20 "$OUT/$name.log"
}
run 1gpu_full_concat_none model.cross_entropy_fusion=none
run 1gpu_full_concat_te model.cross_entropy_fusion=te
run 1gpu_block26_concat_te model.cross_entropy_fusion=te train.recompute_method=block train.recompute_num_layers=26
"$PY" benchmarks/cross_entropy_plot.py "$OUT/cross_entropy.jsonl" "$OUT/train.jsonl" --png "$OUT/cross_entropy.png"
