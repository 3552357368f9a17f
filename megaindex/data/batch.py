"""Batch -> rank: collating packed samples into one THD row, CP slicing, and sharing over TP.

Owns what happens between a dataset sample and the model's input on one GPU:
  * `collate`: a micro-batch of B packed samples becomes ONE packed row of B*seq_length tokens
    (shape [1, B*S]) with merged cu_seqlens. TE's THD attention takes batch dimension 1, and the
    samples are independent documents anyway, so packing them further changes nothing numerically.
  * `slice_batch_for_cp_rank`: the tokens this CP rank holds: every (padded) piece is cut into 2*CP
    chunks and rank r keeps chunks r and 2*CP-1-r (megaindex.cp_layout, identical to TE's
    `thd_get_partitioned_indices`). cu_seqlens stay global: TE's CP attention wants them whole.
  * `unpack_rows`: concat rows back as [rows, tokens] for attention without THD (FP8 attention).
  * `broadcast_batch_to_tp`: TP rank 0 loads the batch and the other TP ranks receive it (they
    compute on the same tokens), the way Megatron-LM's get_batch does.
  * `static_thd_shapes`: the THD metadata with shapes that stay the same from micro-batch to
    micro-batch (zero-length slots appended to cu_seqlens, a run-wide max_seqlen), so Transformer
    Engine selects its attention backend once per run instead of per new shape; `pad_thd_slots` is
    the one padder of cu_seqlens (a micro-batch's, or a CUDA-graph step's stacked rows).
  * `packed_seq_params` / `thd_params`: TE's THD attention parameters of a micro-batch (from a host
    batch) / of cu_seqlens already where they will be used (the CUDA-graph step's static buffers).
  * `host_to_device`: the one way a host tensor of a micro-batch reaches the GPU, without the host
    waiting for the GPU's queue to drain.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megaindex.cp_layout import thd_partition_indices

TOKEN_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
THD_KEYS = ("cu_seqlens", "cu_seqlens_padded")


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`. A host tensor bound for a CUDA device is pinned first (a host copy into torch's
    cached pinned memory, which keeps it alive until the copy is done) and copied asynchronously, ordered
    on the current stream. A copy from pageable memory is not asynchronous even with non_blocking=True:
    the driver synchronises the stream before it stages the copy, so the host waits until every kernel
    queued before it has run (the 2 x H200 CP2 profile: 72-215 ms at the start of each forward, 8-121 ms
    after it; benchmarks/RESULTS_train.md), and cannot queue the next kernels ahead of the GPU."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """B samples -> one packed row [1, B*S]; cu_seqlens merged; num_sequences summed; max_seqlen added."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    out = {k: torch.cat([s[k] for s in samples]).unsqueeze(0) for k in TOKEN_KEYS}
    real, padded = [torch.zeros(1, dtype=torch.int32)], [torch.zeros(1, dtype=torch.int32)]
    real_off = padded_off = 0
    for s in samples:
        real.append(s["cu_seqlens"][1:] + real_off)
        padded.append(s["cu_seqlens_padded"][1:] + padded_off)
        real_off += int(s["cu_seqlens"][-1])
        padded_off += len(s["tokens"])
    out["cu_seqlens"] = torch.cat(real)
    out["cu_seqlens_padded"] = torch.cat(padded)
    out["num_sequences"] = torch.stack([s["num_sequences"] for s in samples]).sum()
    out["max_seqlen"] = (out["cu_seqlens_padded"][1:] - out["cu_seqlens_padded"][:-1]).max().to(torch.int32)
    return out


