"""The safetensors file format, read and written one tensor at a time with plain file I/O.

Why not the `safetensors` package: its reader memory-maps the file, and every page a conversion
touches stays mapped and counted in the process's resident memory until the file is closed (a
4 GB checkpoint showed 5.4 GB peak RSS); its writer needs every tensor of a shard in memory at once.
The format is small (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the raw little-endian bytes), so reading seeks to one
tensor, and writing appends each tensor's bytes behind space reserved for the header.
Files written here are read by `safetensors`/transformers and vice versa (tests check both ways).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch

from megaindex import atomic

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {v: k for k, v in DTYPES.items()}
_COPY_CHUNK = 64 * 1024**2


class SafetensorsFile:
    """The header of one .safetensors file, and reads of single tensors from it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path}: damaged safetensors header: {e}") from None
        self.data_start = 8 + n
        self.metadata = header.pop("__metadata__", {})
        self.entries: dict[str, dict] = header

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        begin, end = e["data_offsets"]
        dtype = DTYPES[e["dtype"]]
        buf = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"{self.path}: tensor '{name}' is truncated (file shorter than its header says)")
        if not buf:
            return torch.empty(e["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(e["shape"])


class SafetensorsShard:
    """One .safetensors file written tensor by tensor.

    The header (names, shapes, offsets) is only known at the end, but comes first in the file. The
    format allows trailing spaces in the header, so HEADER_RESERVE bytes are left for it and filled
    in by `close()`; a header that outgrows the reserve (thousands of tensors in one shard) is
    handled by rewriting the file with a larger header (slower, same result).
    """

    HEADER_RESERVE = 256 * 1024

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb")
        self._f.write(b"\0" * (8 + self.HEADER_RESERVE))
        self.entries: dict[str, dict] = {}
        self.nbytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype not in NAMES:
            raise ValueError(f"tensor '{name}': dtype {tensor.dtype} cannot be stored in safetensors")
        t = tensor.detach().contiguous().cpu()
        size = t.numel() * t.element_size()
        if size:
            self._f.write(t.view(-1).view(torch.uint8).numpy().data)
        self.entries[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [self.nbytes, self.nbytes + size]}
        self.nbytes += size

    def close(self, metadata: dict[str, str] | None = None) -> None:
        header = dict(self.entries)
        if metadata:
            header["__metadata__"] = metadata
        blob = json.dumps(header, separators=(",", ":")).encode()
        if len(blob) <= self.HEADER_RESERVE:
            self._f.seek(0)
            self._f.write(struct.pack("<Q", self.HEADER_RESERVE) + blob + b" " * (self.HEADER_RESERVE - len(blob)))
            self._finish(self._f)
            return
        self._f.close()
        blob += b" " * (-len(blob) % 8)  # the format aligns the data start to 8 bytes
        with atomic.atomic_file(self.path) as tmp, open(self.path, "rb") as old, open(tmp, "wb") as new:
            new.write(struct.pack("<Q", len(blob)) + blob)
            old.seek(8 + self.HEADER_RESERVE)
            shutil.copyfileobj(old, new, _COPY_CHUNK)
            new.close()

    @staticmethod
    def _finish(f) -> None:
        f.flush()
        os.fsync(f.fileno())
        f.close()
