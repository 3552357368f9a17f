"""megaindex checkpoint (any layout, model or train kind) -> HF checkpoint.

Owns the export pipeline: read megaindex.json + config.yaml, validate every tensor's shape against
the architecture, stream one layer at a time out of the dist checkpoint into sharded safetensors,
and write config.json, generation_config.json and tokenizer files.

Formats:
* `llama`: stock `LlamaForCausalLM`, loadable by `transformers.AutoModelForCausalLM` without remote
  code. With Norm-Head, `lm_head.weight` holds normalize(W) computed by the very function the model
  uses in its forward (megaindex.model.output_layer.normalize_rows), so the logits are identical.
* `index`: Index's own layout (`IndexForCausalLM`, `norm_head: true`, un-normalised lm_head); the
  modeling/configuration code and tokenizer come from `template_dir` (the released checkpoint).

The input may be a checkpoint, its save directory or `latest` file, or a run directory. The
tokenizer files are chat-ready: Index's chat template (megaindex.convert.chat_template), so
`apply_chat_template` gives the ids SFT trained on.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from megaindex.config import ConfigError, load_config
from megaindex.convert import weight_map as L
from megaindex.convert.chat_template import add_chat_template, write_tokenizer_config
from megaindex.convert.dist_io import DistCheckpointReader
from megaindex.convert.from_hf import DTYPES, TOKENIZER_DIR, TOKENIZER_FILES
from megaindex.convert.hf_config import (
    ConversionError,
    arch_of,
    generation_config_dict,
    hf_config_dict,
    read_hf_config,
)
from megaindex.convert.hf_io import ShardedSafetensorsWriter
from megaindex.convert.outdir import atomic_out_dir, check_out_dir
from megaindex.convert.progress import ProgressLog

FORMATS = ("llama", "index")


def _load_checkpoint_config(ckpt: Path):
    from megaindex.checkpoint import CONFIG_FILE, CheckpointError, check_architecture, verify

    cfg_path = ckpt / CONFIG_FILE
    if not cfg_path.is_file():
        raise ConversionError(f"{ckpt} is not a megaindex checkpoint: {CONFIG_FILE} is missing.")
    try:
        cfg = load_config(cfg_path)
        check_architecture(cfg, ckpt)  # megaindex.json and config.yaml must describe one model
        verify(ckpt)  # every file as written (a truncated shard is named here, not deep in DCP)
    except (ConfigError, CheckpointError) as e:
        raise ConversionError(str(e)) from None
    return cfg


def check_dist_tensors(reader: DistCheckpointReader, arch: L.Arch, tied: bool) -> None:
    """Every tensor the export reads must exist with the shape the architecture implies."""
    h = arch.hidden_size
    for key, shape in arch.layer_shapes().items():
        want = (arch.num_layers, *shape)
        if reader.shape(key) != want:
            raise ConversionError(
                f"{reader.path}: tensor '{key}' has shape {reader.shape(key)}, the checkpoint's config "
                f"implies {want}; the checkpoint does not match its config.yaml."
            )
    if reader.shape(L.FINAL_NORM) != (h,):
        raise ConversionError(f"{reader.path}: tensor '{L.FINAL_NORM}' has shape {reader.shape(L.FINAL_NORM)}, expected ({h},).")
    for key in (L.EMBEDDING,) + (() if tied else (L.OUTPUT,)):
        rows, cols = reader.shape(key)
        if cols != h or rows < arch.vocab_size:
            raise ConversionError(
                f"{reader.path}: tensor '{key}' has shape {(rows, cols)}; expected at least "
                f"({arch.vocab_size}, {h}) (vocab_size, hidden_size) from config.yaml."
            )


def _rope_config(spec: str | None, base: int, train_length: int) -> tuple[dict | None, int | None]:
    """(rope parameters, max_position_embeddings) for --rope-scaling: dynamic NTK reads the training
    length L from max_position_embeddings; linear and YaRN are meant for factor x L tokens."""
    if not spec:
        return None, None
    from megaindex.model.rope_variants import RopeVariantError, hf_rope_parameters, parse_rope

    try:
        variant = parse_rope(spec)
    except RopeVariantError as e:
        raise ConversionError(f"--rope-scaling: {e}") from None
    if variant.kind == "naive":
        return None, None
    return hf_rope_parameters(variant, base, train_length), variant.max_length(train_length) if variant.kind != "dynamic" else train_length


def open_for_export(ckpt: Path):
    """(config, reader, arch, tied) of a megaindex checkpoint, every tensor's shape checked."""
    cfg = _load_checkpoint_config(ckpt)
    arch = arch_of(cfg.model)
    reader = DistCheckpointReader(ckpt)
    tied = not cfg.model.untie_embeddings_and_output_weights or L.OUTPUT not in reader.tensors
    check_dist_tensors(reader, arch, tied)
    return cfg, reader, arch, tied


