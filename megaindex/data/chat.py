"""The Index chat format: conversations -> token segments with the response-only loss rule.

Owns: validating a `{"messages": [{"role", "content"}, ...]}` record, encoding it in Index's format
`<unk>{system}reserved_0{user}reserved_1{assistant}</s>` (multi-turn repeats
`reserved_0{user}reserved_1{assistant}</s>`; no BOS), and the truncation rule for conversations
longer than seq_length.

A conversation is stored as one IndexedDataset *document* made of 1 + 2*T *sequences*:
    [<unk> system] [reserved_0 user_1 reserved_1] [assistant_1 </s>] ... [reserved_0 user_T reserved_1] [assistant_T </s>]
Sequence 0 is the prefix, odd sequences are prompts (no loss), even sequences >= 2 are targets (loss
on every token, including the closing </s>). Keeping the turns as separate sequences lets the loss
mask and the turn-dropping truncation be computed from the index alone, with no second file.
"""

from __future__ import annotations

import numpy as np

from megaindex.data.tokenizer import ASSISTANT, EOS, UNK, USER


class ChatFormatError(ValueError):
    """A chat record that does not follow the format; the message names the problem."""


def validate_messages(rec: object) -> tuple[str, list[tuple[str, str]]]:
    """Return (system, [(user, assistant), ...]) or raise ChatFormatError naming the field."""
    if not isinstance(rec, dict) or "messages" not in rec:
        raise ChatFormatError('missing field "messages"')
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise ChatFormatError('"messages" must be a non-empty list')
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ChatFormatError(f'messages[{i}] must be {{"role": str, "content": str}}')
    system = ""
    if msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    if not msgs or len(msgs) % 2:
        raise ChatFormatError("after an optional system message, messages must be user/assistant pairs")
    turns = []
    for i in range(0, len(msgs), 2):
        u, a = msgs[i], msgs[i + 1]
        if u["role"] != "user" or a["role"] != "assistant":
            raise ChatFormatError(f"messages must alternate user, assistant (got {u['role']}, {a['role']} at turn {i // 2})")
        if not a["content"].strip():
            raise ChatFormatError(f"empty assistant message at turn {i // 2}")
        turns.append((u["content"], a["content"]))
    return system, turns


def encode_conversation(system: str, turns: list[tuple[str, str]], encode) -> list[np.ndarray]:
    """The stored sequences (prefix, prompt_1, target_1, ...) as int32 arrays."""
    seqs = [np.array([UNK] + (encode(system) if system else []), dtype=np.int32)]
    for user, assistant in turns:
        seqs.append(np.array([USER] + encode(user) + [ASSISTANT], dtype=np.int32))
        seqs.append(np.array(encode(assistant) + [EOS], dtype=np.int32))
    return seqs


def is_target(seq_index: int) -> bool:
    return seq_index >= 2 and seq_index % 2 == 0


def fit_conversation(seqs: list[np.ndarray], max_len: int) -> list[np.ndarray] | None:
    """Shorten a conversation to at most `max_len` tokens, or None if it cannot be done.

    The rule (documented in the config as `sft_overlength: truncate`):
      1. drop the earliest whole turns (prompt + answer), keeping the system prefix, until it fits;
      2. if the last turn alone is still too long, cut the middle of its user message and keep the
         head and tail (Index's "middle truncation": an instruction or question at either end
         survives), keeping the reserved_0/reserved_1 markers;
      3. if the prefix, the markers and the answer alone exceed max_len, give up (counted as dropped).
    Answers are never cut: a truncated answer would teach the model to stop mid-sentence.
    """
    prefix, turns = seqs[0], [(seqs[i], seqs[i + 1]) for i in range(1, len(seqs), 2)]
    total = lambda ts: len(prefix) + sum(len(p) + len(t) for p, t in ts)  # noqa: E731
    while len(turns) > 1 and total(turns) > max_len:
        turns = turns[1:]
    if total(turns) > max_len:
        prompt, target = turns[0]
        keep = max_len - len(prefix) - len(target) - 2  # minus the two turn markers
        if keep < 0:
            return None
        user = prompt[1:-1]
        head = (keep + 1) // 2
        user = np.concatenate([user[:head], user[len(user) - (keep - head):]]) if keep else user[:0]
        turns = [(np.concatenate([prompt[:1], user, prompt[-1:]]), target)]
    return [prefix] + [s for pt in turns for s in pt]


def fitted_length(lengths, max_len: int) -> int | None:
    """len of `fit_conversation`'s result from the sequence lengths alone (None: it gives up).

    The same rule without the tokens: datasets plan their rows from the index, so an over-length
    conversation is read (and shortened) only when its row is built, never held in memory."""
    prefix = int(lengths[0])
    turns = [(int(lengths[i]), int(lengths[i + 1])) for i in range(1, len(lengths), 2)]
    total = prefix + sum(p + t for p, t in turns)
    first = 0
    while len(turns) - first > 1 and total > max_len:
        total -= sum(turns[first])
        first += 1
    if total <= max_len:
        return total
    return None if max_len - prefix - turns[-1][1] - 2 < 0 else max_len  # middle truncation fills max_len
