#!/usr/bin/env bash
# The tiny two-stage recipe on the real CI corpus, on CPU: stage 1 (packed continued pretraining),
# then stage 2 (long SFT with LongAlign weighting) from stage 1's last checkpoint.
# Usage: bash examples/tiny_two_stage.sh [--nproc N]   (N processes via torchrun; default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
nproc=1
if [ "${1:-}" = "--nproc" ]; then nproc="$2"; fi
py="${PYTHON:-.venv/bin/python}"
run() {
  if [ "$nproc" -gt 1 ]; then
    "$py" -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m megaindex train "$@"
  else
    "$py" -m megaindex train "$@"
  fi
}
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
start=$(date +%s)
echo "== stage 1: long pretraining (examples/tiny_long_pt.yaml)"
run examples/tiny_long_pt.yaml
echo "== stage 2: long SFT from stage 1 (examples/tiny_long_sft.yaml)"
run examples/tiny_long_sft.yaml
echo "== both stages done in $(( $(date +%s) - start )) s"
echo "   stage 1: runs/tiny-long-pt/{metrics.jsonl,loss.png,tensorboard,checkpoints}"
echo "   stage 2: runs/tiny-long-sft/{metrics.jsonl,loss.png,tensorboard,checkpoints}"
