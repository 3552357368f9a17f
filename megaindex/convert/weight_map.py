"""Where every weight lives: HF names, megatron dist-checkpoint keys, and megatron module keys.

Owns the name and shape mapping between a Llama/Index HF state dict and megatron-core, in the three
forms megaindex meets:

* dist checkpoint (on disk, layout independent): each per-layer weight is ONE global tensor stacked
  over layers, `[num_layers, ...]`, keyed by the layer-less TE name
  (`decoder.layers.self_attention.linear_qkv.weight`). The local module layout maps its norms onto
  TE's keys, so the same keys serve both layouts. The SwiGLU fc1 is stored as `[gate; up]` over the
  FULL ffn width (megatron's swiglu factory splits each TP rank's `[gate_r; up_r]` into two pieces at
  offsets r and TP+r), so the on-disk tensor does not depend on TP.
* module state dict, TE layout: `decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight`
  (the input norm fused into the QKV linear) and `mlp.linear_fc1.layer_norm_weight`.
* module state dict, local layout: `decoder.layers.{i}.input_layernorm.weight` and
  `pre_mlp_layernorm.weight`; every other name as TE.

Fused QKV (both layouts): rows grouped per query group g = [q heads of g; k_g; v_g], each head
`head_dim` rows; TP rank r holds query groups [r*G/TP, (r+1)*G/TP), i.e. a contiguous block of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ModuleLayout = Literal["te", "local"]  # which module implementation a state dict is for

# Global (non-layer) weights: HF name -> dist key.
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_OUTPUT = "lm_head.weight"

# Per-layer weights: dist key (layer stacked) -> the HF names (per layer) that make it.
QKV = "decoder.layers.self_attention.linear_qkv.weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"
INPUT_NORM = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
FC1 = "decoder.layers.mlp.linear_fc1.weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"
MLP_NORM = "decoder.layers.mlp.linear_fc1.layer_norm_weight"

LAYER_KEYS: dict[str, tuple[str, ...]] = {
    INPUT_NORM: ("input_layernorm.weight",),
    QKV: ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    PROJ: ("self_attn.o_proj.weight",),
    MLP_NORM: ("post_attention_layernorm.weight",),
    FC1: ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    FC2: ("mlp.down_proj.weight",),
}

# megatron ShardedObjects written for every linear of every layer (TE keeps FP8 metadata there; the
# local layout saves None). Both layouts request them, so a converted checkpoint must hold them.
EXTRA_STATE_MODULES = (
    "decoder.layers.self_attention.linear_proj",
    "decoder.layers.self_attention.linear_qkv",
    "decoder.layers.mlp.linear_fc1",
    "decoder.layers.mlp.linear_fc2",
)

# Module-state-dict names of the norms per layout (TE fuses them into the next linear).
_LOCAL_NORM_NAMES = {INPUT_NORM: "input_layernorm.weight", MLP_NORM: "pre_mlp_layernorm.weight"}

# How each per-layer weight is split over TP in the module state dict: the tensor dimension, or None
# for replicated. (QKV and FC1 need their own per-rank arrangement, see shard_for_rank.)
_TP_DIM = {INPUT_NORM: None, MLP_NORM: None, QKV: 0, PROJ: 1, FC1: 0, FC2: 1, EMBEDDING: 0, OUTPUT: 0, FINAL_NORM: None}


@dataclass(frozen=True)
class Arch:
    """The shape facts the mapping needs."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int  # unpadded

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Global per-layer shape of each dist key (without the leading layer dimension)."""
        h, d = self.hidden_size, self.head_dim
        qkv_rows = (self.num_attention_heads + 2 * self.num_query_groups) * d
        return {
            INPUT_NORM: (h,),
            QKV: (qkv_rows, h),
            PROJ: (h, self.num_attention_heads * d),
            MLP_NORM: (h,),
            FC1: (2 * self.ffn_hidden_size, h),
            FC2: (h, self.ffn_hidden_size),
        }

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-layer HF tensor shapes (name without the `model.layers.N.` prefix)."""
        h, d, f = self.hidden_size, self.head_dim, self.ffn_hidden_size
        return {
            "input_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (self.num_attention_heads * d, h),
            "self_attn.k_proj.weight": (self.num_query_groups * d, h),
            "self_attn.v_proj.weight": (self.num_query_groups * d, h),
            "self_attn.o_proj.weight": (h, self.num_attention_heads * d),
            "post_attention_layernorm.weight": (h,),
            "mlp.gate_proj.weight": (f, h),
            "mlp.up_proj.weight": (f, h),
            "mlp.down_proj.weight": (h, f),
        }


