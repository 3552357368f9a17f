"""Streaming reads and writes of HF weight files.

Owns finding an HF checkpoint's weights (`model.safetensors`, sharded safetensors with
`model.safetensors.index.json`, or `pytorch_model*.bin` loaded with `weights_only=True` and mmap),
reading one tensor at a time, and writing sharded safetensors plus the index json. Reading and
writing one tensor at a time (see safetensors_stream) is what keeps a 2B-parameter conversion
within a few GB: no step ever holds the whole model. (Legacy .bin files are memory-mapped by
torch.load, so their touched pages do count towards resident memory.)
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from megaindex.convert.hf_config import ConversionError
from megaindex.convert.safetensors_stream import SafetensorsFile, SafetensorsShard

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
        h = self._handle(path.name)
        return list(h) if isinstance(h, dict) else h.names()

    def _handle(self, fname: str):
        """A safetensors header, or the memory-mapped state dict of a .bin file (cached)."""
        if fname not in self._open:
            path = self.dir / fname
            if fname.endswith(".safetensors"):
                try:
                    self._open[fname] = SafetensorsFile(path)
                except ValueError as e:
                    raise ConversionError(str(e)) from None
            else:
                # weights_only: a .bin is a pickle; never run code from it. mmap: no full read.
                try:
                    self._open[fname] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except pickle.UnpicklingError:
                    bad = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "an object"
                    raise ConversionError(
                        f"{path}: refuses to load {bad}; a weights file holds only tensors (this one may run code). "
                        f"Use the model's safetensors files or a trusted copy."
                    ) from None
                except (RuntimeError, EOFError, OSError) as e:
                    raise ConversionError(f"{path}: not a readable PyTorch weights file ({e}).") from None
        return self._open[fname]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        h = self._handle(self._file(name))
        if isinstance(h, dict):
            return tuple(h[name].shape)
        return h.shape(name)

    def _file(self, name: str) -> str:
        if name not in self._where:
            raise ConversionError(f"{self.dir}: tensor '{name}' is missing from the HF checkpoint.")
        return self._where[name]

    def get(self, name: str, expected_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        h = self._handle(self._file(name))
        if isinstance(h, dict):
            t = h[name].clone()
        else:
            try:
                t = h.read(name)
            except (KeyError, ValueError) as e:
                raise ConversionError(f"{self.dir}: cannot read tensor '{name}': {e}") from None
        if expected_shape is not None and tuple(t.shape) != tuple(expected_shape):
            raise ConversionError(
                f"{self.dir}: tensor '{name}' has shape {tuple(t.shape)}, but config.json implies "
                f"{tuple(expected_shape)}; the weights do not belong to this config."
            )
        return t

    def close(self) -> None:
        self._open.clear()


class ShardedSafetensorsWriter:
    """Writes tensors into `model-0000i-of-0000N.safetensors` shards of at most `max_shard_bytes`.

    Each tensor goes to disk as it arrives (SafetensorsShard); shard names need the final count N,
    so shards are written under provisional names and renamed in `finish`.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3):
        self.dir = Path(out_dir)
        self.max = max_shard_bytes
        self._shard: SafetensorsShard | None = None
        self._shards: list[tuple[str, list[str]]] = []  # provisional file, names
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._shard is not None and self._shard.entries and self._shard.nbytes + size > self.max:
            self._close()
        if self._shard is None:
            self._shard = SafetensorsShard(self.dir / f"shard-{len(self._shards):05d}.partial")
        self._shard.add(name, tensor)
        self.total_bytes += size

    def _close(self) -> None:
        self._shard.close(metadata={"format": "pt"})
        self._shards.append((self._shard.path.name, list(self._shard.entries)))
        self._shard = None

    def finish(self) -> dict[str, str]:
        """Close the last shard, name shards HF-style and write the index json; returns the weight map."""
        if self._shard is not None:
            self._close()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, (fname, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.dir / fname).rename(self.dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return weight_map
