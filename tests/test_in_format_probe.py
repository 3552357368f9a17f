"""examples/mini_replication/in_format_probe.py: the in-format retrieval probe of issue #16.

A tiny random-init stock Llama (saved to tmp_path, loaded back by the probe with AutoModelForCausalLM)
and the real fixture tokenizer and corpus: the probe runs end to end and its counts add up; every
question's prompt is the document's own tokens through "is" / "是" and its gold answer is the fact's
value; the greedy decode from the whole document's cut KV cache equals greedy decoding by plain forwards.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "mini_replication"))

import in_format_probe as P  # noqa: E402
from megaindex.data.retrieval_docs import FillerText, RetrievalDocGenerator  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402

TOKENIZER = REPO / "tests/fixtures/tokenizer.model"
CORPUS = REPO / "tests/fixtures/corpus/pretrain.jsonl"


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = IndexTokenizer(TOKENIZER)
    torch.manual_seed(0)
    # initializer_range 0.3: large weights, so the argmax depends on the context, not only on the last token
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, initializer_range=0.3)
    out = tmp_path_factory.mktemp("tiny_hf")
    LlamaForCausalLM(cfg).save_pretrained(out)
    shutil.copy(TOKENIZER, out / "tokenizer.model")
    return out


def test_probe_runs_and_counts_add_up(tiny_hf, tmp_path):
    out = tmp_path / "probe"
    assert P.main([str(tiny_hf), "--filler", str(CORPUS), "--lengths", "256", "--docs", "3", "--data", "v8",
                   "--threads", str(torch.get_num_threads()), "--out", str(out)]) == 0
    result = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    tok, filler = IndexTokenizer(TOKENIZER), FillerText([CORPUS])
    for L in ("256",):
        docs = [RetrievalDocGenerator(tok, filler, P.probe_config(int(L), data="v8")).document(i) for i in range(3)]
        # v8: each question's subject kind is its own fact's (documents list them per fact)
        assert [r["subject"] for r in result["records"][L]] == \
            [d["subject_kinds"][q["fact"]] for d in docs for q in P.questions(d, tok, tok.encode(d["text"]))]
        assert "random" in result["by_length"][L]["subject"], result["by_length"][L]["subject"]
        records, part = result["records"][L], result["by_length"][L]
        assert len(records) == part["all"]["questions"] == sum(len(d["facts"]) for d in docs)
        assert sorted(r["value"] for r in records) == sorted(v for d in docs for _, v in d["facts"])
        for key in P.BREAKDOWNS:  # every breakdown partitions the questions
            assert sum(g["questions"] for g in part[key].values()) == len(records), key
            assert sum(g["exact"] for g in part[key].values()) == part["all"]["exact"], key
        a = part["all"]
        assert a["exact"] == sum(r["exact"] for r in records) and a["misses"] == len(records) - a["exact"]
        assert a["misses_first_only"] <= a["misses_first_wrong"] <= a["misses"]
        assert a["misses_other_fact"] + a["misses_overrun"] <= a["misses"]
        for r in records:
            assert 0 <= r["token_accuracy"] <= 1 and r["prompt_tokens"] + r["answer_tokens"] <= int(L)
            assert not r["exact"] or (r["first"] and r["token_accuracy"] == 1.0)
    md = Path(f"{out}.md").read_text(encoding="utf-8")
    assert "| value kind | 256 n |" in md and "| subject | 256 n |" in md and f"| all | {result['by_length']['256']['all']['questions']} |" in md
    assert Path(f"{out}.png").stat().st_size > 10_000
    ev = P.evaluation_rows(REPO / "benchmarks/replication_gate5/results_base_0.jsonl.gz")["groups"]
    assert ev["passkey all"]["1024"] == {"questions": 33, "exact_pct": 90.9, "token_accuracy_pct": 98.0}  # recorded
    assert ev["needle all"]["2048"]["questions"] == sum(ev[f"needle {g}"]["2048"]["questions"] for g in ("en", "zh"))
    with pytest.raises(P.ProbeError, match="evaluation's haystack"):
        P.run(tiny_hf, CORPUS.with_name("heldout.jsonl"), TOKENIZER, [256], 1)
    with pytest.raises(P.ProbeError, match="max_position_embeddings 512"):
        P.run(tiny_hf, CORPUS, TOKENIZER, [1024], 1)


def test_prompt_is_the_documents_own_and_gold_is_the_value():
    """A prompt cut one character early or late, or an answer located in the wrong question, fails here."""
    tok = IndexTokenizer(TOKENIZER)
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), P.probe_config(384, seed=5, data="v7"))
    seen = set()
    for i in range(30):
        doc = gen.document(i)
        ids = tok.encode(doc["text"])
        qs = P.questions(doc, tok, ids)
        assert sorted(q["value"] for q in qs) == sorted(v for _, v in doc["facts"])
        for q in qs:
            seq = ids if q["seq"] is None else q["seq"]
            prompt, gold = tok.decode(seq[:q["k"]]), tok.decode(seq[q["k"]:q["m"]])
            stop = "。" if doc["lang"] == "zh" else "."
            if not q["merged"]:
                assert gold.strip() == q["value"] + stop, (doc["source"], gold, q["value"])
                assert prompt.lower().endswith(q["subject"].lower() + ("是" if doc["lang"] == "zh" else " is"))
            else:  # a prompt piece merged into the answer: the value still ends the gold
                assert gold.strip().endswith(q["value"] + stop)
            assert q["seq"] is not None or seq[:q["k"]] == tok.encode(doc["text"])[:q["k"]]
            assert 0 < q["distance"] < len(ids)
            seen.add((doc["lang"], P.doc_kind(doc), doc["frame"] is not None))
    assert {("en", "multi-key", True), ("en", "same-form", True), ("zh", "multi-key", True), ("en", "multi-key", False)}\
        <= seen, seen  # v7: framed documents (answers after varied cues) and plain ones


def test_a_character_whose_lowercase_is_longer_does_not_shift_the_prompt():
    """"İ".lower() is two characters (the training corpus has it): positions found in the lowercased text
    must still be the document's own, or every prompt after it is cut one character off."""
    tok = IndexTokenizer(TOKENIZER)
    doc = RetrievalDocGenerator(tok, FillerText([CORPUS]), P.probe_config(384, seed=5)).document(0)
    shifted = {**doc, "text": "İstanbul, İzmir. " + doc["text"]}

    def cut(d):
        ids = tok.encode(d["text"])
        return [(q["merged"], tok.decode(ids[q["k"] - 3:q["k"]]), tok.decode(ids[q["k"]:q["m"]]))
                for q in P.questions(d, tok, ids)]

    assert cut(shifted) == cut(doc)


