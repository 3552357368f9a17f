"""Synthetic retrieval documents: deterministic, whole, correct, and free of evaluation phrasings."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from megaindex.data.held_out import HELD_OUT_PHRASES, HeldOutPhraseError, check_held_out
from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator
from megaindex.data.retrieval_writer import describe_mix, write_documents

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests/fixtures/tokenizer.model"
CORPUS = REPO / "tests/fixtures/corpus/pretrain.jsonl"


@pytest.fixture(scope="module")
def docs(tok):
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=512, min_tokens=64, seed=3))
    return [gen.document(i) for i in range(150)]


def eval_phrases() -> list[str]:
    """The evaluation's own prompts: the passkey task, garbage sentences and question, the needle
    prompts' fixed sentences, and the fixed words of every needle template (drawn needles)."""
    from megaindex.data import needle_words
    from megaindex.eval import needle, passkey

    out = list(HELD_OUT_PHRASES) + [passkey.TASK, passkey.QUESTION, passkey.INFO.format(k=12345)]
    out += [s.strip() + "." for s in passkey.GARBAGE.split(".") if s.strip()]
    out += [needle.TEXT[lang][k] for lang in needle.TEXT for k in ("intro", "document")]
    rng = random.Random(0)
    for _ in range(200):
        for lang in needle_words.WORDS:
            n = needle_words.draw_needle(lang, rng)
            out += [n.question, n.answer_prefix, n.text]
    return out


def _statement_lines(d) -> tuple[str, list[str]]:
    body, _, tail = d["text"].rpartition("\n\n")
    return body, tail.strip("\n").split("\n")


def test_answers_match_the_stated_facts(docs):
    single = multi = 0
    for d in docs:
        body, lines = _statement_lines(d)
        facts = d["facts"]
        single += len(facts) == 1
        multi += len(facts) > 1
        assert len({v for _, v in facts}) == len(facts)  # one value per fact in a document
        for subject, value in facts:
            assert value[1:] in body and subject[1:] in body, (subject, value, d["text"])  # stated in the text
            end = f"是{value}。" if d["lang"] == "zh" else f" is {value}."
            answers = [x for x in lines if x.endswith(end)]
            assert len(answers) == 1, (end, lines)  # dense: every fact asked for and answered once, last
            assert subject[1:] in "\n".join(lines)
    assert single > 10 and multi > 40  # short documents with long (phrase, Chinese) facts keep one


def test_mix_of_languages_haystacks_and_values(docs):
    share = lambda key, val: sum(d[key] == val for d in docs) / len(docs)  # noqa: E731
    assert 0.1 < share("lang", "zh") < 0.32 and 0.18 < share("haystack", "repetitive") < 0.42
    assert 0.32 < share("kind", "open") < 0.58 and 0.12 < share("kind", "number") < 0.38  # v5: 45% / 25%
    assert 0.07 < share("kind", "random") < 0.25  # v5: 15%
    assert 0.08 < share("kind", "phrase") + share("kind", "word") < 0.25  # the tables' 15%
    zh_prose = [d for d in docs if d["lang"] == "zh" and d["haystack"] == "prose"]
    assert zh_prose and all(re.search(r"[\u4e00-\u9fff]", d["text"]) for d in zh_prose)
    for d in docs:
        if d["kind"] == "phrase" and d["lang"] == "en":
            assert all(2 <= len(v.split()) <= 8 for _, v in d["facts"]), d["facts"]
        if d["haystack"] == "repetitive" and len(d["text"]) > 1500:
            body, _ = _statement_lines(d)
            sep = "是" if d["lang"] == "zh" else " is "
            assert body.count(sep) > 3 * len(d["facts"]) + 5  # many "X is Y." distractors compete with the facts
        if d["kind"] == "number":
            assert all(v.isdigit() and 4 <= len(v) <= 7 for _, v in d["facts"])


def test_repetitive_sentences_never_held_out():
    """Every sentence a repetitive haystack can contain, enumerated: none is the passkey's garbage."""
    from megaindex.data import retrieval_words as W

    sentences = W._REP_SET + W._ZH_REP_SET + [f"The {n} is {a}." for n in W._REP_NOUN for a in W._REP_ADJ]
    sentences += [f"{n}是{a}的。" for n in W._ZH_REP_NOUN for a in W._ZH_REP_ADJ]
    for s in sentences:
        check_held_out(s)
    rng = random.Random(0)
    for _ in range(300):
        unit = W.repetitive_unit(rng.choice(["en", "zh"]), rng)
        assert set(unit) <= set(sentences) and 3 <= len(unit) <= 6
        check_held_out(" ".join(unit * 3))


