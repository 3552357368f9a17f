"""Transformer Engine path on one GPU (marked `gpu`): the TE model and the reference-attention model
give the same logits on the same weights, and TE's packed THD forward equals per-document forwards."""

from __future__ import annotations

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megaindex.config import load_config

pytestmark = pytest.mark.gpu
LENGTHS = [40, 88, 56]  # cuDNN THD needs no padding here; multiples of 8
# bf16 logits of O(5): a few bf16 steps (2^-8 relative) after 4 layers of rounding in different
# kernels (cuDNN attention and fused RMSNorm vs torch SDPA and torch RMSNorm).
BF16_LOGIT_TOL = 0.1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from megaindex import checkpoint, distributed
    from megaindex.model.build import build_model

    distributed.init_single_process()
    cfg = load_config(None, ["model.preset=tiny", "model.hidden_size=256", "model.num_attention_heads=4",
                             "model.num_query_groups=4", "data.seq_length=256", "data.global_batch_tokens=256"])
    distributed.seed_everything(5)
    ref = build_model(cfg, use_te=False).cuda().eval()
    te = build_model(cfg, use_te=True).cuda().eval()
    path = tmp_path_factory.mktemp("w") / "weights"
    checkpoint.save_model([ref], path, cfg)  # TE and local layouts share dist-checkpoint keys
    checkpoint.load_model([te], path, cfg)
    return cfg, ref, te


def packed(lengths):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                           cu_seqlens_kv_padded=cu, max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))


def tokens(n, seed):
    return torch.randint(5, 8000, (1, n), generator=torch.Generator().manual_seed(seed)).cuda()


def test_te_and_reference_give_the_same_logits(models):
    cfg, ref, te = models
    V = cfg.model.vocab_size
    t = tokens(sum(LENGTHS), 1)
    with torch.no_grad():
        a = ref(t, None, None, packed_seq_params=packed(LENGTHS))[..., :V].float()
        b = te(t, None, None, packed_seq_params=packed(LENGTHS))[..., :V].float()
    assert (a - b).abs().max().item() <= BF16_LOGIT_TOL
    assert a.abs().max().item() > 1.0


def test_te_thd_packed_equals_per_document(models):
    cfg, _, te = models
    V = cfg.model.vocab_size
    t = tokens(sum(LENGTHS), 2)
    with torch.no_grad():
        out = te(t, None, None, packed_seq_params=packed(LENGTHS))[..., :V].float()
        parts, start = [], 0
        for n in LENGTHS:
            pos = torch.arange(n, device="cuda")[None]
            parts.append(te(t[:, start:start + n], pos, None)[..., :V].float())
            start += n
    assert (out - torch.cat(parts, 1)).abs().max().item() <= BF16_LOGIT_TOL
