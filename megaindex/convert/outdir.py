"""Atomic output directories for the converters.

Owns the rule that a conversion either leaves a complete OUT or nothing: work happens in a hidden
sibling `.OUT.partial-<pid>` that is renamed into place only after every file is written, and
removed on any error. A non-empty OUT is refused unless `force` (then replaced at the rename), and
an OUT that is, contains or lies inside an input is always refused (`--force` would delete the input).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from megaindex.convert.hf_config import ConversionError


def check_out_dir(out: str | Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    out = Path(out)
    where = out.resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).resolve()
        if where == s or s in where.parents or where in s.parents:
            relation = "is" if where == s else ("is inside" if s in where.parents else "contains")
            raise ConversionError(f"output {out} {relation} the input {src}; choose an output directory outside it.")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"output {out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConversionError(f"output directory {out} is not empty; pass --force to replace it.")
    return out


@contextlib.contextmanager
def atomic_out_dir(out: str | Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block finishes without error."""
    out = check_out_dir(out, force, inputs).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
