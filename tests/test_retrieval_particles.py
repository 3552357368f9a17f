"""v9 retrieval documents, second part: Chinese values that may hold 在/的/了 (RetrievalDocConfig.zh_value_particles)
and random-key subjects in prepositional frames (prepositional_frame_share; retrieval_subjects.EN_PREP_FRAMES /
ZH_PREP_FRAMES)."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest

from megaindex.data import retrieval_subjects as RS
from megaindex.data import retrieval_words as W
from megaindex.data.held_out import check_held_out
from megaindex.data.retrieval_docs import RetrievalDocConfig, RetrievalDocGenerator, contradictions

V9 = dict(frame_share=0.5, random_subject_share=0.4, random_value_share=0.25, open_value_share=0.35,
          random_frequency_share=0.5)


def test_defaults_keep_v9_byte_for_byte(tok, filler):
    """zh_value_particles False and prepositional_frame_share 0.0 (the defaults) give the first v9 part's documents:
    digest of the code before this part (main at 3816bee), half of them Chinese."""
    cfg = RetrievalDocConfig()
    assert cfg.zh_value_particles is False and cfg.prepositional_frame_share == 0.0
    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=384, min_tokens=64, seed=35, chinese_share=0.5,
                                                                **V9))
    docs = [gen.document(i) for i in range(60)]
    assert hashlib.sha256(json.dumps(docs, ensure_ascii=False).encode()).hexdigest()[:16] == "6cb72025d098c7b1"
    assert not any("prepositional_subjects" in d for d in docs)
    with pytest.raises(ValueError, match=r"^RetrievalDocConfig.prepositional_frame_share must be in \[0, 1\], got 2$"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(prepositional_frame_share=2))


PREP = {lang: [re.compile("^" + re.escape(f).replace(r"\{w\}", ".+").replace(r"\{a\}", ".+").replace(r"\{t\}", ".+")
                          + "$") for f in frames] for lang, frames in (("en", RS.EN_PREP_FRAMES), ("zh", RS.ZH_PREP_FRAMES))}


def test_particle_values_and_prepositional_subjects(tok, filler):
    """On 300 documents (half Chinese, every value a filler span or a random draw, half of those by frequency):
    a fair share of Chinese values holds 在/的/了 and some start with 在, of open, random and same-form values alike;
    none holds 是 or only particles; subjects outside the prepositional frames keep v8's rule (no 在/了, and 的 only
    from the frames and attributes); about 30% of random-key subjects are prepositional, each one of the frames;
    answers restate the body verbatim, no contradiction, nothing held out, no needle word."""
    from test_retrieval_docs import _stated_forms, _touches_needle

    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(
        max_tokens=384, min_tokens=64, seed=36, chinese_share=0.5, open_value_share=0.5, random_value_share=0.5,
        phrase_value_share=0.0, word_value_share=0.0, frame_share=0.5, random_subject_share=0.4,
        random_frequency_share=0.5, zh_value_particles=True, prepositional_frame_share=0.3))
    docs = [gen.document(i) for i in range(300)]
    zh = [(d, v) for d in docs if d["lang"] == "zh" for _, v in d["facts"]]
    held = [v for _, v in zh if set(v) & RS.ZH_PARTICLES]
    assert len(zh) > 250 and 0.12 < len(held) / len(zh) < 0.6, (len(held), len(zh))
    for kind in ("open", "random"):
        assert any(set(v) & RS.ZH_PARTICLES for d, v in zh if d["kind"] == kind), kind
    assert any(set(v) & RS.ZH_PARTICLES for d, v in zh if d["form"] == "same_form")
    starts = [v for _, v in zh if v[0] == "在"]
    assert len(starts) >= 5, starts  # the answer's first piece is then the merged "是在"
    assert not [v for _, v in zh if "是" in v or set(v) <= RS.ZH_PARTICLES]
    for d in docs:  # English values are as before: no particle setting touches them
        assert d["lang"] == "zh" or not re.search(r"[\u4e00-\u9fff]", " ".join(v for _, v in d["facts"]))
    flags = [(d["lang"], s, p) for d in docs if d["form"] == "keyed"
             for (s, _), p, k in zip(d["facts"], d["prepositional_subjects"], d["subject_kinds"]) if k == "random"]
    share = sum(p for *_, p in flags) / len(flags)
    assert len(flags) > 100 and 0.18 < share < 0.42, share
    assert all(any(r.match(s) for r in PREP[lang]) for lang, s, p in flags if p)
    assert {lang for lang, _, p in flags if p} == {"en", "zh"}
    assert not any(p for d in docs for p, k in zip(d.get("prepositional_subjects", []), d.get("subject_kinds", []))
                   if k != "random")
    for d in docs:
        for (s, v), k in zip(d["facts"], d.get("subject_kinds", ["closed"] * len(d["facts"]))):
            assert "是" not in s and " is " not in f" {s} "
            prep = k == "random" and any(r.match(s) for r in PREP.get(d["lang"], []))
            if d["lang"] == "zh" and not prep:
                assert not set(s) & set("在了"), s  # subjects keep v8's rule
            assert any(x in d["text"].rpartition("\n\n")[0] for x in _stated_forms(s, v, d["lang"])), (s, v)
            assert not _touches_needle(v.lower()) and not _touches_needle(s.lower()), (s, v)
        assert contradictions(d) == []
        check_held_out(d["text"])


def test_particle_draws_never_a_needle_word(tok, filler, tmp_path):
    """A vocabulary that holds the needles' characters: particle draws (uniform and by frequency) and open spans split
    only at 是 draw them, and the generator's check refuses them; a draw of particles alone is redrawn."""
    from test_retrieval_docs import _touches_needle, needle_word_filler

    small, rng = needle_word_filler(tmp_path), random.Random(0)
    check = RetrievalDocGenerator(tok, filler, RetrievalDocConfig())._span_ok
    for f in (False, True):
        got = [RS.random_value(small, rng, "zh", check, frequency=f, particles=True) for _ in range(300)]
        assert sum(x is not None for x in got) > 150 and not [x for x in got if x and _touches_needle(x)]
        assert any(_touches_needle(RS.random_value(small, rng, "zh", frequency=f, particles=True)) for _ in range(300))
    assert "在" in filler.vocabulary("zh", True) and "在" not in filler.vocabulary("zh")
    assert "是" not in filler.vocabulary("zh", True) and "是" not in filler.frequency_table("zh", True)[0]
    assert RS.function_only(["的", "了"], "zh") and not RS.function_only(["在", "街"], "zh")

    class Particles:  # a vocabulary of particles and one other character: particles alone are redrawn
        docs = {"zh": ["x"]}

        def vocabulary(self, lang, particles=False):
            return ["了", "在", "的", "猫"] * 20 if particles else ["猫"] * 80
    values = [RS.random_value(Particles(), random.Random(i), "zh", particles=True) for i in range(200)]
    assert all(v is None or "猫" in v for v in values) and any(v and set(v) & RS.ZH_PARTICLES for v in values)
