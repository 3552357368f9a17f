"""The needle-form probe's sample changes (examples/mini_replication/needle_form_probe.py) and the unseen-filler
builder's document cutting (fresh_filler.py), on the fixture's held-out text and the real tokenizer; no model."""

import json
import random
from pathlib import Path

import pytest

from examples.mini_replication import fresh_filler
from examples.mini_replication.needle_form_probe import respaced, samples
from megaindex.data.needle_words import draw_needle
from megaindex.data.tokenizer import IndexTokenizer
from megaindex.eval.haystack import Haystack, load_documents
from megaindex.eval.needle import needle_sample
from megaindex.eval.sample import encode_text

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def hays():
    tok = IndexTokenizer(str(FIX / "tokenizer.model"))
    docs = load_documents([FIX / "corpus" / "heldout.jsonl"])
    return {"held": Haystack(docs, tok), "clean": Haystack(respaced(docs), tok)}


def _needle(lang, length, depth, repeat):
    return draw_needle(lang, random.Random(f"needle-{lang}-{length}-{depth}-{repeat}"))


def test_eval_form_is_the_evaluation_sample_and_the_others_change_one_part(hays):
    tok, L = hays["held"].tok, 512
    forms = {f: samples(f, hays, [L], 1) for f in ("eval", "inline", "clean_hay", "train_qa")}
    for f, ss in forms.items():
        assert len(ss) == 11 * len(hays["held"].langs), f
    for i, s in enumerate(forms["eval"]):
        ref = needle_sample(hays["held"], lang=s.lang, length=L, depth=s.depth, repeat=0)
        assert s.prompt_ids == ref.prompt_ids and s.answer_ids == ref.answer_ids
        needle = _needle(s.lang, L, s.depth, 0)
        text = tok.decode(list(s.prompt_ids))
        # inline: the needle's own lines go, everything else stays
        inl = forms["inline"][i]
        itext = tok.decode(list(inl.prompt_ids))
        assert f"\n{needle.text}\n" in text and f"\n{needle.text}\n" not in itext and needle.text in itext
        assert inl.answer_ids == s.answer_ids and len(s.prompt_ids) - len(inl.prompt_ids) in (0, 1, 2)
        # train_qa: no instruction lines, the question in Q/A form, the same gold value
        qa = forms["train_qa"][i]
        qtext = tok.decode(list(qa.prompt_ids))
        full = tok.decode(list(qa.prompt_ids) + list(qa.answer_ids)).replace(" ", "")
        marker = "Q: " if s.lang == "en" else "问："
        assert full.endswith((needle.answer_prefix + needle.answer).replace(" ", "")) and marker + needle.question in qtext
        assert "Question:" not in qtext and "问题：" not in qtext and needle.text in qtext
        assert needle.answer.strip().rstrip(".。") in qa.gold
        # clean_hay: the same needle and question, re-spaced haystack text
        assert forms["clean_hay"][i].answer_ids == s.answer_ids


def test_respaced_joins_sentences_as_the_retrieval_filler_does():
    out = respaced({"en": ["One. Two!\n\nThree\nfour.  Five"], "zh": ["一。\n\n二！三"]})
    assert out == {"en": ["One. Two! Three\nfour. Five"], "zh": ["一。\n\n二！三"]}


def test_fresh_filler_cuts_chinese_books_and_keeps_git_texts(tmp_path):
    import gzip

    share = tmp_path / "usr/share/doc"
    (share / "git-doc").mkdir(parents=True)
    english = json.loads((FIX / "corpus" / "heldout.jsonl").read_text().splitlines()[0])["text"]
    (share / "git-doc" / "git-foo.txt").write_text(english)
    (share / "git-doc" / "short.txt").write_text("too short")
    zh = "\n\n".join(f"第{i}段：这是一个关于软件包维护的中文段落，说明如何构建和上传。" * 8 for i in range(40))
    for rel in ("debian/FAQ/debian-faq.zh-cn.txt.gz", "maint-guide-zh-cn/maint-guide.zh-cn.txt.gz"):
        (share / rel).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(share / rel, "wt", encoding="utf-8") as f:
            f.write(zh)
    docs = list(fresh_filler.documents(tmp_path))
    assert [d["source"] for d in docs if d["lang"] == "en"] == ["git-doc:git-foo"]
    zh_docs = [d for d in docs if d["lang"] == "zh"]
    for book in ("debian-faq-zh-cn", "maint-guide-zh-cn"):
        chunks = [d["text"] for d in zh_docs if d["source"].startswith(book + ":")]
        assert len(chunks) > 1 and all(len(c) >= fresh_filler.CHUNK_CHARS for c in chunks[:-1]), book
    assert "".join(d["text"].replace("\n", "") for d in zh_docs if d["source"].startswith("debian-faq")) == zh.replace("\n", "")


def test_fresh_filler_refuses_a_corpus_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(fresh_filler.PACKAGES, "perl-doc", "en")
    assert fresh_filler.main([str(tmp_path)]) == 2
    assert "perl-doc" in capsys.readouterr().err


