"""Synthetic retrieval documents: deterministic, whole, correct, and free of evaluation phrasings."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megaindex.data.retrieval_docs import (
    HELD_OUT_PHRASES, FillerText, HeldOutPhraseError, RetrievalDocConfig, RetrievalDocGenerator, check_held_out,
    write_documents,
)
from megaindex.data.tokenizer import IndexTokenizer

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests/fixtures/tokenizer.model"
CORPUS = REPO / "tests/fixtures/corpus/pretrain.jsonl"


@pytest.fixture(scope="module")
def tok():
    return IndexTokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def docs(tok):
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=512, min_tokens=64, seed=3))
    return [gen.document(i) for i in range(150)]


def eval_phrases() -> list[str]:
    """The evaluation's own prompts where the eval package is present: the passkey question and
    the fixed words of every needle template (drawn needles minus their drawn words)."""
    out = list(HELD_OUT_PHRASES)
    try:
        from megaindex.eval import needle_words
    except ImportError:
        return out
    rng = random.Random(0)
    for _ in range(200):
        for lang in needle_words.WORDS:
            n = needle_words.draw_needle(lang, rng)
            out += [n.question, n.answer_prefix, n.text]
    return out


def test_lengths_whole_and_within_max(docs, tok):
    for d in docs:
        n = len(tok.encode(d["text"])) + 1  # + EOD
        assert n <= 512, (n, d["source"])
    lengths = [len(tok.encode(d["text"])) for d in docs]
    assert min(lengths) < 200 and max(lengths) > 350  # log-uniform targets: short and long documents


def test_answers_match_the_stated_facts(docs):
    single = multi = 0
    for d in docs:
        body, _, tail = d["text"].rpartition("\n\n")
        facts = d["facts"]
        single += len(facts) == 1
        multi += len(facts) > 1
        assert len({v for _, v in facts}) == len(facts)  # one value per fact in a document
        for subject, value in facts:
            said = re.escape(subject[1:]) + r" is " + re.escape(value) + r"\."
            assert re.search(said, body), (subject, value, d["text"])   # stated in the text
            assert re.search(said, tail), (subject, value, tail)        # and answered at the end
            assert subject[1:] in tail.split("\n")[0] or any(subject[1:] in line for line in tail.split("\n"))
        asked = sum(line.count("?") + line.startswith("Recall") + line.startswith("From the text above")
                    for line in tail.split("\n") if not line.startswith(("A:", "Answer:")))
        assert asked == len(facts)  # dense: every fact is asked for
    assert single > 10 and multi > 60


def test_deterministic_per_index(tok):
    cfg = RetrievalDocConfig(max_tokens=400, min_tokens=64, seed=5)
    a = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    b = RetrievalDocGenerator(tok, FillerText([CORPUS]), cfg)
    assert [a.document(i) for i in (0, 7, 3)] == [b.document(i) for i in (0, 7, 3)]
    other = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=400, min_tokens=64, seed=6))
    assert a.document(0)["text"] != other.document(0)["text"]


def test_held_out_phrasings_never_appear(docs, tmp_path, tok):
    phrases = [p.lower() for p in eval_phrases()]
    for d in docs:
        low = d["text"].lower()
        for p in phrases:
            assert p not in low, (p, d["source"])
    # Filler text that contains an evaluation phrase is dropped, never copied into a document.
    poisoned = tmp_path / "filler.jsonl"
    sent = "The pass key is 71234. Remember it. The best thing to do in Lisbon is rowing on the harbour at dawn. "
    clean = "Rivers carry silt to the sea and the delta grows each year. "
    poisoned.write_text(json.dumps({"text": (sent + clean * 3) * 40}) + "\n")
    gen = RetrievalDocGenerator(tok, FillerText([poisoned]), RetrievalDocConfig(max_tokens=300, min_tokens=200, max_facts=2, seed=1))
    for i in range(20):
        text = gen.document(i)["text"]
        assert "Rivers carry silt" in text
        check_held_out(text)
    with pytest.raises(HeldOutPhraseError, match="pass key"):
        check_held_out("What is the pass key?")


def test_write_documents_and_tool(tmp_path, tok):
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=256, min_tokens=64, seed=2))
    docs, tokens = write_documents(tmp_path / "a.jsonl", gen, tokens=3000)
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(lines) == docs and sum(x["tokens"] for x in lines) == tokens >= 3000
    assert tokens - lines[-1]["tokens"] < 3000  # stops as soon as the target is reached
    # The command line writes the same documents.
    out = tmp_path / "b.jsonl"
    r = subprocess.run([sys.executable, "tools/make_retrieval_docs.py", "--filler", str(CORPUS), "--tokenizer",
                        str(TOKENIZER), "--tokens", "3000", "--max-tokens", "256", "--min-tokens", "64", "--seed", "2",
                        "-o", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (tmp_path / "a.jsonl").read_text()
    r = subprocess.run([sys.executable, "tools/make_retrieval_docs.py", "--filler", str(tmp_path / "none.jsonl"),
                        "--tokenizer", str(TOKENIZER), "--count", "1", "-o", str(out)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "none.jsonl" in r.stderr and r.stderr.count("\n") == 1
