"""Open-vocabulary subjects and values of the synthetic retrieval documents: the filler's own words.

Owns `open_span` (lo..hi consecutive lowercase letter-only words of a random filler sentence, or
lo..hi consecutive CJK characters of a Chinese one), `open_subject`, which turns a 2-5 word / 2-6
character span into a fact's subject: "the quiet harbour road", "the archive code of the
configuration file option", "服务器配置的房间号", and `open_value`, a 1-6 word / 2-8 character span
used as a fact's value as it stands ("returns the file descriptor", "内核模块"), and (v5) `random_value`,
1-4 words / 2-6 CJK characters drawn uniformly from the filler's distinct ones (`vocabulary`, which
FillerText caches): "aristotle armour", "扫笙退尸". v3 (after stage 0 of the second GPU attempt still
answered the passkey with the haystack's most frequent "is -> X" continuation): with subjects drawn
from a closed list of names and attributes, a model can key retrieval on memorised names instead of
learning to match a novel subject exactly, which is what the evaluation asks ("The pass key", "the
best thing to do in Kyoto").

`filler` is a megaindex.data.retrieval_filler.FillerText (its `sentences(rng, chars, lang)` and
`docs`); a span never contains "is"/"是" (the subject/value boundary stays unique) and is checked
against the held-out phrases by the caller's `check`. With no filler of a language, `open_span`
returns None and the caller uses a closed-list subject.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable

from megaindex.data import retrieval_words as W

WORD = re.compile(r"[a-z]+")
CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
ZH_SPLIT = re.compile("[是的了在]")  # the statement's copula and particles that would blur the subject's end
DETERMINERS = frozenset("the a an this that these those each every its their our your his her my".split())
NOUN_PHRASE_SHARE = 0.7  # spans right after a determiner in their sentence ("along [the] quiet harbour road") first


def _en_spans(sentence: str, lo: int, hi: int) -> tuple[list[list[str]], list[list[str]]]:
    """(runs of lo..hi consecutive letter-only words that follow a determiner, all such runs); no function
    word at either end of a run."""
    runs, cur = [], []
    for raw in sentence.split():
        w = raw.lower()
        if WORD.fullmatch(w) and 2 <= len(w) <= 14 and w not in W.BANNED_WORDS:
            cur.append(w)
            continue
        runs.append(cur)
        cur = []
    runs.append(cur)
    out, after = [], []
    for run in runs:
        for n in range(lo, min(hi, len(run)) + 1):
            for i in range(len(run) - n + 1):
                span = run[i:i + n]
                if span[0] not in W.EDGE_STOPWORDS and span[-1] not in W.EDGE_STOPWORDS:
                    out.append(span)
                    if i and run[i - 1] in DETERMINERS:
                        after.append(span)
    return after, out


def open_span(filler, rng: random.Random, lang: str, lo: int, hi: int,
              check: Callable[[str], bool] = lambda s: True) -> str | None:
    """lo..hi consecutive words (English) or CJK characters (Chinese) of a random filler sentence.

    English spans are lowercase letter-only words joined by spaces, mostly (NOUN_PHRASE_SHARE) ones that
    follow a determiner, so they read as noun phrases; Chinese spans hold no 是/的/了/在.
    None when the filler has no `lang` documents or 8 tries found no span that passes `check`.
    """
    if not filler.docs.get(lang):
        return None
    for _ in range(8):
        sentences = filler.sentences(rng, chars=400, lang=lang)
        if not sentences:
            continue
        s = rng.choice(sentences)
        if lang == "en":
            after, spans = _en_spans(s, lo, hi)
            pool = after if after and rng.random() < NOUN_PHRASE_SHARE else spans
            text = " ".join(rng.choice(pool)) if pool else None
        else:
            runs = [r for r in (x for part in CJK_RUN.findall(s) for x in ZH_SPLIT.split(part)) if len(r) >= lo]
            if runs:
                r = rng.choice(runs)
                n = rng.randint(lo, min(hi, len(r)))
                i = rng.randrange(len(r) - n + 1)
                text = r[i:i + n]
            else:
                text = None
        if text and check(text):
            return text
    return None


def open_subject(filler, rng: random.Random, lang: str, attr: str,
                 check: Callable[[str], bool] = lambda s: True) -> str | None:
    """A fact's subject around a filler span: "the {span}" or "the {attr} of the {span}"; "{span}的{attr}"."""
    if lang == "zh":
        span = open_span(filler, rng, "zh", 2, 6, check)
        return None if span is None else f"{span}的{attr}"
    span = open_span(filler, rng, "en", 2, 5, check)
    if span is None:
        return None
    return f"the {span}" if rng.random() < 0.5 else f"the {attr} of the {span}"


