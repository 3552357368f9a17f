#!/usr/bin/env bash
# The Slurm launch on one machine (a workstation or a single node outside Slurm): torchrun with
# one process per GPU on a recipe, with the same environment and the same stop-and-resume rule.
#
# Usage, from anywhere:
#   bash launch/local.sh RECIPE [dotted overrides]
#   GPUS=4 bash launch/local.sh examples/index_1.9b_long_pt_32k.yaml train.train_iters=100
# GPUS: processes (default: the GPUs nvidia-smi lists). PYTHON: interpreter (default python3).
# `kill -USR1 <torchrun pid>` (or SIGTERM) makes the trainer finish its step, write a checkpoint
# and exit; this script then exits with 75 and the same command resumes from that checkpoint.
# Ctrl-C (SIGINT) stops at once, without a checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash launch/local.sh RECIPE [dotted overrides]" >&2; exit 2; }
# shellcheck source=launch/common.sh
source launch/common.sh

if [ -z "${GPUS:-}" ]; then
  GPUS="$(nvidia-smi -L 2>/dev/null | wc -l)" || GPUS=0
  [ "$GPUS" -gt 0 ] || megaindex_die "no GPU found by nvidia-smi: set GPUS=N (N CPU processes on gloo work too, for testing)"
fi
GPUS_PER_NODE="$GPUS"
megaindex_environment
exit_file="$(mktemp -t megaindex-exit.XXXXXX)"
trap 'rm -f "$exit_file"' EXIT
rm -f "$exit_file" # the trainer writes it only when it stops early
export MEGAINDEX_EXIT_FILE="$exit_file"

rc=0
"${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout "${STOP_TIMEOUT:-240}" \
  -m megaindex train "$@" || rc=$?
if [ -f "$exit_file" ]; then
  echo "local: trainer: $(cat "$exit_file"); run the same command again to resume"
  read -r code _ <"$exit_file"
  exit "$code"
fi
exit "$rc"
