"""The Index model on megatron-core (CPU, fp32): Norm-Head, packed THD = per-document forwards,
padded vocabulary, and the CPU backend's tripwire."""

from __future__ import annotations

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megaindex.config import load_config

FP32_TOL = 1e-5  # fp32 accumulation over a 4-layer, 128-wide model: observed differences ~1e-6


@pytest.fixture(scope="module")
def tiny(single_process_megatron):
    from megaindex import distributed
    from megaindex.model.build import build_model

    cfg = load_config(None, ["model.preset=tiny", "data.seq_length=128", "data.global_batch_tokens=128"])
    distributed.seed_everything(7)
    model = build_model(cfg)
    model.eval()
    return cfg, model


def packed(lengths: list[int]) -> PackedSeqParams:
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths)
    )


def test_packed_thd_equals_separate_documents(tiny):
    cfg, model = tiny
    V = cfg.model.vocab_size
    lengths = [37, 59, 32]
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(5, V, (1, n), generator=gen) for n in lengths]
    tokens = torch.cat(docs, dim=1)
    with torch.no_grad():
        out = model(tokens, None, attention_mask=None, packed_seq_params=packed(lengths))[..., :V]
        ref = torch.cat([model(d, torch.arange(d.shape[1])[None], attention_mask=None)[..., :V] for d in docs], dim=1)
        # Positions reset per document: the same documents run as one causal sequence differ.
        plain = model(tokens, torch.arange(tokens.shape[1])[None], attention_mask=None)[..., :V]
    assert (out - ref).abs().max().item() <= FP32_TOL
    first = lengths[0]
    assert torch.allclose(plain[:, :first], ref[:, :first], atol=FP32_TOL)  # first document: same context
    assert (plain[:, first:] - ref[:, first:]).abs().max().item() > 1e-2  # later ones see other documents


def test_padded_vocab_columns_are_masked_and_rows_zero(tiny):
    cfg, model = tiny
    assert cfg.padded_vocab_size == 8064
    w = model.output_layer.weight
    assert torch.count_nonzero(w[cfg.model.vocab_size:]) == 0
    assert torch.count_nonzero(model.embedding.word_embeddings.weight[cfg.model.vocab_size:]) == 0
    tokens = torch.randint(5, 8000, (1, 16))
    logits = model(tokens, torch.arange(16)[None], attention_mask=None)
    assert torch.isneginf(logits[..., 8000:]).all() and torch.isfinite(logits[..., :8000]).all()


def test_norm_head_is_invariant_to_row_scale(tiny):
    cfg, model = tiny
    tokens = torch.randint(5, 8000, (1, 24), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(24)[None]
    w = model.output_layer.weight
    with torch.no_grad():
        before = model(tokens, pos, attention_mask=None)[..., :8000].clone()
        saved = w.detach().clone()
        scale = torch.rand(w.shape[0], 1, generator=torch.Generator().manual_seed(3)) * 10 + 0.1
        w.mul_(scale)
        after = model(tokens, pos, attention_mask=None)[..., :8000]
        w.copy_(saved)
    assert (before - after).abs().max().item() <= FP32_TOL
    # A model without Norm-Head is not invariant (the test would notice a head that ignores the flag).
    model.output_layer.norm_head = False
    try:
        with torch.no_grad():
            w.mul_(scale)
            plain = model(tokens, pos, attention_mask=None)[..., :8000]
            w.copy_(saved)
    finally:
        model.output_layer.norm_head = True
    assert (plain - before).abs().max().item() > 1e-2


def test_norm_head_gradient_matches_explicit_formula(tiny):
    cfg, model = tiny
    head = model.output_layer
    V = cfg.model.vocab_size
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(10, 1, cfg.model.hidden_size, generator=gen)
    r = torch.randn(10, 1, V, generator=gen)
    head.weight.grad = None
    logits, _ = head(h)
    (logits[..., :V] * r).sum().backward()
    got = head.weight.grad.clone()
    head.weight.grad = None

    W = head.weight.detach().clone().requires_grad_(True)
    explicit = h @ (W[:V] / W[:V].norm(dim=-1, keepdim=True)).t()
    (explicit * r).sum().backward()
    assert torch.allclose(logits[..., :V], explicit, atol=FP32_TOL)
    assert (got[:V] - W.grad[:V]).abs().max().item() <= FP32_TOL
    assert torch.count_nonzero(got[V:]) == 0  # padding rows get no gradient: they stay zero


def test_padded_logit_columns_pass_no_gradient_upstream(tiny):
    """The -inf fill is in place and passes its gradient through (output_layer._FillPaddedColumns):
    a gradient on the padded columns must still change neither the hidden-state gradient nor the
    padded weight rows (they come from zeroed rows)."""
    cfg, model = tiny
    head, V = model.output_layer, cfg.model.vocab_size
    gen = torch.Generator().manual_seed(6)
    r = torch.randn(6, 1, cfg.padded_vocab_size, generator=gen)
    grads = []
    for upstream in (r, torch.cat([r[..., :V], torch.zeros_like(r[..., V:])], -1)):
        h = torch.randn(6, 1, cfg.model.hidden_size, generator=torch.Generator().manual_seed(7), requires_grad=True)
        head.weight.grad = None
        logits, _ = head(h)
        logits.backward(upstream)
        grads.append((h.grad.clone(), head.weight.grad.clone()))
    assert torch.isneginf(logits[..., V:]).all()
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert torch.count_nonzero(grads[0][1][V:]) == 0


def test_cpu_backend_maps_devices_and_trips_on_uncovered_cuda(single_process_megatron):
    from megaindex.cpu_backend import UncoveredCudaCall

    assert torch.empty(3, device="cuda").device.type == "cpu"
    assert torch.zeros(2, device=torch.device("cuda", 0)).device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    with pytest.raises(UncoveredCudaCall, match=r"test_model\.py:\d+ .*torch\.cuda\.manual_seed"):
        torch.cuda.manual_seed(3)
    with pytest.raises(UncoveredCudaCall, match=r"test_model\.py"):
        torch.cuda.get_rng_state()
