"""Training-free RoPE variants applied at evaluation time: naive, linear (PI), dynamic NTK, YaRN.

Owns the variant spec (`parse_rope("dynamic:8")`), the inverse frequencies and attention factor of
each variant (transformers' formulas, modeling_rope_utils.py; d = head dim, L = training length):

* naive     inv_freq_i = base^(-2i/d), whatever the length (plain extrapolation past L);
* linear    inv_freq / factor (position interpolation);
* dynamic   for the current length s > L: base' = base * (factor*s/L - (factor-1))^(d/(d-2));
            unchanged up to L. s is the length of each sequence (one forward over prompt+answer),
            so every document of a packed batch gets its own frequencies;
* yarn      per-frequency ramp between beta_fast=32 and beta_slow=1 rotations over L, blending
            interpolated and original frequencies, and cos/sin scaled by 0.1*ln(factor)+1
            (megatron-core's YaRN helpers, which are transformers' formula);

the `rope_parameters` an HF config needs for the same variant, and `apply_rope_variant`, which puts
a variant into a megatron GPTModel: its rotary module is replaced by `VariantRotaryEmbedding` and
every attention's YaRN concentration factor is set. TE's fused RoPE takes neither per-document
frequencies nor a cos/sin scale in the packed (THD) layout, so dynamic and yarn run megatron's
unfused RoPE. No megatron import at module import: the CLI parses variants without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class RopeVariantError(ValueError):
    """A RoPE variant spec that cannot be used; the message says which and what to write instead."""


KINDS = ("naive", "linear", "dynamic", "yarn")
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0


@dataclass(frozen=True)
class RopeVariant:
    """A RoPE variant: `kind` (naive|linear|dynamic|yarn) and its `factor` (1 for naive)."""

    kind: str = "naive"
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RopeVariantError(f"RoPE variant {self.kind!r} is not one of {', '.join(KINDS)} (e.g. dynamic:8).")
        if self.kind == "naive" and self.factor != 1.0:
            raise RopeVariantError(f"RoPE variant naive takes no factor (got {self.factor:g}).")
        if self.kind != "naive" and not self.factor > 1.0:
            raise RopeVariantError(f"RoPE variant {self.kind} needs a factor > 1 (e.g. {self.kind}:8), got {self.factor:g}.")

    @property
    def name(self) -> str:
        """The spec string (`naive`, `dynamic:8`): the "variant" label in results."""
        return "naive" if self.kind == "naive" else f"{self.kind}:{self.factor:g}"

    def max_length(self, train_length: int) -> int:
        """Longest sequence the variant is meant for: L for naive, factor * L otherwise."""
        return train_length if self.kind == "naive" else int(self.factor * train_length)


def parse_rope(spec: str | RopeVariant | None) -> RopeVariant:
    """"naive" | "linear:16" | "dynamic:8" | "yarn:16" (None = naive) -> RopeVariant."""
    if spec is None:
        return RopeVariant()
    if isinstance(spec, RopeVariant):
        return spec
    kind, _, factor = spec.strip().partition(":")
    if not factor:
        if kind != "naive":
            raise RopeVariantError(f"RoPE variant {spec!r} needs a factor, e.g. {kind}:8 (only naive takes none).")
        return RopeVariant()
    try:
        value = float(factor)
    except ValueError:
        raise RopeVariantError(f"RoPE variant {spec!r}: factor {factor!r} is not a number (e.g. dynamic:8).") from None
    return RopeVariant(kind, value)


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))


def inv_freq(variant: RopeVariant, *, head_dim: int, base: float, train_length: int,
             seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(fp32 inverse frequencies [head_dim/2], attention factor) of `variant` for a sequence of
    `seq_len` tokens (used by dynamic only; None = L)."""
    k, f, d = variant.kind, variant.factor, head_dim
    if k == "naive":
        return _default_inv_freq(base, d), 1.0
    if k == "linear":
        return _default_inv_freq(base, d) / f, 1.0
    if k == "dynamic":
        s = max(seq_len or train_length, train_length)
        scaled = base * ((f * s / train_length) - (f - 1)) ** (d / (d - 2))
        return _default_inv_freq(scaled, d), 1.0
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
        _yarn_find_correction_range,
        _yarn_get_concentration_factor,
        _yarn_linear_ramp_mask,
    )

    extra = _default_inv_freq(base, d)
    low, high = _yarn_find_correction_range(YARN_BETA_FAST, YARN_BETA_SLOW, d, base, train_length, True)
    keep = 1.0 - _yarn_linear_ramp_mask(low, high, d // 2, device=torch.device("cpu"))
    return (extra / f) * (1 - keep) + extra * keep, float(_yarn_get_concentration_factor(f, None, None))


def hf_rope_parameters(variant: RopeVariant, base: float, train_length: int) -> dict | None:
    """transformers' `rope_parameters` (>= 5; `rope_scaling` before) for the variant, None for naive.

    HF's dynamic formula reads L from `max_position_embeddings`, so an exported config must carry
    the training length there (hf_config_dict's caller sets it); YaRN reads it from
    `original_max_position_embeddings`, written here."""
    if variant.kind == "naive":
        return None
    params = {"rope_type": variant.kind, "factor": float(variant.factor), "rope_theta": float(base)}
    if variant.kind == "yarn":
        params.update(original_max_position_embeddings=int(train_length), beta_fast=YARN_BETA_FAST, beta_slow=YARN_BETA_SLOW)
    return params


def variant_from_hf_config(raw: dict) -> tuple[RopeVariant, int]:
    """(the variant an HF config.json carries, its training length): `rope_parameters` (>= 5) or
    `rope_scaling` (< 5); L = YaRN's original_max_position_embeddings, else max_position_embeddings."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    length = int(raw.get("max_position_embeddings", 2048))
    if kind == "default":
        return RopeVariant(), length
    if kind not in KINDS:
        raise RopeVariantError(f"config.json: rope_type {kind!r} is not one of default, {', '.join(KINDS[1:])}.")
    return RopeVariant(kind, float(params["factor"])), int(params.get("original_max_position_embeddings", length))


class VariantRotaryEmbedding(torch.nn.Module):
    """Drop-in for GPTModel.rotary_pos_emb computing a variant's frequencies (no lru cache: the
    frequencies change with the variant and, for dynamic, with every batch's documents).

    `documents` (set by the engine before a packed forward): [(padded length, real length), ...]
    in packed order. With it, dynamic returns one row of frequencies per packed token, each
    document's positions times its own inverse frequencies (megatron's unfused THD RoPE takes a
    freqs tensor as long as the pack as per-token frequencies)."""

    def __init__(self, original: torch.nn.Module, variant: RopeVariant, *, head_dim: int, base: float, train_length: int):
        super().__init__()
        self.variant, self.head_dim, self.base, self.train_length = variant, head_dim, float(base), train_length
        self.cp_group = original.cp_group
        self.get_rotary_seq_len = original.get_rotary_seq_len  # generic in megatron: packed max_seqlen or s*CP
        self.documents: list[tuple[int, int]] | None = None
        self._static = None if variant.kind == "dynamic" else inv_freq(variant, head_dim=head_dim, base=base, train_length=train_length)[0]

    def _inv_freq(self, seq_len: int, device) -> torch.Tensor:
        if self._static is not None:
            return self._static.to(device)
        return inv_freq(self.variant, head_dim=self.head_dim, base=self.base, train_length=self.train_length, seq_len=seq_len)[0].to(device)

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None) -> torch.Tensor:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        if self.variant.kind == "dynamic" and packed_seq and self.documents is not None:
            freqs = torch.cat([torch.outer(torch.arange(padded, device=device, dtype=torch.float32),
                                           self._inv_freq(real, device)) for padded, real in self.documents])
        else:
            pos = torch.arange(max_seq_len, device=device, dtype=torch.float32) + offset
            freqs = torch.outer(pos, self._inv_freq(max_seq_len, device))
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]
        cp_group = self.cp_group if cp_group is None else cp_group
        if cp_group is not None and cp_group.size() > 1 and not packed_seq:
            from megatron.core.models.common.embeddings.rope_utils import get_pos_emb_on_this_cp_rank

            emb = get_pos_emb_on_this_cp_rank(emb, 0, cp_group)
        return emb


def apply_rope_variant(model: torch.nn.Module, variant: RopeVariant, *, train_length: int) -> VariantRotaryEmbedding:
    """Put `variant` into a megatron GPTModel (in place, training-free; `naive` restores the
    checkpoint's RoPE). Returns the new rotary module (the engine sets its `documents`)."""
    cfg = model.config
    current = model.rotary_pos_emb
    original = getattr(current, "original", current)
    rope = VariantRotaryEmbedding(original, variant, head_dim=cfg.kv_channels, base=model.rotary_base, train_length=train_length)
    object.__setattr__(rope, "original", original)  # not a submodule: no state-dict entry
    model.rotary_pos_emb = rope
    _, attention_factor = inv_freq(variant, head_dim=cfg.kv_channels, base=model.rotary_base, train_length=train_length)
    for m in model.modules():
        if hasattr(m, "_yarn_concentration_factor"):
            m._yarn_concentration_factor = attention_factor
    if not hasattr(model, "_megaindex_rope_fusion"):
        model._megaindex_rope_fusion = cfg.apply_rope_fusion
    cfg.apply_rope_fusion = model._megaindex_rope_fusion and variant.kind in ("naive", "linear")
    return rope

