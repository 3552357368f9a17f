"""What the synthetic training data must never show: the evaluation's own text.

Owns `HELD_OUT_PHRASES` (the passkey and needle prompts, their garbage sentences, RULER's phrasing:
case-insensitive substrings no training document may contain), `check_held_out` (raises
`HeldOutPhraseError` naming the phrase) and `needle_word_lists` (every entry of the needles' word lists,
read from megaindex.data.needle_words so the two never drift: no open-vocabulary span of a training
document may hold one). megaindex.data.retrieval_docs checks every document it writes against them.
"""

from __future__ import annotations

from megaindex.data.needle_words import WORDS

# Text the evaluation uses; training must never show it (case-insensitive substrings).
HELD_OUT_PHRASES = (
    "pass key", "passkey", "pass-key",  # landmark / LongLoRA passkey prompt and its garbage
    "important info hidden inside", "the grass is green. the sky is blue", "the grass is green", "the sky is blue",
    "the sun is yellow", "here we go", "there and back again",
    # NeedleBench-style needles and their prompt (megaindex.data.needle_words, megaindex.eval.needle)
    "best thing to do in", "secret ingredient", "最值得做的事情", "秘密配料", "one sentence in it answers",
    "其中有一句话回答了", "文末的问题", "the document given to you by the user", "用户给你的文档",
    "answer with one sentence that starts with", "开头的一句话回答",
    "special magic",  # RULER
)


def needle_word_lists() -> dict[str, list[str]]:
    """Every word-list entry of the evaluation's needles (megaindex.data.needle_words, the table the
    evaluation draws from; read from there so the two never drift), English ones lowercased and
    space-padded: no open-vocabulary span of a training document may hold one."""
    return {"en": [f" {w.lower()} " for table in WORDS["en"].values() for w in table],
            "zh": [w for table in WORDS["zh"].values() for w in table]}


class HeldOutPhraseError(ValueError):
    """A generated document contains an evaluation-only phrase."""


def check_held_out(text: str, phrases: tuple[str, ...] = HELD_OUT_PHRASES) -> None:
    low = text.lower()
    for p in phrases:
        if p.lower() in low:
            raise HeldOutPhraseError(f"evaluation-only phrase {p!r} in a training document")