def test_vocabulary_disjoint_from_needles(docs):
    from megaindex.data import retrieval_words as W
    from megaindex.data import needle_words

    ours = [x.lower() for x in W.vocabulary()]
    assert len(ours) > 300 and "hiding place" in ours and "藏东西的地方" in ours
    for lang, table in needle_words.WORDS.items():
        for strings in table.values():
            for n in strings:
                clash = [x for x in ours if n.lower() in x or (lang == "zh" and len(x) >= 2 and x in n)]
                assert not clash, (n, clash)
                if len(n.split()) > 1 or lang == "zh":
                    assert not any(n.lower() in d["text"].lower() for d in docs), n


def test_chinese_documents_with_and_without_chinese_filler(tok, tmp_path, caplog):
    english = tmp_path / "en.jsonl"
    english.write_text("".join(line + "\n" for line in CORPUS.read_text().splitlines()
                               if not re.search(r"[\u4e00-\u9fff]", json.loads(line)["text"])))
    full, en_only = FillerText([CORPUS]), FillerText([english])
    assert full.docs["zh"] and not en_only.docs["zh"] and "(0 Chinese)" not in full.summary()
    assert "0 Chinese" in en_only.summary()
    cfg = RetrievalDocConfig(max_tokens=400, min_tokens=200, chinese_share=0.5, repetitive_share=0.0, seed=4)
    with caplog.at_level("WARNING"):
        gen = RetrievalDocGenerator(tok, en_only, cfg)
    assert "0 Chinese" in caplog.text  # the fallback is logged with its count, not a crash
    zh = [d for d in (gen.document(i) for i in range(20)) if d["lang"] == "zh"]
    assert zh and all(d["haystack"] == "repetitive" for d in zh)
    zh = [d for d in RetrievalDocGenerator(tok, full, cfg).documents(0, 20) if d["lang"] == "zh"]
    assert any(d["haystack"] == "prose" for d in zh)
    with pytest.raises(ValueError, match="chinese_share"):
        RetrievalDocGenerator(tok, full, RetrievalDocConfig(chinese_share=1.5))


def test_deterministic_per_index(tok):
    cfg = RetrievalDocConfig(max_tokens=400, min_tokens=64, seed=5)
    a = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    b = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    assert [a.document(i) for i in (0, 7, 3)] == [b.document(i) for i in (0, 7, 3)]
    both = [(a.document(i), b.document(i)) for i in range(30)]  # every form, kind and subject vocabulary
    assert all(x == y for x, y in both) and {x["form"] for x, _ in both} == {"keyed", "same_form"}
    other = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=400, min_tokens=64, seed=6))
    assert a.document(0)["text"] != other.document(0)["text"]


def test_uniform_lengths_fill_the_window_log_uniform_ones_rarely(tok):
    """v6: `length_draw: uniform` gives a meaningful share of documents near max_tokens, which the v1-v5
    log-uniform draw does not; one draw either way, so language and value kind per index are the same."""
    filler = FillerText([CORPUS])
    got = {}
    for draw in ("log-uniform", "uniform"):
        gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=1024, min_tokens=64, seed=14,
                                                                    length_draw=draw))
        got[draw] = [gen.document(i) for i in range(60)]
    n = {k: sorted(len(tok.encode(d["text"])) + 1 for d in v) for k, v in got.items()}
    assert max(n["uniform"]) <= 1024
    near = {k: sum(x >= 768 for x in v) / len(v) for k, v in n.items()}  # >= 75% of max_tokens
    assert near["uniform"] >= 0.15 and near["log-uniform"] <= near["uniform"] / 2, near
    assert n["uniform"][30] >= 1.6 * n["log-uniform"][30], (n["uniform"][30], n["log-uniform"][30])  # medians
    assert [(d["lang"], d["kind"]) for d in got["uniform"]] == [(d["lang"], d["kind"]) for d in got["log-uniform"]]
    again = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=1024, min_tokens=64, seed=14,
                                                                  length_draw="uniform"))
    assert [again.document(i) for i in (5, 0, 17)] == [got["uniform"][i] for i in (5, 0, 17)]
    assert RetrievalDocConfig().length_draw == "log-uniform"  # earlier data sets stay reproducible
    with pytest.raises(ValueError, match=r"RetrievalDocConfig.length_draw must be one of log-uniform, uniform, "
                                         r"got 'linear'"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(length_draw="linear"))


