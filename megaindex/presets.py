"""Model presets: named architectures that a recipe's `model.preset` expands into.

A preset only fills `ModelConfig` fields; any field a recipe sets explicitly wins over it.
Numbers for Index-1.9B come from the released config and the technical report (see the
README's "Index-1.9B facts" section).
"""

from __future__ import annotations

from typing import Any

_INDEX_1_9B: dict[str, Any] = dict(
    num_layers=36,
    hidden_size=2048,
    num_attention_heads=16,
    num_query_groups=16,  # full multi-head attention, no GQA
    ffn_hidden_size=5888,
    vocab_size=65029,
    norm_epsilon=1e-6,
    norm_head=True,
    untie_embeddings_and_output_weights=True,
    rotary_base=10000,
    max_position_embeddings=4096,
)

_TINY: dict[str, Any] = dict(
    num_layers=4,
    hidden_size=128,
    num_attention_heads=4,
    num_query_groups=4,
    ffn_hidden_size=352,
    vocab_size=8000,
    norm_epsilon=1e-6,
    norm_head=True,
    untie_embeddings_and_output_weights=True,
    rotary_base=320000,
    max_position_embeddings=2048,
)

_MINI_INDEX: dict[str, Any] = dict(
    num_layers=8,
    hidden_size=512,
    num_attention_heads=4,
    num_query_groups=4,
    ffn_hidden_size=1472,
    vocab_size=8000,
    norm_epsilon=1e-6,
    norm_head=True,
    untie_embeddings_and_output_weights=True,
    rotary_base=10000,
    max_position_embeddings=2048,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The 4K base model that stage 1 starts from.
    "index-1.9b": _INDEX_1_9B,
    # The 32K model: same weights' shape, RoPE base raised 32x (report, section on rope base).
    "index-1.9b-32k": {**_INDEX_1_9B, "rotary_base": 320000, "max_position_embeddings": 32768},
    # A generic Llama-2-7B-shaped model; override fields for other Llama-architecture checkpoints.
    "llama": dict(
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=32,
        ffn_hidden_size=11008,
        vocab_size=32000,
        norm_epsilon=1e-5,
        norm_head=False,
        untie_embeddings_and_output_weights=True,
        rotary_base=10000,
        max_position_embeddings=4096,
    ),
    # Index-shaped toy model for CPU tests and the tiny recipe (vocab of the shipped test tokenizer).
    "tiny": _TINY,
    # "mini-index": the miniature replication's model (examples/mini_replication/): Index-shaped
    # (head dim 128, MHA, SwiGLU at Index's 2.875x width, Norm-Head, untied), ~34.7M parameters with
    # an 8000-piece tokenizer. Stage 0 at 2K with base 10000; stage 1 raises base and length.
    "mini-index": _MINI_INDEX,
    # "mini-index-m": mini-index grown 1.5x in width for the fifth attempt's miss (its base got the
    # *first* answer token wrong, the question-to-fact lookup, and its probe plateaued from step
    # ~1280; examples/mini_replication/stage0.yaml). Same depth, head dim 128 and 2.875x SwiGLU:
    # 8 x (4 x 768^2 + 3 x 768 x 2208) = 59.57M in layers + 2 x 768 x 8064 (vocabulary padded to a
    # multiple of 128) = 12.39M embedding and head + 13K norms = 71.97M parameters (mini-index: 34.7M).
    "mini-index-m": {**_MINI_INDEX, "hidden_size": 768, "num_attention_heads": 6, "num_query_groups": 6,
                     "ffn_hidden_size": 2208},
    # Llama-shaped toy model with grouped-query attention and a plain head (converter tests).
    "tiny-llama": {**_TINY, "num_query_groups": 2, "norm_epsilon": 1e-5, "norm_head": False, "rotary_base": 10000},
}


def preset(name: str) -> dict[str, Any]:
    """The fields of preset `name`; a clear error lists the known names."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown model preset '{name}'.{hint} Known presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
