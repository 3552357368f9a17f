"""Middle truncation, as in Index's OpenCompass change.

Owns `middle_truncate`: when a prompt is longer than the budget `max_len - max_new_tokens`, keep its
first and last halves of that budget and drop the middle, so an instruction at the start and the
question at the end both survive. OpenCompass computes `half = int(budget / 2)` and keeps
`ids[:half] + ids[-half:]` (an odd budget loses one token); it then decodes and re-encodes the text,
which can change the length by a token or two. Here the ids are cut directly, so the result is
exactly `2 * half` tokens and the lengths we report are the lengths the model reads.
"""

from __future__ import annotations

from megaindex.eval import EvalError


def middle_truncate(ids: list[int], max_len: int, max_new_tokens: int = 0) -> list[int]:
    """`ids` unchanged when it fits `max_len - max_new_tokens`, else its first and last half-budgets."""
    budget = max_len - max_new_tokens
    if budget < 2:
        raise EvalError(
            f"middle truncation: the budget max_len {max_len} - max_new_tokens {max_new_tokens} = {budget} "
            f"leaves no room for a prompt; use a longer max_len or fewer new tokens."
        )
    if len(ids) <= budget:
        return list(ids)
    half = budget // 2
    return list(ids[:half]) + list(ids[len(ids) - half:])
