"""One trainer per run directory: an exclusive lock on `<run_dir>/.lock`, held by rank 0.

Two trainers on one run directory would interleave `metrics.jsonl` and overwrite each other's
checkpoints and config. `RunDirLock` takes a non-blocking `flock` on the lock file and writes who
holds it (host, pid, start time, command) into it; a second trainer fails at once with an error
naming the holder. The kernel drops the lock when the holder exits, however it exits (kill -9
included), so a stale file never blocks the next run. Standard library only: the CLI takes the
lock before the heavy imports.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirBusy(
                f"{self.path.parent} is in use by {holder}; wait for that run to finish or stop it, "
                f"or give this one another train.run_dir."
            ) from None
        os.ftruncate(fd, 0)
        cmd = " ".join(sys.argv[:6]) + (" ..." if len(sys.argv) > 6 else "")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (since {started}: {cmd})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
