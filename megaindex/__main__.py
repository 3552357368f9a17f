"""`python -m megaindex ...` is the `megaindex` command."""

import gc
import sys

from megaindex.cli import main


def run() -> int:
    """main(), then gc.freeze(): the interpreter's teardown garbage-collects torch's and megatron's
    ~1M objects several times over (~1.2 s per process on CPU, 2026-11-28); frozen, those passes skip
    them. Only objects in reference cycles go unfinalised: files and process groups are closed by
    megaindex itself, and refcounted objects are still released (and files flushed) at exit."""
    try:
        return main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(run())
