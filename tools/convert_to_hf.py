#!/usr/bin/env python
"""Export a megaindex checkpoint to HF (Llama or Index format; see --help)."""

import sys

from megaindex.convert.cli import main

if __name__ == "__main__":  # dist checkpoint I/O may start spawn-based helpers: keep the guard
    sys.exit(main(["to-hf", *sys.argv[1:]]))
