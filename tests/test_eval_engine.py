"""Evaluation engines and RoPE variants (CPU, fp32): megatron vs transformers, forced vs greedy.

One tiny random Index-shaped checkpoint (2 layers, Norm-Head) "trained" at 64 tokens; sequences
go up to 150 tokens, so every variant is exercised beyond the training length. fp32 on both sides:
the remaining differences are summation order (~1e-6), so 1e-4 is the tolerance, as in the
converter's parity check.
"""

from __future__ import annotations

import pytest
import torch

from megaindex.eval import EvalError
from megaindex.eval.grid import parse_variants
from megaindex.model.rope_variants import RopeVariant, RopeVariantError, hf_rope_parameters, inv_freq, parse_rope

TRAIN_LENGTH = 64
VARIANTS = ["naive", "linear:4", "dynamic:4", "yarn:4"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, single_process_megatron):
    from megaindex.checkpoint import save_model
    from megaindex.config_load import load_config
    from megaindex.model.build import build_model_chunks

    cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2", "train.precision=fp32",
                             f"data.seq_length={TRAIN_LENGTH}", f"data.global_batch_tokens={TRAIN_LENGTH}",
                             "train.seed=7", "data.tokenizer_model=tests/fixtures/tokenizer.model"])
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("eval") / "ckpt"
    save_model(build_model_chunks(cfg), path, cfg)
    return path


@pytest.fixture(scope="module")
def engines(ckpt):
    from megaindex.eval.engine import load_engine

    return load_engine(ckpt, max_length=400), load_engine(ckpt, engine="hf", max_length=400)


def random_items(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(5, 8000, (n,), generator=g).tolist(), torch.randint(5, 8000, (k,), generator=g).tolist())
            for n, k in lengths]


def test_inverse_frequencies_equal_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    d, base, L = 64, 10000.0, 2048
    for spec in ("linear:16", "dynamic:8", "yarn:16", "yarn:4"):
        v = parse_rope(spec)
        hf = LlamaConfig(hidden_size=d * 4, num_attention_heads=4, max_position_embeddings=L,
                         rope_parameters=hf_rope_parameters(v, base, L))
        for s in (None, 1000, L, 3 * L + 17, 32768):
            ours, ours_scale = inv_freq(v, head_dim=d, base=base, train_length=L, seq_len=s)
            theirs, their_scale = ROPE_INIT_FUNCTIONS[v.kind](hf, torch.device("cpu"), seq_len=s)
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
            assert ours_scale == pytest.approx(their_scale, rel=1e-12)
    assert inv_freq(parse_rope("dynamic:8"), head_dim=d, base=base, train_length=L, seq_len=4 * L)[0][-1] < \
        inv_freq(parse_rope("naive"), head_dim=d, base=base, train_length=L)[0][-1]  # the base really grew


def test_variant_specs():
    assert parse_rope("dynamic:8") == RopeVariant("dynamic", 8.0) and parse_rope("dynamic:8").name == "dynamic:8"
    assert parse_rope(None).name == "naive" and parse_rope("yarn:2.5").name == "yarn:2.5"
    assert parse_rope("linear:16").max_length(2048) == 32768 and parse_rope("naive").max_length(2048) == 2048
    for bad, msg in (("ntk:8", "not one of"), ("dynamic", "needs a factor"), ("yarn:x", "not a number"),
                     ("linear:1", "factor > 1"), ("naive:2", "no factor")):
        with pytest.raises(RopeVariantError, match=msg):
            parse_rope(bad)
    with pytest.raises(EvalError, match="--rope: .*not one of"):  # the eval command's one-line error
        parse_variants("naive,ntk:8")


def test_exported_rope_scaling_logits_equal_transformers(ckpt, tmp_path, single_process_megatron):
    """`convert to-hf [--rope-scaling]` writes a config stock transformers loads with the same
    variant: logits equal the megatron model's with the variant applied, at 150 > 64 tokens, for
    all four variants (naive: the plain export)."""
    from transformers import AutoModelForCausalLM

    from megaindex.convert.cli import main
    from megaindex.convert.parity import build_megaindex, megaindex_logits, random_tokens
    from megaindex.model.rope_variants import apply_rope_variant

    model, cfg = build_megaindex(ckpt)
    tokens = random_tokens(cfg.model.vocab_size, 1, 150, seed=3)
    naive = megaindex_logits(model, tokens, cfg.model.vocab_size)
    for spec in VARIANTS:
        out = tmp_path / spec.replace(":", "_")
        scaling = [] if spec == "naive" else ["--rope-scaling", spec]
        assert main(["to-hf", str(ckpt), str(out), *scaling, "--check"]) == 0
        hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        assert hf.config.rope_parameters["rope_type"] == {"naive": "default"}.get(spec, spec.split(":")[0])
        apply_rope_variant(model, parse_rope(spec), train_length=TRAIN_LENGTH)
        ours = megaindex_logits(model, tokens, cfg.model.vocab_size)
        if spec == "dynamic:4":
            ours_dynamic = ours
        with torch.no_grad():
            theirs = hf(tokens).logits.float()
        assert (ours - theirs).abs().max().item() <= 1e-4, spec
        assert spec == "naive" or (ours - naive).abs().max().item() > 1e-2, f"{spec} changed nothing"
        if spec == "dynamic:4":
            dynamic_hf_dir = out
    # an HF directory carrying a variant: the hf engine reads the variant and the training length
    from megaindex.eval.engine import load_engine

    he = load_engine(dynamic_hf_dir, engine="hf")
    assert (he.rope.name, he.train_length, he.max_length) == ("dynamic:4", TRAIN_LENGTH, 4 * TRAIN_LENGTH)
    seq = tokens[0].tolist()
    assert (he.nll(seq) - torch.nn.functional.cross_entropy(ours_dynamic[0, :-1], tokens[0, 1:], reduction="none")).abs().max() <= 1e-4
    apply_rope_variant(model, parse_rope("naive"), train_length=TRAIN_LENGTH)
    torch.testing.assert_close(megaindex_logits(model, tokens, cfg.model.vocab_size), naive, rtol=0, atol=0)


