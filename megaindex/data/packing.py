"""One packed THD sample from document pieces: padding to 2*CP, cu_seqlens, positions, loss weights.

Owns the sample layout both the pretraining and the SFT datasets return (all CPU tensors):
  tokens, labels      int64 [seq_length]  labels[t] = the next token of the same document
  loss_mask           float32 [seq_length] per-token weight: 0/1, or 1/N_i for LongAlign; 0 on pads
                      and on labels that would cross a document boundary
  position_ids        int64 [seq_length]  0.. per piece (reset packing) or 0..S-1 (concat)
  cu_seqlens          int32 [pieces+1]    cumulative REAL piece lengths (TE's cu_seqlens)
  cu_seqlens_padded   int32 [pieces+1]    cumulative padded lengths; the layout of the row
  num_sequences       int64 scalar        SFT conversations (LongAlign's M counts these) or pieces

Every piece is padded at its own end to a multiple of `pad_multiple` (2*CP) so CP can cut it into
2*CP equal chunks (megatron's own pretraining packing lacks this under CP, Megatron-LM #1131). Space
left at the end of the row is folded into the last piece's padding, so cu_seqlens_padded[-1] ==
seq_length. TE reads cu_seqlens as *lengths* (pad excluded) and cu_seqlens_padded as *offsets*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megaindex.data.tokenizer import EOS


@dataclass
class Piece:
    """A contiguous span of one document: its tokens, next-token labels and per-token loss weights."""

    tokens: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pack_pieces(pieces: list[Piece], seq_length: int, pad_multiple: int, *, concat: bool = False,
                num_sequences: int | None = None) -> dict[str, torch.Tensor]:
    """Lay `pieces` out in one row of `seq_length` tokens (see the module docstring)."""
    tokens = np.full(seq_length, EOS, dtype=np.int64)
    labels = np.full(seq_length, EOS, dtype=np.int64)
    weights = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.arange(seq_length, dtype=np.int64)
    real, padded, off = [0], [0], 0
    for p in pieces:
        n = len(p.tokens)
        end = off + (n if concat else round_up(n, pad_multiple))
        if end > seq_length:
            raise ValueError(f"pieces need {end} > seq_length {seq_length} tokens (padding to {pad_multiple})")
        tokens[off:off + n] = p.tokens
        labels[off:off + n] = p.labels
        weights[off:off + n] = p.weights
        if not concat:
            position_ids[off:end] = np.arange(end - off)
        real.append(real[-1] + n)
        padded.append(end)
        off = end
    if concat:  # one causal segment over the whole row
        real, padded = [0, seq_length], [0, seq_length]
    elif padded[-1] < seq_length:
        last = padded[-2] if len(padded) > 1 else 0
        padded[-1] = seq_length  # fold the tail into the last piece's padding (still a multiple)
        position_ids[last:] = np.arange(seq_length - last)
    return {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(weights),
        "position_ids": torch.from_numpy(position_ids),
        "cu_seqlens": torch.tensor(real, dtype=torch.int32),
        "cu_seqlens_padded": torch.tensor(padded, dtype=torch.int32),
        "num_sequences": torch.tensor(len(pieces) if num_sequences is None else num_sequences, dtype=torch.int64),
    }


def max_seqlen(cu_seqlens_padded: torch.Tensor) -> int:
    """The longest padded piece: TE's max_seqlen (NOT seq_length: megatron's unfused THD RoPE reads a
    freqs tensor as long as the whole pack as per-pack offsets)."""
    return int((cu_seqlens_padded[1:] - cu_seqlens_padded[:-1]).max())
