"""Builders of small HF checkpoints with random weights for the converter tests (no tests here).

* a Llama checkpoint written by transformers' own `save_pretrained` (GQA, sharded safetensors);
* an Index-style checkpoint: hand-written config.json (`IndexForCausalLM`, `norm_head: true`) with
  Llama tensor names, an un-normalised lm_head, a stand-in modeling file and the test tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).parent / "fixtures"

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)


def llama_config(**over):
    from transformers import LlamaConfig

    kw = {**TINY, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, **over}
    return LlamaConfig(**kw)


def randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """HF initialises norms to ones; random norms make a swapped norm visible in the tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=g))


def make_llama(path: Path, *, seed: int = 0, shard_size: str = "100KB", **over) -> Path:
    """A stock LlamaForCausalLM saved by transformers (several safetensors shards + index json)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**over)).float()
    randomize_norms(model, seed)
    model.save_pretrained(path, max_shard_size=shard_size)
    return path


def make_index(path: Path, *, seed: int = 1, bin_format: bool = False, **over) -> Path:
    """An Index-1.9B-style checkpoint: norm_head, IndexForCausalLM, remote-code files, tokenizer."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = {**TINY, "num_key_value_heads": TINY["num_attention_heads"], **over}
    model = LlamaForCausalLM(llama_config(**cfg)).float()
    randomize_norms(model, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():  # rows of very different norms: Norm-Head then changes the logits a lot
        state["lm_head.weight"] = state["lm_head.weight"] * torch.linspace(0.1, 10, cfg["vocab_size"]).unsqueeze(1)
    path.mkdir(parents=True)
    if bin_format:
        torch.save(state, path / "pytorch_model.bin")
    else:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["IndexForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_index.IndexConfig",
                     "AutoModelForCausalLM": "modeling_index.IndexForCausalLM"},
        "model_type": "index",
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 320000.0,
        "norm_head": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "modeling_index.py").write_text("# stand-in for Index's remote modeling code\n")
    (path / "configuration_index.py").write_text("# stand-in for Index's remote config code\n")
    shutil.copy2(FIXTURES / "tokenizer.model", path / "tokenizer.model")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return path


def read_hf_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint directory (safetensors shards or pytorch_model.bin)."""
    from megaindex.convert.hf_io import HFWeights

    w = HFWeights(path)
    return {name: w.get(name) for name in w.names()}