def document_stats(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared document lengths, real tokens), int64, of packed rows' `cu_seqlens` [..., S+1] (one
    micro-batch, or a step's rows stacked): what the attention FLOP count and the logs use; the
    zero-length padding slots of static THD shapes add nothing."""
    lengths = cu_seqlens.diff(dim=-1).to(torch.int64)
    return (lengths * lengths).sum(-1), cu_seqlens[..., -1].to(torch.int64)


MIN_THD_SLOTS = 32  # cuDNN's THD graphs bucket the sequence count to >= 32 as well


def thd_slots(num_sequences: int, min_slots: int = MIN_THD_SLOTS) -> int:
    """Sequence slots for a micro-batch of `num_sequences` pieces: the next power of two >= min_slots."""
    slots = min_slots
    while slots < num_sequences:
        slots *= 2
    return slots


def static_thd_shapes(batch: dict[str, torch.Tensor], max_seqlen: int, min_slots: int = MIN_THD_SLOTS) -> dict[str, torch.Tensor]:
    """The batch with THD metadata whose shapes do not change between micro-batches of a run.

    Transformer Engine re-runs its attention backend selection whenever (sequence count, max_seqlen)
    differs from the previous call, i.e. on most micro-batches of packed rows of varying documents.
    Here cu_seqlens and cu_seqlens_padded get trailing zero-length sequences (`pad_thd_slots`) up to
    `thd_slots` entries, and max_seqlen becomes `max_seqlen`, a run-wide upper bound
    (data.seq_length: no piece crosses a sample), which is all TE's attention and fused THD RoPE need.
    Attention is unchanged: a zero-length sequence has no tokens. The price is GPU time in TE's THD
    RoPE, whose grid is slots x max_seqlen (see benchmarks/RESULTS_microbatch.md). Not for megatron's
    unfused THD RoPE (CPU), which reads a freqs table as long as the row as absolute positions.
    """
    check_static_max_seqlen(batch["cu_seqlens_padded"], max_seqlen)
    out = pad_thd_slots(batch, thd_slots(len(batch["cu_seqlens"]) - 1, min_slots))
    out["max_seqlen"] = torch.tensor(max_seqlen, dtype=torch.int32)
    return out


def pad_thd_slots(batch: dict[str, torch.Tensor], slots: int) -> dict[str, torch.Tensor]:
    """`batch` (a new dict; the tensors it does not pad are shared) with cu_seqlens and cu_seqlens_padded
    [..., n+1] - one micro-batch's, or a step's rows stacked [N, n+1] - followed by zero-length
    sequences (copies of each row's last offset) up to `slots` sequences: the one padder of THD
    metadata, for static shapes (above), a CUDA-graph step (data/step_batch.py) and a DP rank whose
    step needs fewer slots than another's (training/cuda_graph.py)."""
    have = batch["cu_seqlens"].shape[-1] - 1
    if slots < have:
        raise ValueError(f"cu_seqlens already has {have} THD slots, more than {slots}")
    out = dict(batch)
    for k in THD_KEYS:
        cu = batch[k]
        out[k] = torch.cat([cu, cu[..., -1:].expand(*cu.shape[:-1], slots - have)], dim=-1)
    return out


def check_static_max_seqlen(cu_seqlens_padded: torch.Tensor, max_seqlen: int) -> None:
    """Refuse a packed piece (of any row of `cu_seqlens_padded` [..., n+1]) longer than the static `max_seqlen`."""
    longest = int(cu_seqlens_padded.diff(dim=-1).max())
    if longest > max_seqlen:
        raise ValueError(f"a packed piece of {longest} tokens is longer than the static max_seqlen {max_seqlen}")


def slice_batch_for_cp_rank(batch: dict[str, torch.Tensor], cp_size: int, cp_rank: int) -> dict[str, torch.Tensor]:
    """The part of a collated batch that CP rank `cp_rank` of `cp_size` computes on."""
    if cp_size == 1:
        return batch
    idx = thd_partition_indices(batch["cu_seqlens_padded"], cp_size, cp_rank).to(batch["tokens"].device)
    out = dict(batch)
    for k in TOKEN_KEYS:
        out[k] = batch[k].index_select(1, idx)
    return out


def unpack_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A collated micro-batch of one-piece rows (data.packing=concat) as [rows, tokens per row]: the
    layout megatron feeds to attention without PackedSeqParams (sbhd, one causal sequence per row).
    After CP slicing each row keeps its chunks r and 2*CP-1-r in order, megatron's sbhd CP layout."""
    rows = len(batch["cu_seqlens_padded"]) - 1
    bounds = batch["cu_seqlens_padded"].tolist()
    if rows < 1 or len({b - a for a, b in zip(bounds, bounds[1:])}) != 1:
        raise ValueError(f"unpack_rows needs equal one-piece rows (data.packing=concat); cu_seqlens_padded is {bounds}")
    out = dict(batch)
    for k in TOKEN_KEYS:
        out[k] = batch[k].reshape(rows, -1)
    return out


def broadcast_batch_to_tp(batch: dict[str, torch.Tensor] | None, device: torch.device | str | None = None,
                          layout=None) -> dict[str, torch.Tensor]:
    """Send TP rank 0's batch to every rank of its TP group (others pass None and get it back).

    Shapes differ from batch to batch (cu_seqlens grows with the number of pieces), so the keys,
    shapes and dtypes go first as a small object broadcast, then each tensor. `layout`
    (distributed.ParallelLayout) defaults to the current groups'.
    """
    import torch.distributed as dist

    from megaindex.distributed import current_layout

    layout = layout or current_layout()
    if layout.tp == 1:
        return batch
    group, src = layout.tp_group, layout.tp_src_rank
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    first = layout.tp_rank == 0
    if first and batch is None:
        raise ValueError("TP rank 0 must pass the batch it loaded")
    meta = [[(k, tuple(v.shape), v.dtype) for k, v in batch.items()] if first else None]
    dist.broadcast_object_list(meta, src=src, group=group)
    out = {}
    for k, shape, dtype in meta[0]:
        t = host_to_device(batch[k], device).contiguous() if first else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=src, group=group)
        out[k] = t
    return out


def packed_seq_params(batch: dict, device: torch.device | None = None, static_max_seqlen: int | None = None) -> PackedSeqParams:
    """TE's THD parameters from a (CPU) batch. The checks run on the host, then cu_seqlens move to
    `device` (on the GPU, torch.equal and int() would each wait for the GPU to drain its queue).

    `static_max_seqlen`: run-constant shapes (`static_thd_shapes` above), and cu_seqlens_padded
    always a tensor of its own: TE infers `pad_between_seqs` from whether the two are the same object,
    and a flip between rows (one filled by a single document piece, the next with tail padding) would
    make it select its backend again."""
    static = static_max_seqlen is not None
    if static:
        batch = static_thd_shapes(batch, static_max_seqlen)
    cu, cu_pad = batch["cu_seqlens"], batch["cu_seqlens_padded"]
    share = not static and torch.equal(cu, cu_pad)
    max_len = int(batch["max_seqlen"])
    if device is not None:
        cu = host_to_device(cu, device)
        cu_pad = cu if share else host_to_device(cu_pad, device)
    if share:
        cu_pad = cu  # same object: TE keeps flash attention eligible (padded != real forces cuDNN)
    return thd_params(cu, cu_pad, max_len)


def thd_params(cu_seqlens: torch.Tensor, cu_seqlens_padded: torch.Tensor, max_seqlen: int) -> PackedSeqParams:
    """Self-attention PackedSeqParams of one THD row (queries and keys share the boundaries); whether
    `cu_seqlens_padded` is the same object as `cu_seqlens` is the caller's choice (see above)."""
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens, cu_seqlens_q_padded=cu_seqlens_padded,
        cu_seqlens_kv_padded=cu_seqlens_padded, max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen,
    )