def test_greedy_from_cut_cache_equals_plain_greedy(tiny_hf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    probe = P.Probe(model, IndexTokenizer(TOKENIZER))
    ids = torch.randint(5, model.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(1)).tolist()[0]
    with torch.inference_mode():
        whole = model.model(input_ids=torch.tensor([ids]), use_cache=True)
        for k in (37, 150):
            first = probe._argmax(whole.last_hidden_state, [k - 1])[0]
            got = probe._greedy(probe.cache_of(whole), first, k, 6)
            ref = list(ids[:k])
            for _ in range(6):  # the reference: a full forward per token, no cache
                ref.append(int(model(input_ids=torch.tensor([ref])).logits[0, -1].argmax()))
            assert got == ref[k:], k


def test_filler_perplexity_is_the_models_own_loss(tiny_hf):
    """filler_perplexity.py: the first 1024 / 2048 tokens' perplexity equals exp(the HF model's own mean
    loss) on that prefix, pooled over documents by token; documents are the language's, >= 2048 tokens."""
    import math

    from transformers import AutoModelForCausalLM

    import filler_perplexity as F
    from megaindex.eval.hf_engine import HFEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(5, model.config.vocab_size, (2048,), generator=g).tolist() for _ in range(2)]
    got = F.perplexity(HFEngine.from_hf_dir(tiny_hf, dtype=torch.float32, max_length=2048), docs)
    with torch.inference_mode():
        for L in (1024, 2048):
            loss = [float(model(input_ids=torch.tensor([d[:L]]), labels=torch.tensor([d[:L]])).loss) for d in docs]
            assert got[str(L)] == pytest.approx(math.exp(sum(loss) / 2), rel=1e-3), L  # fp32 sums of 2K terms
    tok = IndexTokenizer(TOKENIZER)
    assert [len(ids) for ids in F.long_documents(CORPUS, tok, "en", 2)] == [2048, 2048]
    assert F.long_documents(CORPUS, tok, "en", 1, sources={"no-such-source"}) == []