def convert_to_hf(
    ckpt: str | Path,
    out: str | Path,
    *,
    fmt: str = "llama",
    template_dir: str | Path | None = None,
    dtype: str = "auto",
    max_shard_bytes: int = 2 * 1024**3,
    force: bool = False,
    rope_scaling: str | None = None,
    train_length: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export; returns the output directory. Nothing is left at `out` if anything fails.

    rope_scaling: a training-free RoPE variant ("linear:16", "dynamic:8", "yarn:16") written into
    config.json for the training length `train_length` (default: the checkpoint's data.seq_length),
    so that transformers computes what `megaindex eval --rope` does."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    ckpt = resolve_checkpoint(ckpt, log)
    check_out_dir(out, force, inputs=[ckpt, template_dir])
    template = Path(template_dir) if template_dir else None
    template_cfg = read_hf_config(template) if template else None
    cfg, reader, arch, tied = open_for_export(ckpt)
    m = cfg.model
    rope_params, max_pos = _rope_config(rope_scaling, m.rotary_base, train_length or cfg.data.seq_length)
    if dtype == "auto":
        out_dtype = reader.dtype(L.EMBEDDING)
    elif dtype in DTYPES:
        out_dtype = DTYPES[dtype]
    else:
        raise ConversionError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    bake = fmt == "llama" and m.norm_head
    log(
        f"[convert] {ckpt} -> {out} ({fmt}): {arch.num_layers} layers, vocab {reader.shape(L.EMBEDDING)[0]} -> "
        f"{arch.vocab_size}, norm_head {m.norm_head}{' (baked into lm_head)' if bake else ''}, {out_dtype}"
    )

    progress = ProgressLog(arch.num_layers + 2, "layers+embeddings", log)
    start = time.time()
    with atomic_out_dir(out, force, inputs=[ckpt, template_dir]) as tmp:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes)
        for name, t in hf_tensors(reader, arch, tied=tied, bake=bake, out_dtype=out_dtype, on_layer=progress.step):
            writer.add(name, t)
        writer.finish()

        dtype_name = str(out_dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(m, fmt, dtype_name, template_cfg, rope_params, max_pos), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config_dict(), indent=2) + "\n")
        copied = _copy_support_files(ckpt, cfg.data.tokenizer_model, template, fmt, tmp)
        if "tokenizer.model" in copied and fmt == "llama":  # chat-ready: Index's template for apply_chat_template
            write_tokenizer_config(tmp, m.max_position_embeddings)
            copied = [c for c in copied if c not in ("tokenizer.json", "tokenizer_config.json")] + ["tokenizer_config.json (chat template)"]
        elif (tmp / "tokenizer_config.json").is_file() and add_chat_template(tmp / "tokenizer_config.json"):
            copied.append("chat template")
    log(f"[convert] wrote {out} in {time.time() - start:.1f}s" + (f"; copied {', '.join(copied)}" if copied else ""))
    return Path(out)


