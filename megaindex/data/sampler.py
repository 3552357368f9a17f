"""Which samples each DP rank reads, from `consumed_samples` on: the resume mechanism.

Owns `MicroBatchSampler` (Megatron-LM's MegatronPretrainingSampler rule), `StepSampler` (a CUDA-graph
step's micro-batches as one loader item) and `build_dataloader`.
The datasets are already in their seeded, shuffled order, so the sampler walks them in order: global
micro-batch step k covers samples [k*mbs*dp, (k+1)*mbs*dp), and DP rank r takes its slice of mbs.
A run resumed with consumed_samples = iteration * global_batch_size therefore reads exactly the
samples the uninterrupted run would have read next.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch

from megaindex.data.batch import collate


class MicroBatchSampler:
    """Yields lists of `micro_batch_size` sample indices for one DP rank, from consumed_samples on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int = 0, data_parallel_size: int = 1):
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} not in [0, {data_parallel_size})")
        if consumed_samples % (micro_batch_size * data_parallel_size):
            raise ValueError(
                f"consumed_samples {consumed_samples} is not a multiple of micro_batch_size x DP = "
                f"{micro_batch_size * data_parallel_size}: it must count whole global micro-batch steps"
            )
        self.total, self.consumed = total_samples, consumed_samples
        self.mbs, self.rank, self.dp = micro_batch_size, data_parallel_rank, data_parallel_size

    def __len__(self) -> int:
        return max(0, (self.total - self.consumed) // (self.mbs * self.dp))

    def __iter__(self):
        step = self.mbs * self.dp
        for start in range(self.consumed, self.total - step + 1, step):
            first = start + self.rank * self.mbs
            yield list(range(first, first + self.mbs))


class StepSampler:
    """The index lists of `n` consecutive micro-batches of `micro_batches` joined into one: the same
    samples in the same order, one loader item per training step (an incomplete last step is not
    yielded: the trainer stops before a step the data cannot fill)."""

    def __init__(self, micro_batches: MicroBatchSampler, n: int):
        self.micro_batches, self.n = micro_batches, n

    def __len__(self) -> int:
        return len(self.micro_batches) // self.n

    def __iter__(self):
        it = iter(self.micro_batches)
        while len(group := list(itertools.islice(it, self.n))) == self.n:
            yield [i for mb in group for i in mb]


def build_dataloader(dataset, *, micro_batch_size: int, consumed_samples: int = 0, data_parallel_rank: int = 0,
                     data_parallel_size: int = 1, num_workers: int = 0, microbatches_per_item: int | None = None,
                     collate_fn: Callable = collate) -> torch.utils.data.DataLoader:
    """DataLoader of collated THD micro-batches (each one packed row, see batch.collate); with
    `microbatches_per_item` (a training step's), of that many consecutive micro-batches per item,
    collated by `collate_fn` (data/step_batch.py `collate_step` for CUDA-graph steps)."""
    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch_size, data_parallel_rank, data_parallel_size)
    if microbatches_per_item is not None:
        sampler = StepSampler(sampler, microbatches_per_item)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                                       persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
