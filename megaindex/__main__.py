"""`python -m megaindex ...` is the `megaindex` command."""

import sys

from megaindex.cli import main

if __name__ == "__main__":
    sys.exit(main())
