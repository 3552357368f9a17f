"""Streaming writes and reads of megatron dist checkpoints (torch_dist) without building a model.

megatron's own `dist_checkpointing.save` wants every tensor of the model in memory at once (its
writer resolves all tensors before writing, for async saves). A 2B model in fp32 would need ~9 GB
that way, so the converter writes the same on-disk format itself, one tensor chunk at a time,
through torch.distributed.checkpoint (DCP) with a planner that produces each chunk on demand.

The format, as megatron-core 0.19 writes it and `dist_checkpointing.load` reads it:
* DCP `.metadata` + `__0_0.distcp`, and `metadata.json` = {"sharded_backend": "torch_dist", ...};
* a tensor per ShardedTensor key with its GLOBAL shape; per-layer weights are stacked over layers
  (`[num_layers, ...]`); any chunking is allowed (DCP reads overlaps), one chunk per layer here;
* ShardedObjects as bytes items named `{key}/shard_{offset}_{count}` holding `torch.save([data])`:
  one `_extra_state` per linear per layer, and `common_state/shard_0_1` with the common
  (non-sharded) state dict, `{}` for a model.

Reading goes through DCP too, one layer slice of one key at a time.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from megaindex import safe_pickle
from megaindex.convert.hf_config import ConversionError

safe_pickle.install()  # DCP would unpickle .metadata and non-tensor items unrestricted

BACKEND_FILE = "metadata.json"
BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1}


def _unwrapped(fn, *args, **kwargs):
    """Run a DCP call; re-raise the original error (DCP wraps it, with the message in its traceback)."""
    try:
        return fn(*args, **kwargs)
    except CheckpointException as e:
        failures = list(e.failures.values())
        if failures and isinstance(failures[0][0], Exception):
            raise failures[0][0] from None
        raise


def object_key(key: str, index: int, count: int) -> str:
    """DCP name of the ShardedObject `key` at global offset `index` of `count` (megatron's unique_key)."""
    return f"{key}/shard_{index}_{count}"


def serialize_object(data: Any) -> io.BytesIO:
    """A ShardedObject's bytes, as megatron writes them (a one-element list)."""
    buf = io.BytesIO()
    torch.save([data], buf)
    buf.seek(0)
    return buf


@dataclass
class LazyTensor:
    """A global tensor written chunk by chunk: chunk i covers `offsets[i]` with sizes `sizes[i]`,
    and `make(i)` produces it only when the writer reaches it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    offsets: list[tuple[int, ...]]
    sizes: list[tuple[int, ...]]
    make: Callable[[int], torch.Tensor]

    def __create_write_items__(self, fqn: str, _obj: Any) -> list[WriteItem]:
        props = TensorProperties(dtype=self.dtype)
        return [
            WriteItem(
                index=MetadataIndex(fqn, off),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(off), sizes=torch.Size(size)),
                    properties=props,
                    size=torch.Size(self.shape),
                ),
            )
            for off, size in zip(self.offsets, self.sizes)
        ]

    def chunk(self, offset: tuple[int, ...], fqn: str) -> torch.Tensor:
        i = self.offsets.index(tuple(offset))
        t = self.make(i)
        if tuple(t.shape) != tuple(self.sizes[i]) or t.dtype != self.dtype:
            raise ConversionError(
                f"{fqn}: chunk at {tuple(offset)} came out {tuple(t.shape)} {t.dtype}, expected "
                f"{tuple(self.sizes[i])} {self.dtype}."
            )
        return t.contiguous()


class _StreamingSavePlanner(DefaultSavePlanner):
    """Resolves LazyTensor chunks on demand; bytes items are already serialized (as megatron's planner)."""

    def __init__(self, on_chunk: Callable[[str], None] | None = None):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.on_chunk = on_chunk

    def lookup_object(self, index: MetadataIndex) -> Any:
        obj = self.state_dict[index.fqn]
        if isinstance(obj, LazyTensor):
            t = obj.chunk(tuple(index.offset), index.fqn)
            if self.on_chunk:
                self.on_chunk(index.fqn)
            return t
        return super().lookup_object(index)

    def transform_object(self, write_item: WriteItem, object: Any) -> Any:
        return object


def write_dist_checkpoint(
    path: str | Path,
    tensors: dict[str, LazyTensor],
    objects: dict[str, Any],
    on_chunk: Callable[[str], None] | None = None,
) -> None:
    """Write a megatron torch_dist checkpoint into the (empty) directory `path`.

    `objects` maps DCP names (see object_key) to the python data of each ShardedObject.
    """
    path = Path(path)
    state: dict[str, Any] = dict(tensors)
    state.update({k: serialize_object(v) for k, v in objects.items()})
    state[object_key("common_state", 0, 1)] = serialize_object({})
    writer = dcp.FileSystemWriter(str(path), single_file_per_rank=True, thread_count=1, sync_files=True)
    _unwrapped(dcp.save, state, storage_writer=writer, planner=_StreamingSavePlanner(on_chunk), no_dist=True)
    (path / BACKEND_FILE).write_text(json.dumps(BACKEND))


# ---- reading --------------------------------------------------------------------------------------
class _Slice:
    """A load target covering one chunk of a global tensor (DCP reads the overlapping pieces)."""

    def __init__(self, shape: torch.Size, offset: tuple[int, ...], buf: torch.Tensor):
        self._shape, self.offset, self.buf = shape, offset, buf

    def size(self) -> torch.Size:  # DCP checks the global size against the checkpoint's
        return self._shape

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [ChunkStorageMetadata(offsets=torch.Size(self.offset), sizes=self.buf.shape)]


class _SliceLoadPlanner(DefaultLoadPlanner):
    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        # The default set-up replaces values of unknown types (our _Slice) with None; keep ours.
        super().set_up_planner(dict(state_dict), metadata, is_coordinator)
        self.state_dict = state_dict

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.state_dict[index.fqn].buf


class DistCheckpointReader:
    """Tensor-at-a-time reads of a torch_dist checkpoint directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        backend = self.path / BACKEND_FILE
        if not backend.is_file():
            raise ConversionError(f"{self.path} is not a megatron dist checkpoint ({BACKEND_FILE} missing).")
        kind = json.loads(backend.read_text()).get("sharded_backend")
        if kind != "torch_dist":
            raise ConversionError(f"{backend}: sharded_backend {kind!r}; the converter reads torch_dist checkpoints.")
        self._reader = dcp.FileSystemReader(str(self.path))
        md = self._reader.read_metadata()
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)
        }

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.tensors:
            raise ConversionError(f"{self.path}: tensor '{key}' is not in the checkpoint.")
        return tuple(self.tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        self.shape(key)
        return self.tensors[key].properties.dtype

    def get(self, key: str, layer: int | None = None) -> torch.Tensor:
        """The whole tensor `key`, or its slice `layer` along the leading (layer-stacked) dimension."""
        shape = torch.Size(self.shape(key))
        if layer is None:
            offset, sizes = (0,) * len(shape), shape
        else:
            offset, sizes = (layer,) + (0,) * (len(shape) - 1), torch.Size((1, *shape[1:]))
        buf = torch.empty(sizes, dtype=self.dtype(key))
        _unwrapped(dcp.load, {key: _Slice(shape, offset, buf)}, storage_reader=self._reader,
                   planner=_SliceLoadPlanner(), no_dist=True)
        return buf if layer is None else buf[0]