def _early_statement_starts(d: dict) -> list[float]:
    """Per fact of `d`, where its statement starts in the body (the text between the intro and the questions), as a
    share of the body's characters: the statement holds "{s} is {v}" / "{v} — that is {s}" (or the Chinese forms),
    and its template's fixed words before the first field precede that."""
    from megaindex.data import retrieval_words as W

    body = d["text"].rpartition("\n\n")[0]
    body = body.removeprefix(max((i for i in W.INTROS[d["lang"]] if body.startswith(i)), key=len)).lower()
    prefixes = sorted({t[:t.index("{")].lower() for lang in W.STATEMENTS for t in W.STATEMENTS[lang]}, key=len)
    out = []
    for s, v in d["facts"]:
        s, v = s.lower(), v.lower()
        at = min(i for i in (body.find(x) for x in (f"{s} is {v}", f"{s}是{v}", f"{v} — that is {s}", f"{v}——这就是{s}"))
                 if i >= 0)
        out.append((at - len([p for p in prefixes if body.endswith(p, 0, at)][-1])) / len(body))
    return out


def test_early_fact_share_puts_one_fact_in_the_first_tenth_and_zero_keeps_the_documents(tok):
    """v6b: with early_fact_share 1.0 every document has a fact whose statement starts within the first 10% of its
    body's characters (any form and value kind); the facts and everything else drawn stay those of 0.0, which
    gives the documents of v1-v6 unchanged (digests of the code before early_fact_share)."""
    import hashlib

    filler = FillerText([CORPUS])
    got = {}
    for share in (0.0, 1.0):
        gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=768, min_tokens=64, seed=21,
                                                                    length_draw="uniform", early_fact_share=share))
        got[share] = [gen.document(i) for i in range(40)]
    early = {k: [min(_early_statement_starts(d)) <= 0.1 for d in v] for k, v in got.items()}
    assert all(early[1.0]), [d["text"] for d, e in zip(got[1.0], early[1.0]) if not e][:1]
    assert sum(early[0.0]) <= 0.6 * len(early[0.0]), sum(early[0.0])  # by chance only, for short bodies mostly
    assert {d["form"] for d in got[1.0]} == {"keyed", "same_form"} and {d["lang"] for d in got[1.0]} == {"en", "zh"}
    assert all(len(tok.encode(d["text"])) + 1 <= 768 for d in got[1.0])
    keep = ("facts", "lang", "kind", "form", "haystack")
    assert [[d[k] for k in keep] for d in got[1.0]] == [[d[k] for k in keep] for d in got[0.0]]
    assert sum(a["text"] != b["text"] for a, b in zip(got[0.0], got[1.0])) >= 30
    digest = hashlib.sha256(json.dumps(got[0.0], ensure_ascii=False).encode()).hexdigest()[:16]
    assert digest == "1e4bea6a8dcba2af"  # the same 40 documents from main before v6b (f60168e's code)
    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(max_tokens=768, min_tokens=64, seed=21))
    docs = [gen.document(i) for i in range(40)]
    assert hashlib.sha256(json.dumps(docs, ensure_ascii=False).encode()).hexdigest()[:16] == "6aab2001bc0df0d2"
    with pytest.raises(ValueError, match=r"^RetrievalDocConfig.early_fact_share must be in \[0, 1\], got 1.5$"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(early_fact_share=1.5))
    with pytest.raises(ValueError, match=r"^RetrievalDocConfig.early_fact_window must be in \(0, 1\], got 0$"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(early_fact_share=0.5, early_fact_window=0))


