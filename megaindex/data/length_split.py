"""Split a pretraining IndexedDataset into its short and its long documents (a partition, not a copy).

Owns `document_lengths` (tokens per document of an IndexedDataset; megaindex.data.sft reads its
conversations' lengths with it too) and `split_by_length(prefix, min_tokens, short_prefix,
long_prefix)`: every document of PREFIX goes, in its order, to SHORT (fewer than MIN_TOKENS
tokens, its EOD included) or to LONG (at least MIN_TOKENS), so the two parts hold exactly PREFIX's
documents and tokens between them. Why: a long-context stage that mixes long documents with short
ones sees few long-range dependencies (with per-document position resets, a token sits at position
p only inside a document longer than p); training it on the long part alone is the report's
"curated long corpus", while a stage that wants the whole corpus blends both parts by their token
shares.

A part may be left unwritten (its prefix None: only its counts are returned), for a subset
such as the far documents (>= a window) that a caller wants beside a partition it already wrote.
A part that gets no document is not written (megatron's IndexedDataset of no documents is no
dataset); its entry says 0 documents and any old files of that prefix are removed, so a blend
never reads a stale part. Outputs are written under temporary names and renamed when complete
(megaindex.data.preprocess's rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def document_lengths(dataset) -> np.ndarray:
    """Tokens per document of a megatron IndexedDataset (the sum of its sequences' lengths)."""
    seq = np.asarray(dataset.sequence_lengths, dtype=np.int64)
    bounds = np.asarray(dataset.document_indices, dtype=np.int64)
    ends = np.concatenate([[0], np.cumsum(seq)])
    return ends[bounds[1:]] - ends[bounds[:-1]]


def split_by_length(prefix: str | Path, min_tokens: int, short_prefix: str | Path | None,
                    long_prefix: str | Path | None) -> dict[str, dict]:
    """Write PREFIX's documents with < MIN_TOKENS tokens to SHORT_PREFIX and the others to LONG_PREFIX.

    Returns {"short": {...}, "long": {...}}, each {"prefix", "documents", "tokens"} (a part with no
    document: 0 and 0, nothing written; a part whose prefix is None: counted, not written, prefix None).
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    from megaindex.data.preprocess import discard_dataset, publish_dataset, temp_name

    if min_tokens < 1:
        raise ValueError(f"min_tokens must be at least 1, got {min_tokens}")
    src = IndexedDataset(str(prefix), multimodal=False, mmap=True)
    lengths = document_lengths(src)
    seq = np.asarray(src.sequence_lengths, dtype=np.int64)
    bounds = np.asarray(src.document_indices, dtype=np.int64)
    out: dict[str, dict] = {}
    for name, dest, keep in (("short", short_prefix, lengths < min_tokens), ("long", long_prefix, lengths >= min_tokens)):
        docs = np.flatnonzero(keep)
        out[name] = {"prefix": dest and str(dest), "documents": int(len(docs)), "tokens": int(lengths[docs].sum())}
        if dest is None:
            continue
        dest = str(dest)
        for ext in (".bin", ".idx"):
            Path(dest + ext).unlink(missing_ok=True)
        if not len(docs):
            continue
        tmp = temp_name(dest)
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype=src.index.dtype)
        try:
            for d in docs:
                a, b = int(bounds[d]), int(bounds[d + 1])
                parts = seq[a:b]
                tokens = np.concatenate([src.get(int(s)) for s in range(a, b)])
                builder.add_document(tokens, parts.tolist())
            publish_dataset(builder, tmp, dest)
        except BaseException:
            discard_dataset(builder, tmp)
            raise
    return out