def test_the_probe_feeds_the_cache_under_the_name_the_model_takes(tiny_hf):
    """transformers 5.24 calls the forward's KV cache `cache`, earlier releases `past_key_values`: the probe asks
    the model's signature (the GPU node may carry another transformers), and reads the output's either way."""
    import inspect

    model, tok = P.load_model(tiny_hf)
    probe = P.Probe(model, tok)
    assert probe.cache_arg in inspect.signature(model.forward).parameters
    out = model.model(input_ids=probe._ids([5, 6, 7]), use_cache=True)
    assert probe.cache_of(out).get_seq_length() == 3


def test_v9_records_tell_frequency_draws_from_uniform_ones():
    """--data v9: a random value / owner drawn by frequency is grouped as "random-frequency", a uniform one as
    "random", per fact (documents list both per fact)."""
    tok = IndexTokenizer(TOKENIZER)
    gen = RetrievalDocGenerator(tok, FillerText([CORPUS]), P.probe_config(384, seed=6, data="v9"))
    docs = [gen.document(i) for i in range(60)]
    values = [P.value_kind(d, f) for d in docs for f in range(len(d["facts"]))]
    owners = [P.subject_kind(d, f) for d in docs for f in range(len(d["facts"]))]
    assert [v == "random-frequency" for v in values] == [x for d in docs for x in d["frequent_values"]]
    assert [o == "random-frequency" for o in owners] == [x for d in docs for x in d["frequent_owners"]]
    assert {"random", "random-frequency"} <= set(values) and {"random", "random-frequency", "closed"} <= set(owners)
    # v9's second part: prepositional keys and Chinese values with particles are breakdowns of their own
    frames = [P.key_frame(d, f) for d in docs for f in range(len(d["facts"]))]
    assert [f == "prepositional" for f in frames] == [x for d in docs for x in d["prepositional_subjects"]]
    assert "prepositional" in frames and {"key_frame", "zh_value"} <= set(P.BREAKDOWNS)
    zh = {P.zh_value(d, f) for d in docs for f in range(len(d["facts"]))}
    assert "en" in zh and zh & {"holds 在的了", "starts 在"}
    assert P.zh_value({"lang": "zh", "facts": [["s", "在老街"]]}, 0) == "starts 在"


def test_a_value_starting_with_zai_is_scored_from_the_merged_piece():
    """v9 (zh_value_particles): a Chinese value may start with 在, and "是在" is one piece of the tokenizer; the
    question's prompt then stops before "是" and the gold answer starts with the merged piece, as the evaluation's
    split_answer does, so the probe scores the piece the model must produce."""
    tok = IndexTokenizer(TOKENIZER)
    assert [tok.sp.id_to_piece(i) for i in tok.encode("他是在北京")][2] == "是在"
    doc = {"text": "备忘录。\n\n天气很好。林晓明的备注是在老街买东西。我们到了。\n\n问题：林晓明的备注是什么？\n回答："
                   "林晓明的备注是在老街买东西。\n", "facts": [["林晓明的备注", "在老街买东西"]], "lang": "zh", "source": "t/0"}
    ids = tok.encode(doc["text"])
    (q,) = P.questions(doc, tok, ids)
    gold = (q["seq"] or ids)[q["k"]:q["m"]]
    assert q["merged"] and tok.sp.id_to_piece(gold[0]) == "是在" and tok.decode(gold) == "是在老街买东西。"
