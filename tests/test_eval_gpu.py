"""GPU only (pytest -m gpu): the megatron evaluation engine on Transformer Engine, bf16.

Checks the TE path the CPU tests cannot reach: packed THD forwards through TE attention, TE's fused
RoPE for naive/linear and megatron's unfused RoPE (per-document frequencies, YaRN's factor) for
dynamic/yarn, and scores read at chosen positions through GPTModel's output_processor. Reference:
transformers in fp32 on the same weights; the engine must be as close to it as transformers' own
bf16 run (twice its error + 2e-2, as tests/test_convert_gpu.py does for logits).
"""

from __future__ import annotations

import pytest
import torch

TRAIN_LENGTH = 64


@pytest.mark.gpu
def test_te_engine_matches_transformers_for_every_variant(tmp_path):
    from megaindex.checkpoint import save_model
    from megaindex.config_load import load_config
    from megaindex.distributed import init_single_process
    from megaindex.eval.engine import load_engine
    from megaindex.eval.hf_engine import HFEngine
    from megaindex.model.rope_variants import parse_rope
    from megaindex.model.build import build_model_chunks

    init_single_process()
    cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2", f"data.seq_length={TRAIN_LENGTH}",
                             f"data.global_batch_tokens={TRAIN_LENGTH}", "data.tokenizer_model=tests/fixtures/tokenizer.model"])
    torch.manual_seed(3)
    save_model(build_model_chunks(cfg), tmp_path / "ckpt", cfg)

    me = load_engine(tmp_path / "ckpt", max_length=400)
    assert any(type(m).__name__ == "TEDotProductAttention" for m in me.model.modules())
    ref = HFEngine.from_checkpoint(tmp_path / "ckpt", dtype=torch.float32, max_length=400)
    hf16 = HFEngine.from_checkpoint(tmp_path / "ckpt", max_length=400)
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(5, 8000, (n,), generator=g).tolist(), torch.randint(5, 8000, (k,), generator=g).tolist())
             for n, k in [(30, 3), (151, 5), (17, 2), (90, 4)]]
    seq = items[1][0] + items[1][1]
    for spec in ("naive", "linear:4", "dynamic:4", "yarn:4"):
        for e in (me, ref, hf16):
            e.set_rope(parse_rope(spec))
        truth = ref.nll(seq)
        err_ours = (me.nll(seq) - truth).abs().max().item()
        err_hf = (hf16.nll(seq) - truth).abs().max().item()
        assert err_ours <= 2 * err_hf + 2e-2, (spec, err_ours, err_hf)
        ours, theirs = me.forced(items), ref.forced(items)
        for a, b in zip(ours, theirs):
            assert abs(a.logprob - b.logprob) <= 2 * err_hf * len(b.argmax_ids) + 5e-2, (spec, a.logprob, b.logprob)
        agree = sum(x == y for a, b in zip(ours, theirs) for x, y in zip(a.argmax_ids, b.argmax_ids))
        assert agree >= 0.9 * sum(len(b.argmax_ids) for b in theirs), spec
