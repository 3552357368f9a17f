"""`build_datasets(cfg, tokenizer)`: the config's data section -> (train, valid) map-style datasets.

Owns turning `DataConfig` into datasets: parsing `data_path` ("PATH" or "WEIGHT PATH" entries;
PATH is an IndexedDataset prefix or a .jsonl/.jsonl.gz file, which is preprocessed once into the
cache), the train/valid split, the number of samples the run needs, and the CP padding multiple.
Pretraining goes through megatron-core's BlendedMegatronDatasetBuilder with PackedGPTDataset
(blending, splitting, caching); SFT builds PackedSFTDataset over the chat IndexedDatasets.

Works without torch.distributed; under torchrun, rank 0 preprocesses/builds caches first and the
other ranks wait at a barrier (megatron's builder does the same for its indices).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from megaindex.config import Config, ConfigError, split_ratios


def pad_multiple(cfg: Config) -> int:
    """Every packed piece is padded to this: 2*CP, or data.pad_to_multiple_of (a multiple of 2*CP)."""
    base = 2 * cfg.parallel.context_parallel_size
    m = cfg.data.pad_to_multiple_of or base
    if m % base:
        raise ConfigError(f"data.pad_to_multiple_of {m} must be a multiple of 2 x context_parallel_size = {base}.")
    return m


def seq_length_at_step(cfg: Config, step: int) -> int:
    """The report's opt-in context-length warmup: [[until_step, seq_length], ...], then data.seq_length."""
    for until, length in cfg.data.context_length_warmup:
        if step < until:
            return length
    return cfg.data.seq_length


def parse_blend(entries: list[str], what: str) -> tuple[list[str], list[float] | None]:
    """["0.3 a", "0.7 b"] -> (["a", "b"], [0.3, 0.7]); ["a", "b"] -> (["a", "b"], None)."""
    paths, weights = [], []
    for e in entries:
        parts = str(e).split()
        if len(parts) == 2:
            try:
                weights.append(float(parts[0]))
            except ValueError:
                raise ConfigError(f"{what} entry {e!r}: expected 'WEIGHT PATH' or 'PATH'.") from None
            paths.append(parts[1])
        elif len(parts) == 1:
            paths.append(parts[0])
        else:
            raise ConfigError(f"{what} entry {e!r}: expected 'WEIGHT PATH' or 'PATH'.")
    if weights and len(weights) != len(paths):
        raise ConfigError(f"{what}: give a weight for every entry or for none.")
    return paths, (weights or None)


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def resolve_prefix(path: str, cfg: Config, tokenizer) -> str:
    """An IndexedDataset prefix for `path`, preprocessing a JSONL file into the cache once."""
    if not path.endswith((".jsonl", ".jsonl.gz")):
        if not (os.path.isfile(path + ".idx") and os.path.isfile(path + ".bin")):
            raise ConfigError(f"data path {path}: no {path}.bin/.idx; run tools/preprocess_data.py or give a .jsonl file.")
        return path
    from megaindex.data.preprocess import preprocess

    if not os.path.isfile(path):
        raise ConfigError(f"data path {path} does not exist.")
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{os.path.abspath(tokenizer.model_path)}|{cfg.data.kind}"
    cache = Path(cfg.data.cache_dir or Path(path).parent / ".megaindex_cache")
    prefix = str(cache / f"{Path(path).name.split('.')[0]}-{hashlib.md5(key.encode()).hexdigest()[:12]}")
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0 and not os.path.isfile(prefix + ".idx"):
        preprocess([path], prefix, tokenizer.model_path, kind=cfg.data.kind, workers=min(2, os.cpu_count() or 1), progress=False)
    _barrier()
    return prefix


