"""HF config.json / generation_config.json <-> megaindex's ModelConfig.

Owns which HF checkpoints the converters accept (Llama architecture: `LlamaForCausalLM`, and Index's
`IndexForCausalLM`, which is Llama plus `norm_head: true`), the defaults used for fields a config
leaves out (transformers' Llama defaults), and the config files written on export. Anything the
megatron model cannot represent (biases, another activation, rope scaling, a head_dim that is not
hidden/heads) is refused with the field named, instead of converting into a model that computes
something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megaindex.config import ModelConfig
from megaindex.convert.weight_map import Arch
from megaindex.data.tokenizer import BOS, EOS

LLAMA_ARCHITECTURES = {"LlamaForCausalLM"}
INDEX_ARCHITECTURES = {"IndexForCausalLM"}
KNOWN_MODEL_TYPES = {"llama", "index"}

# Index's special tokens, as the tokenizer defines them (<unk>=0, <s>=1, </s>=2); pad = eos.
INDEX_BOS_ID, INDEX_EOS_ID = BOS, EOS


class ConversionError(RuntimeError):
    """Input the converters cannot use; the message names the file, tensor or field and what to do."""


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir} is not an HF checkpoint: {path.name} is missing.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON: {e}") from None


def _require(raw: dict[str, Any], field: str, source: str) -> Any:
    if field not in raw:
        raise ConversionError(f"{source}: field '{field}' is missing; an HF Llama/Index config must set it.")
    return raw[field]


def model_fields_from_hf(raw: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """ModelConfig fields for an HF Llama/Index config, refusing what megaindex cannot represent."""
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    known = LLAMA_ARCHITECTURES | INDEX_ARCHITECTURES
    if archs and not set(archs) & known:
        raise ConversionError(
            f"{source}: architectures {archs} are not supported; the converter reads Llama-architecture "
            f"checkpoints ({', '.join(sorted(known))})."
        )
    if not archs and model_type not in KNOWN_MODEL_TYPES:
        raise ConversionError(
            f"{source}: neither 'architectures' nor a known 'model_type' (got {model_type!r}); "
            f"expected a Llama or Index config."
        )
    hidden = _require(raw, "hidden_size", source)
    heads = _require(raw, "num_attention_heads", source)
    if hidden % heads:
        raise ConversionError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}.")
    rope = raw.get("rope_parameters") or {}  # transformers >= 5 writes rope_theta here
    refusals = {
        "hidden_act": (raw.get("hidden_act", "silu"), "silu"),
        "rope_parameters.rope_type": (rope.get("rope_type", "default"), "default"),
        "attention_bias": (bool(raw.get("attention_bias", False)), False),
        "mlp_bias": (bool(raw.get("mlp_bias", False)), False),
        "rope_scaling": (raw.get("rope_scaling"), None),
        "head_dim": (raw.get("head_dim", hidden // heads), hidden // heads),
    }
    for field, (value, wanted) in refusals.items():
        if value != wanted:
            raise ConversionError(
                f"{source}: {field} = {value!r} is not supported (megaindex's model needs {wanted!r}); "
                f"this checkpoint would compute something else after conversion."
            )
    rope_theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
    if not float(rope_theta).is_integer():
        raise ConversionError(f"{source}: rope_theta {rope_theta} is not an integer; model.rotary_base is one.")
    return dict(
        num_layers=_require(raw, "num_hidden_layers", source),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=raw.get("num_key_value_heads") or heads,
        ffn_hidden_size=_require(raw, "intermediate_size", source),
        vocab_size=_require(raw, "vocab_size", source),
        norm_epsilon=float(raw.get("rms_norm_eps", 1e-6)),
        norm_head=bool(raw.get("norm_head", False)),
        untie_embeddings_and_output_weights=True,  # a tied HF head is copied into a separate lm_head
        rotary_base=int(rope_theta),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
    )


def arch_of(m: ModelConfig) -> Arch:
    return Arch(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.kv_heads,
        ffn_hidden_size=m.ffn_hidden_size,
        vocab_size=m.vocab_size,
    )


def hf_config_dict(m: ModelConfig, fmt: str, torch_dtype: str, template: dict[str, Any] | None = None,
                   rope_scaling: dict[str, Any] | None = None, max_position_embeddings: int | None = None) -> dict[str, Any]:
    """config.json for an exported checkpoint.

    llama: stock `LlamaForCausalLM` (no remote code); the normalised head is baked into lm_head.
    index: `IndexForCausalLM` with `norm_head: true` and the template's auto_map (remote code).
    Fields from a template config are kept unless megaindex owns them (shapes, rope, eps, vocab).
    rope_scaling: a training-free RoPE variant's parameters (megaindex.model.rope_variants.hf_rope_parameters),
    written as `rope_parameters` (transformers >= 5) and `rope_scaling` (older versions and Index's
    remote code read it, with "type");
    max_position_embeddings overrides the model's (HF's dynamic NTK reads the training length there).
    """
    cfg: dict[str, Any] = {}
    if fmt == "index" and template:
        cfg.update(template)
    cfg.update(
        architectures=["IndexForCausalLM" if fmt == "index" else "LlamaForCausalLM"],
        model_type=(template or {}).get("model_type", "index") if fmt == "index" else "llama",
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.kv_heads,
        head_dim=m.head_dim,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=m.norm_epsilon,
        # both spellings: transformers < 5 and Index's remote code read rope_theta, >= 5 rope_parameters
        rope_theta=float(m.rotary_base),
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rotary_base)},
        max_position_embeddings=max_position_embeddings or m.max_position_embeddings,
        vocab_size=m.vocab_size,  # unpadded: the padding is a megatron artefact
        tie_word_embeddings=False,
        bos_token_id=INDEX_BOS_ID,
        eos_token_id=INDEX_EOS_ID,
        pad_token_id=INDEX_EOS_ID,
        torch_dtype=torch_dtype,
        initializer_range=0.02,
        use_cache=True,
    )
    if fmt == "index":
        cfg["norm_head"] = True if m.norm_head else cfg.get("norm_head", False)
    else:
        cfg.pop("norm_head", None)
        cfg.pop("auto_map", None)
    cfg.pop("rope_scaling", None)
    if rope_scaling:
        cfg["rope_parameters"] = dict(rope_scaling)
        # transformers >= 5 reads rope_scaling first when both are present (it keeps rope_theta from the
        # top level); older code, Index's remote modeling included, reads its "type"
        cfg["rope_scaling"] = {"type": rope_scaling["rope_type"], **{k: v for k, v in rope_scaling.items() if k != "rope_theta"}}
    return cfg


def generation_config_dict() -> dict[str, Any]:
    """generation_config.json per Index: <s>=1, </s>=2, pad = eos."""
    return {"bos_token_id": INDEX_BOS_ID, "eos_token_id": INDEX_EOS_ID, "pad_token_id": INDEX_EOS_ID}


def llama_config_for_parity(raw: dict[str, Any]):
    """A transformers LlamaConfig equivalent to an HF Llama/Index config (Norm-Head is applied by the
    caller): read into megaindex's fields and written back by the one mapping, hf_config_dict."""
    from transformers import LlamaConfig

    return LlamaConfig(**hf_config_dict(ModelConfig(**model_fields_from_hf(raw)), "llama", "float32"))
