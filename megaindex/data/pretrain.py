"""Long-PT samples: documents packed into seq_length rows, each piece padded to 2*CP, epoch by epoch.

Owns `PackedGPTDataset`, an extension of megatron-core's GPTDataset. It keeps megatron's machinery:
the mmap'd IndexedDataset, train/valid splitting by document, the cached .npy indices keyed by the
MD5 of the config (`unique_description_hash`), the C++ `build_sample_idx`, and blending through
BlendedMegatronDatasetBuilder. It changes what a sample is:

  * pieces are padded to a multiple of `pad_multiple` (2*CP) inside the row. The sample index is
    built by megatron's `build_sample_idx` over the *padded* document lengths: a document split over
    two rows is split at a multiple of 2*CP, so its total padding is the same as unsplit and the
    rows of an epoch hold exactly the padded epoch;
  * epoch-aware order: each epoch is its own seeded permutation of the documents, its own rows
    (the last one partly padded instead of dropped) and its own seeded row shuffle, so every token of
    every document appears exactly once per epoch and epoch e does not depend on how many are built;
  * no extra overlapping token: a piece's labels are the next tokens *of the same document*; the
    label of a document's final EOD would be another document's token, so it is loss-masked;
  * optionally (`whole_documents` > 0) documents of at most that many tokens are never split across
    rows: each row takes, first fit, the next documents of a 16-document look-ahead that still fit,
    and is closed with padding when none does (longer documents are split as before). Short
    documents whose end asks about their beginning (synthetic retrieval documents) need this.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from megatron.core.datasets import helpers
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, _build_shuffle_index
from megatron.core.safe_globals import safe_numpy_load

from megaindex import atomic
from megaindex.rank import is_rank0
from megaindex.data.packing import Piece, pack_pieces

logger = logging.getLogger(__name__)


@dataclass
class PackedGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus megaindex's packing options."""

    pad_multiple: int = 2
    """pad every document piece to a multiple of this (2*CP)"""

    packing: str = "reset"
    """reset = per-document attention/positions; concat = one causal segment per row"""

    num_epochs: Optional[int] = None
    """epochs to build; None = enough for num_samples (at least one)"""

    whole_documents: int = 0
    """documents of at most this many tokens are never split across rows; 0 = split any"""


