"""Same-form retrieval documents: "The {short subject} is {value}." among many sentences of that form.

Owns the parts of a v3 same-form document (megaindex.data.retrieval_docs assembles them): 1-3 facts
with short subjects (1-3 words, often a span of the filler: "the harbour key", "the configuration
file"), stated exactly as "The {s} is {v}." ("{s}是{v}。"), and distractor sentences of the same form
with other short subjects ("The lamp is old.", "The north gate is closed."), a few of them hard
negatives that share a word with a fact's subject ("The harbour is quiet." against "The harbour key
is 48213.", "The harbour key ring is rusty."); questions end "The {s} is" or are Q/A pairs whose
answer restates "{S} is {v}.".

Why (the second GPU attempt's stage 0, gate missed): in every passkey sample the first answer token
was wrong — after "The pass key is" the model said `gre`, the most frequent "is -> X" continuation of
the garbage "The grass is green." — and, given the first digit, it copied the rest of the key. It
copies spans once started but does not find WHICH statement matches the question's subject. v2's
facts had long, closed-list subjects unlike the haystack's short sentences, so "is" plus a nearby long
name was enough; here the fact and its distractors have the same form and often share words, so only
an exact match of the question's subject finds the value.

With open-vocabulary values (v4, kind "open"), the facts' and the distractors' values are spans of
the filler alike, so no value is recognisable as the fact's by its vocabulary; so are v5's random
values (kind "random", words / characters drawn from the filler's vocabulary).

Distractors never repeat a fact's subject and never hold a fact's value; the caller checks the
whole document against the held-out phrases (the passkey's garbage sentences included).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from megaindex.data import retrieval_words as W
from megaindex.data.retrieval_subjects import FILLER_VALUES, open_span

MAX_FACTS = 3         # facts per same-form document: 1 (half of them) or 2..MAX_FACTS
MIN_DISTRACTORS = 4   # a same-form document grows (up to max_tokens) to hold at least this many distractors
ADJ_VALUE_SHARE = 0.65  # distractors with an adjective value ("is old"); the rest a value of the fact's kind


@dataclass(frozen=True)
class ShortSubject:
    text: str     # "the harbour key" / "港口的钥匙"
    prefix: str   # "harbour" / "港口" (may be empty)
    head: str     # "key" / "钥匙"
    joiner: str   # between prefix and head: " " (English), "的" or "" (Chinese)
    open: bool    # the prefix or the words come from the filler


def _compose(lang: str, prefix: str, head: str, joiner: str) -> str:
    if lang == "zh":
        return f"{prefix}{joiner}{head}" if prefix else head
    return f"the {prefix} {head}" if prefix else f"the {head}"


def short_subject(filler, rng: random.Random, lang: str, open_share: float,
                  check: Callable[[str], bool]) -> ShortSubject:
    """A 1-3 word subject: a filler span with probability `open_share` (else, or with no filler, the closed lists)."""
    if rng.random() < open_share:
        if lang == "en":
            span = open_span(filler, rng, "en", 1, 3, check)
            if span is not None:
                words = span.split()
                return ShortSubject(_compose("en", " ".join(words[:-1]), words[-1], " "), " ".join(words[:-1]),
                                    words[-1], " ", True)
        else:
            span = open_span(filler, rng, "zh", 2, 4, check)
            if span is not None:
                head = rng.choice(W.ZH_SF_NOUN)
                return ShortSubject(f"{span}的{head}", span, head, "的", True)
    if lang == "en":
        mods = rng.sample(W.SF_MOD, rng.choice([0, 1, 1, 2]))
        head = rng.choice(W.SF_NOUN)
        return ShortSubject(_compose("en", " ".join(mods), head, " "), " ".join(mods), head, " ", False)
    joiner = rng.choice(["", "的"])
    mod, head = rng.choice(W.ZH_SF_MOD), rng.choice(W.ZH_SF_NOUN)
    return ShortSubject(f"{mod}{joiner}{head}", mod, head, joiner, False)


def _hard_negatives(s: ShortSubject, lang: str, rng: random.Random) -> list[str]:
    """Subjects sharing a word with `s`: its prefix alone, its head alone, either with another word, `s` extended."""
    nouns, mods = (W.SF_NOUN, W.SF_MOD) if lang == "en" else (W.ZH_SF_NOUN, W.ZH_SF_MOD)
    other_head = rng.choice([n for n in nouns if n != s.head])
    other_mod = rng.choice([m for m in mods if m != s.prefix])
    joiner = s.joiner or ("的" if lang == "zh" else " ")
    out = [_compose(lang, other_mod, s.head, joiner)]
    if s.prefix:
        out += [_compose(lang, "", s.prefix, joiner), _compose(lang, s.prefix, other_head, joiner),
                _compose(lang, "", s.head, joiner)]
    ext = rng.choice(nouns)
    out.append(f"{s.text} {ext}" if lang == "en" else f"{s.text}的{ext}")
    return out


def _value(filler, lang: str, kind: str, rng: random.Random, check: Callable[[str], bool],
           value: Callable[[random.Random], str | None] | None = None) -> str | None:
    """A value of `kind`; an "open" one is a span of the filler, a "random" one a draw from its vocabulary (None
    when none passes `check`); `value(rng)`, when given, draws the filler kinds instead (v9's frequency draws)."""
    if value is not None and kind in FILLER_VALUES:
        return value(rng)
    if kind in FILLER_VALUES:
        return FILLER_VALUES[kind](filler, rng, lang, check)
    return W.value(lang, kind, rng.choice(W.attributes(lang, kind)), rng)


def _clash(a: str, b: str) -> bool:
    return a in b or b in a


def sentence(subject: str, value: str, lang: str, adjective: bool = False) -> str:
    """"The {s} is {v}." / "{s}是{v}。" ("{s}是{adj}的。" for a Chinese adjective)."""
    if lang == "zh":
        return f"{subject}是{value}的。" if adjective else f"{subject}是{value}。"
    return f"{subject[0].upper()}{subject[1:]} is {value}."


def fact_count(rng: random.Random) -> int:
    """1 for half of the documents, else 2..MAX_FACTS."""
    return 1 if rng.random() < 0.5 else rng.randint(2, MAX_FACTS)


def draw(filler, rng: random.Random, lang: str, kind: str, n: int, open_share: float,
         check: Callable[[str], bool], value: Callable[[random.Random], str | None] | None = None
         ) -> tuple[list[tuple[str, str, bool]], list[str], list[str]]:
    """(n facts as (subject, value, open), hard-negative distractor sentences, other distractor sentences); `value`:
    as _value's."""
    facts: list[tuple[str, str, bool]] = []
    subjects: list[ShortSubject] = []
    for _ in range(50 * n):
        if len(facts) == n:
            break
        s = short_subject(filler, rng, lang, open_share, check)
        v = _value(filler, lang, kind, rng, check, value)
        if v is None or _clash(v, s.text) or any(s.text == f[0] or _clash(v, f[1]) for f in facts):
            continue
        facts.append((s.text, v, s.open))
        subjects.append(s)
    taken = {f[0] for f in facts}
    values = [f[1] for f in facts]
    adjectives = W.SF_ADJ if lang == "en" else W.ZH_SF_ADJ

    def distractor(subject: str) -> str | None:
        if subject in taken or not check(subject):
            return None
        taken.add(subject)
        if rng.random() < ADJ_VALUE_SHARE:
            return sentence(subject, rng.choice(adjectives), lang, adjective=True)
        for _ in range(20):
            v = _value(filler, lang, kind, rng, check, value)
            if v is not None and not any(_clash(v, x) for x in values):
                return sentence(subject, v, lang)
        return None

    hard = [d for s in subjects for d in map(distractor, _hard_negatives(s, lang, rng)) if d]
    other: list[str] = []
    want = rng.randint(4, 8)
    for _ in range(4 * want):
        if len(other) == want:
            break
        d = distractor(short_subject(filler, rng, lang, open_share, check).text)
        if d:
            other.append(d)
    return facts, hard, other
