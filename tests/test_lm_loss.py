"""model.cross_entropy_fusion on CPU: megatron's fused ("native") cross-entropy against the unfused one
through the real Index build (Norm-Head, padded vocabulary with -inf logits), per token and through
training/loss.py with a response-only mask and LongAlign weights, loss and every gradient. TP=2 is
in tests/mp/model_parity.py, TE's kernel in tests/test_gpu_model.py."""

from __future__ import annotations

import pytest
import torch

from megaindex.config import ConfigError, load_config
from megaindex.model.lm_loss import lm_loss_kernel

# fp32 on both sides: the same log-sum-exp in a different order, observed ~1e-7 per token.
FP32_TOL = 1e-5
# native's backward casts the logit gradient to bf16 (8 mantissa bits): relative 2^-8 per element,
# summed over many elements in the weight gradients; observed max 2.3e-3 of each tensor's scale.
BF16_GRAD_REL_TOL = 8e-3
DOCS = [37, 59, 32]  # prompt + response per document; the response is the second half


def config(fusion: str):
    return load_config(None, ["model.preset=tiny", "data.seq_length=128", "data.global_batch_tokens=128",
                              f"model.cross_entropy_fusion={fusion}"])


@pytest.fixture(scope="module")
def pair(single_process_megatron):
    from megaindex.model.build import build_model

    plain = build_model(config("none"))
    fused = build_model(config("native"))
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def batch():
    """Packed THD row: tokens, labels, and LongAlign weights 1/N_i on each document's response tokens."""
    from megatron.core.packed_seq_params import PackedSeqParams

    gen = torch.Generator().manual_seed(3)
    toks, labels, weight = [], [], []
    for n in DOCS:
        doc = torch.randint(5, 8000, (n + 1,), generator=gen)
        toks.append(doc[:-1])
        labels.append(doc[1:])
        w = torch.zeros(n)
        w[n // 2:] = 1.0 / (n - n // 2)  # response-only, weighted 1/N_i
        weight.append(w)
    cu = torch.tensor([0, *torch.tensor(DOCS).cumsum(0).tolist()], dtype=torch.int32)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(DOCS), max_seqlen_kv=max(DOCS))
    return torch.cat(toks)[None], torch.cat(labels)[None], torch.cat(weight)[None], psp


def run(model):
    from megaindex.training.loss import masked_loss_sum

    tokens, labels, weight, psp = batch()
    model.zero_grad()
    per_token = model(tokens, None, None, labels=labels, packed_seq_params=psp)
    loss = masked_loss_sum(per_token, weight) / len(DOCS)  # / M, the sequences of the (global) batch
    loss.backward()
    return per_token.detach(), loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_native_fused_cross_entropy_equals_unfused_with_longalign_weights(pair, monkeypatch):
    from megatron.core.models.common.language_module import language_module

    plain, fused = pair
    calls = []
    real = language_module.fused_vocab_parallel_cross_entropy
    monkeypatch.setattr(language_module, "fused_vocab_parallel_cross_entropy", lambda *a: calls.append(1) or real(*a))
    tok_a, loss_a, grads_a = run(plain)
    assert not calls
    tok_b, loss_b, grads_b = run(fused)
    assert calls, "the native fused kernel was not used"
    assert (lm_loss_kernel(plain), lm_loss_kernel(fused)) == ("none", "native")

    assert torch.isfinite(tok_a).all() and tok_a.min() > 0
    assert (tok_a - tok_b).abs().max().item() <= FP32_TOL
    assert abs(loss_a.item() - loss_b.item()) <= FP32_TOL
    worst = 0.0
    for k, g in grads_a.items():
        scale = g.abs().max().item()
        if scale == 0:  # padded-vocabulary rows of the head: zero in both
            assert torch.count_nonzero(grads_b[k]) == 0, k
            continue
        worst = max(worst, (g - grads_b[k]).abs().max().item() / scale)
    # > 0: native's bf16 rounding of the logit gradient is visible in an fp32 run (lm_loss.py says so).
    assert 0 < worst <= BF16_GRAD_REL_TOL, worst


