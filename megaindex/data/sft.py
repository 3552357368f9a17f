"""Long-SFT samples: chat conversations packed into seq_length rows with LongAlign loss weights.

Owns `PackedSFTDataset`: the per-epoch plan (a weighted mixture of conversation datasets, the
over-length rule, shuffled or LongAlign-sorted order, best-fit packing into rows) and the samples.

  * Conversations are IndexedDataset documents in the layout of megaindex.data.chat; a conversation
    is never split over two rows (its answer would lose its prompt).
  * Loss: labels[t] = tokens[t+1]; position t is trained iff token t+1 is an assistant token or its
    closing </s>. With loss_weighting=longalign the weight is 1/N_i (N_i = trained tokens of
    conversation i), so that  L = (1/M) * sum_t loss_mask_t * loss_t  over a global batch, M = the sum
    of `num_sequences` over all micro-batches of all DP ranks, is LongAlign's (1/M) sum_i mean_i.
  * Mixture: with weights w_j, each epoch takes round(w_j / sum(w) * sum_j N_j) conversations from
    dataset j (a seeded permutation, repeated when that exceeds N_j); without weights, every
    conversation exactly once per epoch.
  * Over-length (longer than seq_length): `drop` skips it, `truncate` applies chat.fit_conversation
    (drop earliest turns, then middle-truncate the last user message); both are counted in
    `stats` and logged, never silent.
  * Packing: best fit, `best_fit` below: each conversation goes to the open row with the least room
    that holds it. Padding costs as much GPU time as text, and next-fit (close a row when the next
    conversation does not fit) left 25-30% of 32K rows empty on long instructions of 4K-32K tokens
    (benchmarks/RESULTS_sft.md); best fit packs the same conversations into ~25% fewer rows.
  * Sorted batching (LongAlign: batches of similar lengths, batch order shuffled), for packed rows:
    conversations longest first (best-fit decreasing), so rows come out sorted by their longest
    conversation, which dominates a row's attention cost; consecutive rows form the global batches
    and the order of the batches is shuffled, not their contents. Without it: shuffled order.
"""

from __future__ import annotations

import bisect
import collections
import logging

import numpy as np
import torch

from megaindex.data import chat
from megaindex.data.length_split import document_lengths
from megaindex.data.packing import Piece, pack_pieces, round_up

logger = logging.getLogger(__name__)


