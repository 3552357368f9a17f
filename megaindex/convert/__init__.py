"""HF <-> megatron-core checkpoint conversion (used by tools/convert_*.py and `megaindex convert`).

Modules: layout (names, shapes, fused QKV/SwiGLU, TP shards, vocab padding), hf_config (config.json
in and out), hf_io (streaming safetensors/.bin reads, sharded safetensors writes), dist_io (streaming
torch_dist checkpoint writes and reads), from_hf / to_hf (the two pipelines), parity (`--check`),
outdir (atomic output directories), progress, cli (`main(argv)`).
"""

from megaindex.convert.hf_config import ConversionError

__all__ = ["ConversionError"]
