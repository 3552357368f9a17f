"""Known library warnings: kept in a log file, off the console, so a run's console starts with
megaindex's own lines.

Owns the list of messages that megatron-core, Transformer Engine and torch print on every start
and that need no action from a megaindex user (Apex/TE missing on CPU, their deprecations of APIs
megaindex does not choose, a rank guess before torch.distributed starts). `install()` runs once at
the start of the `megaindex` command: matching Python warnings and log records are held back;
`keep_in(run_dir)` (the trainer, rank 0) writes them, and every later one, to
RUN_DIR/library_warnings.log. Anything not on the list reaches the console as before.
MEGAINDEX_LIBRARY_WARNINGS=show turns the filter off.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

LOG_FILE = "library_warnings.log"
KNOWN = re.compile("|".join([
    r"Transformer Engine and Apex are not installed",
    r"Apex is not installed",
    r"No CUDA runtime is found",
    r"is deprecated|IS DEPRECATED",
    r"is experimental and still under active development",
    r"full_param_layout not provided with use_distributed_optimizer",
    r"Could not determine rank from torch\.distributed",
    r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
]))
# Loggers with a handler of their own (records do not reach the root logger).
_OWN_HANDLER_LOGGERS = ("torch.utils.cpp_extension",)

_held: list[str] = []
_log_path: Path | None = None
_installed = False


def _keep(text: str) -> None:
    if _log_path is None:
        _held.append(text)
    else:
        with _log_path.open("a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")


class _KnownRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if KNOWN.search(msg):
            _keep(f"{record.levelname} {record.name}: {msg}")
            return False
        return True


def install() -> None:
    """Hold back the known warnings from now on (idempotent)."""
    global _installed
    if _installed or os.environ.get("MEGAINDEX_LIBRARY_WARNINGS") == "show":
        return
    _installed = True
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if KNOWN.search(str(message)):
            _keep(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    # What Python's last-resort handler does (WARNING and above, the bare message, stderr), plus
    # the filter: library loggers have no handlers of their own and propagate here.
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.addFilter(_KnownRecords())
        root.addHandler(handler)
    for name in _OWN_HANDLER_LOGGERS:
        logging.getLogger(name).addFilter(_KnownRecords())


def keep_in(run_dir: str | Path) -> int:
    """Write the held-back warnings, and every later one, to RUN_DIR/library_warnings.log;
    returns how many were held back."""
    global _log_path
    _log_path = Path(run_dir) / LOG_FILE
    held, _held[:] = list(_held), []
    for text in held:
        _keep(text)
    return len(held)


def discard() -> None:
    """Drop them (ranks other than 0: rank 0's log file has the same lines)."""
    global _log_path
    _held.clear()
    _log_path = Path(os.devnull)