def hf_tensors(reader: DistCheckpointReader, arch: L.Arch, *, tied: bool, bake: bool, out_dtype: torch.dtype,
               on_layer: Callable[[], None] = lambda: None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor in out_dtype) of every exported weight, read one layer at a time: what
    convert_to_hf writes, and what the evaluation engine loads into transformers in memory.
    `on_layer` is called after the embedding, each layer and the head."""
    from megaindex.model.output_layer import normalize_rows

    emb = L.unpad_vocab(reader.get(L.EMBEDDING), arch.vocab_size)
    yield L.HF_EMBEDDING, emb.to(out_dtype)
    if not tied:
        emb = None
    on_layer()
    for layer in range(arch.num_layers):
        for key in L.LAYER_KEYS:
            for name, t in L.split_layer_tensor(key, reader.get(key, layer), arch, layer).items():
                yield name, t.to(out_dtype)
        on_layer()
    yield L.HF_FINAL_NORM, reader.get(L.FINAL_NORM).to(out_dtype)
    head = emb if tied else L.unpad_vocab(reader.get(L.OUTPUT), arch.vocab_size)
    del emb
    if bake:
        head = _baked_head(head, out_dtype, normalize_rows)
    yield L.HF_OUTPUT, head.to(out_dtype)
    on_layer()


def resolve_checkpoint(path: str | Path, log: Callable[[str], None] = print) -> Path:
    """A checkpoint directory from what a user has at hand: the checkpoint itself, a save directory
    or its `latest` file (follows the pointer), or a run directory (RUN_DIR/checkpoints/latest)."""
    from megaindex.checkpoint import LATEST_FILE, META_FILE

    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    for pointer in (p, p / LATEST_FILE, p / "checkpoints" / LATEST_FILE):
        if pointer.is_file() and pointer.name == LATEST_FILE:
            target = pointer.parent / pointer.read_text().strip()
            if not (target / META_FILE).is_file():
                raise ConversionError(f"{pointer} names {target.name}, which is not a complete checkpoint.")
            log(f"[convert] {path}: following {pointer} -> {target}")
            return target
    raise ConversionError(
        f"{path} is not a megaindex checkpoint ({META_FILE} missing) and has no `latest` pointer "
        f"(nor checkpoints/latest); give a checkpoint directory, its save directory, or the run directory."
    )


def _baked_head(head: torch.Tensor, out_dtype: torch.dtype, normalize_rows, rows: int = 8192) -> torch.Tensor:
    """normalize(W) in fp32 (for an fp32 checkpoint exactly the forward's computation), rounded once
    to the output dtype; in row blocks, since the normalisation is per row, to bound memory."""
    out = torch.empty(head.shape, dtype=out_dtype)
    for start in range(0, head.shape[0], rows):
        out[start:start + rows] = normalize_rows(head[start:start + rows].float())
    return out


def _copy_support_files(ckpt: Path, tokenizer_model: str | None, template: Path | None, fmt: str, dst: Path) -> list[str]:
    """Tokenizer files (template dir first, then the checkpoint's own), and Index's modeling code."""
    copied: list[str] = []
    if template:
        for name in TOKENIZER_FILES:
            if (template / name).is_file():
                shutil.copy2(template / name, dst / name)
                copied.append(name)
        if fmt == "index":
            for src in sorted(template.glob("*.py")):
                shutil.copy2(src, dst / src.name)
                copied.append(src.name)
    if "tokenizer.model" not in copied:
        candidates = [ckpt / TOKENIZER_DIR / "tokenizer.model"]
        if tokenizer_model:
            p = Path(tokenizer_model)  # absolute, relative to the working dir, or to the checkpoint
            candidates[:0] = [p] if p.is_absolute() else [p, ckpt / p]
        for src in candidates:
            if src.is_file():
                shutil.copy2(src, dst / "tokenizer.model")
                copied.append("tokenizer.model")
                break
        else:
            if tokenizer_model:
                raise ConversionError(
                    f"the checkpoint's config names data.tokenizer_model {tokenizer_model}, which does not "
                    f"exist; pass --template-dir with the tokenizer files."
                )
        own = ckpt / TOKENIZER_DIR
        for name in TOKENIZER_FILES[1:]:
            if name not in copied and (own / name).is_file():
                shutil.copy2(own / name, dst / name)
                copied.append(name)
    return copied
