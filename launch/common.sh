# shellcheck shell=bash
# What launch/long_pt.slurm, launch/long_sft.slurm and launch/export_hf.slurm share: the container
# choice, the NCCL/CUDA environment, the multi-node torchrun line and the preemption -> requeue
# rule. Sourced, not run. The .slurm files hold only the cluster facts (#SBATCH) and the recipe.
#
# Variables (all optional; paths are relative to MEGAINDEX_HOME, the repository root):
#   MEGAINDEX_HOME       repository root (default: the directory sbatch was called from)
#   GPUS_PER_NODE        processes per node (default: $SLURM_GPUS_ON_NODE, else 8)
#   MASTER_PORT          rendezvous port on the first node (default: 20000 + job id % 10000)
#   PYTHON               interpreter with megaindex installed (default: python3; python in a container)
#   MEGAINDEX_CONTAINER  none | pyxis | apptainer (default: none = the node's own environment)
#   MEGAINDEX_IMAGE      image for pyxis (e.g. nvcr.io#... or a .sqsh) or apptainer (.sif); required with a container
#   CONTAINER_MOUNTS     extra mounts, comma-separated src:dst (data, checkpoints outside the repo)
#   APPTAINER            apptainer or singularity binary (default: apptainer)
#   STOP_TIMEOUT         seconds torchrun waits for workers to checkpoint after a stop signal (default 240)
#   MAX_REQUEUES         give up requeueing after this many restarts (default 50)
#   LOG_DIR              where the exit file goes (default: logs, like the #SBATCH --output)
#   NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG, ...: inherited from the submitting shell (srun's
#   default --export=ALL), so set them there if NCCL picks the wrong interface.

EXIT_PREEMPTED=75 # megaindex/training/preemption.py: stopped with a checkpoint, run again to resume

megaindex_die() {
  echo "megaindex launch: $*" >&2
  exit 2
}

# Fill the arrays CONTAINER_SRUN_ARGS (options for srun) and CONTAINER_EXEC (a command prefix)
# for MEGAINDEX_CONTAINER. The repository is mounted at the same path inside the container and is
# the working directory, so relative recipe paths, runs/ and logs/ mean the same inside and out.
megaindex_container() {
  local mounts="$MEGAINDEX_HOME:$MEGAINDEX_HOME${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
  CONTAINER_SRUN_ARGS=()
  CONTAINER_EXEC=()
  case "${MEGAINDEX_CONTAINER:-none}" in
    none) ;;
    pyxis)
      [ -n "${MEGAINDEX_IMAGE:-}" ] || megaindex_die "MEGAINDEX_CONTAINER=pyxis needs MEGAINDEX_IMAGE (e.g. a registry image or an enroot .sqsh built from the Dockerfile)"
      CONTAINER_SRUN_ARGS=(--container-image="$MEGAINDEX_IMAGE" --container-mounts="$mounts" --container-workdir="$MEGAINDEX_HOME")
      ;;
    apptainer)
      [ -n "${MEGAINDEX_IMAGE:-}" ] || megaindex_die "MEGAINDEX_CONTAINER=apptainer needs MEGAINDEX_IMAGE (a .sif, e.g. apptainer build megaindex.sif docker-daemon://megaindex:latest)"
      CONTAINER_EXEC=("${APPTAINER:-apptainer}" exec --nv --bind "$mounts" --pwd "$MEGAINDEX_HOME" "$MEGAINDEX_IMAGE")
      ;;
    *) megaindex_die "MEGAINDEX_CONTAINER=$MEGAINDEX_CONTAINER: use none, pyxis or apptainer" ;;
  esac
}

# Environment every rank inherits through srun.
megaindex_environment() {
  # megatron's TP/SP communication overlap relies on kernels being issued in order on one queue.
  export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
  # A NCCL error or timeout aborts the process (and so the job) instead of hanging until the time limit.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
  export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  # Growable allocator segments: reserved memory stays close to the allocated peak with long packed
  # sequences (the trainer sets the same default when nothing is configured).
  export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
  # The node's cores shared by its ranks (torch defaults to all cores per process: oversubscription).
  local cpus="${SLURM_CPUS_ON_NODE:-$(nproc)}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cpus / GPUS_PER_NODE > 0 ? cpus / GPUS_PER_NODE : 1 ))}"
  export PYTHONUNBUFFERED=1 # log lines reach logs/%x-%j.out as they happen
}