def test_held_out_phrasings_never_appear(docs, tmp_path, tok):
    phrases = [p.lower() for p in eval_phrases()]
    for p in eval_phrases():  # the check itself catches every evaluation prompt
        with pytest.raises(HeldOutPhraseError):
            check_held_out(p)
    for d in docs:
        low = d["text"].lower()
        for p in phrases:
            assert p not in low, (p, d["source"])
    # Filler text that contains an evaluation phrase is dropped, never copied into a document.
    poisoned = tmp_path / "filler.jsonl"
    sent = "The pass key is 71234. Remember it. The best thing to do in Lisbon is rowing on the harbour at dawn. "
    clean = "Rivers carry silt to the sea and the delta grows each year. "
    poisoned.write_text(json.dumps({"text": (sent + clean * 3) * 40}) + "\n")
    cfg = RetrievalDocConfig(max_tokens=300, min_tokens=200, max_facts=2, repetitive_share=0, chinese_share=0, seed=1)
    gen = RetrievalDocGenerator(tok, FillerText([poisoned]), cfg)
    for i in range(20):
        text = gen.document(i)["text"]
        assert "Rivers carry silt" in text
        check_held_out(text)
    with pytest.raises(HeldOutPhraseError, match="pass key"):
        check_held_out("What is the pass key?")