def best_fit(needs: list[int], capacity: int) -> list[list[int]]:
    """Indices of `needs` packed into rows of `capacity` tokens, taken in the given order: each goes to
    the open row with the least room left that holds it (the first-made of equals), or starts a new
    row. Rows in the order they were started; in a row, items in the order they came. O(n log n)."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens free, row) of the rows with room left, sorted
    for i, need in enumerate(needs):
        if need > capacity:
            raise ValueError(f"an item of {need} tokens does not fit a row of {capacity}")
        k = bisect.bisect_left(room, (need, -1))
        if k < len(room):
            free, r = room.pop(k)
        else:
            free, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if free > need:
            bisect.insort(room, (free - need, r))
    return rows


class PackedSFTDataset(torch.utils.data.Dataset):
    """Map-style dataset of packed chat rows (the sample layout of megaindex.data.packing)."""

    def __init__(self, datasets, conversation_ids, *, weights=None, seq_length: int, pad_multiple: int = 2,
                 loss_weighting: str = "token", sorted_batching: bool = False, overlength: str = "drop",
                 num_epochs: int | None = None, num_samples: int | None = None, global_batch_size: int = 1,
                 seed: int = 1234, name: str = "train"):
        """`datasets`: IndexedDatasets in chat layout; `conversation_ids`: the conversations of each
        that this split uses (e.g. a train/valid split); `weights`: mixture weights or None."""
        self.datasets, self.ids = list(datasets), [np.asarray(c, dtype=np.int64) for c in conversation_ids]
        self.weights = weights
        self.seq_length, self.pad_multiple = seq_length, pad_multiple
        self.loss_weighting, self.sorted_batching, self.overlength = loss_weighting, sorted_batching, overlength
        self.global_batch_size, self.seed, self.name = max(global_batch_size, 1), seed, name
        self.stats: collections.Counter = collections.Counter()
        for j, d in enumerate(self.datasets):
            per_doc = np.diff(d.document_indices)
            if len(per_doc) and ((per_doc < 3) | (per_doc % 2 == 0)).any():
                raise ValueError(f"{d.path_prefix}: not a chat dataset (preprocess it with --kind sft)")
        self._lengths = [document_lengths(d) for d in self.datasets]  # tokens per conversation
        packs, epoch = [], 0
        while True:
            packs += self._plan_epoch(epoch, offset=len(packs))
            epoch += 1
            if num_epochs is not None:
                if epoch >= num_epochs:
                    break
            elif num_samples is None or len(packs) >= num_samples:
                break
            if not packs:
                raise ValueError(f"SFT {name}: no conversation fits in seq_length {seq_length}")
        self.num_epochs = epoch
        self.pack_offsets = np.cumsum([0] + [len(p) for p in packs])
        self.members = np.array([m for p in packs for m in p], dtype=np.int64).reshape(-1, 2)
        if self.stats["dropped_overlength"] or self.stats["truncated"]:
            logger.warning("SFT %s: %d over-length conversations dropped, %d truncated (seq_length %d, per epoch x %d)",
                           name, self.stats["dropped_overlength"], self.stats["truncated"], seq_length, epoch)

    # ---- planning -----------------------------------------------------------------------------
    def _sequences(self, j: int, c: int) -> list[np.ndarray]:
        d = self.datasets[j]
        first, last = int(d.document_indices[c]), int(d.document_indices[c + 1])
        lens = d.sequence_lengths[first:last]
        flat = d.get(first, offset=0, length=int(lens.sum())).astype(np.int64)  # sequences are contiguous
        return np.split(flat, np.cumsum(lens)[:-1])

    def _length(self, j: int, c: int) -> int | None:
        """Tokens after the over-length rule, or None when the conversation is dropped. From the
        index alone: no tokens are read while planning (chat.fitted_length)."""
        n = int(self._lengths[j][c])
        if n <= self.seq_length:
            return n
        if self.overlength == "drop":
            self.stats["dropped_overlength"] += 1
            return None
        d = self.datasets[j]
        fitted = chat.fitted_length(d.sequence_lengths[d.document_indices[c]:d.document_indices[c + 1]], self.seq_length)
        if fitted is None:
            self.stats["dropped_overlength"] += 1
            return None
        self.stats["truncated"] += 1
        return fitted

    def _mixture(self, rng: np.random.RandomState) -> list[tuple[int, int]]:
        sizes = [len(c) for c in self.ids]
        if self.weights is None:
            counts = sizes
        else:
            w = np.asarray(self.weights, dtype=np.float64)
            counts = [int(round(x)) for x in w / w.sum() * sum(sizes)]
        chosen = []
        for j, (ids, n) in enumerate(zip(self.ids, counts)):
            reps = -(-n // max(len(ids), 1))
            take = np.concatenate([rng.permutation(ids) for _ in range(reps)])[:n] if len(ids) else ids[:0]
            chosen += [(j, int(c)) for c in take]
        return chosen

    def _plan_epoch(self, epoch: int, offset: int = 0) -> list[list[tuple[int, int]]]:
        """The epoch's rows; `offset` = rows planned before it (global batches are read from row 0)."""
        rng = np.random.RandomState([self.seed, epoch])
        convs = self._mixture(rng)
        lengths = [self._length(j, c) for j, c in convs]
        kept = [(jc, n) for jc, n in zip(convs, lengths) if n is not None]
        self.stats["conversations"] += len(kept)
        if self.sorted_batching:
            kept.sort(key=lambda x: -x[1])  # longest first; stable: ties keep the mixture's random order
        else:
            kept = [kept[i] for i in rng.permutation(len(kept))]
        rows = best_fit([round_up(n, self.pad_multiple) for _, n in kept], self.seq_length)
        packs = [[kept[i][0] for i in row] for row in rows]
        if self.sorted_batching:
            # The trainer reads global batch k as rows [k*g, (k+1)*g): the first rows complete the
            # previous epoch's last batch, full batches are shuffled, a partial one stays last (shuffled
            # into the middle, it would shift every later batch across two sorted groups).
            g = self.global_batch_size
            head = (-offset) % g
            rest = packs[head:]
            full = [rest[i:i + g] for i in range(0, len(rest) - g + 1, g)]
            tail = rest[len(full) * g:]
            packs = packs[:head] + [p for i in rng.permutation(len(full)) for p in full[i]] + tail
        return packs

    # ---- samples ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pack_offsets) - 1

    def conversations(self, idx: int) -> list[tuple[int, int]]:
        """(dataset index, conversation id) of each conversation in row `idx`."""
        return [tuple(map(int, m)) for m in self.members[self.pack_offsets[idx]:self.pack_offsets[idx + 1]]]

    def piece(self, j: int, c: int) -> Piece:
        """One conversation alone: tokens, next-token labels and loss weights (before packing)."""
        seqs = self._sequences(j, c)
        if sum(map(len, seqs)) > self.seq_length:
            seqs = chat.fit_conversation(seqs, self.seq_length)  # planned rows only hold ones it keeps
        tokens = np.concatenate(seqs)
        target = np.concatenate([np.full(len(s), chat.is_target(i)) for i, s in enumerate(seqs)])
        labels = np.append(tokens[1:], tokens[-1])
        trained = np.append(target[1:], False)  # position t learns token t+1
        n = int(trained.sum())
        w = 1.0 / n if self.loss_weighting == "longalign" else 1.0
        return Piece(tokens, labels, np.where(trained, w, 0.0).astype(np.float32))

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        convs = self.conversations(idx)
        return pack_pieces([self.piece(j, c) for j, c in convs], self.seq_length, self.pad_multiple,
                           num_sequences=len(convs))
