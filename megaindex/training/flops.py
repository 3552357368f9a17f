"""Model FLOPs of a training step (for TFLOP/s and MFU), counted the way papers do.

Per token: 6 x (dense matmul parameters: transformer-layer matrices + the LM head) for forward and
backward. Attention scores and values: per layer and document of n tokens, QK^T and AV cost
2 * 2 * n^2 * d_attn multiply-adds in full, half of it causal, x3 for training:
6 * n^2 * h_attn per layer. Documents are taken from the batch's cu_seqlens, so packing with
per-document attention is not credited with attention it never computes. Recompute is not counted
(model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from megaindex.config import Config

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def dense_params(cfg: Config) -> int:
    m = cfg.model
    kv = m.kv_heads * m.head_dim
    per_layer = m.hidden_size * (m.hidden_size + 2 * kv) + m.hidden_size * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size
    return m.num_layers * per_layer + m.hidden_size * m.vocab_size


def step_flops(cfg: Config, tokens: int, doc_lengths_sq_sum: int) -> float:
    """Training FLOPs for `tokens` tokens whose documents have sum(n_i^2) = doc_lengths_sq_sum."""
    m = cfg.model
    attn = 6 * m.num_layers * m.num_attention_heads * m.head_dim * doc_lengths_sq_sum
    return 6.0 * dense_params(cfg) * tokens + attn