def _split_ranges(n: int, split: str) -> list[tuple[int, int]]:
    """Contiguous (train, valid, test) conversation ranges for a "99,1,0" split (megatron's rule)."""
    ratios = split_ratios(split)
    cum = np.cumsum([0.0] + ratios) / sum(ratios)
    bounds = [int(round(c * n)) for c in cum]
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def _num_samples(cfg: Config) -> tuple[int, int]:
    gbs = cfg.data.global_batch_size
    train = cfg.train.train_iters * gbs
    evals = (cfg.train.train_iters // cfg.train.eval_interval + 1) if cfg.train.eval_interval else 0
    return train, evals * cfg.train.eval_iters * gbs


def build_datasets(cfg: Config, tokenizer, *, num_samples: tuple[int | None, int | None] | None = None):
    """(train, valid) map-style datasets of packed samples (valid may be None).

    `num_samples` overrides the (train, valid) sample counts derived from train_iters / eval_* x the
    global batch; data.num_epochs, when set, fixes the number of epochs instead.
    """
    d = cfg.data
    train_n, valid_n = num_samples or _num_samples(cfg)
    paths, weights = parse_blend(d.data_path, "data.data_path")
    if not paths:
        raise ConfigError("data.data_path is empty: give dataset prefixes or JSONL files.")
    vpaths, vweights = parse_blend(d.valid_data_path, "data.valid_data_path")
    prefixes = [resolve_prefix(p, cfg, tokenizer) for p in paths]
    vprefixes = [resolve_prefix(p, cfg, tokenizer) for p in vpaths]
    if d.kind == "sft":
        return _build_sft(cfg, prefixes, weights, vprefixes, vweights, train_n, valid_n)
    return _build_pretrain(cfg, tokenizer, prefixes, weights, vprefixes, vweights, train_n, valid_n)


def _build_pretrain(cfg, tokenizer, prefixes, weights, vprefixes, vweights, train_n, valid_n):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    from megaindex.data.pretrain import MegatronTokenizerView, PackedGPTDataset, PackedGPTDatasetConfig

    d = cfg.data
    if d.num_epochs is not None and (weights or vweights):
        raise ConfigError("data.num_epochs with blend weights: weighted blends are sized by train_iters; drop one.")
    blend = (prefixes, weights)
    common = dict(
        random_seed=d.seed, sequence_length=d.seq_length, tokenizer=MegatronTokenizerView(tokenizer),
        reset_position_ids=d.packing == "reset", reset_attention_mask=d.packing == "reset", eod_mask_loss=True,
        create_attention_mask=False, path_to_cache=d.cache_dir and os.path.join(d.cache_dir, "indices"),
        pad_multiple=pad_multiple(cfg), packing=d.packing, num_epochs=d.num_epochs, whole_documents=d.whole_documents,
        context_parallel_size=cfg.parallel.context_parallel_size,
    )
    if vprefixes:
        config = PackedGPTDatasetConfig(blend_per_split=[blend, (vprefixes, vweights), None], **common)
    else:
        config = PackedGPTDatasetConfig(blend=blend, split=d.split, **common)
    sizes = [None, None, None] if d.num_epochs is not None else [train_n, valid_n or None, None]
    if sizes[1] is None and (vweights or (weights and not vprefixes)):
        sizes[1] = max(valid_n, 1)
    if weights and not vprefixes and d.num_epochs is None:
        sizes[2] = 0  # megatron asserts that a weighted blend gives every split a size (the test split is unused)
    train, valid, _ = BlendedMegatronDatasetBuilder(PackedGPTDataset, sizes, lambda: True, config).build()
    return train, valid


def _build_sft(cfg, prefixes, weights, vprefixes, vweights, train_n, valid_n):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megaindex.data.sft import PackedSFTDataset

    d = cfg.data
    kw = dict(seq_length=d.seq_length, pad_multiple=pad_multiple(cfg), loss_weighting=d.loss_weighting,
              sorted_batching=d.sorted_batching, overlength=d.sft_overlength, num_epochs=d.num_epochs,
              global_batch_size=d.global_batch_size, seed=d.seed)
    sets = [IndexedDataset(p) for p in prefixes]
    if vprefixes:
        vsets = [IndexedDataset(p) for p in vprefixes]
        train_ids = [np.arange(len(s.document_indices) - 1) for s in sets]
        valid_ids = [np.arange(len(s.document_indices) - 1) for s in vsets]
    else:
        vsets = sets
        ranges = [_split_ranges(len(s.document_indices) - 1, d.split) for s in sets]
        train_ids = [np.arange(*r[0]) for r in ranges]
        valid_ids = [np.arange(*r[1]) for r in ranges]
        vweights = weights
    train = PackedSFTDataset(sets, train_ids, weights=weights, num_samples=train_n, name="train", **kw)
    valid = None
    if sum(map(len, valid_ids)):
        valid = PackedSFTDataset(vsets, valid_ids, weights=vweights, num_samples=valid_n, name="valid",
                                 **{**kw, "sorted_batching": False, "num_epochs": 1})
    return train, valid
