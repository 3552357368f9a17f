"""The forward step megatron's schedules call, and the loss contract.

megatron-core's schedules accept a loss function returning (loss_sum, count, logs). With
`calculate_per_token_loss=True` they neither divide by the number of micro-batches nor scale by
CP; finalize_model_grads all-reduces the summed count over DP x CP and divides the gradients by it
once. So the gradient is d(sum of weighted token losses over the global batch) / (global count):

* token weighting: weight 1 on target tokens, count = target tokens;
* LongAlign: weight 1/N_i on sequence i's target tokens (from the data pipeline), count = M, the
  number of sequences in the *global* batch.
The count is taken on the whole micro-batch before CP slicing and reported by CP rank 0 only (the
other CP ranks hold slices of the same sequences and report 0), so the DP x CP sum is exact.

Masked positions are zeroed with `where` before the sum, so a NaN/Inf at a masked position (or a
rank whose tokens are all masked) cannot poison the loss (NaN * 0 = NaN).
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state as ps
from megatron.core.packed_seq_params import PackedSeqParams

from megaindex.data.batch import slice_batch_for_cp_rank, static_thd_shapes

LOSS_KEY = "lm loss"


def masked_loss_sum(per_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per_token = per_token.float()
    weight = weight.float()
    return torch.where(weight != 0, per_token, torch.zeros_like(per_token)).mul(weight).sum()


def loss_func(weight: torch.Tensor, count: torch.Tensor, output_tensor: torch.Tensor):
    loss_sum = masked_loss_sum(output_tensor, weight)
    return loss_sum, count, {LOSS_KEY: torch.stack([loss_sum.detach(), count.detach().float()])}


def batch_count(batch: dict, longalign: bool) -> torch.Tensor:
    """The normaliser contribution of this rank's (unsliced) micro-batch (see module doc)."""
    if ps.get_context_parallel_rank() != 0:
        return torch.zeros((), dtype=torch.int)
    n = batch["num_sequences"] if longalign else batch["loss_mask"].count_nonzero()
    return n.to(torch.int).reshape(())


def packed_seq_params(batch: dict, device: torch.device | None = None, static_max_seqlen: int | None = None) -> PackedSeqParams:
    """TE's THD parameters from a (CPU) batch. The checks run on the host, then cu_seqlens move to
    `device` (on the GPU, torch.equal and int() would each wait for the GPU to drain its queue).

    `static_max_seqlen`: run-constant shapes (data/batch.py `static_thd_shapes`), and cu_seqlens_padded
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
        cu = cu.to(device, non_blocking=True)
        cu_pad = cu if share else cu_pad.to(device, non_blocking=True)
    if share:
        cu_pad = cu  # same object: TE keeps flash attention eligible (padded != real forces cuDNN)
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu_pad,
        cu_seqlens_kv_padded=cu_pad, max_seqlen_q=max_len, max_seqlen_kv=max_len,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def make_forward_step(*, packed: bool, longalign: bool, device: torch.device, stats_chunk=None,
                      static_max_seqlen: int | None = None):
    """forward_step(data_iterator, model) for megatron's get_forward_backward_func().

    With virtual pipeline stages every model chunk runs forward_step on the same micro-batches;
    document statistics are counted only for `stats_chunk` (the chunk holding the loss), once per
    micro-batch. `static_max_seqlen` (Transformer Engine path only): pad the THD metadata to
    run-constant shapes with this max_seqlen (data/batch.py `static_thd_shapes`). Everything but the model runs on the host
    without waiting for the GPU."""
    cp_size = ps.get_context_parallel_world_size()

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        count = batch_count(batch, longalign)
        if stats_chunk is None or model is stats_chunk:
            lengths = (batch["cu_seqlens_padded"][1:] - batch["cu_seqlens_padded"][:-1]).to(torch.int64)
            forward_step.stats["doc_sq_sum"] = forward_step.stats.get("doc_sq_sum", 0) + int((lengths * lengths).sum())
            forward_step.stats["real_tokens"] = forward_step.stats.get("real_tokens", 0) + int(batch["cu_seqlens"][-1])
        batch = slice_batch_for_cp_rank(batch, cp_size, ps.get_context_parallel_rank())
        psp = packed_seq_params(batch, device, static_max_seqlen) if packed else None
        batch = to_device({k: batch[k] for k in ("tokens", "position_ids", "labels", "loss_mask")}, device)
        output = model(
            batch["tokens"], None if packed else batch["position_ids"], None,
            labels=batch["labels"], packed_seq_params=psp,
        )
        return output, partial(loss_func, batch["loss_mask"], count.to(device))

    forward_step.stats = {}  # per-step statistics the trainer reads (sum of squared document lengths, real tokens)
    return forward_step
