"""The context-parallel token layout shared by data slicing and the reference attention.

Under CP every sequence is cut into 2*CP equal chunks and CP rank r keeps chunks r and 2*CP-1-r
(causal load balance: an early, cheap chunk with a late, expensive one). For packed THD batches
this applies to every document separately, so each document's (padded) length must be a
multiple of 2*CP. `thd_partition_indices` is the same index set as Transformer Engine's
`thd_get_partitioned_indices(cu_seqlens_padded, total, cp_size, cp_rank)` (a gpu-marked test checks).
"""

from __future__ import annotations

import numpy as np
import torch


def cp_chunk_positions(seq_len: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Positions within one sequence of `seq_len` tokens that CP rank `cp_rank` holds, in order."""
    if cp_size == 1:
        return torch.arange(seq_len)
    if seq_len % (2 * cp_size):
        raise ValueError(f"sequence length {seq_len} is not a multiple of 2*CP = {2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk)
    second = torch.arange((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk)
    return torch.cat([first, second])


def thd_partition_indices(cu_seqlens_padded: torch.Tensor | list[int], cp_size: int, cp_rank: int) -> torch.Tensor:
    """Indices into a packed row of the tokens CP rank `cp_rank` holds (every document chunked).

    Vectorised over the documents (numpy): the forward step calls it per micro-batch on the host,
    and an SFT row can hold hundreds of conversations (a loop of torch ops per document cost ~11 us
    each: 5.7 ms for 500)."""
    cu = np.asarray(cu_seqlens_padded.tolist() if isinstance(cu_seqlens_padded, torch.Tensor) else cu_seqlens_padded,
                    dtype=np.int64)
    starts, lengths = cu[:-1], np.diff(cu)
    if cp_size == 1:
        chunk_starts, chunk_lengths = starts, lengths
    else:
        bad = lengths % (2 * cp_size) != 0
        if bad.any():
            raise ValueError(f"sequence length {int(lengths[bad][0])} is not a multiple of 2*CP = {2 * cp_size}")
        chunk = lengths // (2 * cp_size)  # rank r: chunks r and 2*CP-1-r of every document, in order
        chunk_starts = np.stack([starts + cp_rank * chunk, starts + (2 * cp_size - 1 - cp_rank) * chunk], 1).ravel()
        chunk_lengths = np.repeat(chunk, 2)
    total = int(chunk_lengths.sum())
    # positions 0..total-1, shifted by (chunk start - where the chunk begins in the output)
    shift = chunk_starts - (np.cumsum(chunk_lengths) - chunk_lengths)
    return torch.from_numpy(np.repeat(shift, chunk_lengths) + np.arange(total, dtype=np.int64))
