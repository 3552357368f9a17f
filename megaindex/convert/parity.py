"""The converters' `--check`: megaindex logits vs transformers logits on the same weights.

Owns building both sides for a comparison: the megaindex model (one process, TP=PP=1, loaded
through `megaindex.checkpoint.load_model`, so the check also proves the checkpoint loads) and the
transformers model (stock `LlamaForCausalLM`, never remote code; for an Index-format checkpoint,
`norm_head: true`, the head is normalised in memory with megaindex's own normalize_rows, which is
the Norm-Head definition). Both run on a few random token sequences; the max abs logit difference
is returned and compared with a tolerance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megaindex.convert.hf_config import ConversionError, llama_config_for_parity, read_hf_config
from megaindex.convert.hf_io import HFWeights

FP32_TOLERANCE = 1e-4
# A Norm-Head baked into a bf16/fp16 lm_head is rounded once more than the on-the-fly head of the
# megaindex model, so such exports are compared relative to the logit scale.
HALF_BAKED_RELATIVE_TOLERANCE = 1e-2


def random_tokens(vocab_size: int, num_sequences: int = 3, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_sequences, seq_len), generator=g)


def single_process_config(cfg, *, impl: str = "local", precision: str = "fp32"):
    """A copy of `cfg` for one process (TP=PP=CP=1), with the module layout and precision of the
    check and no recompute or FP8; `cfg` itself is left as loaded."""
    from megaindex.config import ParallelConfig
    from megaindex.config_fp8 import without_fp8

    return dataclasses.replace(
        cfg,
        parallel=ParallelConfig(sequence_parallel=False),
        model=dataclasses.replace(cfg.model, transformer_impl=impl),
        train=dataclasses.replace(without_fp8(cfg.train), precision=precision, recompute_granularity=None),
    )


def build_megaindex(ckpt: str | Path, *, impl: str = "local", precision: str = "fp32"):
    """The checkpoint's model as one single-process chunk, weights loaded; returns (model, cfg)."""
    from megaindex import cpu_backend
    from megaindex.checkpoint import load_model
    from megaindex.config import load_config
    from megaindex.distributed import init_single_process
    from megaindex.model.build import build_model_chunks

    if not torch.cuda.is_available():
        cpu_backend.activate()
    init_single_process()
    cfg = single_process_config(load_config(Path(ckpt) / "config.yaml"), impl=impl, precision=precision)
    chunks = build_model_chunks(cfg)
    load_model(chunks, ckpt, cfg)
    model = chunks[0].eval()
    return model, cfg


@torch.no_grad()
def megaindex_logits(model, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    pos = torch.arange(tokens.shape[1], device=device).expand_as(tokens)
    return model(tokens, pos, None)[..., :vocab_size].float()


def build_hf(hf_dir: str | Path, dtype: torch.dtype = torch.float32):
    """A transformers LlamaForCausalLM with the checkpoint's weights (no remote code)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from megaindex.model.output_layer import normalize_rows

    raw = read_hf_config(hf_dir)
    if not raw.get("norm_head"):
        return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).eval()
    # Index layout: the official modeling file is remote code, which the check never runs; the
    # same computation is a Llama with normalize(lm_head).
    model = LlamaForCausalLM(llama_config_for_parity(raw)).to(dtype)
    weights = HFWeights(hf_dir)
    # in the model's dtype first: Norm-Head is computed from the weights the model holds
    state = {name: weights.get(name).to(dtype) for name in weights.names() if not name.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    state["lm_head.weight"] = normalize_rows(state["lm_head.weight"])
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(tokens.to(device)).logits.float()


def check_parity(
    ckpt: str | Path,
    hf_dir: str | Path,
    *,
    num_sequences: int = 3,
    seq_len: int = 32,
    tolerance: float | None = None,
    rope: str | None = None,
    train_length: int | None = None,
    log=print,
) -> float:
    """fp32 max |logits difference| between the megaindex checkpoint and the HF checkpoint.

    Default tolerance: FP32_TOLERANCE, or HALF_BAKED_RELATIVE_TOLERANCE x max|logit| when the HF
    side stores a normalised head in half precision (a `--format llama` export in bf16/fp16).
    """
    model, cfg = build_megaindex(ckpt)
    if rope:  # an export with --rope-scaling: the megaindex side runs the same variant
        from megaindex.model.rope_variants import apply_rope_variant, parse_rope

        apply_rope_variant(model, parse_rope(rope), train_length=train_length or cfg.data.seq_length)
    tokens = random_tokens(cfg.model.vocab_size, num_sequences, min(seq_len, cfg.model.max_position_embeddings))
    ours = megaindex_logits(model, tokens, cfg.model.vocab_size)
    del model
    theirs = hf_logits(build_hf(hf_dir), tokens)
    if ours.shape != theirs.shape:
        raise ConversionError(f"parity check: logits shapes differ, megaindex {tuple(ours.shape)} vs HF {tuple(theirs.shape)}.")
    diff = (ours - theirs).abs().max().item()
    if tolerance is None:
        hf_dtype = HFWeights(hf_dir).get("model.norm.weight").dtype
        baked_half = cfg.model.norm_head and not read_hf_config(hf_dir).get("norm_head") and hf_dtype != torch.float32
        tolerance = HALF_BAKED_RELATIVE_TOLERANCE * ours.abs().max().item() if baked_half else FP32_TOLERANCE
    log(f"[check] fp32 logits, {num_sequences} random sequences of {tokens.shape[1]} tokens: max |diff| = {diff:.3e} (tolerance {tolerance:g})")
    if not diff <= tolerance:
        raise ConversionError(
            f"parity check failed: megaindex ({ckpt}) and transformers ({hf_dir}) logits differ by {diff:.3e} > {tolerance:g}."
        )
    return diff
