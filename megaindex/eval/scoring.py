"""Scores: NeedleBench's keyword / edit-distance score, exact match and token accuracy.

Owns `needlebench_score(prediction, reference, keyword)`: 100 when the keyword occurs in the
prediction, else 20 * (1 - Levenshtein(p, r) / max(len(p), len(r))) computed on the two strings with
all whitespace removed (OpenCompass' NeedleBench evaluator), so a miss scores at most 20 and an
empty prediction scores 0.

Owns `token_accuracy(predicted_ids, gold_ids)`: the share of gold answer tokens the model predicts
at their own position (k of n right -> k/n; 1.0 iff every token is right). With the forced argmax
(one forward over prompt + gold answer) it measures partial retrieval that exact match hides: a
model that misses the first digit of a key but copies the rest scores (n-1)/n, not 0.
"""

from __future__ import annotations

import re

MISS_WEIGHT = 0.2  # NeedleBench: a prediction without the keyword earns at most 20 points


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1); O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def needlebench_score(prediction: str, reference: str, keyword: str) -> float:
    if keyword and keyword in prediction:
        return 100.0
    p, r = re.sub(r"\s+", "", prediction), re.sub(r"\s+", "", reference)
    longest = max(len(p), len(r))
    if longest == 0:
        return 100.0
    return 100.0 * MISS_WEIGHT * (1.0 - levenshtein(p, r) / longest)


def token_accuracy(predicted: list[int], gold: list[int]) -> float:
    """Share of positions i < len(gold) with predicted[i] == gold[i] (a missing prediction is wrong)."""
    if not gold:
        raise ValueError("token_accuracy needs a non-empty gold answer")
    return sum(int(p == g) for p, g in zip(predicted, gold)) / len(gold)