# megaindex_launch RECIPE [dotted overrides...]: one srun task per node, each a torchrun agent with
# GPUS_PER_NODE workers joining one c10d rendezvous on the first node, running `megaindex train`.
# If the trainer stopped on SIGUSR1/SIGTERM with a checkpoint, requeue this job: the requeued job
# runs this same script and the trainer resumes from the `latest` checkpoint by itself.
megaindex_launch() {
  local recipe="$1"
  shift
  : "${SLURM_JOB_ID:?not inside a Slurm job: submit with sbatch, or use launch/local.sh on one machine}"
  cd "$MEGAINDEX_HOME" || megaindex_die "MEGAINDEX_HOME=$MEGAINDEX_HOME is not a directory"
  [ -f "$recipe" ] || megaindex_die "recipe $recipe not found under $MEGAINDEX_HOME (set RECIPE, or submit from the repository root)"
  GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
  local nodes="${SLURM_NNODES:-1}"
  # The first node hosts the rendezvous. (Not `| head -n1`: under pipefail, head closing the pipe
  # early can kill scontrol with SIGPIPE and the script with it.)
  local hosts
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  local master_addr="${hosts[0]:?scontrol show hostnames $SLURM_JOB_NODELIST printed no host}"
  local port="${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 10000 ))}"
  local python="${PYTHON:-python3}"
  [ "${MEGAINDEX_CONTAINER:-none}" = none ] || python="${PYTHON:-python}"
  megaindex_container
  megaindex_environment

  # The trainer's exit code (75 = preempted) does not survive torchrun, which reports any failed
  # worker as 1; rank 0 writes it here instead. A requeued job keeps its id: clear the old one.
  local log_dir="${LOG_DIR:-logs}"
  mkdir -p "$log_dir"
  local exit_file
  exit_file="$(cd "$log_dir" && pwd)/.${SLURM_JOB_NAME:-megaindex}-$SLURM_JOB_ID.exit"
  rm -f "$exit_file"
  export MEGAINDEX_EXIT_FILE="$exit_file"

  echo "megaindex launch: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}), $nodes node(s) x $GPUS_PER_NODE," \
    "rendezvous $master_addr:$port, recipe $recipe${*:+, overrides: $*}"
  # Signals: Slurm sends SIGUSR1 (#SBATCH --signal=USR1@N, no B: so it goes to the job step's
  # processes, not to this shell) or SIGTERM (preemption, scancel) to the torchrun agents, and
  # possibly to the workers directly. By default torchrun would die of SIGUSR1; handling it makes
  # the agent forward it to its workers, which finish the step, agree on it with the other ranks,
  # checkpoint and exit. --shutdown-timeout is how long the agent waits for that before SIGKILL:
  # keep it below the --signal lead time.
  # --kill-on-bad-exit: one node failing ends the step instead of leaving the rest hanging in NCCL.
  local rc=0
  srun --nodes="$nodes" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" --kill-on-bad-exit=1 \
    "${CONTAINER_SRUN_ARGS[@]}" "${CONTAINER_EXEC[@]}" \
    "$python" -m torch.distributed.run \
    --nnodes "$nodes" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$master_addr:$port" --rdzv-id "$SLURM_JOB_ID" \
    --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout "${STOP_TIMEOUT:-240}" \
    -m megaindex train "$recipe" "$@" || rc=$?

  local code=""
  if [ -f "$exit_file" ]; then
    read -r code _ <"$exit_file" || true
    echo "megaindex launch: trainer: $(cat "$exit_file")"
  fi
  if [ "$code" = "$EXIT_PREEMPTED" ]; then
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-50}" ]; then
      echo "megaindex launch: stopped with a checkpoint but already restarted ${SLURM_RESTART_COUNT} times (MAX_REQUEUES); not requeueing" >&2
      exit "$EXIT_PREEMPTED"
    fi
    echo "megaindex launch: requeueing job $SLURM_JOB_ID; it resumes from the latest checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "megaindex launch: srun exited with $rc"
  exit "$rc"
}
