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

from megaindex.data.batch import document_stats as packed_document_stats
from megaindex.data.batch import host_to_device, packed_seq_params, slice_batch_for_cp_rank, thd_params, unpack_rows
from megaindex.distributed import ParallelLayout

LOSS_KEY = "lm loss"  # [loss sum, count] of the micro-batch
# Document statistics of the whole micro-batch (before CP slicing), non-zero on CP rank 0 only,
# like the count: the sum of squared real document lengths, for the attention FLOPs (attention runs
# over cu_seqlens, not the padded spans: an SFT row's tail padding is folded into its last
# conversation's span and would otherwise count as attention), and the tokens that are not
# padding, for the packing efficiency.
DOC_SQ_KEY = "doc sq sum"
REAL_TOKENS_KEY = "real tokens"


def masked_loss_sum(per_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per_token = per_token.float()
    weight = weight.float()
    return torch.where(weight != 0, per_token, torch.zeros_like(per_token)).mul(weight).sum()


def loss_func(weight: torch.Tensor, count: torch.Tensor, stats: dict[str, torch.Tensor], output_tensor: torch.Tensor):
    """(loss sum, count, logs): megatron's schedules hand `logs` back, one dict per micro-batch,
    on the last pipeline stage (with virtual stages: for the chunk holding the loss only)."""
    loss_sum = masked_loss_sum(output_tensor, weight)
    return loss_sum, count, {LOSS_KEY: torch.stack([loss_sum.detach(), count.detach().float()]), **stats}


def batch_count(batch: dict, longalign: bool, cp_rank: int) -> torch.Tensor:
    """The normaliser contribution of this rank's (unsliced) micro-batch (see module doc)."""
    if cp_rank != 0:
        return torch.zeros((), dtype=torch.int)
    n = batch["num_sequences"] if longalign else batch["loss_mask"].count_nonzero()
    return n.to(torch.int).reshape(())


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`, the host not waiting for the GPU (data/batch.py `host_to_device`)."""
    return {k: (host_to_device(v, device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def document_stats(batch: dict, cp_rank: int) -> dict[str, torch.Tensor]:
    """DOC_SQ_KEY and REAL_TOKENS_KEY of this rank's (unsliced) micro-batch, on the host."""
    if cp_rank != 0:
        return {DOC_SQ_KEY: torch.zeros((), dtype=torch.int64), REAL_TOKENS_KEY: torch.zeros((), dtype=torch.int64)}
    doc_sq_sum, real_tokens = packed_document_stats(batch["cu_seqlens"])
    return {DOC_SQ_KEY: doc_sq_sum, REAL_TOKENS_KEY: real_tokens}


def make_forward_step(*, packed: bool, longalign: bool, device: torch.device, layout: ParallelLayout,
                      static_max_seqlen: int | None = None):
    """forward_step(data_iterator, model) for megatron's get_forward_backward_func().

    `packed`: the micro-batch goes in as one THD row with PackedSeqParams; otherwise (concat rows
    only, data/batch.py unpack_rows) as [rows, tokens] with causal attention per row (sbhd).

    Statistics of the micro-batch travel in the loss logs (LOSS_KEY, DOC_SQ_KEY, REAL_TOKENS_KEY), which megatron
    returns once per micro-batch, also with virtual pipeline stages (every chunk runs this step).
    `static_max_seqlen` (Transformer Engine path only): pad the THD metadata to run-constant shapes
    with this max_seqlen (data/batch.py `static_thd_shapes`). Everything but the model runs on the
    host without waiting for the GPU (the statistics stay on the host)."""
    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        count = batch_count(batch, longalign, layout.cp_rank)
        stats = document_stats(batch, layout.cp_rank)
        batch = slice_batch_for_cp_rank(batch, layout.cp, layout.cp_rank)
        psp = packed_seq_params(batch, device, static_max_seqlen) if packed else None
        if not packed:
            batch = unpack_rows(batch)
        batch = to_device({k: batch[k] for k in ("tokens", "position_ids", "labels", "loss_mask")}, device)
        output = model(
            batch["tokens"], None if packed else batch["position_ids"], None,
            labels=batch["labels"], packed_seq_params=psp,
        )
        return output, partial(loss_func, batch["loss_mask"], host_to_device(count, device), stats)

    return forward_step


def make_static_forward_step(max_seqlen: int):
    """forward_step for micro-batches already on the GPU in run-constant THD shapes (the static
    buffers of training/cuda_graph.py: tokens, labels, loss_mask, cu_seqlens, cu_seqlens_padded,
    count). No host work, no host-to-device copy and nothing that waits for the GPU, so megatron's
    schedule around it can be captured in a CUDA graph. The document statistics are the caller's
    (computed on the host before the step); the logs carry LOSS_KEY only."""
    def forward_step(data_iterator, model):
        b = next(data_iterator)
        # two tensors, never one object: TE's pad_between_seqs stays fixed
        psp = thd_params(b["cu_seqlens"], b["cu_seqlens_padded"], max_seqlen)
        output = model(b["tokens"], None, None, labels=b["labels"], packed_seq_params=psp)
        return output, partial(loss_func, b["loss_mask"], b["count"], {})

    return forward_step
