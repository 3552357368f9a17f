"""v9 retrieval documents: random values and random owners drawn by word frequency (retrieval_subjects.vocabulary_draw
with `frequency`, RetrievalDocConfig.random_frequency_share)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from megaindex.data import retrieval_subjects as RS
from megaindex.data import retrieval_words as W
from megaindex.data.held_out import check_held_out
from megaindex.data.retrieval_docs import RetrievalDocConfig, RetrievalDocGenerator, contradictions
from megaindex.data.retrieval_writer import count_mix, describe_mix

V8 = dict(frame_share=0.5, random_subject_share=0.4, random_value_share=0.25, open_value_share=0.35)


def test_default_draws_nothing_and_keeps_v8_byte_for_byte(tok, filler):
    """random_frequency_share 0.0 (the default) gives v8's documents: digest of the code before v9 (main at ca87ee6)."""
    assert RetrievalDocConfig().random_frequency_share == 0.0
    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=384, min_tokens=64, seed=33, **V8))
    docs = [gen.document(i) for i in range(60)]
    assert hashlib.sha256(json.dumps(docs, ensure_ascii=False).encode()).hexdigest()[:16] == "e1e9698e5d4a32eb"
    assert not any("frequent_values" in d for d in docs)
    with pytest.raises(ValueError, match=r"^RetrievalDocConfig.random_frequency_share must be in \[0, 1\], got -0.1$"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(random_frequency_share=-0.1))


def _expected_function_share(filler, lo: int, hi: int) -> float:
    """The share of function words among the words of frequency-drawn English values of lo..hi words (the count
    uniform): p = the function words' weight in the table, a draw of only function words redrawn, so a value of n
    words holds E[k | k < n] of them, k ~ Binomial(n, p): (n p - n p^n) / (1 - p^n)."""
    items, cum = filler.frequency_table("en")
    weights = [b - a for a, b in zip([0.0] + cum[:-1], cum)]
    p = sum(w for x, w in zip(items, weights) if x in W.EDGE_STOPWORDS) / cum[-1]
    ns = range(lo, hi + 1)
    return sum((n * p - n * p ** n) / (1 - p ** n) for n in ns) / sum(ns)


def test_frequency_draws_documents(tok, filler):
    """On 300 documents, every value random and half of the random draws by frequency: about that half of the values
    and owners say so; frequency-drawn English values hold function words at the rate the weights predict (uniform
    ones almost none), "the" and "a" among them, repeats allowed, never only function words; answers restate the
    body's statement verbatim, no contradiction, nothing held out, no needle word."""
    from test_retrieval_docs import _stated_forms, _statement_lines, _touches_needle

    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(
        max_tokens=384, min_tokens=64, seed=34, open_value_share=0.0, random_value_share=1.0, phrase_value_share=0.0,
        word_value_share=0.0, random_subject_share=0.4, frame_share=0.5, random_frequency_share=0.5))
    docs = [gen.document(i) for i in range(300)]
    flags = [(d["lang"], v, fv) for d in docs for (_, v), fv in zip(d["facts"], d["frequent_values"])]
    assert len(flags) > 350 and 0.4 < sum(f for *_, f in flags) / len(flags) < 0.6
    owners = [fo for d in docs if d["form"] == "keyed" for fo, k in zip(d["frequent_owners"], d["subject_kinds"])
              if k == "random"]
    assert len(owners) > 100 and 0.35 < sum(owners) / len(owners) < 0.65
    assert all(not fo for d in docs for fo, k in zip(d["frequent_owners"], d.get("subject_kinds", [])) if k != "random")
    words = {f: [v.split() for lang, v, fv in flags if lang == "en" and fv == f] for f in (True, False)}
    vocab = set(filler.frequency_table("en")[0])
    for f, values in words.items():
        assert all(1 <= len(x) <= 4 and set(x) <= vocab for x in values)
    assert not [x for x in words[True] if set(x) <= W.EDGE_STOPWORDS]  # never only function words (v5's may be)
    frequent = [w for x in words[True] for w in x]
    share = sum(w in W.EDGE_STOPWORDS for w in frequent) / len(frequent)
    expected = _expected_function_share(filler, *RS.RANDOM_VALUE_WORDS)
    assert len(frequent) > 400 and abs(share - expected) < 0.25 * expected + 0.02, (share, expected)
    uniform = [w for x in words[False] for w in x]
    assert sum(w in W.EDGE_STOPWORDS for w in uniform) / len(uniform) < 0.05 < expected
    assert {"the", "a"} <= set(frequent)
    rng = random.Random(1)  # repeats allowed (rare in a value: drawn directly here)
    assert any(len(set(x)) < 4 for x in (RS.vocabulary_draw(filler, rng, "en", (4, 4), (2, 2), True) for _ in range(2000)))
    zh = [v for lang, v, fv in flags if lang == "zh" and fv]
    assert len(zh) > 40 and not [v for v in zh if set(v) <= RS.ZH_FUNCTION_CHARS or set(v) & RS.ZH_EXCLUDED]
    mix: dict = {}
    for d in docs:
        count_mix(mix, {**d, "tokens": len(d["text"])})
    line = describe_mix(mix)
    assert "; frequency drawn " in line and ", none " in line.split("; frequency ")[1], line  # the writer's mix line
    for d in docs:
        body, lines = _statement_lines(d)
        for s, v in d["facts"]:
            assert any(x in body for x in _stated_forms(s, v, d["lang"])), (s, v)
            assert not _touches_needle(v.lower()), v
        assert contradictions(d) == [] and " is " not in " ".join(v for _, v in d["facts"])
        check_held_out(d["text"])


def test_frequency_draws_never_a_needle_word(tok, filler, tmp_path):
    """A vocabulary that holds the needles' words: frequency draws (values and owners) draw them, and the generator's
    check refuses them."""
    from test_retrieval_docs import _touches_needle, needle_word_filler

    small, rng = needle_word_filler(tmp_path), random.Random(0)
    check = RetrievalDocGenerator(tok, filler, RetrievalDocConfig())._span_ok
    for lang, attr in (("en", "motto"), ("zh", "口令")):
        values = [RS.random_value(small, rng, lang, check, frequency=True) for _ in range(300)]
        subjects = [RS.random_subject(small, rng, lang, attr, check, frequency=True) for _ in range(300)]
        for got in (values, subjects):
            assert sum(x is not None for x in got) > 150 and not [x for x in got if x and _touches_needle(x.lower())]
        assert any(_touches_needle(RS.random_value(small, rng, lang, frequency=True).lower()) for _ in range(300))
