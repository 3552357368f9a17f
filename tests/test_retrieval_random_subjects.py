"""v8 retrieval documents: subjects keyed by random vocabulary words (megaindex.data.retrieval_subjects.random_subject)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from megaindex.data import retrieval_subjects as RS
from megaindex.data import retrieval_words as W
from megaindex.data.held_out import HELD_OUT_PHRASES, check_held_out
from megaindex.data.retrieval_docs import RetrievalDocConfig, RetrievalDocGenerator, contradictions


def _digest(docs: list[dict]) -> str:
    return hashlib.sha256(json.dumps(docs, ensure_ascii=False).encode()).hexdigest()[:16]


def test_default_draws_nothing_and_keeps_v7_byte_for_byte(tok, filler):
    """random_subject_share 0.0 (the default) gives v7's documents: digest of the code before v8 (main at a7cc325)."""
    assert RetrievalDocConfig().random_subject_share == 0.0
    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=512, min_tokens=64, seed=31, frame_share=0.5,
                                                                random_subject_share=0.0))
    docs = [gen.document(i) for i in range(40)]
    assert _digest(docs) == "e026e9821f0590c2"
    assert not any("subject_kinds" in d for d in docs) and {d["subjects"] for d in docs} <= {"open", "closed", "mixed"}
    with pytest.raises(ValueError, match=r"^RetrievalDocConfig.random_subject_share must be in \[0, 1\], got 1.5$"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(random_subject_share=1.5))


def _owner(subject: str, lang: str) -> str:
    """The random owner's words inside a v8 subject (every frame, thing and attribute tried; the longest match)."""
    frames = RS.EN_RANDOM_FRAMES + RS.EN_DEEP_FRAMES if lang == "en" else RS.ZH_RANDOM_FRAMES + RS.ZH_DEEP_FRAMES
    things = W.EN_THINGS if lang == "en" else W.ZH_THINGS
    attrs = [a for kind in ("number", "word", "phrase", "open") for a in W.attributes(lang, kind)]
    found = []
    for frame in frames:
        for a in attrs:
            for t in things if "{t}" in frame else [""]:
                text = frame.format(w="\0", a=a, t=t)
                if lang == "zh" and "的" in a:
                    text = text.replace(f"的{a}", a)
                head, _, tail = text.partition("\0")
                if subject.lower().startswith(head.lower()) and subject.lower().endswith(tail.lower()) \
                        and len(subject) > len(head) + len(tail):
                    found.append(subject[len(head):len(subject) - len(tail)])
    assert found, subject
    return min(found, key=len)


