"""A whole training step's micro-batches as one stacked batch: what a CUDA-graph step reads.

Owns `collate_step`, the collate function of the step loader that `train.cuda_graph_impl=full_iteration`
uses (data/sampler.py `build_dataloader(microbatches_per_item=N)`; the THD padding is data/batch.py's
`pad_thd_slots`). A graphed step needs all its micro-batches before it can queue the replay
(training/cuda_graph.py), so the loader hands over one item per step instead of one per micro-batch:

  tokens, labels        int64   [N, B*S]    micro-batch i = data/batch.collate of its B samples
  loss_mask             float32 [N, B*S]
  cu_seqlens            int32   [N, slots+1] each row padded with zero-length sequences (its last
  cu_seqlens_padded     int32   [N, slots+1] offset repeated: batch.pad_thd_slots) to the step's slot count (batch.thd_slots)
  count                 int32   [N]         the loss normaliser (training/loss.py batch_count)
  doc_sq_sum            int64   [N]         sum of squared real document lengths } data/batch.py
  real_tokens           int64   [N]         tokens that are not padding          } document_stats

Why one item per step: a DataLoader worker hands every tensor of an item to the trainer process
through its own shared-memory file descriptor (a socket connection and an authentication round trip
each), then the pin-memory thread copies it into pinned memory. Per 2K micro-batch of 8 small
tensors that was the ~2.3 ms of data wait on the GPU node (~6 ms on a loaded 2-core machine), all on the
graphed step's critical path since the loader prefetches only 2 items per worker; per step it is
8 tensors, prefetched by the workers while the previous step's replay runs
(benchmarks/RESULTS_microbatch.md). The statistics the trainer logs are computed here, vectorised,
in the worker, so the trainer process only copies the step into its static buffers.
"""

from __future__ import annotations

import torch

from megaindex.data.batch import (MIN_THD_SLOTS, THD_KEYS, check_static_max_seqlen, collate, document_stats,
                                  pad_thd_slots, thd_slots)

TOKEN_KEYS = ("tokens", "labels", "loss_mask")
STAT_KEYS = ("count", "doc_sq_sum", "real_tokens")


def collate_step(samples: list[dict[str, torch.Tensor]], *, micro_batch_size: int, max_seqlen: int, longalign: bool,
                 min_slots: int = MIN_THD_SLOTS) -> dict[str, torch.Tensor]:
    """The samples of a step's micro-batches, in order (micro-batch i = samples[i*B:(i+1)*B]), as one
    stacked batch (see the module doc); `max_seqlen` is the static bound every packed piece must fit
    (data.seq_length), `longalign` counts sequences instead of target tokens (data.loss_weighting)."""
    b = micro_batch_size
    if not samples or len(samples) % b:
        raise ValueError(f"a step needs a positive multiple of micro_batch_size {b} samples, got {len(samples)}")
    batches = [collate(samples[i:i + b]) for i in range(0, len(samples), b)]  # the eager path's collate
    slots = max(thd_slots(len(x["cu_seqlens"]) - 1, min_slots) for x in batches)
    batches = [pad_thd_slots(x, slots) for x in batches]
    out = {k: torch.stack([x[k] for x in batches]) if k in THD_KEYS else torch.cat([x[k] for x in batches])
           for k in (*TOKEN_KEYS, *THD_KEYS)}  # tokens [N, B*S], cu_seqlens [N, slots+1]
    check_static_max_seqlen(out["cu_seqlens_padded"], max_seqlen)
    if longalign:
        out["count"] = torch.stack([x["num_sequences"] for x in batches]).to(torch.int32)
    else:
        out["count"] = out["loss_mask"].ne(0).sum(1, dtype=torch.int32)
    out["doc_sq_sum"], out["real_tokens"] = document_stats(out["cu_seqlens"])
    return out
