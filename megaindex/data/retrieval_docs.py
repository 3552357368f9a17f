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
  * several phrasings for statements (some state the value twice or value-first) and for
    question/answer pairs, whose answers end "{subject} is" + " {value}." as the evaluation's do;
    values are spans of the filler (v4, below), random sequences of its words (v5), 4-7 digit
    numbers, table words, or 2-8 word table phrases ("the top drawer of the oak desk"); every answer
    restates, verbatim, a statement of the body (a template holds the value exactly as the answer
    gives it), and no other sentence of the body gives a fact's subject another value
    (`contradictions`; a draft with one is redrawn);
  * v2 (after stage 0 of the first GPU run copied "X is Y." garbage instead of the key): a share of
    haystacks is a few generic "The road is long."-style sentences repeated (`repetitive_share`), so
    many "is -> word" continuations compete with the one fact; a share of documents is Chinese
    (`chinese_share`), on the corpus' Chinese documents (FillerText sorts filler by CJK share; with
    none, Chinese documents use the repetitive Chinese filler and the generator logs the count);
    word lists and templates live in megaindex.data.retrieval_words;
  * v3 (after stage 0 of the second GPU attempt answered "The pass key is" with `gre`, the garbage's
    "The grass is green.", then copied the rest of the key once given its first digit: it copies
    spans but does not find WHICH statement matches the subject): a share of facts has an
    open-vocabulary subject made from the filler's own words (`open_subject_share`,
    megaindex.data.retrieval_subjects), so retrieval cannot key on memorised names; a share of
    documents is "same-form" (`same_form_share`, megaindex.data.retrieval_same_form): short-subject
    facts "The harbour key is 48213." among many sentences of exactly that form, some sharing a word
    with the fact's subject ("The harbour is quiet."), asked as "The harbour key is";
  * v4 (after stage 0 of the third GPU attempt answered needles with its own guesses at word starts —
    '6ack..om.' for 'black cardamom.' — while copying the continuation pieces, and copied random-digit
    keys well): every non-number value of v3 (55% of documents: 36% phrases, 19% words; the rest 4-7
    digit numbers) came from closed tables, which a model predicts from its prior after a token or
    two, so it never had to copy an arbitrary word. Now `open_value_share` 0.6 of documents
    have open-vocabulary values — 1-6 consecutive words / 2-8 CJK characters of a random filler
    sentence (megaindex.data.retrieval_subjects.open_value), which only copying can produce — 25% have
    numbers (copied well already; the passkey's kind) and 15% keep the tables (`phrase_value_share`
    0.1, `word_value_share` 0.05) so that multi-word phrases of a fixed shape stay in the mix. No
    open span (subject or value) holds a word of the evaluation's needle lists
    (megaindex.data.needle_words; `held_out.needle_word_lists`), nor, for 2+ words or CJK characters, lies
    inside one ("hot springs", "温泉"): real text can contain "fresh ginger" or "冰糖";
  * v5 (after the fourth GPU attempt's base copied English needles fairly well, needle 87/71 at 1K/2K
    and 50 of 66 exact, but Chinese ones badly, 45/31 and 19 of 66): the Chinese needle words are rare
    in the 2%-Chinese corpus (81% of their tokens in the mini tokenizer are byte fallback, `<0xE4>` ...,
    7% of held-out Chinese text's), v4's open values mostly common characters: the model rarely copied
    byte sequences, while random passkey digits it copies almost perfectly. Now `random_value_share`
    0.15 of documents (from `open_value_share`, 0.6 -> 0.45) have random values (retrieval_subjects.
    random_value): 1-4 words / 2-6 CJK characters drawn uniformly from the filler's distinct ones
    (`FillerText.vocabulary`), mostly rare ones no prior predicts: only copying gives them. Tokenizer
    and data are not chosen by the needle lists; needle words stay held out. On 2,000 stage-0 documents
    (real filler and tokenizer, benchmarks/retrieval_docs_v5.py): tokens 46% open, 13% random, 26%
    numbers, 10% phrases, 5% words; byte fallback 88% of the tokens of Chinese random values, 6% of open
    ones', 81% of needle words'; vocabulary built once in 5.8 s; 490 documents per CPU second (v4: 476);
  * v6 (after the fifth GPU attempt's base, trained at 2K, scored the 2K needle by depth 8 / 55 / 26 / 55 /
    56 / 84 / 42 / 40 / 71 / 84 / 86, depth 0 being the fact ~2K tokens before the question, with no depth
    trend at 1K: retrieval over ~2K was rarely trained): v1-v5 drew lengths log-uniformly (median 458
    tokens, 6% of documents >= 1536), kept as the default so earlier data reproduce; `length_draw`
    "uniform" (the mini replication's) gives median 997, 19% >= 1536. Facts per document do not scale
    with length (1 or 2..max_facts, fewer in a short one), each at a random sentence boundary, so a
    fact's distance to its answer is about uniform over its document's body: facts >= 1024 tokens from
    their answer 5.6% -> 13.7%, >= 1536 0.45% -> 1.6% (per 1M tokens 244 -> 430, 20 -> 49), but facts
    per 1M tokens drop 4366 -> 3135 (-28%) and 2K rows packed whole hold 90.0% real tokens, not 96.6%
    (3,000 stage-0 documents, real filler and tokenizer: benchmarks/retrieval_docs_v5.py --mixes v5 v6);
    v6, second part (v6b): the training spans should cover the trained window, not cluster near the
    question. Facts placed at random boundaries, their count not growing with length, leave only 1.6% of
    facts >= 1536 tokens before their answer even with uniform lengths, and the fifth attempt failed the
    2K needle mostly with the fact far from the question. `early_fact_share` of the documents (0.5 in the
    mini replication; 0.0, the default, draws nothing and keeps v1-v6 data identical) move one of their
    facts, chosen at random, to a random sentence boundary within the first `early_fact_window` (10%) of
    the body's characters after the intro; the other facts keep their places, any form and kind. Facts
    >= 1024 / >= 1536 tokens from their answer per 1M tokens 430 -> 571 / 49 -> 105 (13.7% -> 18.2%,
    1.6% -> 3.4% of facts), lengths, facts and row fill unchanged (--mixes v5 v6 v6b, same documents);
  * v7 (after the sixth attempt: v6/v6b retrieved worse than v5 at both model sizes, and on v5 the base answered
    its own format 92.8/86.3% exact at 1K/2K against 72.7/50.0 on the evaluation's needle: the miss is mostly
    transfer to unseen wording): `frame_share` of the documents (0.0, the default, draws nothing and keeps
    v1-v6b identical) get a framing of megaindex.data.retrieval_frames — a preamble, a closing line, a question
    style of generic instruction-data families, millions of combinations — answers unchanged;
  * v8 (needle_form_probe.py on the fifth attempt's base, in the evaluation's own frame, haystack, prompt and place:
    a generator fact 98.8/98.8 at 1K/2K, with a v5 random value 100/89.8, the evaluation's needle 76.3/55.2; a
    trained subject frame around the needle's held-out words 88.6/68.8, the needle's held-out value under a
    trained subject 85.6/74.5: the cost is mostly words never seen in a fact, in the key and the value):
    `random_subject_share` of the keyed documents' facts (0.0, the default, draws nothing and keeps v1-v7
    identical; same-form documents keep their short subjects) get a subject keyed by random vocabulary words
    (retrieval_subjects.random_subject: 1-3 words, sometimes capitalised as a name, / 2-4 CJK characters drawn as
    v5's random values, in the generator's subject frames and deeper ones through a generic thing: "the motto of
    the ledger of Ember Ash", "the reply in ember's notebook", "扫笙的账本的口令"); documents then carry
    "subject_kinds" (per fact: closed / open / random) and "subjects" may be "random";
  * v9 (the eighth base's needle errors were single value tokens right after a frequent word, forced argmax: "watching
    the serverbet theatre", "buying a byteool hat at the topet", zh "去夜縂吃烤鱼"; the "best thing to do" template 65.2/
    40.1 at 1K/2K against "secret ingredient" 100/94.8 in English; v5/v8 random words, uniform over the filler's
    distinct words, are almost all rare, so the token before a trained random value is unique in its context and a
    one-token lookup copies it, while after "the"/"a"/"at", hundreds of times in a haystack, it is ambiguous):
    `random_frequency_share` of the random values and random owners (0.0, the default, draws nothing and keeps v1-v8
    identical) are drawn with replacement by the filler's word counts ** 0.75 (retrieval_subjects.vocabulary_draw:
    function words and "a" included, "is" still banned, never only function words; Chinese: character counts, 是/的/
    了/在 still excluded); documents then carry "frequent_values" and "frequent_owners" (per fact, True / False);
    v9, second part (both bases missed every Chinese needle value holding 在, "是在老街" -> "是老街": the answer's first
    piece is the merged "是在", which no training value started with; only the closed tables' phrases held 在/的/了,
    5.2% of v8's Chinese values; the English needle whose key is a prepositional
    phrase after the attribute scored 65/40 at 1K/2K against 100/95): with `zh_value_particles` Chinese values (open,
    random, same-form) may hold 在/的/了, never 是 (retrieval_subjects.ZH_PARTICLES; some open ones start at a
    preposition); `prepositional_frame_share` of the random-key subjects use prepositional frames ("the motto near
    {w}", "在{w}的口令"), and documents then carry "prepositional_subjects" (per fact); both off by default (v1-v9 kept);
  * held out: the evaluation's phrasings (the passkey prompt and its garbage sentences, the needle
    templates and prompts of megaindex.eval, RULER's "special magic number") never appear — not in
    the templates, not in the repetitive sentences, and not in the filler, whose sentences
    containing one are dropped (megaindex.data.held_out: `HELD_OUT_PHRASES`, `check_held_out`); the word lists share no
    string with the needles' (tests/test_retrieval_docs.py).

Deterministic: document i depends only on (seed, i), the filler corpus and the tokenizer, so any
slice of a stream can be regenerated.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass

from megaindex.data import retrieval_frames as F
from megaindex.data import retrieval_same_form as SF
from megaindex.data import retrieval_words as W
from megaindex.data.held_out import HELD_OUT_PHRASES, check_held_out, needle_word_lists
from megaindex.data.retrieval_facts import Fact, _subject, contradictions, draw_facts  # noqa: F401 (re-exported)
from megaindex.data.retrieval_filler import CJK, FillerText
from megaindex.data.retrieval_subjects import FILLER_VALUES, MIN_VOCABULARY, open_subject, random_subject, random_value
from megaindex.data.tokenizer import IndexTokenizer

log = logging.getLogger(__name__)

JOIN = {"en": " ", "zh": ""}


@dataclass
class RetrievalDocConfig:
    max_tokens: int = 1024      # whole document including its EOD never exceeds this
    min_tokens: int = 128       # target lengths are drawn in [min_tokens, max_tokens] (see length_draw)
    max_facts: int = 8          # facts per document: 1 (single-key) .. max_facts (multi-key)
    single_key_share: float = 0.25  # share of documents with exactly one fact
    open_value_share: float = 0.45    # share of documents whose values are spans of the filler (1-6 words / 2-8 characters)
    random_value_share: float = 0.15  # share of documents whose values are 1-4 random filler words / 2-6 CJK characters
    phrase_value_share: float = 0.1   # share of documents whose values are table phrases ("the top drawer of ...")
    word_value_share: float = 0.05    # share of documents whose values are table words; the rest are 4-7 digit numbers
    repetitive_share: float = 0.25    # share of documents whose haystack is a few "X is Y." sentences repeated
    chinese_share: float = 0.2        # share of documents in Chinese (prose filler from the corpus' Chinese documents)
    same_form_share: float = 0.3      # share of documents stating "The {short subject} is {v}." among same-form sentences
    open_subject_share: float = 0.5   # share of fact subjects made of filler words instead of the closed word lists
    seed: int = 0
    length_draw: str = "log-uniform"  # target length: "log-uniform" (v1-v5) or "uniform" (v6) in [min_tokens, max_tokens]
    early_fact_share: float = 0.0     # share of documents with one fact moved to the first early_fact_window of the body (v6b)
    early_fact_window: float = 0.1    # "early": the statement starts within this share of the body's characters
    frame_share: float = 0.0          # share of documents framed by retrieval_frames (preamble, closing, question style; v7)
    random_subject_share: float = 0.0  # share of keyed documents' facts whose subject is keyed by random vocabulary words (v8)
    random_frequency_share: float = 0.0  # share of random values / random owners drawn by word frequency, not uniformly (v9)
    zh_value_particles: bool = False  # Chinese values may hold 在/的/了 (never 是), open ones split only at 是 (v9, 2nd part)
    prepositional_frame_share: float = 0.0  # share of random-key subjects in prepositional frames, "the {a} near {w}" (v9)


LENGTH_DRAWS = ("log-uniform", "uniform")


def early_boundary(parts: list[str], sep: str, length: int, window: float, u: float) -> int:
    """v6b: where in `parts` a statement of `length` characters goes so that it starts within the first `window`
    of the characters of the joined parts: the boundary at fraction `u` of those that qualify (0 always does)."""
    total = sum(map(len, parts)) + length + len(sep) * len(parts)
    ok, at = [], 0
    for j in range(len(parts) + 1):
        if at > window * total:
            break
        ok.append(j)
        at += len(parts[j]) + len(sep) if j < len(parts) else 0
    return ok[int(u * len(ok))]


def starts_early(parts: list[str], sep: str, j: int, window: float) -> bool:
    """Whether parts[j] starts within the first `window` of the characters of sep.join(parts)."""
    return sum(map(len, parts[:j])) + len(sep) * j <= window * len(sep.join(parts))


SHARES = ("single_key_share", "open_value_share", "random_value_share", "phrase_value_share", "word_value_share",
          "repetitive_share", "chinese_share", "same_form_share", "open_subject_share", "early_fact_share",
          "frame_share", "random_subject_share", "random_frequency_share", "prepositional_frame_share")
VALUE_SHARES = ("open_value_share", "random_value_share", "phrase_value_share", "word_value_share")
VALUE_KINDS = ("open", "random", "phrase", "word")  # in VALUE_SHARES' order; the rest of the documents: "number"
DRAFTS = 16  # a document whose draft holds a held-out phrase (a filler span next to a template) is redrawn


class RetrievalDocGenerator:
    """Document i = f(seed, i): see the module docstring."""

    def __init__(self, tokenizer: IndexTokenizer, filler: FillerText, config: RetrievalDocConfig):
        if config.min_tokens < 32 or config.max_tokens < config.min_tokens:
            raise ValueError(f"need 32 <= min_tokens <= max_tokens, got {config.min_tokens}, {config.max_tokens}")
        if config.length_draw not in LENGTH_DRAWS:
            raise ValueError(f"RetrievalDocConfig.length_draw must be one of {', '.join(LENGTH_DRAWS)}, got "
                             f"{config.length_draw!r}")
        for name in SHARES:
            if not 0 <= getattr(config, name) <= 1:
                raise ValueError(f"RetrievalDocConfig.{name} must be in [0, 1], got {getattr(config, name)}")
        if not 0 < config.early_fact_window <= 1:
            raise ValueError(f"RetrievalDocConfig.early_fact_window must be in (0, 1], got {config.early_fact_window}")
        if sum(getattr(config, name) for name in VALUE_SHARES) > 1:
            raise ValueError(f"RetrievalDocConfig: {' + '.join(VALUE_SHARES)} must be <= 1 (the rest are numbers), got "
                             f"{' + '.join(str(getattr(config, name)) for name in VALUE_SHARES)}; lower one of them")
        self.tok, self.filler, self.cfg = tokenizer, filler, config
        self._held_out = tuple(p.lower() for p in HELD_OUT_PHRASES)
        self._needle_words = needle_word_lists()
        if config.chinese_share > 0 and not filler.docs["zh"]:
            log.warning("%s", filler.summary())
        if config.random_value_share > 0 or config.random_subject_share > 0:  # built here, before write_documents forks its workers: they share it
            for lang in ("en", "zh"):
                filler.vocabulary(lang)
                if config.random_frequency_share > 0:
                    filler.frequency_table(lang)
            if config.zh_value_particles:
                filler.vocabulary("zh", True)
                if config.random_frequency_share > 0:
                    filler.frequency_table("zh", True)

    def _ntok(self, text: str) -> int:
        return len(self.tok.encode(text))

    def _clean(self, text: str) -> bool:
        low = text.lower()
        return not any(p in low for p in self._held_out)

    def _span_ok(self, span: str) -> bool:
        """A filler span may be a subject or value: no held-out phrase, and no needle word in it (nor, for
        a span of 2+ words or CJK characters, the span inside a needle word: "hot springs", "温泉")."""
        if not self._clean(span):
            return False
        low = f" {span.lower()} "
        if any(w in low or (" " in span and low in w) for w in self._needle_words["en"]):
            return False
        return not any(w in span or (CJK.search(span) and span in w) for w in self._needle_words["zh"])

    def _haystack(self, rng: random.Random, lang: str, repetitive: bool, room: int,
                  distractors: tuple[list[str], list[str]] | None = None) -> list[str]:
        """Filler sentences of about `room` tokens: corpus prose, or a repeated unit of generic sentences.

        With `distractors` (hard negatives, others) of a same-form document, the repeated unit is made of
        them (every hard negative and up to 8 sentences in all), or, in prose, 30-50% of the room (at least
        SF.MIN_DISTRACTORS sentences) is distractors (a hard negative 40% of the time) at random places
        between the prose sentences."""
        sep = JOIN[lang]
        sentences: list[str] = []
        used = 0
        if distractors is not None and not repetitive:
            hard, other = distractors
            share, picked, used = rng.uniform(0.3, 0.5), [], 0
            while hard or other:
                s = rng.choice(hard if hard and (rng.random() < 0.4 or not other) else other)
                t = self._ntok(s + sep)
                if used + t > room * share and len(picked) >= SF.MIN_DISTRACTORS:
                    break
                picked.append(s)
                used += t
            prose = self._haystack(rng, lang, False, max(0, room - used))
            at = set(rng.sample(range(len(prose) + len(picked)), len(picked)))
            it_p, it_d = iter(prose), iter(picked)
            return [next(it_d) if i in at else next(it_p) for i in range(len(prose) + len(picked))]
        if distractors is not None:
            hard, other = distractors
            unit = hard + other[:max(0, 8 - len(hard))]
            rng.shuffle(unit)
        else:
            unit = W.repetitive_unit(lang, rng) if repetitive else []
        cost = {s: self._ntok(s + sep) for s in unit}
        while used < room:
            got = unit if repetitive else self.filler.sentences(rng, chars=max(200, (room - used) * 4), lang=lang)
            for s in got:
                t = cost[s] if s in cost else self._ntok(s + sep)
                if used + t > room:
                    return sentences
                sentences.append(s)
                used += t
        return sentences

    def document(self, index: int) -> dict:
        """{"text", "facts": [[subject, value], ...], "lang", "haystack", "kind", "form", "subjects" (open /
        closed / mixed), "open_facts", "distractors" (same-form sentences in the text), "source", and with frame_share on "frame"
        (retrieval_frames.Frame.key, None: not framed), with random_subject_share on "subject_kinds", with
        random_frequency_share on "frequent_values" / "frequent_owners" (per fact: drawn by frequency), with
        prepositional_frame_share on "prepositional_subjects" (per fact: a prepositional frame)}; text + EOD
        fits. Redrawn (seed "{seed}:{index}:{draft}") while a draft holds an evaluation-only phrase."""
        for draft in range(DRAFTS):
            rng = random.Random(f"{self.cfg.seed}:{index}" + (f":{draft}" if draft else ""))
            doc = self._draft(index, rng)
            if self._clean(doc["text"]) and not contradictions(doc):
                return doc
        check_held_out(doc["text"])  # raises, naming the phrase
        raise ValueError(f"document {index}: {DRAFTS} drafts all state a fact's subject with another value: "
                         f"{contradictions(doc)[:2]}")

    def _draft(self, index: int, rng: random.Random) -> dict:
        cfg = self.cfg
        u = rng.random()  # one draw either way: the rest of document i's draws do not depend on length_draw
        target = int(round(cfg.min_tokens * (cfg.max_tokens / cfg.min_tokens) ** u if cfg.length_draw == "log-uniform"
                           else cfg.min_tokens + (cfg.max_tokens - cfg.min_tokens) * u))
        budget = target - 1  # the EOD preprocessing appends
        n = 1 if rng.random() < cfg.single_key_share else rng.randint(2, max(2, cfg.max_facts))
        lang = "zh" if rng.random() < cfg.chinese_share else "en"
        r = rng.random()
        cuts = itertools.accumulate(getattr(cfg, name) for name in VALUE_SHARES)
        kind = next((k for k, cut in zip(VALUE_KINDS, cuts) if r < cut), "number")
        if kind == "open" and not self.filler.docs[lang] or \
                kind == "random" and len(self.filler.vocabulary(lang)) < MIN_VOCABULARY:
            kind = "phrase"  # no filler (or too few distinct words) of this language to take values from: a table phrase
        repetitive = rng.random() < cfg.repetitive_share or not self.filler.docs[lang]
        same_form = rng.random() < cfg.same_form_share
        if same_form:
            n = SF.fact_count(rng)
        filler_value = FILLER_VALUES.get(kind)  # None for the table kinds, which never call it
        share, frequent = cfg.random_frequency_share, {}  # v9: value / subject -> drawn by frequency
        prep_share, prepositional = cfg.prepositional_frame_share, {}  # v9, second part: subject -> prepositional
        particles = {"particles": True} if cfg.zh_value_particles and lang == "zh" else {}  # off: v1-v9 calls

        def value(g: random.Random) -> str | None:
            if kind != "random" or not share:  # 0 draws nothing: v1-v8 unchanged
                return filler_value(self.filler, g, lang, self._span_ok, **particles)
            f = g.random() < share
            v = random_value(self.filler, g, lang, self._span_ok, frequency=f, **particles)
            frequent.setdefault(v, f)
            return v

        def rand_subject(g: random.Random, attr: str) -> str | None:
            f = bool(share) and g.random() < share
            p = bool(prep_share) and g.random() < prep_share
            subject = random_subject(self.filler, g, lang, attr, self._span_ok, frequency=f, prepositional=p)
            frequent.setdefault(subject, f)
            prepositional.setdefault(subject, p)
            return subject
        intro = rng.choice(W.INTROS[lang])
        frame = F.draw_frame(rng, lang) if cfg.frame_share and rng.random() < cfg.frame_share else None  # v7
        intro = frame.preamble if frame else intro
        sep = JOIN[lang]
        distractors = None
        while True:
            if same_form:
                drawn, hard, other = SF.draw(self.filler, rng, lang, kind, n, cfg.open_subject_share, self._span_ok,
                                             value if kind == "random" and share or particles else None)
                facts = [Fact(s, v, o) for s, v, o in drawn]
                distractors = (hard, other)
                statements = [SF.sentence(f.subject, f.value, lang) for f in facts]
                questions = W.SAME_FORM_QUESTIONS[lang]
            else:
                facts = draw_facts(n, rng, lang, kind,
                                   lambda g, attr: open_subject(self.filler, g, lang, attr, self._span_ok),
                                   cfg.open_subject_share, value, rand_subject, cfg.random_subject_share)
                statements = [f.fill(rng.choice(W.STATEMENTS[lang])) for f in facts]
                questions = W.QUESTIONS[lang]
            n = len(facts)
            order = list(range(n))
            rng.shuffle(order)
            qa = []
            for k, i in enumerate(order):
                if frame:
                    qa.append(frame.ask(facts[i].fill, k + 1, rng))
                else:
                    q, a = rng.choice(questions)
                    qa.append(facts[i].fill(q) + facts[i].fill(a))
            tail = (frame.closing + "\n\n" + frame.heading if frame else "\n\n") + "\n".join(qa) + "\n"
            fixed = self._ntok(intro + sep.join(statements) + tail)
            # room for some filler; a same-form document for at least SF.MIN_DISTRACTORS distractors
            least = 8 if distractors is None else \
                8 + sum(sorted(self._ntok(d + sep) for d in hard + other)[-SF.MIN_DISTRACTORS:])
            if fixed + least <= budget or n == 1:
                break
            n = max(1, n // 2)  # too many facts for a short document: fewer
        # A short target with a long fact: the document grows (never past max_tokens).
        budget = max(budget, min(fixed + least, cfg.max_tokens - 1))
        sentences = self._haystack(rng, lang, repetitive, max(0, budget - fixed), distractors)
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
        listed = set(distractors[0] + distractors[1]) if distractors else set()
        text = self._fit(index, intro, sep, body, tail, budget, statements, listed)
        if cfg.early_fact_share and rng.random() < cfg.early_fact_share:  # drawn only when on: 0.0 keeps v1-v6 data
            moved, u = statements[rng.randrange(len(statements))], rng.random()
            while True:  # a random fact moves (not the earliest: that would add less reach); the others stay
                body.remove(moved)
                body.insert(early_boundary(body, sep, len(moved), cfg.early_fact_window, u), moved)
                text = self._fit(index, intro, sep, body, tail, budget, statements, listed)
                if starts_early(body, sep, body.index(moved), cfg.early_fact_window):
                    break  # else the refit dropped filler and the window shrank: place it again
        n_open, kinds = sum(f.open for f in facts), [f.subject_kind for f in facts]
        return {"text": text, "facts": [[f.subject, f.value] for f in facts], "lang": lang,
                "haystack": "repetitive" if repetitive else "prose", "kind": kind,
                "form": "same_form" if distractors else "keyed",
                "subjects": kinds[0] if len(set(kinds)) == 1 else "mixed",  # v1-v7: open / closed / mixed
                "open_facts": n_open, "distractors": sum(b in listed for b in body),
                "source": f"retrieval-docs:seed{cfg.seed}/{index}",
                **({"frame": frame and frame.key} if cfg.frame_share else {}),  # the key only when on: v1-v6b stay
                **({"subject_kinds": kinds} if cfg.random_subject_share else {}),  # v8: per fact, closed / open / random
                **({"frequent_values": [frequent.get(f.value, False) for f in facts],  # v9: per fact, drawn by frequency
                    "frequent_owners": [f.random and frequent.get(f.subject, False) for f in facts]} if share else {}),
                **({"prepositional_subjects": [f.random and prepositional.get(f.subject, False) for f in facts]}
                   if prep_share else {})}

    def _fit(self, index: int, intro: str, sep: str, body: list[str], tail: str, budget: int, statements: list[str],
             listed: set[str]) -> str:
        """The text; token counts of the parts are an estimate of the whole: drop filler from the end of `body` (in
        place; prose before the `listed` distractors) until it fits `budget`."""
        text = intro + sep.join(body) + tail
        while self._ntok(text) > budget:
            fillers = [i for i, b in enumerate(body) if b not in statements and b not in listed] or \
                [i for i, b in enumerate(body) if b not in statements]
            if not fillers:
                raise ValueError(f"document {index}: {len(statements)} fact(s) and their questions alone exceed "
                                 f"max_tokens {self.cfg.max_tokens}; raise max_tokens")
            body.pop(fillers[-1])
            text = intro + sep.join(body) + tail
        return text

    def documents(self, start: int, count: int):
        for i in range(start, start + count):
            yield self.document(i)
