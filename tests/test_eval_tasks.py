"""Evaluation tasks on the real tokenizer and held-out corpus (no model): needle insertion (depth,
sentence snapping, exact token lengths), NeedleBench scoring, the passkey prompt, middle truncation,
grid parsing errors, token accuracy, the summary's overall score and token accuracy, and that the
tiny recipes never train on a haystack document."""

from __future__ import annotations

import json
import random

import pytest

from conftest import REPO
from megaindex.eval import EvalError
from megaindex.eval.grid import EvalSpec, parse_depths, parse_lengths, parse_tasks
from megaindex.eval.haystack import Haystack, resolve_haystack
from megaindex.eval.needle import needle_sample
from megaindex.data.needle_words import draw_needle
from megaindex.eval.passkey import GARBAGE, INFO, QUESTION, TASK, PasskeyPrompts
from megaindex.eval.perplexity import bucket_edges, bucket_nll, ppl_sample
from megaindex.eval.run import build_samples, check_lengths
from megaindex.eval.scoring import levenshtein, needlebench_score, token_accuracy
from megaindex.eval.summary import summarize
from megaindex.eval.truncate import middle_truncate

CORPUS = REPO / "tests" / "fixtures" / "corpus"
HELDOUT = CORPUS / "heldout.jsonl"


@pytest.fixture(scope="module")
def hay(tok):
    return Haystack.from_files([HELDOUT], tok)


