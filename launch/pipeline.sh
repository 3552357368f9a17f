#!/usr/bin/env bash
# The whole Index-1.9B-32K recipe as three dependent Slurm jobs: stage 1 (long pretraining), stage 2
# (long SFT from stage 1's last checkpoint, once stage 1 has finished successfully), then the HF
# export of stage 2's last checkpoint. Prints the three job ids.
#
# Usage, from the repository root:
#   bash launch/pipeline.sh
#   PT_OVERRIDES="train.train_iters=1200" SFT_OVERRIDES="optim.lr=4e-6" HF_OUT=out/hf bash launch/pipeline.sh
#   SBATCH_ARGS="--account=myproj --partition=h100" bash launch/pipeline.sh
# Variables: PT_RECIPE, SFT_RECIPE (the two YAMLs), PT_OVERRIDES, SFT_OVERRIDES (space-separated
# dotted overrides), PT_RUN_DIR, SFT_RUN_DIR (where each stage writes; default: the recipes'
# run_dir), HF_OUT (export directory), EXPORT_ARGS (convert_to_hf.py options, default
# --format llama), SBATCH_ARGS (options for all three sbatch calls), LOG_DIR (job logs and exit
# files; default logs, as in the scripts' #SBATCH --output). Cluster variables
# (containers, GPUs per node, ...) are read by the jobs: see launch/common.sh.
#
# afterok waits for a job's final success: a stage that stops on SIGUSR1 and requeues itself is
# not finished, so the next stage keeps waiting; a stage that fails cancels nothing but leaves the
# dependants pending forever (DependencyNeverSatisfied): scancel them.
set -euo pipefail
cd "$(dirname "$0")/.."

pt_recipe="${PT_RECIPE:-examples/index_1.9b_long_pt_32k.yaml}"
sft_recipe="${SFT_RECIPE:-examples/index_1.9b_long_sft_32k.yaml}"
pt_run="${PT_RUN_DIR:-runs/index-1.9b-long-pt-32k}"
sft_run="${SFT_RUN_DIR:-runs/index-1.9b-long-sft-32k}"
hf_out="${HF_OUT:-$sft_run/hf}"
read -ra pt_overrides <<<"${PT_OVERRIDES:-}"
read -ra sft_overrides <<<"${SFT_OVERRIDES:-}"
read -ra sbatch_args <<<"${SBATCH_ARGS:-}"
read -ra export_args <<<"${EXPORT_ARGS:---format llama}"
for f in "$pt_recipe" "$sft_recipe"; do
  [ -f "$f" ] || { echo "pipeline: recipe $f not found" >&2; exit 2; }
done
log_dir="${LOG_DIR:-logs}"
mkdir -p "$log_dir" # Slurm does not create the --output directory; without it a job's log is lost
sbatch_args+=(--output="$log_dir/%x-%j.out")

# Run directories are passed explicitly so that stage 2 starts from where stage 1 really writes
# and the export reads where stage 2 really writes, whatever the recipes say.
pt_id="$(RECIPE="$pt_recipe" sbatch --parsable "${sbatch_args[@]}" launch/long_pt.slurm \
  "train.run_dir=$pt_run" "${pt_overrides[@]}")"
sft_id="$(RECIPE="$sft_recipe" PRETRAINED="$pt_run/checkpoints" sbatch --parsable "${sbatch_args[@]}" \
  --dependency="afterok:${pt_id%%;*}" launch/long_sft.slurm "train.run_dir=$sft_run" "${sft_overrides[@]}")"
export_id="$(sbatch --parsable "${sbatch_args[@]}" --dependency="afterok:${sft_id%%;*}" \
  launch/export_hf.slurm "$sft_run/checkpoints" "$hf_out" "${export_args[@]}")"

echo "stage 1 (long pretraining): job ${pt_id%%;*}  -> $pt_run"
echo "stage 2 (long SFT):         job ${sft_id%%;*}  -> $sft_run (after ${pt_id%%;*})"
echo "HF export:                  job ${export_id%%;*}  -> $hf_out (after ${sft_id%%;*})"
echo "watch: squeue -u \"\$USER\"; logs in $log_dir/"
