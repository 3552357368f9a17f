"""GPU only: a converted checkpoint in the Transformer Engine layout, bf16 (run with pytest -m gpu).

Loads through megaindex.checkpoint.load_model into TE modules (fused QKV with the input norm inside,
fused fc1 with the pre-MLP norm inside, the `_extra_state` objects the converter writes), checks the
TE module state dict against the mapping, and compares bf16 logits with transformers.
"""

from __future__ import annotations

import pytest
import torch
from test_convert_fixtures import make_index, read_hf_state

from megaindex.convert import weight_map as L
from megaindex.convert.from_hf import convert_from_hf
from megaindex.convert.hf_config import arch_of
from megaindex.convert.parity import build_hf, build_megaindex, hf_logits, megaindex_logits, random_tokens


@pytest.mark.gpu
def test_te_layout_bf16_parity(tmp_path):
    hf_dir = make_index(tmp_path / "hf", seed=4)
    ckpt = convert_from_hf(hf_dir, tmp_path / "ckpt", dtype="bf16", log=lambda *_: None)
    model, cfg = build_megaindex(ckpt, impl="transformer_engine", precision="bf16")
    assert any(type(m).__name__ == "TELayerNormColumnParallelLinear" for m in model.modules())

    hf = {k: v.to(torch.bfloat16) for k, v in read_hf_state(hf_dir).items()}
    expected = L.hf_to_module_state_dict(hf, arch_of(cfg.model), layout="te", padded_vocab_size=cfg.padded_vocab_size)
    got = {k: v.cpu() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    tokens = random_tokens(cfg.model.vocab_size, 3, 64, seed=9)
    ours = megaindex_logits(model, tokens, cfg.model.vocab_size)
    theirs_bf16 = hf_logits(build_hf(hf_dir, torch.bfloat16).cuda(), tokens)
    reference = hf_logits(build_hf(hf_dir, torch.float32).cuda(), tokens)
    err_ours = (ours - reference).abs().max().item()
    err_hf = (theirs_bf16 - reference).abs().max().item()
    # megaindex's bf16 TE model is as close to the fp32 truth as transformers' own bf16 run
    assert err_ours <= 2 * err_hf + 1e-2, (err_ours, err_hf)
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean().item() >= 0.95
