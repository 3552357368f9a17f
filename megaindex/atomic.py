"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Owns the one way megaindex replaces a file: write a hidden temporary sibling (same directory, so
the rename cannot cross file systems; the same suffix, so writers that append one, like
`numpy.save`, write where they are told), flush it to disk, rename it over the target, and flush
the directory so the rename itself survives a crash. On an error the temporary is removed and the
old file stays. Whole directories (checkpoints, converter outputs) follow the same rule in
checkpoint.py and convert/outdir.py, renaming a temporary directory with `fsync_dir` from here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends it replaces `path` in one rename.

    `durable=False` skips the fsyncs (caches that are cheap to rebuild)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """Replace `path` with `text` atomically."""
    with atomic_file(path, durable=durable) as tmp:
        tmp.write_text(text)