OPEN_VALUE_WORDS = (1, 6)  # English open values: 1-6 words
OPEN_VALUE_CHARS = (2, 8)  # Chinese open values: 2-8 characters


def open_value(filler, rng: random.Random, lang: str, check: Callable[[str], bool] = lambda s: True) -> str | None:
    """A fact's value cut from the filler as it stands: 1-6 words / 2-8 CJK characters (None as open_span).

    The length is drawn first, uniformly, then a span of that length (any length when the sentences
    drawn have none): drawn from all spans at once, the many short ones of a sentence win (65% of
    English values were single words), while the needles' answers are 2-7 words long."""
    lo, hi = OPEN_VALUE_WORDS if lang == "en" else OPEN_VALUE_CHARS
    n = rng.randint(lo, hi)
    return open_span(filler, rng, lang, n, n, check) or open_span(filler, rng, lang, lo, hi, check)


RANDOM_VALUE_WORDS = (1, 4)  # v5 random values: 1-4 English words ...
RANDOM_VALUE_CHARS = (2, 6)  # ... or 2-6 CJK characters, each drawn uniformly from the filler's vocabulary
VOCAB_MIN_COUNT = 2  # an English word joins the vocabulary from this many occurrences (once: typos, split words)
MIN_VOCABULARY = 50  # fewer distinct items than this: random_value gives None (retrieval_docs uses a table phrase)
ZH_EXCLUDED = frozenset("是的了在")  # as ZH_SPLIT: the subject/value boundary "{s}是{v}" stays unique
# A whitespace-separated token, lowercased, that is one 2-14 letter word once the punctuation around it is stripped.
EN_VOCAB_WORD = re.compile(r"""(?<!\S)["'(\[{“‘«]*([a-z]{2,14})[.,;:!?"')\]}”’»]*(?!\S)""")


def vocabulary(texts: Iterable[str], lang: str) -> list[str]:
    """The distinct items `random_value` draws from, sorted (so a draw depends only on the rng).

    English: lowercase letter-only words of 2-14 letters (a token with the punctuation around it
    stripped: "end." is "end", "don't" is none) occurring at least VOCAB_MIN_COUNT times, none of
    BANNED_WORDS ("is", ...); Chinese: every CJK character that occurs, but 是/的/了/在."""
    if lang == "zh":
        chars: set[str] = set()
        for text in texts:
            chars.update("".join(CJK_RUN.findall(text)))
        return sorted(chars - ZH_EXCLUDED)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(EN_VOCAB_WORD.findall(text.lower()))
    return sorted(w for w, c in counts.items() if c >= VOCAB_MIN_COUNT and w not in W.BANNED_WORDS)


def random_value(filler, rng: random.Random, lang: str, check: Callable[[str], bool] = lambda s: True) -> str | None:
    """v5: a random sequence as a fact's value, 1-4 distinct words (joined by spaces) / 2-6 distinct CJK
    characters, each drawn uniformly from `filler.vocabulary(lang)` (its distinct items, so most draws are
    rare ones no prior predicts: only copying gives them). None when the vocabulary is too small or 8
    draws found none that passes `check`."""
    vocab = filler.vocabulary(lang)
    lo, hi = RANDOM_VALUE_WORDS if lang == "en" else RANDOM_VALUE_CHARS
    if len(vocab) < MIN_VOCABULARY:
        return None
    for _ in range(8):
        text = (" " if lang == "en" else "").join(rng.sample(vocab, rng.randint(lo, hi)))
        if check(text):
            return text
    return None


# The value kinds drawn from the filler (v4 spans, v5 random draws) and their drawing functions: the one
# table of them (retrieval_docs and retrieval_same_form look kinds up here; the other kinds are tables).
FILLER_VALUES: dict[str, Callable[..., str | None]] = {"open": open_value, "random": random_value}
