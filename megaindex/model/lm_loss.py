"""The per-token LM loss: which cross-entropy kernel turns the head's logits into token losses.

GPTModel computes `compute_language_model_loss(labels, logits)` -> per-token loss [b, s] when the
forward step passes labels; megaindex's loss function (training/loss.py) masks and weights that
afterwards (loss masks, response-only SFT, LongAlign 1/N_i), so every kernel here sees the same input:
vocab-parallel logits [s, b, V/TP] (padded columns -inf, output_layer.py) and the labels.
`model.cross_entropy_fusion` picks the kernel (default `auto`: te where the model is built with
Transformer Engine's modules and TE has the kernel, none elsewhere: CPU, the local spec; measured
on one H200 at 32K, 2026-11-28: the same losses as none, +1.4% step throughput, 7.6 GiB less peak):

* none: megatron's `vocab_parallel_cross_entropy`. It casts the logits to fp32 and keeps that copy as
  the softmax for backward: the head peaks at bf16 logits + fp32 copy = 6 bytes per logit
  (11.9 GiB for one 32K row at Index's padded vocabulary 65152).
* native: megatron's fused version (TransformerConfig `cross_entropy_loss_fusion`, impl "native"):
  the same algorithm with torch.compile'd elementwise steps and one TP all-reduce instead of two.
  Same memory. Its backward casts the logit gradient to bf16 whatever the logits' dtype, so an fp32
  run gets bf16-rounded logit gradients (bf16 runs are unaffected: their logits are bf16 anyway).
* te: Transformer Engine's Triton kernel (online softmax, fp32 math, one all-gather of 4 floats per
  token under TP), called with `overwrite_input=True`: it keeps only the bf16 logits and 8 bytes of
  softmax statistics per token, and backward writes the gradient over the logits: 2 bytes per
  logit. megatron 0.19.2's own TE path does not pass `overwrite_input` (TE then keeps a copy of the
  logits, 4 bytes per logit) and warns about an instability that TE fixed in 2.19/2.20 (TE #3193
  kept the gradient in fp32, #3273 moved it to backward); so megaindex calls TE directly and needs a
  TE with `overwrite_input` (2.20).
"""

from __future__ import annotations

import inspect
import logging
from functools import partial

import torch

from megaindex.config import Config

log = logging.getLogger(__name__)

def te_cross_entropy_kernel():
    """TE's parallel_cross_entropy if it has `overwrite_input`, else a one-line reason it cannot be used."""
    try:
        from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy
    except ImportError as e:
        return None, f"Transformer Engine's cross-entropy is not importable ({e})"
    if "overwrite_input" not in inspect.signature(parallel_cross_entropy).parameters:
        import transformer_engine

        return None, (f"Transformer Engine {getattr(transformer_engine, '__version__', '?')} has no "
                      "parallel_cross_entropy(overwrite_input=...) (needs 2.20)")
    return parallel_cross_entropy, None


def megatron_fusion_fields(cfg: Config) -> dict:
    """The TransformerConfig fields for this choice (only `native` goes through megatron's switch)."""
    native = cfg.model.cross_entropy_fusion == "native"
    return {"cross_entropy_loss_fusion": native, "cross_entropy_fusion_impl": "native"}


def te_language_model_loss(tp_group, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-token loss [b, s] from logits [s, b, V/TP] and labels [b, s] (megatron's signature and layout)."""
    parallel_cross_entropy, why = te_cross_entropy_kernel()
    if parallel_cross_entropy is None:
        raise RuntimeError(why)
    labels = labels.transpose(0, 1).contiguous().long()  # TE's kernel reads int64 targets
    loss = parallel_cross_entropy(logits.contiguous(), labels, 0.0, False, tp_group, -100, overwrite_input=True)
    return loss.transpose(0, 1).contiguous()


def configure_lm_loss(model, cfg: Config, *, use_te: bool) -> None:
    """Route a last-stage GPTModel's loss through the chosen kernel (none/native: megatron's own;
    auto: te when `use_te`, else none).

    `te` where TE's kernel cannot run (no GPU or TE, the local spec, an older TE) falls back to
    megatron's unfused loss with a warning instead of failing: the kernels give the same losses (see
    the module doc), so a checkpoint trained with `te` stays usable by `megaindex eval` or the
    converters on any machine; only the memory differs."""
    if cfg.model.cross_entropy_kernel(use_te) != "te":
        return
    _, why = te_cross_entropy_kernel() if use_te else (None, "it needs the Transformer Engine path (TE and a GPU)")
    if why:
        if cfg.model.cross_entropy_fusion == "te":  # asked for by name: say so; auto falls back quietly
            log.warning("model.cross_entropy_fusion=te: %s; using megatron's unfused cross-entropy here "
                        "(same losses, 6 instead of 2 bytes per logit).", why)
        return
    # An instance attribute shadows LanguageModule.compute_language_model_loss; GPTModel._postprocess
    # (and MTP) call it through self.
    model.compute_language_model_loss = partial(te_language_model_loss, model.pg_collection.tp)


def lm_loss_kernel(model) -> str | None:
    """The kernel a built model's loss actually runs (after any fallback): none, native or te; None for
    a pipeline chunk without the LM head, which computes no loss."""
    model = getattr(model, "module", model)  # through megatron's DDP / Float16Module wrappers
    model = getattr(model, "module", model)
    if not getattr(model, "post_process", True):
        return None
    if "compute_language_model_loss" in vars(model):
        return "te"
    return "native" if model.config.cross_entropy_loss_fusion else "none"