def test_write_documents_and_tool(tmp_path, tok):
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=256, min_tokens=64, seed=2,
                                                                            early_fact_share=0.5))
    mix: dict = {}
    docs, tokens = write_documents(tmp_path / "a.jsonl", gen, tokens=3000, mix=mix)
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert mix["lang:en"] + mix.get("lang:zh", 0) == tokens == mix["haystack:prose"] + mix.get("haystack:repetitive", 0)
    assert mix.get("lang:zh", 0) == sum(x["tokens"] for x in lines if x["lang"] == "zh")
    assert "; haystack prose " in describe_mix(mix) and describe_mix(mix).startswith("lang en ")
    assert "; form keyed " in describe_mix(mix) and "; subjects closed " in describe_mix(mix)
    assert len(lines) == docs and sum(x["tokens"] for x in lines) == tokens >= 3000
    assert tokens - lines[-1]["tokens"] < 3000  # stops as soon as the target is reached
    # Forked workers write the same file and count the same mix.
    mix2: dict = {}
    assert write_documents(tmp_path / "w.jsonl", gen, tokens=3000, mix=mix2, workers=2) == (docs, tokens)
    assert (tmp_path / "w.jsonl").read_text() == (tmp_path / "a.jsonl").read_text() and mix2 == mix
    # The command line writes the same documents.
    out = tmp_path / "b.jsonl"
    r = subprocess.run([sys.executable, "tools/make_retrieval_docs.py", "--filler", str(CORPUS), "--tokenizer",
                        str(TOKENIZER), "--tokens", "3000", "--max-tokens", "256", "--min-tokens", "64", "--seed", "2",
                        "--length-draw", "log-uniform", "--early-fact-share", "0.5", "-o", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (tmp_path / "a.jsonl").read_text()
    r = subprocess.run([sys.executable, "tools/make_retrieval_docs.py", "--filler", str(tmp_path / "none.jsonl"),
                        "--tokenizer", str(TOKENIZER), "--count", "1", "-o", str(out)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "none.jsonl" in r.stderr and r.stderr.count("\n") == 1


# v3: open-vocabulary subjects and same-form documents (issue #16, after the second GPU attempt).

def _corpus_words_and_text() -> tuple[str, str]:
    """The filler corpus as " word word ... " (lowercased, space-padded) and as one string: an open
    span must be found in one of them."""
    raw = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    return " " + " ".join(w.lower() for text in raw for w in text.split()) + " ", "".join(raw)


def _open_span_candidates(subject: str) -> list[str]:
    """The filler span an open subject may be built around: "the {span}", "the {attr} of the {span}",
    "{span}的{attr}"."""
    from megaindex.data import retrieval_words as W

    if re.search(r"[\u4e00-\u9fff]", subject):
        heads = [a for kind in ("number", "word", "phrase", "open") for a in W.attributes("zh", kind)] + W.ZH_SF_NOUN
        return [subject.removesuffix(f"的{h}") for h in heads if subject.endswith(f"的{h}")]
    rest = subject.removeprefix("the ")
    out = [rest]
    for attr in (a for kind in ("number", "word", "phrase", "open") for a in W.attributes("en", kind)):
        if rest.startswith(f"{attr} of the "):
            out.append(rest.removeprefix(f"{attr} of the "))
    return out


def test_open_vocabulary_subjects_come_from_the_filler_and_are_diverse(tok):
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=256, min_tokens=64, seed=8))
    docs = [gen.document(i) for i in range(500)]
    words, chinese = _corpus_words_and_text()
    open_subjects = [s for d in docs if d["subjects"] == "open" for s, _ in d["facts"]]
    assert len(open_subjects) > 150
    for s in open_subjects:
        assert " is " not in f" {s} " and "是" not in s and not re.search(r"\d", s), s
        spans = _open_span_candidates(s)
        if d_zh := bool(re.search(r"[\u4e00-\u9fff]", s)):
            assert any(2 <= len(x) <= 6 and x in chinese for x in spans), s
        else:
            assert any(re.fullmatch(r"[a-z]+( [a-z]+){0,4}", x) and f" {x} " in words for x in spans), s
        assert d_zh or s.startswith("the ")
    assert len(set(open_subjects)) >= 0.8 * len(open_subjects)  # open vocabulary: hardly any subject repeats
    share = {k: sum(d["subjects"] == k for d in docs) / len(docs) for k in ("open", "closed", "mixed")}
    assert 0.2 < share["open"] < 0.55 and 0.2 < share["closed"] < 0.55 and share["mixed"] > 0.1, share
    assert 0.2 < sum(d["form"] == "same_form" for d in docs) / len(docs) < 0.4


def test_same_form_documents_hide_the_fact_among_sentences_of_its_form(tok):
    from megaindex.data import retrieval_same_form as SF

    cfg = RetrievalDocConfig(max_tokens=384, min_tokens=64, same_form_share=1.0, chinese_share=0.3, seed=9)
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    docs = [gen.document(i) for i in range(80)]
    hard = 0
    for d in docs:
        assert d["form"] == "same_form" and d["distractors"] >= SF.MIN_DISTRACTORS, d
        body, lines = _statement_lines(d)
        zh = d["lang"] == "zh"
        form = re.findall(r"(?:^|(?<=[.?!:] )|(?<=\n))The ([a-z]+(?: [a-z]+)*) is ([^.\n]+)\.", body) if not zh else \
            re.findall(r"([\u4e00-\u9fff]{1,14}?)是([^。！？\n]{1,20})。", body)
        subjects = {s for s, _ in d["facts"]}
        for s, v in d["facts"]:
            stated = SF.sentence(s, v, d["lang"])
            assert body.count(stated) == 1, (stated, body)
            if d["kind"] != "open":  # an open value is real text: its words may also occur in the filler
                assert body.count(v) == 1, (stated, body)  # the value once, where stated
            assert sum(x.endswith(stated) or x.endswith(f"{s} is {v}.") for x in lines) == 1, lines  # asked, answered
            assert body.count(stated.split(" is ")[0] + " is " if not zh else f"{s}是") == 1  # no other "{s} is"
        form = [(s.strip(), v) for s, v in form]
        others = [(s, v) for s, v in form if ("the " + s if not zh else s) not in subjects]
        assert len(others) >= SF.MIN_DISTRACTORS, (form, body)  # many sentences of the fact's own form
        assert len(form) - len(others) == len(d["facts"])  # and none of them equal to a fact
        fact_words = {w for s in subjects for w in (s.split()[1:] if not zh else [s.split("的")[0]])}
        hard += any(set(s.split()) & fact_words if not zh else any(w in s for w in fact_words) for s, _ in others)
        check_held_out(d["text"])
    assert hard >= 0.8 * len(docs)  # hard negatives: a distractor shares a word with a fact's subject
    assert {d["lang"] for d in docs} == {"en", "zh"} and {d["haystack"] for d in docs} == {"prose", "repetitive"}
    assert sum(len(d["facts"]) > 1 for d in docs) >= 5  # several facts where the length allows


def test_same_form_sentences_never_held_out_and_drafts_with_a_held_out_phrase_are_redrawn(tok):
    from megaindex.data import retrieval_words as W

    sentences = [f"The {m} {n} is {a}." for m in W.SF_MOD for n in W.SF_NOUN for a in W.SF_ADJ]
    sentences += [f"The {n} is {a}." for n in W.SF_NOUN for a in W.SF_ADJ]
    sentences += [f"{m}{j}{n}是{a}的。" for m in W.ZH_SF_MOD for n in W.ZH_SF_NOUN for a in W.ZH_SF_ADJ for j in ("", "的")]
    low = [s.lower() for s in sentences]
    assert not [(p, s) for p in HELD_OUT_PHRASES for s in low if p in s]
    cfg = RetrievalDocConfig(max_tokens=256, min_tokens=64, same_form_share=0.5, seed=10)
    plain = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    strict = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    strict._held_out += ("gate", "door")  # as if these were evaluation phrases
    a, b = [plain.document(i) for i in range(40)], [strict.document(i) for i in range(40)]
    hit = [x for x in a if any(p in x["text"].lower() for p in ("gate", "door"))]
    assert hit and all(not any(p in y["text"].lower() for p in ("gate", "door")) for y in b)
    assert all(x != y for x, y in zip(a, b) if x in hit)  # those drafts were redrawn; spans are checked as drawn,
    assert sum(x == y for x, y in zip(a, b)) >= 0.6 * len(a)  # so a few more differ, most are unchanged


# v4: open-vocabulary values, answers that restate the text (issue #16, after the third GPU attempt).

def _stated_forms(s: str, v: str, lang: str) -> list[str]:
    """How a statement template can hold fact (s, v) in the body (retrieval_words.STATEMENTS, same-form)."""
    if lang == "zh":
        return [f"{s}是{v}", f"{v}就是{s}", f"{v}——这就是{s}"]
    return [f"{s} is {v}", f"{s[0].upper()}{s[1:]} is {v}", f"{v} is {s}", f"{v} — that is {s}"]


def test_every_answer_restates_a_fact_stated_verbatim_before_its_question(tok):
    from megaindex.data.retrieval_docs import contradictions

    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=384, min_tokens=64, seed=12))
    docs = [gen.document(i) for i in range(300)]
    assert {d["kind"] for d in docs} == {"open", "random", "number", "phrase", "word"}
    for d in docs:
        body, lines = _statement_lines(d)
        for s, v in d["facts"]:
            assert any(f in body for f in _stated_forms(s, v, d["lang"])), (s, v, body)  # exactly as answered
            ends = (f"{s}是{v}。",) if d["lang"] == "zh" else (f"{s} is {v}.", f"{s[0].upper()}{s[1:]} is {v}.")
            assert sum(x.endswith(ends) for x in lines) == 1, (ends, lines)  # "From the text above, {s} is {v}."
        assert contradictions(d) == [], d["text"]  # and no other sentence gives a subject another value
    # The check itself: a body that gives the subject a second value, or states it only in the questions.
    bad = {"text": "The gate is kiwi. Later the gate is locked.\n\nFrom the text above, the gate is kiwi.\n",
           "facts": [["the gate", "kiwi"]], "lang": "en"}
    assert contradictions(bad) == ["the gate is locked."]
    bad_zh = {"text": "北边的钥匙是旧的。北边的钥匙是123。\n\n北边的钥匙是123。\n", "facts": [["北边的钥匙", "123"]], "lang": "zh"}
    assert len(contradictions(bad_zh)) == 1 and contradictions({**bad, "text": "The gate is kiwi.\n\nx\n"}) == []


