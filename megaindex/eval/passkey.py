"""Passkey retrieval with the landmark-attention / LongLoRA prompt; exact match on 5-digit keys.

Owns `passkey_sample(...)`. The prompt is their five lines joined by "\\n": the task description,
a garbage prefix, "The pass key is {k}. Remember it. {k} is the pass key.", a garbage suffix, and
"What is the pass key? The pass key is". Garbage is "The grass is green. The sky is blue. The sun is
yellow. Here we go. There and back again." repeated; like theirs, both garbage parts are cut from
the start of the same repeated text, but here at a token boundary, so prompt + key is exactly
`length` tokens. Where they draw the key's position at random, it is placed at the requested depth
(% of the garbage before the key line), so passkey shares the needle's depth grid. The key is drawn
from 10000..99999 with a seed of (length, depth, repeat). Correct iff the model's tokens at the
answer positions equal the key's tokens.
"""

from __future__ import annotations

import random

from megaindex.eval import EvalError
from megaindex.eval.sample import Sample, encode_text, split_answer

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INFO = "The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = "What is the pass key? The pass key is"


class PasskeyPrompts:
    """Builds passkey samples; the repeated garbage is tokenised once and grown on demand."""

    def __init__(self, tok):
        self.tok = tok
        self._garbage: list[int] = []
        self._repeats = 0

    def garbage(self, n: int) -> list[int]:
        """A newline and then the first n tokens of the repeated garbage text."""
        while len(self._garbage) < n + 1:
            self._repeats = max(64, 2 * self._repeats)
            self._garbage = encode_text(self.tok, "\n" + " ".join([GARBAGE] * self._repeats))
        return self._garbage[:n + 1]

    def sample(self, *, length: int, depth: float, repeat: int) -> Sample:
        key = random.Random(f"passkey-{length}-{depth}-{repeat}").randint(10000, 99999)
        task, info = self.tok.encode(TASK), encode_text(self.tok, "\n" + INFO.format(k=key))
        question, answer = split_answer(self.tok, "\n" + QUESTION, f" {key}")
        fixed = len(task) + len(info) + len(question) + 2  # + the newlines before the two garbage parts
        g = length - fixed - len(answer)
        if g < 0:
            raise EvalError(f"length {length} is too short for the passkey prompt ({fixed} tokens without garbage).")
        before = int(g * depth / 100)
        ids = task + self.garbage(before) + info + self.garbage(g - before) + question
        assert len(ids) + len(answer) == length, (len(ids), len(answer), length)
        return Sample("passkey", "en", length, repeat, ids, answer, gold=str(key), depth=depth,
                      actual_depth=100.0 * before / max(g, 1))
