"""One evaluation sample as the model reads it, and the token helpers that build prompts exactly.

Owns `Sample` (prompt ids, gold answer ids, together exactly the requested length; what scores it) and the
two helpers every task uses: `encode_text` (a piece of a prompt encoded as it would be inside the
whole text, so a prompt is built from pieces whose token counts add up) and `split_answer` (the
answer's tokens as the model would write them after the prompt's last words).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    task: str                     # needle | passkey | ppl
    lang: str
    length: int                   # prompt + gold answer in model tokens (what --lengths asked for)
    repeat: int
    prompt_ids: list[int]
    answer_ids: list[int] = field(default_factory=list)
    gold: str = ""                # the answer text (scored against the prediction)
    keyword: str = ""             # NeedleBench's keyword (needle only)
    depth: float | None = None    # requested depth, % of the haystack
    actual_depth: float | None = None  # where the needle/key really starts (after sentence snapping)
    concatenated: bool = False    # ppl: no held-out document was this long, so documents were joined


def encode_text(tok, text: str) -> list[int]:
    """`text` as tokens; text that starts with a newline (a piece that follows earlier tokens) is
    encoded as SentencePiece would inside a longer text, without the dummy-prefix space it puts at
    the start of every encode call."""
    if not text.startswith("\n"):
        return tok.encode(text)
    ids = tok.encode("a" + text)
    sentinel = tok.encode("a")
    assert ids[:len(sentinel)] == sentinel, "the tokenizer merged the sentinel with a newline"
    return ids[len(sentinel):]


def split_answer(tok, prefix: str, answer: str) -> tuple[list[int], list[int]]:
    """Tokens of `prefix + answer` split into (prompt part, answer part) where the prefix's own
    encoding stops agreeing: a word that merges across the boundary goes to the answer, so the
    prompt ends where the model would naturally continue with the answer."""
    full, head = encode_text(tok, prefix + answer), encode_text(tok, prefix)
    k = 0
    while k < min(len(full), len(head)) and full[k] == head[k]:
        k += 1
    k = min(k, len(full) - 1)
    return full[:k], full[k:]
