"""Perplexity vs context length and mean NLL per position bucket on held-out long documents.

Owns `ppl_sample(...)` (the first `length` tokens of a held-out document, the same document for every
length of a repeat when one is long enough for the longest; documents joined by a blank line, flagged
`concatenated`, only when none is long enough) and `bucket_nll` (sums and counts of per-token NLL in fixed position
buckets). Positions count from the document's start, so a falling NLL curve shows the model using
its context and a rise past the training length shows where it stops extrapolating.
"""

from __future__ import annotations

import math
import random

from megaindex.eval.haystack import Haystack
from megaindex.eval.sample import Sample

NUM_BUCKETS = 16


def ppl_sample(hay: Haystack, *, lang: str, length: int, repeat: int, pick_length: int | None = None) -> Sample:
    """`pick_length` (the grid's longest length): choose among documents that long, so every length
    of a repeat reads a prefix of the same document and perplexity vs length measures context use,
    not a change of text; documents only `length` long are the fallback."""
    for need in dict.fromkeys((max(pick_length or length, length), length)):
        docs = [d for d in hay._doc_ids(lang) if len(d) >= need]
        if docs:
            doc = docs[random.Random(f"ppl-{lang}-{need}-{repeat}").randrange(len(docs))]
            return Sample("ppl", lang, length, repeat, list(doc[:length]))
    return Sample("ppl", lang, length, repeat, hay.tokens(lang, length, seed=f"ppl-{repeat}"), concatenated=True)


def bucket_edges(max_length: int, n: int = NUM_BUCKETS) -> list[int]:
    """n equal position buckets over [0, max_length) (the longest length in the run)."""
    return [round(i * max_length / n) for i in range(n + 1)]


def bucket_nll(nll, edges: list[int]) -> list[list[float]]:
    """[[start, end, sum, count], ...] over predicted positions 1..len (nll[i] predicts token i+1)."""
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        # token position p (1-based target index) -> nll[p - 1]
        lo, hi = max(a, 1) - 1, min(b, len(nll) + 1) - 1
        if hi > lo:
            out.append([a, b, float(nll[lo:hi].double().sum()), hi - lo])
    return out


def perplexity(nll) -> float:
    return math.exp(float(nll.double().mean()))
