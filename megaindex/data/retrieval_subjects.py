"""Open-vocabulary subjects and values of the synthetic retrieval documents: the filler's own words.

Owns `open_span` (lo..hi consecutive lowercase letter-only words of a random filler sentence, or
lo..hi consecutive CJK characters of a Chinese one), `open_subject`, which turns a 2-5 word / 2-6
character span into a fact's subject: "the quiet harbour road", "the archive code of the
configuration file option", "服务器配置的房间号", and `open_value`, a 1-6 word / 2-8 character span
used as a fact's value as it stands ("returns the file descriptor", "内核模块"), and (v5) `random_value`,
1-4 words / 2-6 CJK characters drawn uniformly from the filler's distinct ones (`vocabulary`, which
FillerText caches): "aristotle armour", "扫笙退尸", and (v8) `random_subject`, a subject keyed by 1-3 such words /
2-4 such characters in a generator subject frame, some two slots deep ("the motto of the ledger of Aristotle
Armour", "扫笙的账本的口令"), and (v9, second part) a share of them in prepositional frames ("the motto near
Aristotle Armour", "在扫笙的口令"; `prepositional`), and Chinese values that may hold 在/的/了 (`particles`:
ZH_PARTICLES, open spans split only at 是, some starting at a preposition). v3 (after stage 0 of the second GPU attempt still
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

import itertools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable

from megaindex.data import retrieval_words as W

WORD = re.compile(r"[a-z]+")
CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
ZH_SPLIT = re.compile("[是的了在]")  # the statement's copula and particles that would blur the subject's end
# v9, second part (`particles`): Chinese values may hold these (the eighth base dropped the 在 of every needle value
# holding one, "是在老街" -> "是老街": no training value started with 在, and only the closed tables' phrases held
# 在/的/了, 5.2% of v8's Chinese values, benchmarks/retrieval_docs_v9.json); 是 never: it is the "{s}是{v}" boundary.
ZH_PARTICLES = frozenset("在的了")
ZH_VALUE_SPLIT = re.compile("是")  # open values with particles: runs split only at the copula
# Open values with particles: this share start at a preposition of their sentence (a place, source, direction or
# object phrase: "在服务器上运行", "从文件读取"), when it has one; in the mini corpus' Chinese filler 在 is ~45% of
# these prepositions' occurrences (and 1.25% of all characters), so 17% of open values start with 在 (3,000 stage-0
# documents, benchmarks/retrieval_docs_v9.json): the copy after the merged "是在" piece is then trained. Not tuned.
ZH_PREPOSITIONS = frozenset("在从对给向往把于")
PREPOSITION_START_SHARE = 0.25
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


def _runs(text: str, lo: int, particles: bool) -> list[str]:
    return [r for r in (x for part in CJK_RUN.findall(text) for x in (ZH_VALUE_SPLIT if particles else ZH_SPLIT).split(part))
            if len(r) >= lo]


def _zh_span(rng: random.Random, sentences: list[str], s: str, lo: int, hi: int, particles: bool) -> str | None:
    """lo..hi CJK characters of sentence `s`: from runs split at 是/的/了/在, or (`particles`) at 是 only; then, for
    PREPOSITION_START_SHARE of them, starting at a preposition (ZH_PREPOSITIONS) of the passage's `sentences` when
    it has one, and never starting with 的/了 (they attach to what precedes them) nor ending with 在."""
    if particles and rng.random() < PREPOSITION_START_SHARE:
        starts = [(r, i) for r in _runs("".join(sentences), lo, True) for i in range(len(r) - lo + 1)
                  if r[i] in ZH_PREPOSITIONS]
        if starts:
            r, i = rng.choice(starts)
            text = r[i:i + rng.randint(lo, min(hi, len(r) - i))]
            return None if text[-1] == "在" else text
    runs = _runs(s, lo, particles)
    if not runs:
        return None
    r = rng.choice(runs)
    n = rng.randint(lo, min(hi, len(r)))
    i = rng.randrange(len(r) - n + 1)
    text = r[i:i + n]
    return None if particles and (text[0] in "的了" or text[-1] == "在") else text


def open_span(filler, rng: random.Random, lang: str, lo: int, hi: int,
              check: Callable[[str], bool] = lambda s: True, particles: bool = False) -> str | None:
    """lo..hi consecutive words (English) or CJK characters (Chinese) of a random filler sentence.

    English spans are lowercase letter-only words joined by spaces, mostly (NOUN_PHRASE_SHARE) ones that
    follow a determiner, so they read as noun phrases; Chinese spans hold no 是/的/了/在 (`particles`, v9's
    values: no 是, and never only particles; see _zh_span).
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
            text = _zh_span(rng, sentences, s, lo, hi, particles)
            if text and particles and set(text) <= ZH_PARTICLES:
                text = None  # "的了": particles alone are no value
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