def test_megatron_and_hf_engines_agree(engines):
    """Packed forced scoring (several documents per forward, per-document dynamic NTK) equals one
    document at a time and transformers, for every variant; nll too."""
    me, he = engines
    items = random_items([(30, 3), (50, 1), (140, 5), (17, 2), (90, 4)])
    for spec in VARIANTS:
        me.set_rope(parse_rope(spec))
        he.set_rope(parse_rope(spec))
        packed, theirs = me.forced(items), he.forced(items)
        single = [me.forced([it])[0] for it in items]
        for (_, answer), a, b, c in zip(items, packed, single, theirs):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.logprob == pytest.approx(c.logprob, abs=1e-4)
            assert a.argmax_ids == b.argmax_ids == c.argmax_ids and len(a.argmax_ids) == len(answer)
            assert a.exact == (a.argmax_ids == answer)
        seq = items[2][0] + items[2][1]
        ours, ref = me.nll(seq), he.nll(seq)
        assert ours.shape == (len(seq) - 1,) and ours.dtype == torch.float32
        assert (ours - ref).abs().max().item() <= 1e-4, spec
        assert sum(f.logprob for f in packed) < 0
    me.set_rope(parse_rope("naive"))
    he.set_rope(parse_rope("naive"))


def test_forced_exact_match_equals_greedy(engines):
    """Answers that are the greedy continuation, and ones altered at the first or last token:
    forced exact-match (megatron) is True exactly when greedy generation (transformers, KV cache)
    reproduces the answer."""
    me, he = engines
    prompts = [p for p, _ in random_items([(20, 1), (45, 1), (70, 1), (33, 1)], seed=5)]
    items = []
    for i, p in enumerate(prompts):
        k = 2 + i % 3
        gen = he.generate(p, k, stop_ids=())
        assert len(gen) == k
        items.append((p, gen))
        items.append((p, gen[:-1] + [(gen[-1] + 1) % 8000]))
        items.append((p, [(gen[0] + 7) % 8000] + gen[1:]))
    forced = me.forced(items)
    greedy = [he.generate(p, len(a), stop_ids=()) == a for p, a in items]  # deterministic: prefix of gen
    assert [f.exact for f in forced] == greedy
    assert any(greedy) and not all(greedy)
    streamed = []
    out = me.generate(prompts[0], 4, stop_ids=(), on_token=streamed.append)  # megatron engine -> HF export
    assert out == streamed == he.generate(prompts[0], 4, stop_ids=())


def test_bad_input(engines, ckpt, tmp_path):
    from megaindex.eval.engine import load_engine

    me, _ = engines
    with pytest.raises(EvalError, match="does not exist"):
        load_engine(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="neither a megaindex checkpoint"):
        load_engine(tmp_path / "empty")
    with pytest.raises(EvalError, match="engine 'vllm'"):
        load_engine(ckpt, engine="vllm")
    with pytest.raises(EvalError, match="non-empty"):
        me.forced([([1, 2], [])])
    assert me.forced([]) == []
    with pytest.raises(EvalError, match="token id 8000 is outside the model's vocabulary"):
        me.forced([([1, 8000], [5])])
    from megaindex.convert.cli import main as convert

    assert convert(["to-hf", str(ckpt), str(tmp_path / "x"), "--rope-scaling", "ntk:2"]) == 1
    assert not (tmp_path / "x").exists()
    naive = load_engine(ckpt)  # no max_length: the variant's own limit
    assert naive.max_length == TRAIN_LENGTH
    with pytest.raises(EvalError, match=r"is 80 tokens, longer than 64.*RoPE naive"):
        naive.forced(random_items([(70, 10)]))
    naive.set_rope(parse_rope("dynamic:4"))
    assert naive.max_length == 4 * TRAIN_LENGTH and len(naive.forced(random_items([(70, 10)]))) == 1


