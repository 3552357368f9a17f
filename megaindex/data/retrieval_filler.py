"""Filler for synthetic retrieval documents: passages of real text (the training corpus' own documents), by language.

Owns reading the filler JSONL, sorting its documents into English and Chinese (`language_of`), cutting
consecutive sentences from a random place (`FillerText.sentences`, dropping any sentence that holds an
evaluation-only phrase), and the filler's word counts, the vocabulary that v5's random values are drawn from and
the weights of v9's frequency draws (each computed once).
megaindex.data.retrieval_docs builds documents around it.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from megaindex.data.held_out import HELD_OUT_PHRASES
from megaindex.data.retrieval_subjects import frequency_table, item_counts, vocabulary

SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")  # English: split at whitespace after a sentence end
ZH_SENTENCE = re.compile(r".*?(?:[。！？]|\n)\s*", re.S)  # Chinese: pieces keep their end and line breaks
CJK = re.compile(r"[\u3400-\u9fff]")
CJK_DOC_SHARE = 0.3  # a filler document is Chinese when CJK characters are this share of its non-space characters


def language_of(text: str) -> str:
    """"zh" when CJK characters are at least CJK_DOC_SHARE of the non-space characters, else "en"."""
    chars = sum(not c.isspace() for c in text)
    return "zh" if len(CJK.findall(text)) >= CJK_DOC_SHARE * max(chars, 1) else "en"


class FillerText:
    """Passages of real text (the training corpus' own documents) cut at sentence ends, by language."""

    def __init__(self, paths: list[str | Path], phrases: tuple[str, ...] = HELD_OUT_PHRASES):
        self.docs: dict[str, list[str]] = {"en": [], "zh": []}
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    text = json.loads(line).get("text", "")
                    if len(text) > 200:
                        self.docs[language_of(text)].append(text)
        if not any(self.docs.values()):
            raise ValueError(f"no filler documents (JSONL with a 'text' field over 200 characters) in {paths}")
        self.phrases = tuple(p.lower() for p in phrases)
        self._counts: dict[str, Counter[str]] = {}
        self._vocabulary: dict[tuple[str, bool], list[str]] = {}
        self._frequency: dict[tuple[str, bool], tuple[list[str], list[float]]] = {}

    def counts(self, lang: str) -> Counter[str]:
        """How often each word (English) / CJK character (Chinese) occurs in the `lang` documents
        (retrieval_subjects.item_counts); counted once, on first use."""
        if lang not in self._counts:
            self._counts[lang] = item_counts(self.docs[lang], lang)
        return self._counts[lang]

    def vocabulary(self, lang: str, particles: bool = False) -> list[str]:
        """The distinct words (English) / CJK characters (Chinese) of the `lang` documents, sorted, that v5's
        random values are drawn from (megaindex.data.retrieval_subjects.vocabulary; `particles`: with 在/的/了, v9's
        Chinese values); computed once, on first use."""
        key = (lang, particles)
        if key not in self._vocabulary:
            self._vocabulary[key] = vocabulary(self.docs[lang], lang, self.counts(lang), particles)
        return self._vocabulary[key]

    def frequency_table(self, lang: str, particles: bool = False) -> tuple[list[str], list[float]]:
        """(items, cumulative weights) of v9's frequency draws (retrieval_subjects.frequency_table; `particles` as
        vocabulary's); computed once. The generator builds it before write_documents forks its workers, which then
        share it, as the vocabulary."""
        key = (lang, particles)
        if key not in self._frequency:
            self._frequency[key] = frequency_table(self.vocabulary(lang, particles), self.counts(lang), lang)
        return self._frequency[key]

    def summary(self) -> str:
        en, zh = len(self.docs["en"]), len(self.docs["zh"])
        note = "" if zh else "; Chinese retrieval documents fall back to repetitive Chinese filler only"
        return f"filler: {en + zh} documents ({en} English, {zh} Chinese){note}"

    def sentences(self, rng: random.Random, chars: int, lang: str = "en") -> list[str]:
        """Consecutive sentences from a random place in a random `lang` document, about `chars` long."""
        doc = rng.choice(self.docs[lang])
        start = rng.randrange(max(1, len(doc) - chars))
        piece = doc[start:start + chars + 400]
        if lang == "zh":  # joined without spaces, so each piece keeps its own line breaks
            parts = ZH_SENTENCE.findall(piece)[1:-1] or [piece]
        else:
            parts = SENTENCE.split(piece)[1:-1] or [piece.strip()]  # drop the cut first and last sentences
        return [p for p in parts if p.strip() and not any(h in p.lower() for h in self.phrases)]