def open_value(filler, rng: random.Random, lang: str, check: Callable[[str], bool] = lambda s: True,
               particles: bool = False) -> str | None:
    """A fact's value cut from the filler as it stands: 1-6 words / 2-8 CJK characters (None as open_span;
    `particles`, v9: Chinese values may hold 在/的/了, as open_span says).

    The length is drawn first, uniformly, then a span of that length (any length when the sentences
    drawn have none): drawn from all spans at once, the many short ones of a sentence win (65% of
    English values were single words), while the needles' answers are 2-7 words long."""
    lo, hi = OPEN_VALUE_WORDS if lang == "en" else OPEN_VALUE_CHARS
    n = rng.randint(lo, hi)
    return open_span(filler, rng, lang, n, n, check, particles) or open_span(filler, rng, lang, lo, hi, check, particles)


RANDOM_VALUE_WORDS = (1, 4)  # v5 random values: 1-4 English words ...
RANDOM_VALUE_CHARS = (2, 6)  # ... or 2-6 CJK characters, each drawn uniformly from the filler's vocabulary
VOCAB_MIN_COUNT = 2  # an English word joins the vocabulary from this many occurrences (once: typos, split words)
MIN_VOCABULARY = 50  # fewer distinct items than this: random_value gives None (retrieval_docs uses a table phrase)
ZH_EXCLUDED = frozenset("是的了在")  # as ZH_SPLIT: the subject/value boundary "{s}是{v}" stays unique
# A whitespace-separated token, lowercased, that is one 2-14 letter word once the punctuation around it is stripped.
# (item_counts counts 1-letter words too, for v9's "a"; the vocabulary keeps 2-14 letters.)
EN_VOCAB_WORD = re.compile(r"""(?<!\S)["'(\[{“‘«]*([a-z]{1,14})[.,;:!?"')\]}”’»]*(?!\S)""")


