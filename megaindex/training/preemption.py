"""Preemption: stop at a step boundary with a checkpoint when the job is signalled, so it can requeue.

Owns the stop signals (SIGUSR1, SIGTERM), the agreement between ranks on the step to stop at, the
exit code that means "stopped early with a checkpoint, run me again" and the exit file that carries
that code past torchrun.

Signal path on Slurm (launch/common.sh): `#SBATCH --signal=USR1@<secs>` (no `B:`) makes Slurm send
SIGUSR1 to the processes of the running job step before the time limit; preemption and `scancel`
send SIGTERM. torchrun is started with `--signals-to-handle ...,SIGUSR1` so the agent forwards the
signal to its workers instead of dying of it (SIGUSR1's default action is to terminate), and
`--shutdown-timeout` gives them time to checkpoint before it escalates to SIGKILL. A worker may
also get the signal straight from Slurm; a second delivery is harmless.

In the worker the handler only records the signal: the current step runs to completion. After each
step every rank contributes the signal it saw (or 0) to one MAX all-reduce of a single int, so all
ranks stop after the same step even though the signal reaches them at different times (or, as
with `kill -USR1` on one worker, reaches only some of them). Then the trainer writes a checkpoint
and `megaindex train` exits with EXIT_PREEMPTED; the next run of the same command resumes from the
checkpoint's `latest` pointer.

EXIT_PREEMPTED = 75 is EX_TEMPFAIL from sysexits.h ("temporary failure; the user is invited to
retry"): it is not used by python (1 uncaught exception, 2 usage), megaindex (2 config error,
3 NaN stop), torchrun (1 for any worker failure), the shell (124-127 timeout/not found, 128+n
killed by signal n) or Slurm. torchrun reports any failed worker as exit 1, so a wrapper cannot see
75 through it: when the environment names a file in MEGAINDEX_EXIT_FILE, rank 0 writes
`75 <SIGNAL> step=<N> checkpoint=<PATH>` there once the checkpoint is complete, and the Slurm
script turns that into `scontrol requeue`.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from megaindex import atomic, exit_codes
from megaindex.rank import is_rank0

EXIT_PREEMPTED = exit_codes.PREEMPTED
EXIT_FILE_ENV = "MEGAINDEX_EXIT_FILE"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionWatcher:
    """Records stop signals; `agreed_signal()` turns them into one stop decision for all ranks."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int = 0  # signal number, 0 = none
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> PreemptionWatcher:
        """Install the handlers (main thread only: Python delivers signals there).

        Install before DataLoader workers fork: they inherit the handler, so a signal Slurm sends
        to every process of the step only sets an unused flag in them instead of killing them.
        """
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        # Keep the handler trivial (it interrupts arbitrary code): record and go on with the step.
        if not self.received:
            self.received = signum
            os.write(2, f"megaindex: got {signal.Signals(signum).name}; stopping with a checkpoint after this step\n".encode())

    def agreed_signal(self, device: torch.device) -> signal.Signals | None:
        """Collective: the signal any rank has seen (MAX over ranks), or None. Call on every rank
        after every step: one int all-reduce, negligible next to a training step."""
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        got = int(flag.item())
        return signal.Signals(got) if got else None

    def record_stop(self, sig: signal.Signals, step: int, checkpoint_path: Path) -> None:
        """After the stop checkpoint is complete: rank 0 writes the exit file (if one is asked for),
        then all ranks wait for it, so that no rank exits (and makes a launcher tear down the
        others) before the requeue decision is on disk."""
        path = os.environ.get(EXIT_FILE_ENV)
        if path and is_rank0():
            try:
                write_exit_file(Path(path), f"{EXIT_PREEMPTED} {sig.name} step={step} checkpoint={checkpoint_path}")
            except OSError as e:  # the checkpoint is safe; only the automatic requeue is lost
                print(f"megaindex: could not write {EXIT_FILE_ENV}={path} ({e}); the job will not requeue itself, "
                      "resubmit it to resume (is the directory writable / mounted in the container?)", flush=True)
        if dist.is_initialized():
            dist.barrier()


def write_exit_file(path: Path, line: str) -> None:
    """Atomically write one line; a reader never sees half a record."""
    atomic.write_text(path, line + "\n")