def test_open_values_are_spans_of_the_filler(tok):
    from megaindex.data.retrieval_subjects import OPEN_VALUE_CHARS, OPEN_VALUE_WORDS

    cfg = RetrievalDocConfig(max_tokens=256, min_tokens=64, open_value_share=0.6, random_value_share=0, seed=13)
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)  # v4's mix: these 300 documents hold enough open values
    docs = [gen.document(i) for i in range(300)]
    words, chinese = _corpus_words_and_text()
    values = {"en": [], "zh": []}
    for d in docs:
        if d["kind"] == "open":
            values[d["lang"]] += [v for _, v in d["facts"]]
    en, zh = values["en"], values["zh"]
    assert len(en) > 150 and len(zh) > 25
    lo, hi = OPEN_VALUE_WORDS
    for v in en:
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", v) and lo <= len(v.split()) <= hi and f" {v} " in words, v
        assert " is " not in f" {v} ", v  # the subject/value boundary stays unique
    lo, hi = OPEN_VALUE_CHARS
    for v in zh:
        assert re.fullmatch(r"[\u4e00-\u9fff]+", v) and lo <= len(v) <= hi and v in chinese and "是" not in v, v
    assert len(set(en)) >= 0.6 * len(en) and len(set(zh)) >= 0.8 * len(zh)  # open: most values are new
    assert {len(v.split()) for v in en} >= {1, 2, 3, 4, 5, 6}  # single words and multi-word spans,
    assert sum(len(v.split()) >= 3 for v in en) >= 0.4 * len(en)  # long ones not crowded out by short ones
    assert sum(len(v) >= 4 for v in zh) >= 0.4 * len(zh)


