"""Streaming reads and writes of HF weight files.

Owns finding an HF checkpoint's weights (`model.safetensors`, sharded safetensors with
`model.safetensors.index.json`, or `pytorch_model*.bin` loaded with `weights_only=True` and mmap),
reading one tensor at a time, and writing sharded safetensors plus the index json. Reading one
tensor at a time (safetensors' `safe_open`, memory-mapped .bin files) is what keeps a 2B-parameter
conversion within a few GB: no step ever holds the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megaindex.convert.hf_config import ConversionError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


class HFWeights:
    """Read-only, tensor-at-a-time access to the weights of an HF checkpoint directory."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        self._where: dict[str, str] = {}  # tensor name -> file name
        self._open: dict[str, object] = {}
        for index_name, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
            index, one = self.dir / index_name, self.dir / single
            if index.is_file():
                weight_map = json.loads(index.read_text()).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ConversionError(f"{index}: no 'weight_map'; the index json is damaged.")
                self._where = dict(weight_map)
                break
            if one.is_file():
                self._where = {name: single for name in self._names_in(one)}
                break
        else:
            raise ConversionError(
                f"{self.dir} holds no HF weights: looked for {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX}, {BIN_SINGLE}."
            )
        for fname in sorted(set(self._where.values())):
            if not (self.dir / fname).is_file():
                raise ConversionError(f"{self.dir}: weight shard {fname} named by the index json is missing.")

    def _names_in(self, path: Path) -> list[str]:
        return list(self._handle(path.name).keys())

    def _handle(self, fname: str):
        """An open safetensors file, or the memory-mapped state dict of a .bin file (cached)."""
        if fname not in self._open:
            path = self.dir / fname
            if fname.endswith(".safetensors"):
                self._open[fname] = safe_open(str(path), framework="pt", device="cpu")
            else:
                # weights_only: a .bin is a pickle; never run code from it. mmap: no full read.
                self._open[fname] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return self._open[fname]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        h = self._handle(self._file(name))
        if isinstance(h, dict):
            return tuple(h[name].shape)
        return tuple(h.get_slice(name).get_shape())

    def _file(self, name: str) -> str:
        if name not in self._where:
            raise ConversionError(f"{self.dir}: tensor '{name}' is missing from the HF checkpoint.")
        return self._where[name]

    def get(self, name: str, expected_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        h = self._handle(self._file(name))
        t = h[name].clone() if isinstance(h, dict) else h.get_tensor(name)
        if expected_shape is not None and tuple(t.shape) != tuple(expected_shape):
            raise ConversionError(
                f"{self.dir}: tensor '{name}' has shape {tuple(t.shape)}, but config.json implies "
                f"{tuple(expected_shape)}; the weights do not belong to this config."
            )
        return t

    def dtype(self) -> torch.dtype:
        """The dtype of the embedding (the checkpoint's storage precision)."""
        return self.get("model.embed_tokens.weight").dtype

    def close(self) -> None:
        self._open.clear()


class ShardedSafetensorsWriter:
    """Writes tensors into `model-0000i-of-0000N.safetensors` shards of at most `max_shard_bytes`.

    Tensors are buffered only until a shard is full, then written and dropped. Shard names need
    the final count N, so shards are written under provisional names and renamed in `finish`.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3):
        self.dir = Path(out_dir)
        self.max = max_shard_bytes
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []  # provisional file, names
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buf and self._buf_bytes + size > self.max:
            self._flush()
        self._buf[name] = tensor.contiguous()
        self._buf_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        fname = f"shard-{len(self._shards):05d}.partial"
        save_file(self._buf, str(self.dir / fname), metadata={"format": "pt"})
        self._shards.append((fname, list(self._buf)))
        self._buf, self._buf_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        """Write the last shard, name shards HF-style and write the index json; returns the weight map."""
        if self._buf:
            self._flush()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, (fname, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.dir / fname).rename(self.dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return weight_map
