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
                             "model.num_query_groups=4", "data.seq_length=256", "data.global_batch_tokens=256",
                             "model.cross_entropy_fusion=none"])  # the unfused loss, which the te test compares with
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


def test_static_thd_shapes_same_loss_and_grads_one_backend_selection(models, monkeypatch):
    """The trainer's forward step with run-constant THD shapes: the same per-token losses and
    gradients as the exact metadata, and TE selects its attention backend once for rows of
    different layouts (with exact shapes it re-selects on every new layout)."""
    import numpy as np
    import transformer_engine.pytorch.attention.dot_product_attention.utils as dpa_utils

    from megaindex.data.batch import collate
    from megaindex.data.packing import Piece, pack_pieces
    from megaindex import distributed
    from megaindex.training.loss import make_forward_step

    cfg, _, te = models
    S = cfg.data.seq_length
    rng = np.random.default_rng(3)
    rows = []
    for lengths in ([40, 88, 56], [120, 100], [S], [8] * 12 + [64]):
        pieces = [Piece(t, np.roll(t, -1), np.ones(n, dtype=np.float32))
                  for n in lengths for t in [rng.integers(5, 8000, n)]]
        rows.append(collate([pack_pieces(pieces, S, pad_multiple=8)]))

    selections = []
    real = dpa_utils.get_attention_backend
    monkeypatch.setattr(dpa_utils, "get_attention_backend", lambda p: selections.append(p) or real(p))

    def run(batch, static):
        step = make_forward_step(packed=True, longalign=False, device=torch.device("cuda"),
                                 layout=distributed.current_layout(), static_max_seqlen=S if static else None)
        te.zero_grad()
        out, loss_fn = step(iter([batch]), te)
        loss_fn(out)[0].backward()
        return out.detach().float(), torch.cat([p.grad.float().flatten() for p in te.parameters() if p.grad is not None])

    te.train()  # cuDNN keeps the softmax statistics for the backward only in training mode
    try:
        exact = [run(b, False) for b in rows]
        n_exact = len(selections)
        selections.clear()
        static = [run(b, True) for b in rows]
    finally:
        te.eval()
    assert n_exact == len(rows) and len(selections) == 1, (n_exact, len(selections))
    for (lx, gx), (ls, gs) in zip(exact, static):
        # the same kernels on the same tokens: equal up to bf16 rounding of a differently-sized launch
        assert (lx - ls).abs().max().item() <= BF16_LOGIT_TOL
        assert ((gx - gs).norm() / gx.norm()).item() <= 1e-2


def test_te_fused_cross_entropy_equals_unfused_and_frees_the_fp32_copy(models):
    """model.cross_entropy_fusion=te on the TE model: the same per-token losses (fp32 math on the same
    bf16 logits), LongAlign-weighted loss and gradients as megatron's unfused cross-entropy; and the
    head + loss alone peak at ~2 bytes per logit instead of ~6 (bf16 logits + fp32 softmax copy)."""
    from megaindex.model.build import build_model
    from megaindex.training.loss import masked_loss_sum

    cfg, _, te = models
    fcfg = load_config(None, ["model.preset=tiny", "model.hidden_size=256", "model.num_attention_heads=4",
                              "model.num_query_groups=4", "data.seq_length=256", "data.global_batch_tokens=256",
                              "model.cross_entropy_fusion=te"])
    fused = build_model(fcfg, use_te=True).cuda()
    fused.load_state_dict(te.state_dict())
    from megaindex.model.lm_loss import lm_loss_kernel

    auto = load_config(None, ["model.preset=tiny"])  # the default, auto: TE's kernel on the TE path
    assert (lm_loss_kernel(te), lm_loss_kernel(fused), lm_loss_kernel(build_model(auto, use_te=True))) == ("none", "te", "te")
    t = tokens(sum(LENGTHS) + 1, 3)
    weight = torch.cat([torch.cat([torch.zeros(n - n // 2), torch.full((n // 2,), 1.0 / (n // 2))]) for n in LENGTHS]).cuda()

    def run(model):
        model.train()
        model.zero_grad()
        per_token = model(t[:, :-1], None, None, labels=t[:, 1:], packed_seq_params=packed(LENGTHS))
        loss = masked_loss_sum(per_token, weight[None]) / len(LENGTHS)
        loss.backward()
        model.eval()
        return per_token.detach().float(), loss.item(), {k: p.grad.float() for k, p in model.named_parameters() if p.grad is not None}

    tok_a, loss_a, grads_a = run(te)
    tok_b, loss_b, grads_b = run(fused)
    # Identical bf16 logits; both kernels compute log-sum-exp in fp32 (different order).
    assert (tok_a - tok_b).abs().max().item() <= 1e-4 * tok_a.abs().max().item()
    assert abs(loss_a - loss_b) <= 1e-4 * abs(loss_a)
    assert grads_a.keys() == grads_b.keys()
    for k, g in grads_a.items():  # bf16 gradients: a few bf16 steps (2^-8) of each tensor's scale
        assert (g - grads_b[k]).abs().max().item() <= 3e-2 * g.abs().max().item() + 1e-12, k

    # Memory of the head + loss alone on 8K tokens (logits 8K x 8064): peak above what is held before.
    h = torch.randn(8192, 1, cfg.model.hidden_size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(5, 8000, (1, 8192), device="cuda")
    logits_bytes = 8192 * cfg.padded_vocab_size * 2

    def head_peak(model):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logits, _ = model.output_layer(h)
        model.compute_language_model_loss(labels, logits).sum().backward()
        del logits
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / logits_bytes

    unfused_peak, te_peak = head_peak(te), head_peak(fused)
    # in units of bf16 logits: unfused = logits + fp32 copy (3); te = the logits, overwritten by the gradient (1)
    assert unfused_peak >= 2.9 and te_peak <= 1.3, (unfused_peak, te_peak)
