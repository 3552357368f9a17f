"""The benchmark scripts' record protocol: one `RESULT {json}` console line that a driver such as
compare_hf.py reads back, and the whole record appended to a JSONL file. Pure standard library, so
the HF baseline's process can use it without importing megatron or Transformer Engine."""

from __future__ import annotations

import json

PREFIX = "RESULT "


def emit(record: dict, out: str | None = None, *, console_omit: tuple[str, ...] = ()) -> None:
    """Print the record (less the bulky `console_omit` keys) as a RESULT line; append all of it to `out`."""
    print(PREFIX + json.dumps({k: v for k, v in record.items() if k not in console_omit}), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


def parse(line: str) -> dict | None:
    """The record of a RESULT line, or None for any other console line."""
    return json.loads(line[len(PREFIX):]) if line.startswith(PREFIX) else None