# ---- the long-text demo ---------------------------------------------------------------------------
def test_summarize_streams_greedy_output_and_truncates(engines, ckpt, tmp_path, capsys):
    """`megaindex summarize` prints exactly the greedy (repetition penalty 1.1) continuation of
    Index's demo prompt, as it is generated; a document over the training length is
    middle-truncated with a warning."""
    from megaindex.cli import main
    from megaindex.data.tokenizer import ASSISTANT, UNK, USER
    from megaindex.eval.summarize import BEFORE, summary_prompt
    from megaindex.eval.truncate import middle_truncate

    _, he = engines
    doc = tmp_path / "doc.txt"
    doc.write_text("The grass is green. 草是绿的。" * 3, encoding="utf-8")
    ids = summary_prompt(he.tokenizer.encode, doc.read_text(encoding="utf-8"))
    assert ids[0] == UNK and ids[-1] == ASSISTANT and ids.count(USER) == 1
    assert he.tokenizer.decode(ids).startswith("<unk>你是由哔哩哔哩") and BEFORE in he.tokenizer.decode(ids)
    limit = 300  # --train-length: Index's system message alone is ~130 tokens of this small vocabulary
    assert len(ids) <= limit - 6 or pytest.fail(f"prompt {len(ids)} tokens: shorten the test document")

    cli = ["--model", str(ckpt), "--max-new-tokens", "6", "--train-length", str(limit)]
    assert main(["summarize", str(doc), *cli]) == 0
    out, err = capsys.readouterr()
    want = he.generate(ids, 6, repetition_penalty=1.1)
    assert out == he.tokenizer.decode(want) + "\n" and "warning" not in err

    doc.write_text("The grass is green. The sky is blue. " * 40, encoding="utf-8")
    long_ids = summary_prompt(he.tokenizer.encode, doc.read_text(encoding="utf-8"))
    assert main(["summarize", str(doc), *cli]) == 0
    out, err = capsys.readouterr()
    dropped = len(long_ids) - (limit - 6)
    assert dropped > 0 and f"{dropped} tokens were dropped from the middle" in err
    kept = middle_truncate(long_ids, limit, 6)
    assert out == he.tokenizer.decode(he.generate(kept, 6, repetition_penalty=1.1)) + "\n"

    assert main(["summarize", str(tmp_path / "missing.txt"), "--model", str(ckpt)]) == 2
    assert main(["summarize", str(doc), "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summarize_watch_resummarises_on_change(engines, tmp_path):
    import io
    import os
    import threading

    from megaindex.eval.summarize import watch

    _, he = engines
    doc = tmp_path / "doc.txt"
    doc.write_text("first version", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    runs = []
    t = threading.Thread(target=lambda: runs.append(watch(doc, he, poll_seconds=0.05, max_runs=2, out=out, err=err,
                                                          max_new_tokens=3)))
    t.start()
    for _ in range(600):
        if out.getvalue().count(">> ") == 1 and out.getvalue().endswith("\n"):
            break
        t.join(0.05)
    doc.write_text("second version, longer", encoding="utf-8")
    os.utime(doc, ns=(1, 10**18))  # a different mtime whatever the clock resolution
    t.join(60)
    assert runs == [2]
    assert out.getvalue().count(">> ") == 2 and "(22 characters)" in out.getvalue()


# ---- the GPU benchmark's CPU smoke mode, and context parallelism ----------------------------------
def test_needle_grid_benchmark_smoke_and_cp2(tmp_path, single_process_megatron):
    """benchmarks/eval_needle_grid.py --smoke: exact lengths, a JSON report; the same grid under
    torchrun with 2 processes (CP2: every packed document split over the ranks, scores summed
    over the CP group) gives the same scores and predictions."""
    import importlib.util
    import json

    from conftest import REPO, torchrun

    spec = importlib.util.spec_from_file_location("eval_needle_grid", REPO / "benchmarks" / "eval_needle_grid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    one = bench.main(["--smoke", "--out", str(tmp_path / "one.json")])
    assert json.loads((tmp_path / "one.json").read_text())["samples"] == one["samples"] == 6
    assert one["prefill_tokens"] == 3 * (200 + 400) and one["wall_s"] > 0 and one["weights"].startswith("random init")
    from megaindex.data.tokenizer import IndexTokenizer

    tok = IndexTokenizer(REPO / "tests/fixtures/tokenizer.model")
    prompt, answer = bench.needle_item(tok, 400, 50, 0)
    assert len(prompt) + len(answer) == 400 and "special magic number is " + tok.decode(answer).strip() in tok.decode(prompt)

    torchrun(REPO / "benchmarks" / "eval_needle_grid.py", 2, "--smoke", "--out", str(tmp_path / "cp2.json"))
    cp2 = json.loads((tmp_path / "cp2.json").read_text())
    assert cp2["world_size"] == 2
    for a, b in zip(one["results"], cp2["results"]):
        assert (a["length"], a["depth"], a["prediction_ids"], a["exact"]) == (b["length"], b["depth"], b["prediction_ids"], b["exact"])
        assert abs(a["logprob"] - b["logprob"]) <= 1e-3  # rounded to 4 decimals in the JSON