def needle_word_filler(tmp_path: Path) -> FillerText:
    """A filler whose vocabulary holds every needle word (English: beside 60 neutral words; Chinese: the needles'
    characters only), to show that what draws from a vocabulary is kept off them by the generator's check."""
    from megaindex.data import needle_words

    needles = [w for table in needle_words.WORDS["en"].values() for w in table]
    plain = " ".join(f"word{chr(97 + i)}{chr(97 + j)}" for i in range(6) for j in range(10))  # 60 neutral words
    zh_needles = "，".join(w for table in needle_words.WORDS["zh"].values() for w in table)
    poisoned = tmp_path / "filler.jsonl"
    poisoned.write_text(json.dumps({"text": (". ".join(needles) + ". " + plain + ". ") * 2}) + "\n" +
                        json.dumps({"text": zh_needles * 2}, ensure_ascii=False) + "\n", encoding="utf-8")
    return FillerText([poisoned])


def _touches_needle(x: str) -> bool:
    """x (lowercased) holds an entry of the evaluation's needle word lists, or, for 2+ words / CJK, lies inside one."""
    from megaindex.data import needle_words

    needles = [w.lower() for table in needle_words.WORDS.values() for words in table.values() for w in words]
    return any(re.search(rf"(^|\W){re.escape(w)}($|\W)", x) or w in x for w in needles) or \
        any(len(x) >= 2 and x in w and (" " in x or re.search(r"[\u4e00-\u9fff]", x))
            for w in needles if " " in w or re.search(r"[\u4e00-\u9fff]", w))


def test_open_spans_never_hold_a_needle_word(tok, tmp_path):
    """Real text can contain a needle's answer ("fresh ginger", "冰糖"): such spans are never a subject or value."""
    poisoned = tmp_path / "filler.jsonl"
    en = ("We spent the evening painting the river at sunset with fresh ginger tea and roasted garlic bread. "
          "Old boats rest quietly near the grey harbour wall. ")
    zh = "我们去夜市吃烤鱼，又买了冰糖和红枣，然后泡温泉。老船静静地停在灰色的港口墙边。"
    poisoned.write_text(json.dumps({"text": en * 30}) + "\n" + json.dumps({"text": zh * 30}, ensure_ascii=False) + "\n")
    cfg = RetrievalDocConfig(max_tokens=256, min_tokens=128, open_value_share=1.0, random_value_share=0,
                             phrase_value_share=0, word_value_share=0, open_subject_share=1.0, chinese_share=0.4, seed=14)

    def spans(gen):
        docs = [gen.document(i) for i in range(60)]
        return [x.lower().removeprefix("the ") for d in docs for fact in d["facts"] for x in fact if d["kind"] == "open"]

    got = spans(RetrievalDocGenerator(tok, FillerText([poisoned]), cfg))
    assert len(got) > 100 and not [x for x in got if _touches_needle(x)]
    unchecked = RetrievalDocGenerator(tok, FillerText([poisoned]), cfg)
    unchecked._needle_words = {"en": [], "zh": []}  # as without the check: needle words do get drawn
    assert [x for x in spans(unchecked) if _touches_needle(x)]


# v5: random-sequence values (issue #16, after the fourth GPU attempt copied Chinese needles badly).

