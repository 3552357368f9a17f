"""HF (Index-1.9B or any Llama-architecture checkpoint) -> megaindex checkpoint.

Owns the import pipeline: read and validate config.json, check every expected tensor's presence and
shape before writing anything, stream the weights into a megatron dist checkpoint (fused QKV, fused
SwiGLU fc1, norms under TE's keys, vocab padded), and write megaindex.json + config.yaml beside it,
so that `megaindex.checkpoint.load_model` (the trainer's `checkpoint.pretrained`) loads it.

A dist checkpoint holds global tensors, so the output loads into ANY TP/PP/VPP layout and either
module layout; `tp`/`pp`/`vpp` only validate that the architecture fits that layout and choose the
vocab padding (a multiple of make_vocab_size_divisible_by x TP). A model whose padding differs still
loads: megatron reads the embedding and head with `allow_shape_mismatch`, and padded rows are zero.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from megaindex.checkpoint import write_meta
from megaindex.config import Config, ConfigError, ModelConfig
from megaindex.convert import weight_map as L
from megaindex.convert.dist_io import LazyTensor, object_key, write_dist_checkpoint
from megaindex.convert.hf_config import ConversionError, arch_of, model_fields_from_hf, read_hf_config
from megaindex.convert.hf_io import HFWeights
from megaindex.convert.outdir import atomic_out_dir, check_out_dir
from megaindex.convert.progress import ProgressLog

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_DIR = "tokenizer"
# Buffers some older Llama checkpoints carry; recomputed by every model, never converted.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def target_config(model_fields: dict, tp: int, pp: int, vpp: int | None, make_vocab_divisible_by: int = 128) -> Config:
    """A megaindex Config for the model in the target layout, validated (names what does not fit)."""
    cfg = Config(name="converted")
    cfg.model = ModelConfig(**model_fields, make_vocab_size_divisible_by=make_vocab_divisible_by)
    p = cfg.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size = tp, pp
    p.virtual_pipeline_model_parallel_size = vpp
    # The context the source model was built for; evaluation reads it as the training length. The
    # other data settings are the training recipe's, so only the model x layout fit is checked.
    cfg.data.seq_length = cfg.model.max_position_embeddings
    try:
        cfg.validate_model_layout()
    except ConfigError as e:
        raise ConversionError(f"the model does not fit --tp {tp} --pp {pp} --vpp {vpp}: {e}") from None
    return cfg


def expected_hf_shapes(arch: L.Arch, tied: bool) -> dict[str, tuple[int, ...]]:
    shapes = {L.HF_EMBEDDING: (arch.vocab_size, arch.hidden_size), L.HF_FINAL_NORM: (arch.hidden_size,)}
    if not tied:
        shapes[L.HF_OUTPUT] = (arch.vocab_size, arch.hidden_size)
    for layer in range(arch.num_layers):
        for suffix, shape in arch.hf_shapes().items():
            shapes[L.hf_layer_name(layer, suffix)] = shape
    return shapes


def check_hf_tensors(weights: HFWeights, arch: L.Arch, tied: bool) -> None:
    """Refuse missing, unexpected or mis-shaped tensors before anything is written."""
    expected = expected_hf_shapes(arch, tied)
    missing = [n for n in expected if n not in weights]
    if missing:
        raise ConversionError(
            f"{weights.dir}: {len(missing)} tensor(s) that config.json implies are missing, first "
            f"'{missing[0]}'; the weights and config.json do not match."
        )
    unexpected = [n for n in weights.names() if n not in expected and not _IGNORED.fullmatch(n) and not (tied and n == L.HF_OUTPUT)]
    if unexpected:
        raise ConversionError(
            f"{weights.dir}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} in all) for a "
            f"{arch.num_layers}-layer Llama/Index model without biases; it is a checkpoint of another model."
        )
    for name, shape in expected.items():
        got = weights.shape(name)
        if got != shape:
            raise ConversionError(
                f"{weights.dir}: tensor '{name}' has shape {got}, config.json implies {shape}; "
                f"the weights are from another model (or config.json is wrong)."
            )


def _lazy_tensors(weights: HFWeights, arch: L.Arch, padded_vocab: int, tied: bool, dtype: torch.dtype) -> dict[str, LazyTensor]:
    h, n = arch.hidden_size, arch.num_layers

    def whole(shape, make):
        return LazyTensor(tuple(shape), dtype, [(0,) * len(shape)], [tuple(shape)], lambda _i: make().to(dtype))

    def vocab(name):
        return whole((padded_vocab, h), lambda: L.pad_vocab(weights.get(name), padded_vocab))

    tensors = {
        L.EMBEDDING: vocab(L.HF_EMBEDDING),
        L.FINAL_NORM: whole((h,), lambda: weights.get(L.HF_FINAL_NORM)),
        L.OUTPUT: vocab(L.HF_EMBEDDING if tied else L.HF_OUTPUT),
    }
    for key, shape in arch.layer_shapes().items():

        def make(layer, key=key):
            t = L.join_layer_tensor(key, lambda s: weights.get(L.hf_layer_name(layer, s)), arch)
            return t.unsqueeze(0).to(dtype)

        tensors[key] = LazyTensor(
            (n, *shape), dtype, [(i,) + (0,) * len(shape) for i in range(n)], [(1, *shape)] * n, make
        )
    return tensors


def extra_state_objects(num_layers: int) -> dict[str, None]:
    """The per-linear `_extra_state` ShardedObjects both module layouts request (None = no FP8 state)."""
    return {
        object_key(f"{module}._extra_state", i, num_layers): None
        for module in L.EXTRA_STATE_MODULES
        for i in range(num_layers)
    }


def convert_from_hf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    dtype: str = "auto",
    make_vocab_divisible_by: int = 128,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Convert; returns the output directory. Nothing is left at `out` if anything fails."""
    hf_dir = Path(hf_dir)
    check_out_dir(out, force, inputs=[hf_dir])
    raw = read_hf_config(hf_dir)
    fields = model_fields_from_hf(raw, source=str(hf_dir / "config.json"))
    cfg = target_config(fields, tp, pp, vpp, make_vocab_divisible_by)
    arch = arch_of(cfg.model)
    weights = HFWeights(hf_dir)
    tied = bool(raw.get("tie_word_embeddings", False)) or L.HF_OUTPUT not in weights
    check_hf_tensors(weights, arch, tied)
    if dtype == "auto":
        torch_dtype = weights.get(L.HF_FINAL_NORM).dtype
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise ConversionError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    padded = cfg.padded_vocab_size
    log(
        f"[convert] {hf_dir} -> {out}: {arch.num_layers} layers, hidden {arch.hidden_size}, "
        f"vocab {arch.vocab_size} -> {padded} (padded for TP {tp}), norm_head {cfg.model.norm_head}, {torch_dtype}"
    )

    tensors = _lazy_tensors(weights, arch, padded, tied, torch_dtype)
    progress = ProgressLog(sum(len(t.offsets) for t in tensors.values()), "chunks", log)
    start = time.time()
    with atomic_out_dir(out, force, inputs=[hf_dir]) as tmp:
        write_dist_checkpoint(tmp, tensors, extra_state_objects(arch.num_layers), on_chunk=progress.step)
        final = Path(out).absolute()
        copied = _copy_tokenizer(hf_dir, tmp / TOKENIZER_DIR)
        if (tmp / TOKENIZER_DIR / "tokenizer.model").is_file():
            cfg.data.tokenizer_model = str(final / TOKENIZER_DIR / "tokenizer.model")
        write_meta(tmp, cfg, kind="model", extra_meta={
            "source": {"format": "hf", "path": str(hf_dir.absolute()), "architectures": raw.get("architectures")},
            "converted_for": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                              "virtual_pipeline_model_parallel_size": vpp, "padded_vocab_size": padded},
            "dtype": str(torch_dtype).removeprefix("torch."),
        })
    weights.close()
    log(f"[convert] wrote {out} in {time.time() - start:.1f}s" + (f"; tokenizer files: {', '.join(copied)}" if copied else ""))
    return Path(out)


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    found = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if found:
        dst.mkdir()
        for name in found:
            shutil.copy2(src / name, dst / name)
    return found
