"""The evaluation grid: what `megaindex eval` (and the in-training probe) runs.

Owns `EvalSpec` (tasks x RoPE variants x lengths x depths x repeats, prompt style, truncation) and
parsing its command-line forms, each with a one-line EvalError for bad input:
  --tasks needle,passkey,ppl     --lengths 1k,2k,32k (k = 1024 model tokens) or 9000,13000
  --depths 0:100:11 (start:stop:count, evenly spaced, ends included) or 0,10,21,31
  --rope naive,dynamic:8,yarn:16,linear:16 (megaindex.model.rope_variants)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from megaindex.eval import EvalError

TASKS = ("needle", "passkey", "ppl")
PROMPTS = ("base", "chat")
TRUNCATE = (None, "middle")


@dataclass
class EvalSpec:
    tasks: list[str]
    lengths: list[int]
    depths: list[float] = field(default_factory=lambda: parse_depths("0:100:11"))
    repeats: int = 1
    variants: list = field(default_factory=list)   # RopeVariant; empty = naive only
    prompt: str = "base"
    truncate: str | None = None
    langs: list[str] | None = None                 # needle/ppl haystack languages; None = all held out
    generate: bool = False                         # greedy generation for predictions (else forced argmax)
    batch_size: int = 8                            # samples per engine call
    extrapolate: bool = False                      # run every variant at every length, past its design limit

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise EvalError(f"--prompt {self.prompt!r} is not one of {', '.join(PROMPTS)}.")
        if self.truncate not in TRUNCATE:
            raise EvalError(f"--truncate {self.truncate!r}: the only truncation is 'middle'.")
        if self.repeats < 1:
            raise EvalError(f"--repeats {self.repeats}: must be at least 1.")
        if not self.variants:
            from megaindex.model.rope_variants import parse_rope

            self.variants = [parse_rope("naive")]


def _split(text: str, what: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise EvalError(f"{what} is empty.")
    return items


def parse_tasks(text: str) -> list[str]:
    tasks = _split(text, "--tasks")
    for t in tasks:
        if t not in TASKS:
            raise EvalError(f"unknown task {t!r} in --tasks; known tasks: {', '.join(TASKS)}.")
    return list(dict.fromkeys(tasks))


def parse_length(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kK]?)", text.strip())
    if not m:
        raise EvalError(f"length {text!r} in --lengths: use token counts like 4096 or 4k (k = 1024 tokens).")
    value = float(m.group(1)) * (1024 if m.group(2) else 1)
    if value != int(value) or value < 16:
        raise EvalError(f"length {text!r} in --lengths must be a whole number of at least 16 tokens.")
    return int(value)


def parse_lengths(text: str) -> list[int]:
    return sorted(dict.fromkeys(parse_length(s) for s in _split(text, "--lengths")))


def parse_depths(text: str) -> list[float]:
    """'0:100:11' -> 11 evenly spaced depths from 0 to 100 %; '0,50,100' -> those depths."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n < 1 or (n == 1 and start != stop):
                raise ValueError
            depths = [start] if n == 1 else [start + (stop - start) * i / (n - 1) for i in range(n)]
        else:
            depths = [float(s) for s in _split(text, "--depths")]
    except ValueError:
        raise EvalError(f"--depths {text!r}: use start:stop:count (e.g. 0:100:11) or a list (e.g. 0,10,21,31), "
                        f"in % of the haystack.") from None
    depths = [round(d, 2) for d in depths]
    bad = [d for d in depths if not 0 <= d <= 100]
    if bad:
        raise EvalError(f"--depths {text!r}: depths are % of the haystack, 0 to 100 (got {bad[0]:g}).")
    return sorted(dict.fromkeys(depths))


def parse_variants(text: str) -> list:
    from megaindex.model.rope_variants import RopeVariantError, parse_rope

    try:
        variants = [parse_rope(s) for s in _split(text, "--rope")]
    except RopeVariantError as e:
        raise EvalError(f"--rope: {e}") from None
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise EvalError(f"--rope {text!r} names a variant twice.")
    return variants