def hf_layer_name(layer: int, suffix: str) -> str:
    return f"model.layers.{layer}.{suffix}"


# ---- fused tensors -------------------------------------------------------------------------------
def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: Arch) -> torch.Tensor:
    """HF q/k/v -> megatron's fused QKV, grouped per query group: [q heads of g; k_g; v_g] for each g."""
    g, d, h = arch.num_query_groups, arch.head_dim, q.shape[-1]
    per_group = arch.num_attention_heads // g
    q = q.reshape(g, per_group * d, h)
    k = k.reshape(g, d, h)
    v = v.reshape(g, d, h)
    return torch.cat([q, k, v], dim=1).reshape(-1, h)


def split_qkv(qkv: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of fuse_qkv (on the global tensor or on any whole number of query groups)."""
    d, h = arch.head_dim, qkv.shape[-1]
    per_group = arch.num_attention_heads // arch.num_query_groups
    grouped = qkv.reshape(-1, (per_group + 2) * d, h)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def fuse_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The dist-checkpoint fc1: [gate; up] over the full ffn width."""
    return torch.cat([gate, up], dim=0)


def split_fc1(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = torch.chunk(fc1, 2, dim=0)
    return gate, up


# ---- vocabulary padding --------------------------------------------------------------------------
def pad_vocab(weight: torch.Tensor, padded_rows: int) -> torch.Tensor:
    """Append zero rows up to the padded vocabulary (zero rows stay zero in training; see output_layer)."""
    extra = padded_rows - weight.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {weight.shape[0]} vocabulary rows down to {padded_rows}")
    if extra == 0:
        return weight
    return torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])], dim=0)