def item_counts(texts: Iterable[str], lang: str) -> Counter[str]:
    """How often each item of `vocabulary`'s tokenisation occurs in `texts`: English lowercase 1-14 letter words (a
    token with the punctuation around it stripped), Chinese CJK characters; nothing excluded yet."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update("".join(CJK_RUN.findall(text)) if lang == "zh" else EN_VOCAB_WORD.findall(text.lower()))
    return counts


def vocabulary(texts: Iterable[str], lang: str, counts: Counter[str] | None = None, particles: bool = False) -> list[str]:
    """The distinct items `random_value` draws from, sorted (so a draw depends only on the rng).

    English: lowercase letter-only words of 2-14 letters (a token with the punctuation around it
    stripped: "end." is "end", "don't" is none) occurring at least VOCAB_MIN_COUNT times, none of
    BANNED_WORDS ("is", ...); Chinese: every CJK character that occurs, but 是/的/了/在 (`particles`, v9's values:
    but 是). `counts`: item_counts of `texts`, when the caller has them already."""
    counts = item_counts(texts, lang) if counts is None else counts
    if lang == "zh":
        return sorted(set(counts) - (ZH_EXCLUDED - ZH_PARTICLES if particles else ZH_EXCLUDED))
    return sorted(w for w, c in counts.items() if len(w) >= 2 and c >= VOCAB_MIN_COUNT and w not in W.BANNED_WORDS)


# v9 frequency draws weigh each vocabulary item by count ** FREQUENCY_EXPONENT: word2vec's negative-sampling
# smoothing (Mikolov et al. 2013), the standard compromise that keeps "the"/"a"/"at" frequent without letting them
# crowd out the rest (on the mini corpus' filler function words are 45% of raw counts, 21% of these weights); not tuned.
FREQUENCY_EXPONENT = 0.75
# Items that alone do not make a value or owner (a frequency draw of only these is redrawn): English EDGE_STOPWORDS
# (the/a/of/at/on/to/in/and ...), Chinese common particles, pronouns, negations, measure words and light verbs.
ZH_FUNCTION_CHARS = frozenset("一不有这个人我他她它们也就都和与及或而着过把被从向对于以之其那为上中下来去到说要会能可")
FREQUENCY_TRIES = 32  # a frequency draw of only function items is redrawn (then: a uniform draw's words)


EN_FREQUENCY_EXTRA = ("a",)  # 1-letter words the frequency draws add to the vocabulary ("buying a wool hat")


def frequency_table(vocab: list[str], counts: Counter[str], lang: str) -> tuple[list[str], list[float]]:
    """(items, cumulative weights for random.choices' cum_weights) of v9's frequency draws: the vocabulary (plus
    EN_FREQUENCY_EXTRA words that occur VOCAB_MIN_COUNT times), sorted, each weighted count ** FREQUENCY_EXPONENT."""
    extra = [w for w in EN_FREQUENCY_EXTRA if counts[w] >= VOCAB_MIN_COUNT] if lang == "en" else []
    items = sorted({*vocab, *extra})
    return items, list(itertools.accumulate(counts[w] ** FREQUENCY_EXPONENT for w in items))


def function_only(items: list[str], lang: str) -> bool:
    """Whether every drawn item is a function word (English EDGE_STOPWORDS) / function character (ZH_FUNCTION_CHARS,
    or a particle of ZH_PARTICLES, which only v9's particle draws hold)."""
    return all(w in (W.EDGE_STOPWORDS if lang == "en" else ZH_FUNCTION_CHARS | ZH_PARTICLES) for w in items)


def vocabulary_draw(filler, rng: random.Random, lang: str, words: tuple[int, int], chars: tuple[int, int],
                    frequency: bool = False, particles: bool = False) -> list[str]:
    """Items of `filler.vocabulary(lang)`: words[0]..words[1] English words or chars[0]..chars[1] CJK characters (the
    count drawn first); what random_value and random_owner are made of. Uniform (v5-v8): distinct items, each
    equally likely, so almost all are rare. `frequency` (v9): drawn with replacement, each by its count **
    FREQUENCY_EXPONENT in the filler (`filler.frequency_table`, the vocabulary and "a"), so "the", "a", "at"
    come often, repeats allowed; a draw of function items only is redrawn (FREQUENCY_TRIES times, then kept uniform).
    `particles` (v9, values): Chinese draws from the vocabulary with 在/的/了 (filler.vocabulary(lang, True))."""
    lo, hi = words if lang == "en" else chars
    n = rng.randint(lo, hi)
    particles = particles and lang == "zh"
    if frequency:
        table, weights = filler.frequency_table(lang, particles)
        for _ in range(FREQUENCY_TRIES):
            items = rng.choices(table, cum_weights=weights, k=n)
            if not function_only(items, lang):
                return items
    return rng.sample(filler.vocabulary(lang, particles), n)


def random_value(filler, rng: random.Random, lang: str, check: Callable[[str], bool] = lambda s: True,
                 frequency: bool = False, particles: bool = False) -> str | None:
    """v5: a random sequence as a fact's value, 1-4 distinct words (joined by spaces) / 2-6 distinct CJK
    characters, each drawn uniformly from `filler.vocabulary(lang)` (its distinct items, so most draws are
    rare ones no prior predicts: only copying gives them). `frequency` (v9): the items drawn by their frequency
    in the filler (vocabulary_draw), so a value token often follows "the"/"a"/"at", a token the context holds
    many times. `particles` (v9, second part): Chinese values may hold 在/的/了 (never only them). None when the
    vocabulary is too small or 8 draws found none that passes `check`."""
    if len(filler.vocabulary(lang)) < MIN_VOCABULARY:
        return None
    for _ in range(8):
        text = (" " if lang == "en" else "").join(vocabulary_draw(filler, rng, lang, RANDOM_VALUE_WORDS,
                                                                 RANDOM_VALUE_CHARS, frequency, particles))
        if particles and set(text) <= ZH_PARTICLES:
            continue  # a uniform draw of particles alone (a frequency draw redraws them itself)
        if check(text):
            return text
    return None


RANDOM_OWNER_WORDS = (1, 3)  # v8 random-owner subjects: 1-3 English words ...
RANDOM_OWNER_CHARS = (2, 4)  # ... or 2-4 CJK characters, each drawn uniformly from the filler's vocabulary
CAPITALISED_SHARE = 0.4      # English owner words capitalised (read as a name: "Aristotle Armour's motto"), else lowercase
# v8 subject frames around the owner's words {w} and the attribute {a}, and deeper ones (DEEP_SHARE of the subjects)
# with a generic thing {t} between them (retrieval_words.EN_THINGS / ZH_THINGS); the attribute is always the head
# ("the motto in ember's ledger"). Chinese: 的 is not doubled when the attribute holds one.
EN_RANDOM_FRAMES = ("the {a} of {w}", "{w}'s {a}")
EN_DEEP_FRAMES = ("the {a} of the {t} of {w}", "the {a} in {w}'s {t}", "the {a} of {w}'s {t}", "{w}'s {t}'s {a}")
ZH_RANDOM_FRAMES = ("{w}的{a}",)
ZH_DEEP_FRAMES = ("{w}的{t}的{a}", "{w}{t}的{a}")
DEEP_SHARE = 0.4
# v9, second part (`prepositional`): generic frames with the owner after a preposition, the key a prepositional phrase
# after the attribute (the eighth base's weak English needle template has one: 65/40 at 1K/2K against 100/95), one
# of them two slots deep; Chinese: the owner in a place phrase before 的 (在 in a subject is fine, 是 never).
EN_PREP_FRAMES = ("the {a} in {w}", "the {a} at {w}", "the {a} near {w}", "the {a} for {w}", "the {a} from {w}",
                  "the {a} of the {t} in {w}")
ZH_PREP_FRAMES = ("在{w}的{a}", "{w}里的{a}", "{w}上的{a}", "{w}附近的{a}", "来自{w}的{a}", "在{w}的{t}里的{a}")

def random_owner(filler, rng: random.Random, lang: str, frequency: bool = False) -> str | None:
    """v8: 1-3 distinct English words (each capitalised in CAPITALISED_SHARE of owners) / 2-4 distinct CJK characters
    drawn uniformly from `filler.vocabulary(lang)`, as random_value draws (`frequency`, v9: by their frequency, as
    vocabulary_draw says); None when the vocabulary is too small."""
    if len(filler.vocabulary(lang)) < MIN_VOCABULARY:
        return None
    words = vocabulary_draw(filler, rng, lang, RANDOM_OWNER_WORDS, RANDOM_OWNER_CHARS, frequency)
    if lang == "zh":
        return "".join(words)
    return " ".join(w.capitalize() for w in words) if rng.random() < CAPITALISED_SHARE else " ".join(words)


def random_subject(filler, rng: random.Random, lang: str, attr: str,
                   check: Callable[[str], bool] = lambda s: True, frequency: bool = False,
                   prepositional: bool = False) -> str | None:
    """v8: a fact's subject keyed by words no fact has held: a random owner (random_owner) set in a frame of
    EN_RANDOM_FRAMES / ZH_RANDOM_FRAMES or, for DEEP_SHARE of them, two slots deep through a generic thing
    (EN_DEEP_FRAMES / ZH_DEEP_FRAMES). The owner and the
    whole subject must pass `check` (no held-out phrase, no needle word); they hold no "is"/"是" (the vocabulary has
    none, nor do the tables). `frequency` (v9): the owner's words drawn by frequency (random_owner). `prepositional`
    (v9, second part): a frame of EN_PREP_FRAMES / ZH_PREP_FRAMES instead. None when the vocabulary is too small or 8
    draws found none that passes."""
    for _ in range(8):
        owner = random_owner(filler, rng, lang, frequency)
        if owner is None:
            return None
        deep = not prepositional and rng.random() < DEEP_SHARE
        if lang == "zh":
            frame = rng.choice(ZH_PREP_FRAMES if prepositional else ZH_DEEP_FRAMES if deep else ZH_RANDOM_FRAMES)
            subject = frame.format(w=owner, t=rng.choice(W.ZH_THINGS), a=attr)
            if "的" in attr:  # "林晓明最喜欢的颜色": the attribute already holds 的; no doubled particle
                subject = subject.replace(f"的{attr}", attr)
        else:
            frame = rng.choice(EN_PREP_FRAMES if prepositional else EN_DEEP_FRAMES if deep else EN_RANDOM_FRAMES)
            subject = frame.format(w=owner, t=rng.choice(W.EN_THINGS), a=attr)
        if check(owner) and check(subject):
            return subject
    return None


# The value kinds drawn from the filler (v4 spans, v5 random draws) and their drawing functions: the one
# table of them (retrieval_docs and retrieval_same_form look kinds up here; the other kinds are tables).
FILLER_VALUES: dict[str, Callable[..., str | None]] = {"open": open_value, "random": random_value}