def test_random_subjects_share_vocabulary_frames_and_answers(tok, filler):
    """On 300 documents with the share at 0.4: about that share of the keyed documents' facts have a subject keyed by
    1-3 vocabulary words (capitalised sometimes, not always) / 2-4 CJK characters, in every frame, some two slots deep;
    same-form documents keep theirs; answers restate the body's statement verbatim, no contradiction, nothing held out."""
    from test_retrieval_docs import _stated_forms, _statement_lines, _touches_needle, eval_phrases

    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=384, min_tokens=64, seed=32,
                                                                random_subject_share=0.4, frame_share=0.5))
    docs = [gen.document(i) for i in range(300)]
    kinds = [k for d in docs if d["form"] == "keyed" for k in d["subject_kinds"]]
    assert len(kinds) > 250 and 0.3 < kinds.count("random") / len(kinds) < 0.5, (len(kinds), kinds.count("random"))
    assert {"open", "closed"} <= set(kinds) and "random" in {d["subjects"] for d in docs}
    assert all(set(d["subject_kinds"]) <= {"open", "closed"} for d in docs if d["form"] == "same_form")
    vocab = {lang: set(filler.vocabulary(lang)) for lang in ("en", "zh")}
    owners = {"en": [], "zh": []}
    phrases = [p.lower() for p in eval_phrases()]
    for d in docs:
        assert len({s.lower() for s, _ in d["facts"]}) == len(d["facts"])  # distinct subjects per document
        body, lines = _statement_lines(d)
        for (s, v), k in zip(d["facts"], d["subject_kinds"]):
            assert any(f in body for f in _stated_forms(s, v, d["lang"])), (s, v)
            ends = (f"{s}是{v}。",) if d["lang"] == "zh" else (f"{s} is {v}.", f"{s[0].upper()}{s[1:]} is {v}.")
            assert sum(x.endswith(ends) for x in lines) == 1, (ends, lines)
            if k == "random":
                owner = _owner(s, d["lang"])
                owners[d["lang"]].append(owner)
                assert " is " not in f" {s.lower()} " and "是" not in s, s
                assert not _touches_needle(owner.lower()) and not _touches_needle(s.lower()), s
        assert contradictions(d) == [], d["text"]
        check_held_out(d["text"])
        assert not [p for p in phrases if p in d["text"].lower()]
    en, zh = owners["en"], owners["zh"]
    assert len(en) > 100 and len(zh) > 15
    assert all(1 <= len(o.split()) <= 3 and {w.lower() for w in o.split()} <= vocab["en"] for o in en), en
    assert all(2 <= len(o) <= 4 and set(o) <= vocab["zh"] for o in zh), zh
    capitalised = sum(o[0].isupper() for o in en) / len(en)
    assert 0.25 < capitalised < 0.55, capitalised  # names sometimes (CAPITALISED_SHARE 0.4), not always
    assert len(set(en + zh)) >= 0.95 * len(en + zh)  # keys never seen: hardly one repeats
    subjects = [s for d in docs for (s, _), k in zip(d["facts"], d["subject_kinds"]) if k == "random"]
    deep = [s for s in subjects if any(re.search(rf"\b{t}\b", s) for t in W.EN_THINGS) or any(t in s for t in W.ZH_THINGS)]
    assert 0.25 < len(deep) / len(subjects) < 0.55, len(deep) / len(subjects)  # two slots deep, sometimes (DEEP_SHARE)


def test_no_random_frame_holds_an_evaluation_phrase():
    """Every frame x attribute x thing (the owner a placeholder; v8's frames and v9's prepositional ones), in both
    languages and as a statement's head, against
    HELD_OUT_PHRASES: the owner words are checked as drawn (random_subject's `check`), the rest is enumerated here."""
    texts = []
    for lang, frames, things in (("en", RS.EN_RANDOM_FRAMES + RS.EN_DEEP_FRAMES + RS.EN_PREP_FRAMES, W.EN_THINGS),
                                 ("zh", RS.ZH_RANDOM_FRAMES + RS.ZH_DEEP_FRAMES + RS.ZH_PREP_FRAMES, W.ZH_THINGS)):
        attrs = [a for kind in ("number", "word", "phrase", "open") for a in W.attributes(lang, kind)]
        for frame in frames:
            for a in attrs:
                for t in things if "{t}" in frame else [""]:
                    texts.append(frame.format(w="X", a=a, t=t) + (" is" if lang == "en" else "是"))
    assert len(texts) > 3000 and sum("near X" in x or "在X" in x for x in texts) > 50  # v9's prepositional frames too
    assert not [(p, x) for x in texts for p in HELD_OUT_PHRASES if p in x.lower()]
    assert not [x for x in texts if " is " in x.lower().removesuffix(" is") + " " or "是" in x[:-1]]


def test_owner_words_never_a_needle_word(tok, filler, tmp_path):
    """A vocabulary that holds the needles' words: random_subject draws them, and the generator's check refuses them."""
    import random

    from test_retrieval_docs import _touches_needle, needle_word_filler

    small, rng = needle_word_filler(tmp_path), random.Random(0)
    check = RetrievalDocGenerator(tok, filler, RetrievalDocConfig())._span_ok
    for lang, attr in (("en", "motto"), ("zh", "口令")):
        got = [RS.random_subject(small, rng, lang, attr, check) for _ in range(300)]
        assert sum(s is not None for s in got) > 150 and not [s for s in got if s and _touches_needle(s.lower())]
        assert any(_touches_needle(RS.random_subject(small, rng, lang, attr).lower()) for _ in range(300)), lang