def test_random_values_are_uniform_draws_from_the_filler_vocabulary(tok, docs, tmp_path):
    from megaindex.data import needle_words
    from megaindex.data import retrieval_words as W
    from megaindex.data.retrieval_subjects import RANDOM_VALUE_CHARS, RANDOM_VALUE_WORDS, open_value, random_value
    from megaindex.data.retrieval_writer import count_mix

    filler = FillerText([CORPUS])
    gen = RetrievalDocGenerator(tok, filler, RetrievalDocConfig(seed=15))
    en, zh = filler.vocabulary("en"), filler.vocabulary("zh")
    assert filler.vocabulary("en") is en and en == sorted(en)  # computed once; sorted, so draws are deterministic
    # The vocabulary as specified, counted here another way: English words of 2-14 letters seen twice (a
    # superset count: [a-z]+ also splits "don't"), no copula; every CJK character of the Chinese filler
    # but 是的了在.
    counts = Counter(re.findall(r"[a-z]+", " ".join(filler.docs["en"]).lower()))
    assert len(en) > 1000 and all(re.fullmatch(r"[a-z]{2,14}", w) and counts[w] >= 2 for w in en)
    assert "the" in en and not set(en) & W.BANNED_WORDS
    cjk = {c for text in filler.docs["zh"] for c in text if "\u4e00" <= c <= "\u9fff"}
    assert set(zh) == cjk - set("是的了在") and len(zh) > 1000

    rng = random.Random(0)
    values = {lang: [random_value(filler, rng, lang, gen._span_ok) for _ in range(400)] for lang in ("en", "zh")}
    for lang, vocab, (lo, hi) in (("en", set(en), RANDOM_VALUE_WORDS), ("zh", set(zh), RANDOM_VALUE_CHARS)):
        items = [v.split() if lang == "en" else list(v) for v in values[lang]]
        assert all(lo <= len(x) <= hi and set(x) <= vocab and len(set(x)) == len(x) for x in items), lang
        assert {len(x) for x in items} == set(range(lo, hi + 1))  # every length
        assert len(set(values[lang])) >= 0.95 * len(values[lang])  # random: hardly a value repeats
        assert not [v for v in values[lang] if _touches_needle(v)]
    # Uniform over distinct characters makes most draws rare ones, which the tokenizer leaves to byte fallback:
    # with the fixture tokenizer 40% of these 400 random values' tokens are bytes (39% over 2,000 draws), 1.7%
    # of these open spans' (the corpus' common characters; the real mini tokenizer: 88% and 6%). The margin
    # (> 30%, < 10%) leaves room for a retrained fixture tokenizer while still telling the two apart 3:1.
    def byte_share(texts):
        ids = [i for t in texts for i in tok.encode(t) if tok.sp.id_to_piece(i) != "\u2581"]
        return sum(tok.sp.is_byte(i) for i in ids) / len(ids)

    spans = [open_value(filler, rng, "zh", gen._span_ok) for _ in range(200)]
    assert byte_share(values["zh"]) > 0.3 and byte_share(spans) < 0.1, (byte_share(values["zh"]), byte_share(spans))

    # In documents (the module's 150): the facts of kind "random" hold such values, keyed and same-form alike.
    random_docs = [d for d in docs if d["kind"] == "random"]
    assert len(random_docs) >= 10 and {d["lang"] for d in random_docs} == {"en", "zh"}
    assert {d["form"] for d in random_docs} == {"keyed", "same_form"}
    for d in random_docs:
        for _, v in d["facts"]:
            assert set(v.split()) <= set(en) if d["lang"] == "en" else set(v) <= set(zh), v
    mix: dict = {}
    for d in docs:
        count_mix(mix, {**d, "tokens": len(tok.encode(d["text"])) + 1})
    assert " random " in describe_mix(mix).split("; kind ")[1].split(";")[0]

    # A filler whose vocabulary holds needle words: they are drawn, and never pass the check.
    small = needle_word_filler(tmp_path)
    for lang in ("en", "zh"):
        checked = [random_value(small, rng, lang, gen._span_ok) for _ in range(300)]
        assert sum(v is not None for v in checked) > 200 and not [v for v in checked if v and _touches_needle(v)]
        assert any(_touches_needle(random_value(small, rng, lang)) for _ in range(2000)), lang  # unchecked: drawn
    with pytest.raises(ValueError, match="random_value_share"):
        RetrievalDocGenerator(tok, filler, RetrievalDocConfig(random_value_share=0.5))  # 0.45 + 0.5 + 0.1 + 0.05 > 1
