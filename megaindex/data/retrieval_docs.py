"""Synthetic retrieval documents: facts stated inside real text, then asked for at the end.

Owns the generator that teaches a model trained from scratch to *retrieve* — the ability Index's
2.8T-token base model brings to stage 1 and a small model does not learn from a few hundred
million tokens of prose. A document is real filler text (passages of the training corpus) with
1..N facts inserted at sentence boundaries, followed by questions about every fact:

    ... real text ... Marisol Achebe's locker number is 48213. ... real text ... The archive
    code of the Harbor Office is 7730. ... real text ...
    Q: What is the archive code of the Harbor Office?
    A: The archive code of the Harbor Office is 7730.
    Q: What is Marisol Achebe's locker number?
    A: Marisol Achebe's locker number is 48213.

Design (the issue's diagnosis of a run that retrieved nothing: too little signal, documents split
across packed rows so the question could not see its fact):
  * dense signal: every fact is asked for (in a shuffled order), as associative-recall benchmarks
    do; multi-key documents reuse the same attribute for several owners (hard distractors), so
    copying "the most recent number" is wrong and matching the key is the only way to score;
  * whole: a document is at most `max_tokens` tokens including its EOD, checked with the real
    tokenizer; pack them with `data.whole_documents` so no row boundary cuts one;
  * several phrasings for statements and for question/answer pairs, numbers and words as values;
  * held out: the evaluation's phrasings (the passkey prompt, the needle templates of
    megaindex.eval, RULER's "special magic number") never appear — not in the templates and not in
    the filler, whose sentences containing one are dropped (`HELD_OUT_PHRASES`, `check_held_out`).

Deterministic: document i depends only on (seed, i), the filler corpus and the tokenizer, so any
slice of a stream can be regenerated.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from megaindex.data.tokenizer import IndexTokenizer

# Text the evaluation uses; training must never show it (case-insensitive substrings).
HELD_OUT_PHRASES = (
    "pass key", "passkey", "pass-key",  # landmark / LongLoRA passkey prompt
    "important info hidden inside", "the grass is green. the sky is blue",
    "best thing to do in", "最值得做的事情",  # NeedleBench-style needles (megaindex.eval.needle_words)
    "special magic",  # RULER
)


class HeldOutPhraseError(ValueError):
    """A generated document contains an evaluation-only phrase."""


def check_held_out(text: str, phrases: tuple[str, ...] = HELD_OUT_PHRASES) -> None:
    low = text.lower()
    for p in phrases:
        if p.lower() in low:
            raise HeldOutPhraseError(f"evaluation-only phrase {p!r} in a training document")


FIRST = ["Marisol", "Tobias", "Ingeborg", "Kwame", "Anouk", "Ravi", "Elif", "Mateo", "Saoirse", "Dmitri", "Yuki",
         "Leontine", "Oskar", "Priya", "Bastien", "Amara", "Henrik", "Lucia", "Emeka", "Noor", "Fenna", "Caspian",
         "Zofia", "Idris", "Margit", "Teodor", "Ayasha", "Rosalind", "Vikram", "Ottilie"]
LAST = ["Achebe", "Lindgren", "Moreau", "Castellanos", "Okonkwo", "Varga", "Nakamura", "Petrov", "Quinlan", "Sørensen",
        "Albescu", "Fairweather", "Mbeki", "Delacroix", "Haddad", "Kowal", "Brennan", "Estrada", "Voss", "Thackeray"]
GROUPS = ["the Harbor Office", "the north warehouse", "the river clinic", "the night shift", "the chess club",
          "the seed bank", "the weather station", "the old observatory", "the print shop", "the choir",
          "the ferry company", "the mountain hut", "the town archive", "the glass workshop", "the rowing team"]
NUMBER_ATTRS = ["locker number", "archive code", "room number", "ticket number", "account number", "badge number",
                "serial number", "order number", "door code", "tracking number", "permit number", "license number",
                "file number", "safe combination", "membership number", "seat number"]
WORD_ATTRS = {
    "favourite colour": ["crimson", "teal", "amber", "violet", "ochre", "indigo", "scarlet", "olive", "turquoise",
                         "magenta", "silver", "maroon"],
    "favourite fruit": ["apricot", "mango", "quince", "lychee", "gooseberry", "papaya", "persimmon", "fig", "kiwi",
                        "pomegranate", "tangerine", "guava"],
    "lucky animal": ["otter", "heron", "lynx", "badger", "falcon", "tortoise", "gecko", "walrus", "ibis", "marmot",
                     "jackal", "puffin"],
    "chosen instrument": ["cello", "oboe", "banjo", "harp", "tuba", "marimba", "bassoon", "zither", "sitar",
                          "accordion", "clarinet", "ukulele"],
    "secret word": ["lantern", "meadow", "granite", "whistle", "harbour", "thimble", "compass", "saffron", "juniper",
                    "quartz", "pebble", "orchard"],
    "home planet in the story": ["Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Neptune", "Uranus", "Pluto"],
}
INTROS = ["", "", "Notes from the records office.\n\n", "Read the text below; some records are asked about at the end.\n\n",
          "Memo.\n\n", "The following pages include several records.\n\n"]
# Statements: {s} subject phrase ("the locker number of X" / "X's locker number"), {v} value.
STATEMENTS = [
    "{S} is {v}.",
    "For the record, {s} is {v}.",
    "Note that {s} is {v}.",
    "According to the register, {s} is {v}.",
    "Please remember: {s} is {v}.",
    "It was written down that {s} is {v}.",
]
# Question/answer pairs; the answer always restates the subject and ends with the value.
QUESTIONS = [
    ("Q: What is {s}?\nA: ", "{S} is {v}."),
    ("Question: What is {s}?\nAnswer: ", "{S} is {v}."),
    ("What is {s}? ", "{S} is {v}."),
    ("Recall {s}.\n", "{S} is {v}."),
    ("From the text above, {s} is", " {v}."),
]
SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")


@dataclass(frozen=True)
class Fact:
    subject: str   # "the locker number of Marisol Achebe" or "Marisol Achebe's locker number"
    value: str     # "48213" or "teal"

    def fill(self, template: str) -> str:
        return template.format(s=self.subject, S=self.subject[0].upper() + self.subject[1:], v=self.value)


@dataclass
class RetrievalDocConfig:
    max_tokens: int = 1024      # whole document including its EOD never exceeds this
    min_tokens: int = 128       # target lengths are drawn log-uniformly in [min_tokens, max_tokens]
    max_facts: int = 8          # facts per document: 1 (single-key) .. max_facts (multi-key)
    single_key_share: float = 0.25  # share of documents with exactly one fact
    seed: int = 0


def _owner(rng: random.Random) -> str:
    return rng.choice(GROUPS) if rng.random() < 0.25 else f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _subject(owner: str, attr: str, rng: random.Random) -> str:
    if rng.random() < 0.5 or owner.startswith("the "):
        return f"the {attr} of {owner}"
    return f"{owner}'s {attr}"


def draw_facts(n: int, rng: random.Random) -> list[Fact]:
    """n facts with distinct subjects and values; mostly one attribute shared by several owners."""
    facts: list[Fact] = []
    subjects, values = set(), set()
    numeric = rng.random() < 0.7
    pick_attr = (lambda: rng.choice(NUMBER_ATTRS)) if numeric else (lambda: rng.choice(list(WORD_ATTRS)))
    shared = pick_attr()
    for _ in range(100 * n):
        if len(facts) == n:
            break
        attr = shared if rng.random() < 0.7 else pick_attr()
        if attr in WORD_ATTRS:
            value = rng.choice(WORD_ATTRS[attr])
        else:
            digits = rng.randint(4, 7)
            value = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        owner = _owner(rng)
        if (owner, attr) in subjects or value in values:  # one answer per question, no repeated value
            continue
        subjects.add((owner, attr))
        values.add(value)
        facts.append(Fact(_subject(owner, attr, rng), value))
    if len(facts) < n:
        raise RuntimeError(f"could not draw {n} distinct facts")
    return facts


class FillerText:
    """Passages of real text (the training corpus' own documents) cut at sentence ends."""

    def __init__(self, paths: list[str | Path], phrases: tuple[str, ...] = HELD_OUT_PHRASES):
        self.docs: list[str] = []
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    text = json.loads(line).get("text", "")
                    if len(text) > 200:
                        self.docs.append(text)
        if not self.docs:
            raise ValueError(f"no filler documents (JSONL with a 'text' field over 200 characters) in {paths}")
        self.phrases = tuple(p.lower() for p in phrases)

    def sentences(self, rng: random.Random, chars: int) -> list[str]:
        """Consecutive sentences from a random place in a random document, about `chars` long."""
        doc = rng.choice(self.docs)
        start = rng.randrange(max(1, len(doc) - chars))
        piece = doc[start:start + chars + 400]
        parts = SENTENCE.split(piece)[1:-1] or [piece.strip()]  # drop the cut first and last sentences
        return [p for p in parts if p.strip() and not any(h in p.lower() for h in self.phrases)]


class RetrievalDocGenerator:
    """Document i = f(seed, i): see the module docstring."""

    def __init__(self, tokenizer: IndexTokenizer, filler: FillerText, config: RetrievalDocConfig):
        if config.min_tokens < 32 or config.max_tokens < config.min_tokens:
            raise ValueError(f"need 32 <= min_tokens <= max_tokens, got {config.min_tokens}, {config.max_tokens}")
        self.tok, self.filler, self.cfg = tokenizer, filler, config

    def _ntok(self, text: str) -> int:
        return len(self.tok.encode(text))

    def document(self, index: int) -> dict:
        """{"text", "facts": [[subject, value], ...], "source"}; text + EOD fits max_tokens."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}:{index}")
        target = int(round(cfg.min_tokens * (cfg.max_tokens / cfg.min_tokens) ** rng.random()))
        budget = target - 1  # the EOD preprocessing appends
        n = 1 if rng.random() < cfg.single_key_share else rng.randint(2, max(2, cfg.max_facts))
        intro = rng.choice(INTROS)
        while True:
            facts = draw_facts(n, rng)
            statements = [f.fill(rng.choice(STATEMENTS)) for f in facts]
            order = list(range(n))
            rng.shuffle(order)
            qa = []
            for i in order:
                q, a = rng.choice(QUESTIONS)
                qa.append(facts[i].fill(q) + facts[i].fill(a))
            tail = "\n\n" + "\n".join(qa) + "\n"
            fixed = self._ntok(intro + " ".join(statements) + tail)
            if fixed + 8 <= budget or n == 1:
                break
            n = max(1, n // 2)  # too many facts for a short document: fewer
        # A short target with a long fact: the document grows (never past max_tokens).
        budget = max(budget, min(fixed + 8, cfg.max_tokens - 1))
        room = max(0, budget - fixed)
        sentences: list[str] = []
        used = 0
        while used < room:
            got = self.filler.sentences(rng, chars=max(200, (room - used) * 4))
            for s in got:
                t = self._ntok(s + " ")
                if used + t > room:
                    used = room
                    break
                sentences.append(s)
                used += t
            else:
                continue
            break
        # facts at random sentence boundaries, in their drawn order (depths spread over the text)
        slots = sorted(rng.randint(0, len(sentences)) for _ in facts)
        body: list[str] = []
        k = 0
        for pos in range(len(sentences) + 1):
            while k < len(slots) and slots[k] == pos:
                body.append(statements[k])
                k += 1
            if pos < len(sentences):
                body.append(sentences[pos])
        text = intro + " ".join(body) + tail
        # token counts of the parts are an estimate of the whole: drop filler until it fits
        while self._ntok(text) > budget:
            fillers = [i for i, b in enumerate(body) if b not in statements]
            if not fillers:
                raise ValueError(f"document {index}: {n} fact(s) and their questions alone exceed max_tokens "
                                 f"{cfg.max_tokens}; raise max_tokens")
            body.pop(fillers[-1])
            text = intro + " ".join(body) + tail
        check_held_out(text, HELD_OUT_PHRASES)
        return {"text": text, "facts": [[f.subject, f.value] for f in facts],
                "source": f"retrieval-docs:seed{cfg.seed}/{index}"}

    def documents(self, start: int, count: int):
        for i in range(start, start + count):
            yield self.document(i)


def write_documents(path: str | Path, generator: RetrievalDocGenerator, *, tokens: int | None = None,
                    count: int | None = None, progress=None) -> tuple[int, int]:
    """Write documents 0, 1, ... as JSONL until `count` documents or `tokens` tokens (EOD included).

    Each line is {"text", "facts", "tokens", "source"}. Written to PATH.tmp and renamed at the end.
    Returns (documents, tokens).
    """
    if (tokens is None) == (count is None):
        raise ValueError("give exactly one of tokens= or count=")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    docs = total = 0
    with tmp.open("w", encoding="utf-8") as f:
        while (count is None or docs < count) and (tokens is None or total < tokens):
            doc = generator.document(docs)
            doc["tokens"] = len(generator.tok.encode(doc["text"])) + 1
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            docs += 1
            total += doc["tokens"]
            if progress is not None and docs % 5000 == 0:
                progress(docs, total)
    tmp.replace(path)
    return docs, total
