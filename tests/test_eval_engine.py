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
from megaindex.eval.rope import RopeVariant, hf_rope_parameters, inv_freq, parse_rope

TRAIN_LENGTH = 64
VARIANTS = ["naive", "linear:4", "dynamic:4", "yarn:4"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, single_process_megatron):
    from megaindex.checkpoint import save_model
    from megaindex.config import load_config
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
        with pytest.raises(EvalError, match=msg):
            parse_rope(bad)


def test_exported_rope_scaling_logits_equal_transformers(ckpt, tmp_path, single_process_megatron):
    """`convert to-hf --rope-scaling` writes a config stock transformers loads with the same
    variant: logits equal the megatron model's with the variant applied, at 150 > 64 tokens."""
    from transformers import AutoModelForCausalLM

    from megaindex.convert.cli import main
    from megaindex.convert.parity import build_megaindex, megaindex_logits, random_tokens
    from megaindex.eval.rope import apply_rope_variant

    model, cfg = build_megaindex(ckpt)
    tokens = random_tokens(cfg.model.vocab_size, 1, 150, seed=3)
    naive = megaindex_logits(model, tokens, cfg.model.vocab_size)
    for spec in VARIANTS[1:]:
        out = tmp_path / spec.replace(":", "_")
        assert main(["to-hf", str(ckpt), str(out), "--rope-scaling", spec, "--check"]) == 0
        hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        assert hf.config.rope_parameters["rope_type"] == spec.split(":")[0]
        apply_rope_variant(model, parse_rope(spec), train_length=TRAIN_LENGTH)
        ours = megaindex_logits(model, tokens, cfg.model.vocab_size)
        with torch.no_grad():
            theirs = hf(tokens).logits.float()
        assert (ours - theirs).abs().max().item() <= 1e-4, spec
        assert (ours - naive).abs().max().item() > 1e-2, f"{spec} changed nothing"
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
    naive = load_engine(ckpt)  # no max_length: the variant's own limit
    assert naive.max_length == TRAIN_LENGTH
    with pytest.raises(EvalError, match=r"is 80 tokens, longer than 64.*RoPE naive"):
        naive.forced(random_items([(70, 10)]))
    naive.set_rope(parse_rope("dynamic:4"))
    assert naive.max_length == 4 * TRAIN_LENGTH and len(naive.forced(random_items([(70, 10)]))) == 1
