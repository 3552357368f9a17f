"""v7 retrieval documents: framed (megaindex.data.retrieval_frames), deterministic, held-out-clean, answers intact."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from test_retrieval_docs import CORPUS, TOKENIZER, _stated_forms, eval_phrases

from megaindex.data import retrieval_frames as F
from megaindex.data.held_out import HELD_OUT_PHRASES
from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator, contradictions
from megaindex.data.retrieval_writer import describe_mix, write_documents
from megaindex.data.tokenizer import IndexTokenizer

STAND_IN = {"en": {"s": "the locker number of the office", "S": "The locker number of the office", "v": "48213"},
            "zh": {"s": "办公室的储物柜号码", "S": "办公室的储物柜号码", "v": "48213"}}


def every_combination(lang: str) -> list[str]:
    """Every preamble, and every text after the body (closing x heading x question style x wording, the next
    question's marker after it), with a stand-in fact: the body (filler, checked per document) separates the two."""
    fill = lambda t: t.format(**STAND_IN[lang])  # noqa: E731
    return [p for p, _ in F.preambles(lang)] + list(F.tails(lang, fill))


def held_out_hits(forms: list[str], phrases) -> list[tuple[str, str]]:
    big = "\0".join(forms).lower()
    return [(p, next(f for f in forms if p.lower() in f.lower())) for p in phrases if p.lower() in big]


def test_no_frame_combination_holds_an_evaluation_phrase(monkeypatch):
    """HARD RULE: every combination of the frame tables is checked against HELD_OUT_PHRASES and against the
    evaluation's own prompts and drawn needles (eval_phrases); the enumeration covers every draw; and the check
    finds a planted phrase (so it can fail)."""
    phrases = list(HELD_OUT_PHRASES) + eval_phrases()
    for lang in ("en", "zh"):
        forms = every_combination(lang)
        assert len(forms) > 10_000, len(forms)
        assert held_out_hits(forms, phrases) == []
        pre, close = {p for p, _ in F.preambles(lang)}, set(F._closings(lang))
        rng = random.Random(lang)
        frames = [F.draw_frame(rng, lang) for _ in range(3000)]
        assert all(f.preamble in pre and f.closing in close for f in frames)
        assert len({f.key for f in frames}) > 2500  # combinatorial: few repeats in 3,000 draws
        assert F.surface_forms(lang) > 1_000_000
    monkeypatch.setitem(F.CLOSINGS, "en", [*F.CLOSINGS["en"], "Here we go again."])
    assert held_out_hits(every_combination("en"), HELD_OUT_PHRASES)[0][0] == "here we go"


@pytest.fixture(scope="module")
def v7():
    tok = IndexTokenizer(TOKENIZER)
    filler = FillerText([CORPUS])
    return tok, filler, lambda **kw: RetrievalDocGenerator(tok, filler, RetrievalDocConfig(
        max_tokens=512, min_tokens=64, seed=27, frame_share=0.5, **kw))


def test_v7_documents_are_deterministic_and_answers_restate_the_body(v7, tmp_path):
    tok, filler, make = v7
    docs = [make().document(i) for i in range(120)]
    assert docs[:20] == [make().document(i) for i in range(20)]
    digest = hashlib.sha256(json.dumps(docs[:20], ensure_ascii=False).encode()).hexdigest()[:16]
    assert digest == "bc18f91c9737c721", digest  # v7 as first landed: a change to the frames shows here
    framed = [d for d in docs if d["frame"] is not None]
    assert 0.35 < len(framed) / len(docs) < 0.65 and len({d["frame"] for d in framed}) == len(framed)
    assert {d["lang"] for d in framed} == {"en", "zh"} and {d["form"] for d in framed} == {"keyed", "same_form"}
    for d in docs:
        assert len(tok.encode(d["text"])) + 1 <= 512
        body, _, tail = d["text"].rpartition("\n\n")
        lines = tail.strip("\n").split("\n")
        for s, v in d["facts"]:
            assert any(f in body for f in _stated_forms(s, v, d["lang"])), (s, v, body)  # stated exactly as answered
            ends = (f"{s}是{v}。",) if d["lang"] == "zh" else (f"{s} is {v}.", f"{s[0].upper()}{s[1:]} is {v}.")
            assert sum(x.endswith(ends) for x in lines) == 1, (ends, lines)
        assert contradictions(d) == [], d["text"]
        if d["frame"] is not None:  # framed: the preamble starts the text; the questions are not v1-v6's
            assert any(d["text"].startswith(p) for p, _ in F.preambles(d["lang"])), d["text"][:80]
    mix: dict = {}
    write_documents(tmp_path / "v7.jsonl", make(), count=30, mix=mix)
    assert mix["frame:framed"] + mix["frame:plain"] == mix["lang:en"] + mix.get("lang:zh", 0)
    assert "; frame framed " in describe_mix(mix)
    # frame_share 0 draws nothing: the documents of v1-v6b, key "frame" absent (test_retrieval_docs' digest)
    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=768, min_tokens=64, seed=21,
                                                                frame_share=0.0))
    old = [gen.document(i) for i in range(40)]
    assert hashlib.sha256(json.dumps(old, ensure_ascii=False).encode()).hexdigest()[:16] == "6aab2001bc0df0d2"
    with pytest.raises(ValueError, match=r"^RetrievalDocConfig.frame_share must be in \[0, 1\], got 1.5$"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(frame_share=1.5))
