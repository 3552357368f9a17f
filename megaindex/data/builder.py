"""`build_datasets(cfg, tokenizer)`: the config's data section -> (train, valid) map-style datasets.

Owns turning `DataConfig` into datasets: resolving `data_path` entries (megaindex.data.blend parses
them; PATH is an IndexedDataset prefix or a .jsonl/.jsonl.gz file, which is preprocessed once into
the cache), the train/valid split (per prefix), the number of samples the run needs, and the CP
padding multiple. Pretraining builds one PackedGPTDataset per prefix and split (megatron's cached
indices) and mixes several with blend.BlendedSamples; SFT builds PackedSFTDataset over the chat
IndexedDatasets (it mixes by weight inside every epoch itself).

Works without torch.distributed; under torchrun, rank 0 preprocesses/builds caches first and the
other ranks wait at a barrier (megatron's builder does the same for its indices).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from megaindex.config import Config, ConfigError, split_ratios
from megaindex.data.blend import BlendedSamples, normalise, parse_blend, share_sizes
from megaindex.rank import barrier, is_rank0


def pad_multiple(cfg: Config) -> int:
    """Every packed piece is padded to this: 2*CP, or data.pad_to_multiple_of (a multiple of 2*CP)."""
    base = 2 * cfg.parallel.context_parallel_size
    m = cfg.data.pad_to_multiple_of or base
    if m % base:
        raise ConfigError(f"data.pad_to_multiple_of {m} must be a multiple of 2 x context_parallel_size = {base}.")
    return m




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
    if is_rank0() and not os.path.isfile(prefix + ".idx"):
        # in this process (no fork inside a trainer), SentencePiece threads
        preprocess([path], prefix, tokenizer.model_path, kind=cfg.data.kind, workers=1, progress=False)
    barrier()
    return prefix


def _split_ranges(n: int, split: str) -> list[tuple[int, int]]:
    """Contiguous (train, valid, test) conversation ranges for a "99,1,0" split (megatron's rule)."""
    ratios = split_ratios(split)
    cum = np.cumsum([0.0] + ratios) / sum(ratios)
    bounds = [int(round(c * n)) for c in cum]
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def _num_samples(cfg: Config) -> tuple[int | None, int]:
    """(train, valid) samples the run reads; train None = what data.num_epochs holds (train_iters null)."""
    gbs = cfg.data.global_batch_size
    if cfg.train.train_iters is None:  # validation reads the same first eval_iters batches every time
        return None, (cfg.train.eval_iters * gbs if cfg.train.eval_interval else 0)
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


def _rank0_first(build):
    """Rank 0 builds (and caches the indices) first, the others then load them: megatron's protocol."""
    out = build() if is_rank0() else None
    barrier()
    return out if out is not None else build()


def _build_pretrain(cfg, tokenizer, prefixes, weights, vprefixes, vweights, train_n, valid_n):
    """Every prefix is its own PackedGPTDataset per split, sized for its share; BlendedSamples mixes them."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    from megaindex.data.pretrain import MegatronTokenizerView, PackedGPTDataset, PackedGPTDatasetConfig

    d = cfg.data
    if d.num_epochs is not None and (weights or vweights):
        raise ConfigError("data.num_epochs with blend weights: weighted blends are sized by train_iters; drop one.")
    epochs = d.num_epochs is not None
    config = PackedGPTDatasetConfig(
        random_seed=d.seed, sequence_length=d.seq_length, tokenizer=MegatronTokenizerView(tokenizer),
        reset_position_ids=d.packing == "reset", reset_attention_mask=d.packing == "reset", eod_mask_loss=True,
        create_attention_mask=False, path_to_cache=d.cache_dir and os.path.join(d.cache_dir, "indices"),
        pad_multiple=pad_multiple(cfg), packing=d.packing, num_epochs=d.num_epochs, whole_documents=d.whole_documents,
        context_parallel_size=cfg.parallel.context_parallel_size, blend=(prefixes, weights), split=d.split,
    )
    low = {p: IndexedDataset(p, multimodal=False, mmap=config.mmap_bin_files) for p in dict.fromkeys(prefixes + vprefixes)}

    def doc_range(p: str, which: int) -> tuple[int, int]:
        """Documents of prefix p in split `which` (0 train, 1 valid): all of it with valid_data_path."""
        n = len(low[p].sequence_lengths)
        return (0, n) if vprefixes else _split_ranges(n, d.split)[which]

    def blend(ps, ws, which: int, total: int):
        """The split's dataset over prefixes `ps` (one dataset, or a BlendedSamples), or None if empty."""
        name, split = ("train", Split.train) if which == 0 else ("valid", Split.valid)
        parts = [(p, w, doc_range(p, which)) for p, w in zip(ps, ws or [1.0] * len(ps))]
        parts = [x for x in parts if x[2][1] > x[2][0]]  # a small prefix may have no valid documents
        if not parts:
            return None
        if ws is None:  # unweighted: by tokens, as if the prefixes were one corpus
            w = normalise([float(low[p].sequence_lengths[a:b].sum()) for p, _, (a, b) in parts])
        else:
            w = normalise([x for _, x, _ in parts])
        exhaustive = epochs and which == 0
        sizes = [None] * len(parts) if exhaustive else ([total] if len(parts) == 1 else share_sizes(w, total))
        sets = [
            _rank0_first(lambda p=p, a=a, b=b, n=n: PackedGPTDataset(low[p], p, np.arange(a, b, dtype=np.int32), n, split, config))
            for (p, _, (a, b)), n in zip(parts, sizes)
        ]
        if len(sets) == 1:
            return sets[0]
        return BlendedSamples(sets, w, total, exhaustive=exhaustive, name=name)

    train = blend(prefixes, weights, 0, train_n)
    if train is None:
        raise ConfigError(f"data.split {d.split!r} leaves no training documents in {', '.join(prefixes)}.")
    valid = None
    if valid_n:
        valid = blend(vprefixes, vweights, 1, valid_n) if vprefixes else blend(prefixes, weights, 1, valid_n)
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
