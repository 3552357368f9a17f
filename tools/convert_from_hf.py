#!/usr/bin/env python
"""Convert an HF Index-1.9B / Llama checkpoint into a megaindex checkpoint (see --help)."""

import sys

from megaindex.convert.cli import main

if __name__ == "__main__":  # dist checkpoint I/O may start spawn-based helpers: keep the guard
    sys.exit(main(["from-hf", *sys.argv[1:]]))