def test_fresh_filler_says_in_one_line_why_apt_failed(monkeypatch, tmp_path, capsys):
    """apt-get's own message, not a CalledProcessError traceback with its output swallowed."""
    import subprocess

    def apt(cmd, **kw):
        raise subprocess.CalledProcessError(100, cmd, "", "Reading package lists...\nE: Unable to locate package git-doc\n")

    monkeypatch.setattr(fresh_filler.subprocess, "run", apt)
    assert fresh_filler.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `apt-get download git-doc debian-faq-zh-cn maint-guide-zh-cn` failed: "
                          "E: Unable to locate package git-doc (") and err.count("\n") == 1
    assert not (tmp_path / ".unpacked").exists()


def test_entered_midway_starts_each_document_after_a_sentence_end_in_its_first_80_percent():
    from examples.mini_replication.needle_form_probe import entered_midway

    docs = load_documents([FIX / "corpus" / "heldout.jsonl"])
    out = entered_midway(docs)
    assert out == entered_midway(docs) and out != docs
    for lang, texts in docs.items():
        for d, m in zip(texts, out[lang]):
            assert d.endswith(m) and len(m) > 0.2 * len(d) - 200
            if m != d:
                before = d[:len(d) - len(m)].rstrip()
                assert before.endswith((".", "?", "!", "。", "？", "！")), before[-20:]


@pytest.mark.parametrize("form", ["train_fact", "train_random", "train_frequent", "train_open"])
def test_train_forms_put_a_generator_fact_in_the_evaluation_frame(hays, form):
    from examples.mini_replication.needle_form_probe import TRAIN_FACT, training_needle
    from megaindex.data.retrieval_filler import FillerText

    tok, L = hays["held"].tok, 512
    filler = FillerText([FIX / "corpus" / "pretrain.jsonl"])
    evals, facts = samples("eval", hays, [L], 1), samples(form, hays, [L], 1, filler)
    for e, f in zip(evals, facts):
        rng = random.Random(f"{form.replace('_', '-')}-{f.lang}-{L}-{f.depth}-0")
        own = training_needle(f.lang, rng, TRAIN_FACT[form], filler)
        text = tok.decode(list(f.prompt_ids))
        question = ("Question: " if f.lang == "en" else "问题：") + own.question
        assert f"\n{own.text}\n" in text and question in text and len(f.prompt_ids) + len(f.answer_ids) == L
        assert own.keyword in f.gold and f.gold != e.gold
        # the evaluation's own needle is gone; its instruction lines stay
        assert _needle(e.lang, L, e.depth, 0).text not in text
        assert tok.decode(list(f.prompt_ids[:8])) == tok.decode(list(e.prompt_ids[:8]))


def test_swap_forms_change_only_the_subject_or_only_the_value(hays):
    from megaindex.data.retrieval_filler import FillerText

    tok, L = hays["held"].tok, 512
    filler = FillerText([FIX / "corpus" / "pretrain.jsonl"])
    evals = samples("eval", hays, [L], 1)
    values, subjects = samples("swap_value", hays, [L], 1, filler), samples("swap_subject", hays, [L], 1, filler)
    for e, v, s in zip(evals, values, subjects):
        ref = _needle(e.lang, L, e.depth, 0)
        vtext, stext = tok.decode(list(v.prompt_ids)), tok.decode(list(s.prompt_ids))
        assert ref.question in vtext and ref.keyword not in v.gold and ref.answer_prefix in vtext
        assert ref.question not in stext and ref.keyword.replace(" ", "") in s.gold.replace(" ", "")


def test_every_form_but_eval_changes_the_samples(hays):
    """A form that silently falls back to the evaluation's samples would report the evaluation's numbers."""
    from examples.mini_replication.needle_form_probe import FORMS
    from megaindex.data.retrieval_filler import FillerText

    filler = FillerText([FIX / "corpus" / "pretrain.jsonl"])
    hays = {**hays, "fresh": hays["held"], "mid": hays["held"]}  # stand-ins: the haystack forms differ by their text
    base = [list(s.prompt_ids) for s in samples("eval", hays, [512], 1)]
    for form in FORMS:
        if form == "eval" or form.startswith(("fresh", "mid", "clean_hay")):
            continue
        got = [list(s.prompt_ids) for s in samples(form, hays, [512], 1, filler)]
        assert all(g != b for g, b in zip(got, base)), form


def test_needle_form_errors_splits_answers_by_function_words_and_finds_the_first_wrong_word():
    from examples.mini_replication.needle_form_errors import analyse

    row = lambda lang, gold, pred: {"form": "eval", "task": "needle", "lang": lang, "gold": gold,  # noqa: E731
                                    "prediction": pred, "exact": gold == pred}
    rows = [row("en", "watching the puppet theatre.", "watching the serverbet theatre."),  # wrong after "the"
            row("en", "rowing on the harbour.", "rowing on the harbour."),
            row("en", "black cardamom.", "6ack cardamom."),                                  # wrong first word
            row("en", "star anise powder.", "star anise powder."),
            row("zh", "是在老街买剪纸。", "是老街买剪纸。"),                                     # 在 dropped: after 是
            row("zh", "花椒。", "花洒。")]                                                    # after a content character
    got = analyse(rows)["eval"]
    assert got["en"]["after_function"] == {"n": 2, "exact": 50.0} and got["en"]["no_function"] == {"n": 2, "exact": 50.0}
    assert (got["en"]["misses"], got["en"]["first_wrong_first"], got["en"]["first_wrong_after_function"]) == (2, 1, 1)
    assert got["zh"]["after_function"]["n"] == 1 and got["zh"]["first_wrong_after_function"] == 1
    assert got["zh"]["first_wrong_after_content"] == 1
