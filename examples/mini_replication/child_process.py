"""The child processes of run.py: `sh` runs one (output streamed, stop signals forwarded, a failure
ends the command in one line naming the step), `megaindex` runs `python -m megaindex train|eval`."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from context import PY, REPO, Ctx, log

# Passed on to a running child: training/preemption.py's stop signals (the trainer checkpoints and
# exits PREEMPTED), as they reached it when it ran in this process.
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def how_it_ended(rc: int) -> str:
    """'exited with code 75 (PREEMPTED)' or 'was killed by signal SIGSEGV (11)' for a child's return code."""
    from megaindex import exit_codes

    if rc < 0:  # subprocess reports a death by signal N as -N
        try:
            return f"was killed by signal {signal.Signals(-rc).name} ({-rc})"
        except ValueError:
            return f"was killed by signal {-rc}"
    names = {v: k for k, v in vars(exit_codes).items() if k.isupper() and isinstance(v, int)}
    return f"exited with code {rc}" + (f" ({names[rc]})" if rc in names else "")


def sh(ctx: Ctx, *cmd: str | Path, what: str = "", hint: str = "") -> None:
    """Run CMD in REPO as a child process with this environment (output streamed); a failure ends the command.

    SIGTERM and SIGUSR1 sent to this script while the child runs go on to the child. The error names
    the step, WHAT ran (default: the script), its exit code or signal, and HINT (how to go on).
    """
    cmd = [str(c) for c in cmd]
    log("$ " + shlex.join(cmd))
    # The child imports the megaindex of this checkout, as this script does (sys.path above).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child: subprocess.Popen | None = None
    pending: list[int] = []  # stop signals that came while the child was being started

    def forward(signum, frame):
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    # Installed before the child starts: a stop signal during Popen reaches the child, not this
    # script's default action (which would kill run.py and leave the child running unsupervised).
    before = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        child = subprocess.Popen(cmd, cwd=REPO, env=env)
        for signum in pending:
            child.send_signal(signum)
        rc = child.wait()
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or an error here: no child goes on writing into WORK
        if child is not None:
            child.kill()
            child.wait()
        raise
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if rc != 0:
        what = what or Path(cmd[1] if cmd[0] == PY else cmd[0]).name
        raise SystemExit(f"step {ctx.step}: {what} {how_it_ended(rc)}" + (f"; {hint}" if hint else ""))


def megaindex(ctx: Ctx, *args: str | Path, hint: str) -> None:
    """`python -m megaindex ARGS` in its own process: the only way this script trains or evaluates.

    One process per training or evaluation: on one H100 (2026-11-28) the second `megaindex train`
    of one process died with SIGSEGV right after it started (the first had run TE + cuDNN attention;
    stage 0 replays CUDA graphs), while each run alone in its own process worked. `-X faulthandler`:
    a child killed by SIGSEGV, SIGABRT, SIGBUS, SIGILL or SIGFPE prints its Python stack first.
    """
    sh(ctx, PY, "-X", "faulthandler", "-m", "megaindex", *args, what=f"megaindex {args[0]}", hint=hint)