def unpad_vocab(weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    if weight.shape[0] < vocab_size:
        raise ValueError(f"vocabulary weight has {weight.shape[0]} rows, fewer than vocab_size {vocab_size}")
    return weight[:vocab_size]


# ---- module state dicts (per TP rank) ------------------------------------------------------------
def module_name(dist_key: str, layer: int | None, layout: ModuleLayout) -> str:
    """Module state-dict name of a dist key in a layout (`layer` = index inside the model chunk)."""
    if layer is None:
        return dist_key
    if layout == "local" and dist_key in _LOCAL_NORM_NAMES:
        return f"decoder.layers.{layer}.{_LOCAL_NORM_NAMES[dist_key]}"
    return dist_key.replace("decoder.layers.", f"decoder.layers.{layer}.", 1)


def shard_for_rank(dist_key: str, tensor: torch.Tensor, tp_size: int, tp_rank: int) -> torch.Tensor:
    """The part of a global (one-layer or non-layer) tensor that TP rank `tp_rank` holds in its module."""
    dim = _TP_DIM[dist_key]
    if dim is None or tp_size == 1:
        return tensor
    if dist_key == FC1:  # each rank holds [gate_r; up_r] (megatron's column-parallel SwiGLU)
        gate, up = split_fc1(tensor)
        return torch.cat([gate.chunk(tp_size)[tp_rank], up.chunk(tp_size)[tp_rank]], dim=0)
    # QKV: query groups are contiguous row blocks, so a plain chunk keeps whole groups per rank.
    return tensor.chunk(tp_size, dim=dim)[tp_rank]


def gather_ranks(dist_key: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of shard_for_rank over all TP ranks."""
    dim = _TP_DIM[dist_key]
    if dim is None or len(shards) == 1:
        return shards[0]
    if dist_key == FC1:
        gates, ups = zip(*(split_fc1(s) for s in shards))
        return fuse_fc1(torch.cat(gates), torch.cat(ups))
    return torch.cat(shards, dim=dim)


def hf_to_module_state_dict(
    hf: dict[str, torch.Tensor],
    arch: Arch,
    *,
    layout: ModuleLayout,
    padded_vocab_size: int,
    tp_size: int = 1,
    tp_rank: int = 0,
    layers: range | None = None,
    pre_process: bool = True,
    post_process: bool = True,
) -> dict[str, torch.Tensor]:
    """The module state dict (weights only) of one model chunk on one TP rank, from an HF state dict.

    `layers` are the global layer numbers of the chunk; they are renumbered from 0 as in megatron.
    """
    layers = range(arch.num_layers) if layers is None else layers
    out: dict[str, torch.Tensor] = {}
    for global_key, tensor in hf_global_tensors(hf, arch, padded_vocab_size, layers, pre_process, post_process):
        key, layer = global_key
        local = None if layer is None else layer - layers.start
        out[module_name(key, local, layout)] = shard_for_rank(key, tensor, tp_size, tp_rank)
    return out


def module_state_dicts_to_hf(
    per_rank: list[dict[str, torch.Tensor]], arch: Arch, *, layout: ModuleLayout, layers: range | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of hf_to_module_state_dict for one chunk given every TP rank's state dict."""
    layers = range(arch.num_layers) if layers is None else layers
    out: dict[str, torch.Tensor] = {}
    for key in (EMBEDDING, FINAL_NORM, OUTPUT):
        if key in per_rank[0]:
            full = gather_ranks(key, [sd[key] for sd in per_rank])
            hf_name = {EMBEDDING: HF_EMBEDDING, FINAL_NORM: HF_FINAL_NORM, OUTPUT: HF_OUTPUT}[key]
            out[hf_name] = unpad_vocab(full, arch.vocab_size) if key != FINAL_NORM else full
    for i, layer in enumerate(layers):
        for key in LAYER_KEYS:
            name = module_name(key, i, layout)
            full = gather_ranks(key, [sd[name] for sd in per_rank])
            out.update(split_layer_tensor(key, full, arch, layer))
    return out


# ---- one global tensor <-> HF tensors -----------------------------------------------------------
def hf_global_tensors(hf, arch: Arch, padded_vocab_size: int, layers, pre_process=True, post_process=True):
    """Yield ((dist_key, global layer or None), global tensor) from an in-memory HF state dict."""
    if pre_process:
        yield (EMBEDDING, None), pad_vocab(hf[HF_EMBEDDING], padded_vocab_size)
    for layer in layers:
        for key in LAYER_KEYS:
            yield (key, layer), join_layer_tensor(key, lambda s, l=layer: hf[hf_layer_name(l, s)], arch)
    if post_process:
        yield (FINAL_NORM, None), hf[HF_FINAL_NORM]
        yield (OUTPUT, None), pad_vocab(hf.get(HF_OUTPUT, hf[HF_EMBEDDING]), padded_vocab_size)


def join_layer_tensor(dist_key: str, get, arch: Arch) -> torch.Tensor:
    """Build one layer's global tensor of `dist_key` from HF tensors; get(suffix) reads one."""
    parts = [get(s) for s in LAYER_KEYS[dist_key]]
    if dist_key == QKV:
        return fuse_qkv(*parts, arch)
    if dist_key == FC1:
        return fuse_fc1(*parts)
    return parts[0]


def split_layer_tensor(dist_key: str, tensor: torch.Tensor, arch: Arch, layer: int) -> dict[str, torch.Tensor]:
    """One layer's global tensor of `dist_key` -> {HF name: tensor} (contiguous copies)."""
    if dist_key == QKV:
        parts = split_qkv(tensor, arch)
    elif dist_key == FC1:
        parts = split_fc1(tensor)
    else:
        parts = (tensor,)
    return {hf_layer_name(layer, s): p.contiguous() for s, p in zip(LAYER_KEYS[dist_key], parts)}