class PackedGPTDataset(GPTDataset):
    """Megatron GPTDataset whose samples are THD packs (see the module docstring)."""

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return GPTDataset._key_config_attributes() + ["pad_multiple", "packing", "num_epochs", "whole_documents"]

    # ---- index building ---------------------------------------------------------------------
    def _padded_lengths(self) -> np.ndarray:
        m = 1 if self.config.packing == "concat" else self.config.pad_multiple
        lens = self.dataset.sequence_lengths.astype(np.int64)
        return ((lens + m - 1) // m * m).astype(np.int32)

    def _build_epoch(self, epoch: int, padded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Seeded by (seed, epoch) so that epoch e is the same whatever the number of epochs built.
        rng = np.random.RandomState([self.config.random_seed, epoch])
        documents = self.indices.astype(np.int32).copy()
        rng.shuffle(documents)
        if self.config.whole_documents > 0:
            documents, sample_index = whole_document_rows(padded, documents, self.config.sequence_length,
                                                          self.config.whole_documents)
        else:
            tokens = int(padded[documents].sum())
            sample_index = helpers.build_sample_idx(
                padded, documents, self.config.sequence_length, 1, tokens,
                drop_last_partial_sequence=False, add_extra_token_to_sequence=False,
            ).astype(np.int64)
        n = sample_index.shape[0] - 1
        shuffle = _build_shuffle_index(n, n, rng).astype(np.int64)
        return documents, sample_index, shuffle

    def _epochs_needed(self, samples_per_epoch: int) -> int:
        if self.config.num_epochs is not None:
            return self.config.num_epochs
        if self.num_samples is None:
            return 1
        return max(1, -(-self.num_samples // max(samples_per_epoch, 1)))

    def _build_indices(self):
        padded = self._padded_lengths()
        docs, samples, shuffles = [], [], []
        d = self._build_epoch(0, padded)
        for e in range(self._epochs_needed(d[1].shape[0] - 1)):
            documents, sample_index, shuffle = d if e == 0 else self._build_epoch(e, padded)
            base_doc, base_sample = sum(map(len, docs)), sum(map(len, shuffles))
            sample_index = sample_index + np.array([base_doc, 0])
            # One row marks both the end of a sample and the start of the next: drop the duplicate.
            samples.append(sample_index if e == 0 else sample_index[1:])
            docs.append(documents)
            shuffles.append(shuffle + base_sample)
        return np.concatenate(docs), np.concatenate(samples), np.concatenate(shuffles)

    def _build_document_sample_shuffle_indices(self):
        """Megatron's cache protocol (same file names, description file, rank-0 builds first)."""
        cache = self.config.path_to_cache or os.path.join(self.dataset.path_prefix + "_cache", "PackedGPTDataset_indices")
        base = os.path.join(cache, f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}")
        paths = [f"{base}-{a}.npy" for a in ("document_index", "sample_index", "shuffle_index")]
        dist = torch.distributed.is_initialized()
        if all(map(os.path.isfile, paths + [f"{base}-description.txt"])):
            return tuple(safe_numpy_load(p, allow_pickle=True, mmap_mode="r") for p in paths)
        if dist and not is_rank0():
            raise RuntimeError(f"indices {base}-* missing on a non-zero rank: rank 0 builds them first (the builder syncs)")
        t0 = time.time()
        arrays = self._build_indices()
        os.makedirs(cache, exist_ok=True)
        for p, a in zip(paths, arrays):  # a concurrent reader never sees half an index
            with atomic.atomic_file(p, durable=False) as tmp:
                np.save(tmp, a, allow_pickle=True)
        atomic.write_text(f"{base}-description.txt", self.unique_description, durable=False)
        logger.info("built %s %s indices: %d samples in %.2fs", type(self).__name__, self.index_split.name,
                    arrays[1].shape[0] - 1, time.time() - t0)
        return arrays

    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    # ---- samples ----------------------------------------------------------------------------
    def pieces(self, idx: int) -> list[tuple[int, int, int]]:
        """(document id, start, end) of the real tokens of sample `idx`, in row order."""
        i = int(self.shuffle_index[idx])
        (b_pos, b_off), (e_pos, e_off) = self.sample_index[i], self.sample_index[i + 1]
        out = []
        lengths = self.dataset.sequence_lengths
        for pos in range(int(b_pos), int(e_pos) + 1):
            doc = int(self.document_index[pos])
            start = int(b_off) if pos == b_pos else 0
            end = min(int(e_off) if pos == e_pos else int(lengths[doc]), int(lengths[doc]))
            if end > start:  # offsets past the real length fall in that document's padding
                out.append((doc, start, end))
        return out

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        lengths = self.dataset.sequence_lengths
        pieces = []
        for doc, start, end in self.pieces(idx):
            length = int(lengths[doc])
            # Read one token more than the piece when the document goes on: the last label.
            text = self.dataset.get(doc, offset=start, length=min(end + 1, length) - start).astype(np.int64)
            labels = np.empty(end - start, dtype=np.int64)
            labels[: len(text) - 1] = text[1:]
            weights = np.ones(end - start, dtype=np.float32)
            if end == length:  # the piece ends the document: its EOD has no next token here
                labels[-1] = text[-1]
                weights[-1] = 0.0
            pieces.append(Piece(text[: end - start], labels, weights))
        return pack_pieces(pieces, self.config.sequence_length, self.config.pad_multiple,
                           concat=self.config.packing == "concat")


LOOKAHEAD = 16


def whole_document_rows(padded: np.ndarray, documents: np.ndarray, seq_length: int, whole_max: int,
                        lookahead: int = LOOKAHEAD) -> tuple[np.ndarray, np.ndarray]:
    """Rows that never split a document of at most `whole_max` (padded) tokens.

    Returns (document order, sample index) in megatron's layout: row i runs from
    sample_index[i] = (position in the order, offset) to sample_index[i + 1]; a row that ends in
    padding ends at (next position, 0). Each row takes, first fit, documents from the next
    `lookahead` ones of `documents` (so the order changes only locally and stays seeded); a longer
    document is split across rows at the current offset, as megatron's packing does.
    """
    whole_max = min(whole_max, seq_length)
    order: list[int] = []
    bounds: list[tuple[int, int]] = [(0, 0)]
    window: list[int] = []
    it = iter(documents.tolist())
    fill = 0
    while True:
        while len(window) < lookahead:
            nxt = next(it, None)
            if nxt is None:
                break
            window.append(nxt)
        if not window:
            break
        room = seq_length - fill
        pick = next((i for i, d in enumerate(window) if padded[d] > whole_max or padded[d] <= room), None)
        if pick is None:  # nothing fits whole: pad the rest of this row
            bounds.append((len(order), 0))
            fill = 0
            continue
        doc = window.pop(pick)
        n = int(padded[doc])
        pos = len(order)
        order.append(doc)
        if n <= room:
            fill += n
        else:  # a long document: split at the row ends, like megatron's build_sample_idx
            off = room
            bounds.append((pos, off))
            while n - off > seq_length:
                off += seq_length
                bounds.append((pos, off))
            fill = n - off
        if fill == seq_length:
            bounds.append((len(order), 0))
            fill = 0
    if order and (fill > 0 or bounds[-1] == (len(order), 0)):
        # The last row ends at the end of the last document (there is no next position).
        if bounds[-1] == (len(order), 0):
            bounds.pop()
        bounds.append((len(order) - 1, int(padded[order[-1]])))
    return np.asarray(order, dtype=np.int32), np.asarray(bounds, dtype=np.int64).reshape(-1, 2)


class MegatronTokenizerView:
    """What megatron's dataset config reads from a tokenizer (eod, vocab_size, a cache key).

    It has no `pad` on purpose: Index pads with </s> (= EOD), and megatron-core warns about a pad id
    that collides with EOD; megaindex masks pads itself and never relies on megatron's pad handling.
    """

    def __init__(self, tokenizer):
        self.eod = tokenizer.eod
        self.vocab_size = tokenizer.vocab_size
        self.unique_identifiers = {"class": type(tokenizer).__name__, "model": os.path.abspath(tokenizer.model_path)}