def test_te_fusion_without_transformer_engine_falls_back_with_a_warning(single_process_megatron, caplog):
    """A `te` checkpoint stays usable where TE cannot run (eval, converters on CPU): megatron's loss, said once."""
    from megatron.core.models.common.language_module.language_module import LanguageModule

    from megaindex.model.build import build_model

    with caplog.at_level("WARNING", logger="megaindex.model.lm_loss"):
        model = build_model(config("te"), use_te=False)
    assert "cross_entropy_fusion=te: it needs the Transformer Engine path" in caplog.text
    assert lm_loss_kernel(model) == "none"
    assert model.compute_language_model_loss.__func__ is LanguageModule.compute_language_model_loss
    with pytest.raises(ConfigError, match="model.cross_entropy_fusion"):
        load_config(None, ["model.preset=tiny", "model.cross_entropy_fusion=apex"]).validate(1)


def test_auto_runs_te_on_the_transformer_engine_path_and_the_unfused_loss_elsewhere(single_process_megatron, caplog,
                                                                                     monkeypatch):
    """The default, auto: on the CPU / local-module path megatron's unfused loss, unchanged and quietly
    (no warning: nothing was asked by name); where the model is built with TE's modules and TE has the
    kernel, TE's. (Building with TE's modules needs a GPU, so the TE side is the routing alone: the
    kernel lookup is stubbed; tests/test_gpu_model.py builds the real one.)"""
    from megatron.core.models.common.language_module.language_module import LanguageModule

    from megaindex.model import lm_loss
    from megaindex.model.build import build_model

    default = load_config(None, ["model.preset=tiny", "data.seq_length=128", "data.global_batch_tokens=128"])
    assert default.model.cross_entropy_fusion == "auto"
    assert [default.model.cross_entropy_kernel(use_te) for use_te in (True, False)] == ["te", "none"]
    with caplog.at_level("WARNING", logger="megaindex.model.lm_loss"):
        model = build_model(default, use_te=False)
    ours = lambda: [r for r in caplog.records if r.name == "megaindex.model.lm_loss"]  # noqa: E731 (megatron warns too)
    assert lm_loss_kernel(model) == "none" and not ours()
    assert model.compute_language_model_loss.__func__ is LanguageModule.compute_language_model_loss

    for kernel, why, want in ((object(), None, "te"), (None, "Transformer Engine 2.19 has no ...", "none")):
        monkeypatch.setattr(lm_loss, "te_cross_entropy_kernel", lambda: (kernel, why))
        lm_loss.configure_lm_loss(model, default, use_te=True)
        assert lm_loss_kernel(model) == want and not ours()  # an older TE: auto falls back quietly too
        vars(model).pop("compute_language_model_loss", None)


def test_the_recorded_kernel_comes_from_the_rank_that_holds_the_head(single_process_megatron, monkeypatch):
    """With PP, rank 0 (which writes train_throughput's record) holds no LM head: its chunk reported
    "none" whatever the last stage ran, and memory_vs_estimate rebuilds a record with that kernel. A
    chunk without the head now says None, and the record's kernel is gathered from the ranks that
    have one (one rank here; the world's gather is the same call)."""
    import sys
    from types import SimpleNamespace

    from conftest import REPO
    from megaindex.model.build import build_model

    cfg = config("none")
    first_stage = build_model(cfg, post_process=False)
    assert lm_loss_kernel(first_stage) is None and lm_loss_kernel(build_model(cfg)) == "none"
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput

    te_head = SimpleNamespace(post_process=True, compute_language_model_loss=lambda *a: None)  # as configure_lm_loss sets it
    assert train_throughput.loss_kernel([first_stage, te_head]) == "te"
    assert train_throughput.loss_kernel([first_stage]) is None  # a rank without the head; another rank's answer wins