def _find(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("prompt", ["base", "chat"])
def test_needle_exact_length_depth_and_sentence_snapping(hay, tok, lang, prompt):
    from megaindex.eval.sample import encode_text

    for length in (333, 1000, 2048):
        for depth in (0, 10, 50, 94, 100):
            s = needle_sample(hay, lang=lang, length=length, depth=depth, repeat=1, prompt=prompt)
            assert len(s.prompt_ids) + len(s.answer_ids) == length  # instruction, question and answer included
            needle_text = next(line for line in tok.decode(s.prompt_ids).split("\n") if s.keyword in line)
            needle = encode_text(tok, "\n" + needle_text.strip() + "\n")
            at = _find(s.prompt_ids, needle)
            assert at > 0, "the needle's tokens must appear whole in the prompt"
            # The needle sits right after a sentence end (or at the start of the haystack).
            before = tok.decode(s.prompt_ids[at - 1:at]).rstrip()
            assert depth == 0 and s.actual_depth == 0 or before.endswith(tuple(".?!。？！")), (before, depth)
            # Snapping only moves the needle back (test_snap_back_to_sentence_end: to the nearest end).
            assert s.actual_depth <= depth + 1e-9
            if length == 2048:
                assert depth - s.actual_depth < 10, (depth, s.actual_depth)
            assert tok.decode(s.answer_ids).strip() == s.gold and s.gold.endswith(s.keyword + (".", "。")[lang == "zh"])
            # The prompt ends with the answer prefix, so the gold answer completes the needle sentence.
            assert tok.decode(s.prompt_ids[-60:] + s.answer_ids).endswith(needle_text.strip())


def test_snap_back_to_sentence_end(hay, tok):
    for text, cut_word in (("One two three. Four five six seven eight", "seven"),
                           ("第一句话在这里。第二句话很长很长很长很长", "很长很长")):
        ids = tok.encode(text)
        pos = len(tok.encode(text[:text.index(cut_word)]))
        p = hay.snap_back(ids, pos)
        assert tok.decode(ids[:p]).rstrip().endswith((".", "。")), tok.decode(ids[:p])
        assert p == hay.snap_back(ids, p)  # a sentence end stays where it is
    assert hay.snap_back(tok.encode("no sentence end here at all"), 5) == 0


def test_needles_come_from_word_lists_and_seeds(hay):
    a = [draw_needle("en", random.Random(i)) for i in range(50)]
    assert a == [draw_needle("en", random.Random(i)) for i in range(50)]  # seeded
    assert len({n.text for n in a}) > 40  # fresh combinations, not a fixed list
    for n in a + [draw_needle("zh", random.Random(i)) for i in range(20)]:
        assert n.text == n.answer_prefix + n.answer and n.keyword in n.answer
        assert not any(n.text in d for docs in hay.docs.values() for d in docs)


@pytest.mark.parametrize("pred, score", [
    ("the best thing is cycling along the canal, I think", 100.0),  # keyword hit anywhere
    ("", 0.0),                                                      # empty prediction
])
def test_needlebench_score_cases(pred, score):
    assert needlebench_score(pred, "cycling along the canal.", "cycling along the canal") == score


def test_needlebench_near_miss_is_edit_distance_capped_at_20():
    ref, kw = "cycling along the canal.", "cycling along the canal"
    pred = "cycling alng the canal."  # one deletion
    p, r = "cyclingalngthecanal.", "cyclingalongthecanal."  # whitespace removed before the distance
    assert levenshtein(p, r) == 1
    assert needlebench_score(pred, ref, kw) == pytest.approx(20 * (1 - 1 / len(r)))
    assert 0 < needlebench_score("swimming in the sea.", ref, kw) < 20 * 0.5
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3


def test_passkey_prompt_is_the_landmark_prompt(tok):
    pk = PasskeyPrompts(tok)
    for length, depth in ((300, 0), (777, 40), (2000, 100)):
        s = pk.sample(length=length, depth=depth, repeat=2)
        assert len(s.prompt_ids) + len(s.answer_ids) == length
        key = s.gold
        assert len(key) == 5 and key.isdigit() and tok.decode(s.answer_ids).strip() == key
        lines = tok.decode(s.prompt_ids).split("\n")
        assert len(lines) == 5
        assert lines[0] == TASK and lines[2] == INFO.format(k=key) and lines[4] == QUESTION
        garbage = " ".join([GARBAGE] * 200)
        assert garbage.startswith(lines[1]) and garbage.startswith(lines[3])
        if depth == 0:
            assert lines[1] == ""
    keys = {pk.sample(length=300, depth=50, repeat=r).gold for r in range(20)}
    assert len(keys) > 15


def test_middle_truncation():
    ids = list(range(10))
    assert middle_truncate(ids, 8, 2) == [0, 1, 2, 7, 8, 9]          # budget 6: first 3 + last 3
    assert middle_truncate(ids, 9, 2) == [0, 1, 2, 7, 8, 9]          # odd budget 7: halves of 3 (OpenCompass' int(b/2))
    assert middle_truncate(ids, 12, 2) == ids                         # fits: unchanged
    with pytest.raises(EvalError, match="budget"):
        middle_truncate(ids, 3, 2)


def test_bad_grid_input_is_one_clear_error():
    assert parse_depths("0:100:11") == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert parse_depths("0,10,21,31") == [0, 10, 21, 31]
    assert parse_lengths("1k,2k,9000") == [1024, 2048, 9000]
    for bad in ("0:100", "a:b:3", "0:120:3", "0:100:0", "10,x"):
        with pytest.raises(EvalError, match="--depths"):
            parse_depths(bad)
    with pytest.raises(EvalError, match="unknown task 'needel'"):
        parse_tasks("needle,needel")
    with pytest.raises(EvalError, match="--lengths"):
        parse_lengths("4q")
    with pytest.raises(EvalError, match="--prompt"):
        EvalSpec(tasks=["needle"], lengths=[512], prompt="instruct", variants=["x"])


def test_length_above_what_the_model_holds(tok, hay):
    from megaindex.model.rope_variants import parse_rope

    spec = EvalSpec(tasks=["needle", "passkey"], lengths=[256, 600], depths=[50], variants=[parse_rope("naive")])
    samples = build_samples(spec, tok, hay)
    with pytest.raises(EvalError, match=r"length 600 .* above what the model holds: trained at 256 tokens.*dynamic:3.*--truncate middle"):
        check_lengths(spec, samples, train_length=256)
    spec.variants = [parse_rope("naive"), parse_rope("dynamic:4")]  # a variant that holds it: naive extrapolates
    check_lengths(spec, samples, train_length=256)
    spec.variants, spec.truncate = [parse_rope("naive")], "middle"
    check_lengths(spec, samples, train_length=256)
    spec.truncate, spec.extrapolate = None, True  # naive alone past the training length, asked for explicitly
    check_lengths(spec, samples, train_length=256)


def test_ppl_samples_and_buckets(hay):
    import torch

    s = ppl_sample(hay, lang="en", length=4096, repeat=0)
    assert len(s.prompt_ids) == 4096 and not s.concatenated
    assert any(d[:4096] == s.prompt_ids for d in hay._doc_ids("en"))  # a document's beginning
    for r in range(4):  # every length of a repeat reads a prefix of the same document
        long = ppl_sample(hay, lang="zh", length=20000, repeat=r, pick_length=20000)
        short = ppl_sample(hay, lang="zh", length=1000, repeat=r, pick_length=20000)
        assert short.prompt_ids == long.prompt_ids[:1000]
    assert ppl_sample(hay, lang="en", length=16000, repeat=0).concatenated  # no 16K-token English document
    nll = torch.arange(1, 16, dtype=torch.float32)  # 16 tokens -> 15 predictions (positions 1..15)
    b = bucket_nll(nll, bucket_edges(16, 4))
    assert [x[:2] for x in b] == [[0, 4], [4, 8], [8, 12], [12, 16]]
    assert [x[3] for x in b] == [3, 4, 4, 4] and sum(x[2] for x in b) == float(nll.sum())


def test_summary_overall_is_mean_over_lengths_of_depth_means():
    rows = [{"task": "needle", "variant": "naive", "lang": "en", "length": L, "depth": d, "score": s}
            for L, d, s in ((512, 0, 100), (512, 0, 50), (512, 100, 100), (1024, 0, 0), (1024, 100, 20))]
    s = summarize(rows)["needle"]["naive"]
    assert s["grid"]["512"] == {"0": 75.0, "100": 100.0}
    assert s["by_length"] == {"512": 87.5, "1024": 10.0}
    assert s["overall"] == pytest.approx((87.5 + 10.0) / 2)


def test_token_accuracy_is_the_share_of_answer_tokens_right(tok):
    assert token_accuracy([5, 0, 7, 0], [5, 6, 7, 8]) == 0.5
    assert token_accuracy([1, 2, 3], [1, 2, 3]) == 1.0 and token_accuracy([], [1, 2]) == 0.0
    # The replication's failure: a passkey whose first answer token is wrong and the rest copied.
    gold = PasskeyPrompts(tok).sample(length=512, depth=50, repeat=0).answer_ids
    n = len(gold)
    assert n >= 2
    wrong_first = [gold[0] + 1] + gold[1:]
    assert token_accuracy(wrong_first, gold) == pytest.approx((n - 1) / n) and wrong_first != gold
    with pytest.raises(ValueError):
        token_accuracy([1], [])


def test_summary_token_accuracy_by_length():
    rows = [{"task": t, "variant": "naive", "lang": "en", "length": L, "depth": d, "score": 0.0, "exact": a == 1.0,
             "token_accuracy": a}
            for t in ("needle", "passkey")
            for L, d, a in ((512, 0, 0.8), (512, 100, 0.4), (1024, 0, 0.0), (1024, 100, 1.0))]
    s = summarize(rows)
    for task in ("needle", "passkey"):
        assert s[task]["naive"]["token_accuracy_by_length"] == {"512": 0.6, "1024": 0.5}
        assert s[task]["naive"]["token_accuracy"] == pytest.approx(0.55)
    assert s["passkey"]["naive"]["accuracy_by_length"] == {"512": 0.0, "1024": 0.5}
    old = [{k: v for k, v in r.items() if k != "token_accuracy"} for r in rows]  # results.jsonl from before it
    assert "token_accuracy" not in summarize(old)["passkey"]["naive"]


def test_tiny_recipes_never_train_on_haystack_documents(tok):
    from megaindex.config import load_config

    heldout = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    assert {d["lang"] for d in heldout} == {"en", "zh"}
    rng = random.Random(0)
    for recipe in ("tiny_long_pt.yaml", "tiny_long_sft.yaml"):
        cfg = load_config(REPO / "examples" / recipe)
        files = resolve_haystack(None, cfg)
        assert [f.resolve() for f in files] == [HELDOUT.resolve()]  # found beside the recipe's data
        trained = [REPO / p.split()[-1] for p in cfg.data.data_path + cfg.data.valid_data_path]
        assert HELDOUT.resolve() not in {p.resolve() for p in trained}
        text = "".join(p.read_text() for p in trained)  # documents as stored: JSON-escaped strings
        for d in heldout:
            assert json.dumps(d["text"][:2000], ensure_ascii=False)[1:-1] not in text
            for _ in range(30):  # no 80-character window of a held-out document is in training data
                i = rng.randrange(len(d["text"]) - 80)
                window = json.dumps(d["text"][i:i + 80], ensure_ascii=False)[1:-1]
                assert window not in text, (d["source"], window)
        with pytest.raises(EvalError, match="training data"):
            resolve_haystack(str(trained[0]), cfg)


def test_full_corpus_heldout_rule_is_a_stable_two_percent():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_corpus", REPO / "tools" / "prepare_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = [f"linux-doc-6.1:book{i}" for i in range(5000)]
    held = [n for n in names if mod.held_out(n)]
    assert 0.015 < len(held) / len(names) < 0.025  # a fixed ~2%, by name alone
    assert held == [n for n in reversed(names) if mod.held_out(n)][::-1]  # order-independent
    # The fixture's held-out documents are ones its --small selection never takes.
    fixture_sources = {json.loads(line)["source"] for line in (CORPUS / "pretrain.jsonl").read_text().splitlines()}
    heldout_sources = {json.loads(line)["source"] for line in HELDOUT.read_text().splitlines()}
    assert heldout_sources == {f"python3.11-doc:{n}" for n in mod.HELDOUT_SMALL["en"]} | {
        f"linux-doc-6.1:zh_CN/{n}" for n in mod.HELDOUT_SMALL["zh"]}
    assert not heldout_sources & fixture_sources
