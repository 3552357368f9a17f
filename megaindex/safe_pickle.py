"""What megaindex unpickles, and nothing more.

torch.distributed.checkpoint (DCP), under megatron's dist_checkpointing, reads a checkpoint's
`.metadata` with plain `pickle.load` and its non-tensor items (megatron ShardedObjects: RNG state,
optimizer param groups, the schedule, Transformer Engine's extra state) with
`torch.load(weights_only=False)`; a crafted file runs any code on load. `install()` closes both
for the whole process (resume, `checkpoint.pretrained`, `tools/convert_to_hf.py` all pass here):

* `.metadata` goes through `MetadataUnpickler`, which admits only the classes DCP and megatron put
  in checkpoint metadata (dataclasses, enums, torch.Size, dtypes) and refuses anything else;
* non-tensor items go through `torch.load(weights_only=True)`, with the numpy array classes the
  RNG state needs (numpy's own pickle of an array; no callable beyond the array rebuild).

Every other file megaindex reads is already safe: HF `.bin` files load with weights_only, dataset
indices through megatron's restricted numpy loader, YAML with `safe_load`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import torch


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a class or function outside the allowlist (it may run code on load)."""


_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout by name (torch.strided)
    "megatron.core.dist_checkpointing.strategies.torch": {"MCoreMetadata", "MCoreSavePlan"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "PurePosixPath"},  # StorageMeta.checkpoint_id when saved with a Path
    "builtins": {"set", "frozenset"},
}


def _is_torch_constant(module: str, name: str) -> bool:
    """torch.Size, and dtypes / layouts / memory formats (values, not callables)."""
    if module != "torch":
        return False
    if name == "Size":
        return True
    return isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP checkpoint metadata; any other global raises UnsafePickleError."""

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()) or _is_torch_constant(module, name):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refuses to load '{module}.{name}', which is not checkpoint metadata; "
            f"the file was not written by torch.distributed.checkpoint and may run code. Do not use this checkpoint."
        )


def load_metadata(file: BinaryIO) -> Any:
    """`pickle.load` for DCP `.metadata` files, restricted to the metadata classes."""
    return MetadataUnpickler(file, str(getattr(file, "name", "checkpoint .metadata"))).load()


def read_metadata(checkpoint_dir: str | Path) -> Any:
    """The DCP metadata of `checkpoint_dir` (its `.metadata`), read with MetadataUnpickler."""
    path = Path(checkpoint_dir) / ".metadata"
    with path.open("rb") as f:
        return MetadataUnpickler(f, str(path)).load()


def _numpy_globals() -> list:
    import numpy as np

    rebuild = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint8")]
    return [rebuild, np.ndarray, np.dtype, *dtypes]


def load_object(data: BinaryIO, what: str) -> Any:
    """A ShardedObject's bytes, as `torch.load(weights_only=True)` reads them (plus numpy arrays)."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(data, weights_only=True)
    except pickle.UnpicklingError:
        data.seek(0)
        try:
            bad = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(data)) or "an unsupported object"
        except Exception:
            bad = "an unreadable object"
        raise UnsafePickleError(
            f"checkpoint item '{what}' holds {bad}, which a checkpoint never contains (it may run code); "
            f"do not use this checkpoint."
        ) from None


class _RestrictedPickle:
    """Stands in for the `pickle` module inside DCP's filesystem reader: restricted `load`."""

    load = staticmethod(load_metadata)

    def __getattr__(self, name: str) -> Any:  # dump, HIGHEST_PROTOCOL, ... for the writer
        return getattr(pickle, name)


def _load_bytes(self, read_item, value: io.BytesIO) -> None:
    """DefaultLoadPlanner.load_bytes with a weights_only load (the same placement as DCP's)."""
    from torch.distributed.checkpoint._traverse import set_element

    obj = load_object(value, read_item.dest_index.fqn)
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
    else:
        self.state_dict[read_item.dest_index.fqn] = obj


_installed = False


def install() -> None:
    """Route DCP's metadata reads and object loads through the restricted loaders (idempotent)."""
    global _installed
    if _installed:
        return
    from torch.distributed.checkpoint import default_planner, filesystem

    filesystem.pickle = _RestrictedPickle()
    default_planner.DefaultLoadPlanner.load_bytes = _load_bytes
    _installed = True


def check_extra_state(state: dict[str, Any], source: str) -> None:
    """Transformer Engine unpickles `_extra_state` byte tensors with plain pickle when a module
    loads them; admit only what megatron's restricted unpickler accepts (FP8 scaling metadata)."""
    from megatron.core.safe_globals import SafeUnpickler

    class ExtraStateUnpickler(SafeUnpickler):  # megatron's FP8 allowlist, plus dtypes and sizes
        def find_class(self, module: str, name: str) -> Any:
            if _is_torch_constant(module, name):
                return pickle.Unpickler.find_class(self, module, name)
            return super().find_class(module, name)

    for key, value in _flat_items(state):
        if not key.endswith("_extra_state") or not isinstance(value, torch.Tensor) or value.numel() == 0:
            continue
        if value.dtype != torch.uint8:
            continue
        try:
            ExtraStateUnpickler(io.BytesIO(value.detach().cpu().numpy().tobytes())).load()
        except pickle.UnpicklingError as e:
            raise UnsafePickleError(f"{source}: tensor '{key}' holds a pickle that is not FP8 metadata ({e}); "
                                    f"it may run code. Do not use this checkpoint.") from None
        except Exception:  # not a pickle at all: TE will reject it on its own terms
            continue


def _flat_items(state: Any, prefix: str = ""):
    """(dotted key, tensor) for every tensor in a nested dict."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from _flat_items(v, f"{prefix}.{k}" if prefix else str(k))
