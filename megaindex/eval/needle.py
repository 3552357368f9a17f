"""Needle in a haystack, NeedleBench-style (single needle), lengths exact in the model's tokens.

Owns `needle_sample(...)`: a needle from the word lists (needle_words), a haystack of held-out
documents (haystack), the needle `"\\n" + sentence + "\\n"` inserted at token int(n * depth / 100)
of the haystack and moved back to the previous sentence end, and the prompt around it:
  base: an instruction line, "The document given to you by the user is:", the haystack, the
        question, and "Answer: " + the answer prefix (completion form; the gold answer continues it).
  chat: Index's chat format `<unk>{system}reserved_0{user}reserved_1` with the document and the
        guided question as the user turn; the assistant turn starts with the answer prefix.
Prompt + gold answer is exactly `length` tokens (the sequence one forced-scoring forward reads; a
32K length fits a 32K model): the haystack gets what the instruction, needle, question and answer
leave. The same (lang, repeat) gives the same haystack at every depth; the needle is drawn from a
seed of (lang, length, depth, repeat), so every variant sees the same samples.
"""

from __future__ import annotations

import random

from megaindex.data.tokenizer import ASSISTANT, UNK, USER
from megaindex.eval import EvalError
from megaindex.eval.haystack import Haystack
from megaindex.data.needle_words import draw_needle
from megaindex.eval.sample import Sample, encode_text, split_answer

TEXT = {
    "en": {
        "system": "You are a helpful assistant who answers questions about documents.",
        "intro": "Below is a long document. One sentence in it answers the question at the end.",
        "document": "The document given to you by the user is:",
        "question": "Question: {q}",
        "answer": "Answer: ",
        "guide": "{q} Answer with one sentence that starts with \"{p}\".",
    },
    "zh": {
        "system": "你是一个根据文档回答问题的助手。",
        "intro": "下面是一篇长文档，其中有一句话回答了文末的问题。",
        "document": "用户给你的文档是：",
        "question": "问题：{q}",
        "answer": "回答：",
        "guide": "{q}请用以“{p}”开头的一句话回答。",
    },
}


def needle_sample(hay: Haystack, *, lang: str, length: int, depth: float, repeat: int, prompt: str = "base") -> Sample:
    tok = hay.tok
    t = TEXT[lang]
    needle = draw_needle(lang, random.Random(f"needle-{lang}-{length}-{depth}-{repeat}"))
    if prompt == "base":
        head = encode_text(tok, f"{t['intro']}\n{t['document']}\n")
        question = t["question"].format(q=needle.question)
        tail, answer = split_answer(tok, f"\n\n{question}\n{t['answer']}{needle.answer_prefix}", needle.answer)
    elif prompt == "chat":
        head = [UNK] + tok.encode(t["system"]) + [USER] + encode_text(tok, f"{t['document']}\n")
        guide = t["guide"].format(q=needle.question, p=needle.answer_prefix)
        last, answer = split_answer(tok, needle.answer_prefix, needle.answer)
        tail = encode_text(tok, f"\n\n{guide}") + [ASSISTANT] + last
    else:
        raise EvalError(f"--prompt {prompt!r}: use base or chat.")
    needle_ids = encode_text(tok, f"\n{needle.text}\n")
    n = length - len(head) - len(tail) - len(needle_ids) - len(answer)
    if n < 1:
        raise EvalError(f"length {length} is too short for a needle prompt ({length - n} tokens without any "
                        f"haystack); use lengths of at least {length - n + 64}.")
    ids = hay.tokens(lang, n, seed=repeat)
    pos = hay.snap_back(ids, int(n * depth / 100))
    prompt_ids = head + ids[:pos] + needle_ids + ids[pos:] + tail
    assert len(prompt_ids) + len(answer) == length, (len(prompt_ids), len(answer), length)
    # gold = the answer tokens as text: a character that merged into the first answer token belongs to it
    return Sample("needle", lang, length, repeat, prompt_ids, answer, gold=tok.decode(answer).strip(),
                  keyword=needle.keyword, depth=depth, actual_depth=100.0 * pos / n)
