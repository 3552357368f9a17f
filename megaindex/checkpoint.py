"""Checkpoints on megatron-core dist_checkpointing.

A megaindex checkpoint is a directory:
    <dir>/                   megatron dist checkpoint (torch_dist): {"model": GPTModel.sharded_state_dict()}
                             ({"model0", "model1", ...} with virtual pipeline stages, as Megatron-LM),
                             plus whatever the trainer adds (optimizer, scheduler, data position, RNG)
    <dir>/megaindex.json     what wrote it: kind (model|train), step, architecture fields, git revision
    <dir>/config.yaml        the resolved config of the run that wrote it

dist_checkpointing stores global tensors keyed by megatron's parameter names, with the TE and local
module layouts mapped onto the same keys, so a checkpoint loads into any TP/PP/CP/DP layout and
either module layout. Writes go to a temporary sibling directory renamed into place once every
rank has finished, so a crash never leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from megaindex.config import Config

META_FILE = "megaindex.json"
CONFIG_FILE = "config.yaml"
ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "vocab_size", "norm_head")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not match the model."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def model_state_keys(n_chunks: int) -> list[str]:
    return ["model"] if n_chunks == 1 else [f"model{i}" for i in range(n_chunks)]


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    return {k: c.sharded_state_dict() for k, c in zip(model_state_keys(len(chunks)), chunks)}


def architecture(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    return {f: (m.kv_heads if f == "num_query_groups" else getattr(m, f)) for f in ARCH_FIELDS}


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta = path / META_FILE
    if not meta.is_file():
        raise CheckpointError(
            f"{path} is not a megaindex checkpoint ({META_FILE} missing); "
            f"convert HF weights with tools/convert_from_hf.py first."
        )
    return json.loads(meta.read_text())


def check_architecture(cfg: Config, path: str | Path) -> None:
    """Refuse a checkpoint written for another model, naming the first differing field."""
    saved = read_meta(path).get("architecture", {})
    mine = architecture(cfg)
    diffs = [f"{k}: checkpoint {saved[k]} vs config {mine[k]}" for k in mine if k in saved and saved[k] != mine[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written for a different model: " + "; ".join(diffs))


def save_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    cfg: Config,
    *,
    kind: str,
    step: int = 0,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Collectively write `state` (a sharded state dict) to `path` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank() == 0:
        meta = {"kind": kind, "step": step, "architecture": architecture(cfg), "git_revision": git_revision()}
        meta.update(extra_meta or {})
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    _barrier()
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(chunks: list[torch.nn.Module], path: str | Path, cfg: Config, **meta: Any) -> Path:
    """Write model weights only (what the HF converter produces and stage 2 starts from)."""
    return save_checkpoint(path, model_sharded_state_dict(chunks), cfg, kind="model", extra_meta=meta)


def load_model(chunks: list[torch.nn.Module], path: str | Path, cfg: Config | None = None) -> dict[str, Any]:
    """Load model weights from any megaindex checkpoint into this rank's chunks (any layout)."""
    path = Path(path)
    if cfg is not None:
        check_architecture(cfg, path)
    else:
        read_meta(path)
    sharded = model_sharded_state_dict(chunks)
    try:
        loaded = dist_checkpointing.load(sharded, str(path), strict="raise_all")
    except Exception as e:  # dist_checkpointing raises several types; name the checkpoint
        raise CheckpointError(f"loading model weights from {path} failed: {e}") from e
    for key, chunk in zip(model_state_keys(len(chunks)), chunks):
        chunk.load_state_dict(loaded[key], strict=True)
    return read_meta(path)
