"""The facts of a keyed retrieval document: what is stated, how its subject reads, and the check that nothing else
in the text gives that subject another value.

Owns `Fact` (subject, value, and where the subject came from: the closed word lists, a filler span (v3) or
random vocabulary words (v8)), `draw_facts` (n facts with distinct subjects and values of one kind, mostly one
attribute shared by several owners, so that only the key tells them apart) and `contradictions`. The
document around them is megaindex.data.retrieval_docs'; the subject and value makers are
megaindex.data.retrieval_subjects' and megaindex.data.retrieval_words'.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from megaindex.data import retrieval_words as W
from megaindex.data.retrieval_subjects import FILLER_VALUES


@dataclass(frozen=True)
class Fact:
    subject: str   # "the locker number of Marisol Achebe" / "Marisol Achebe's locker number" / "林晓明的房间号"
    value: str     # "48213", "teal", "the third drawer of the oak desk", "早饭前遛狗"
    open: bool = False  # the subject is made from a span of the filler (v3), not the closed word lists
    random: bool = False  # the subject's owner words are drawn from the filler's vocabulary (v8): neither of those

    @property
    def subject_kind(self) -> str:
        """"random" (v8), "open" (v3) or "closed" (the word lists)."""
        return "random" if self.random else "open" if self.open else "closed"

    def fill(self, template: str) -> str:
        return template.format(s=self.subject, S=self.subject[0].upper() + self.subject[1:], v=self.value)


def _subject(owner: str, attr: str, lang: str, rng: random.Random) -> str:
    if lang == "zh":  # 林晓明的房间号, 林晓明最喜欢的颜色 (no doubled 的)
        return owner + ("" if "的" in attr else "的") + attr
    if rng.random() < 0.5 or owner.startswith("the "):
        return f"the {attr} of {owner}"
    return f"{owner}'s {attr}"


def draw_facts(n: int, rng: random.Random, lang: str = "en", kind: str = "number",
               open_subject: Callable[[random.Random, str], str | None] | None = None,
               open_share: float = 0.0, filler_value: Callable[[random.Random], str | None] | None = None,
               random_subject: Callable[[random.Random, str], str | None] | None = None,
               random_share: float = 0.0) -> list[Fact]:
    """n facts with distinct subjects and values of one kind; mostly one attribute shared by several owners.

    With `open_subject(rng, attr)` (a filler-made subject or None), a share `open_share` of the subjects
    is open-vocabulary; values of kind "open" (a filler span) or "random" (v5: a draw from the filler's
    vocabulary) come from `filler_value(rng)` (the value or None). With `random_subject(rng, attr)` (v8: a subject
    keyed by random vocabulary words, or None), a share `random_share` of the subjects is drawn from it first (the
    rest as before: open with `open_share`, else closed); `random_share` 0 draws nothing, so v1-v7 are unchanged."""
    facts: list[Fact] = []
    subjects, values = set(), set()
    attrs = W.attributes(lang, kind)
    shared = rng.choice(attrs)
    for _ in range(100 * n):
        if len(facts) == n:
            break
        attr = shared if rng.random() < 0.7 else rng.choice(attrs)
        value = filler_value(rng) if kind in FILLER_VALUES else W.value(lang, kind, attr, rng)
        subject, rand = None, False
        if random_share and random_subject is not None and rng.random() < random_share:  # v8; 0 draws nothing
            subject = random_subject(rng, attr)
            rand = subject is not None
        if not rand:
            subject = open_subject(rng, attr) if open_subject is not None and rng.random() < open_share else None
        if subject is None:
            owner = W.owner(lang, rng)
            key: object = (owner, attr)
        else:
            key = subject
        if value is None or key in subjects or value in values:  # one answer per question, no repeated value
            continue
        fact = Fact(_subject(owner, attr, lang, rng), value) if subject is None else \
            Fact(subject, value, random=True) if rand else Fact(subject, value, True)
        if value in fact.subject or fact.subject in value:  # an open value inside its own subject reads as both
            continue
        subjects.add(key)
        values.add(value)
        facts.append(fact)
    if len(facts) < n:
        raise RuntimeError(f"could not draw {n} distinct facts")
    return facts


def contradictions(doc: dict) -> list[str]:
    """Places in the body (the text before the questions) where a fact's subject is followed by "is"/"是"
    and something other than its value — a filler sentence that happens to go on from an open subject's
    span ("the string value obtained is ..."). Case-insensitive. A document must have none."""
    body = doc["text"].rpartition("\n\n")[0].lower()
    out = []
    for subject, value in doc["facts"]:
        head, value = subject.lower() + ("是" if doc["lang"] == "zh" else " is "), value.lower()
        at = body.find(head)
        while at >= 0:
            if not body.startswith(value, at + len(head)):
                out.append(body[at:at + len(head) + 20])
            at = body.find(head, at + 1)
    return out
