"""The data schedule: which samples each training step reads, as iterators the trainer hands to
megatron's schedules.

Owns the opt-in context-length warmup (`data.context_length_warmup: [[until_step, seq_length],
...]`, the report found it unhelpful, so it is off by default): the phases of shorter packed rows
before data.seq_length, each phase's dataset, and the position in it. A warmup phase packs rows of
its shorter length; global_batch_tokens stay the same and each micro-batch holds
seq_length/length times more rows, so a micro-batch is still one packed row of
micro_batch_size * seq_length tokens (same pipeline shapes, same number of micro-batches). Each
phase reads its own dataset from its start, so the position in it is (steps since the phase
began) x its global batch: resumable from the step count alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Callable

from megaindex.config import Config
from megaindex.data.builder import build_datasets
from megaindex.data.sampler import build_dataloader
from megaindex.data.step_batch import collate_step


@dataclass(frozen=True)
class Phase:
    seq_length: int
    start: int  # first 0-based step of the phase
    until: int | None  # first step after it; None for the last phase (data.seq_length)


def phase_at(cfg: Config, step: int) -> Phase:
    """The phase holding 0-based step `step`."""
    start = 0
    for until, length in cfg.data.context_length_warmup:
        if step < until:
            return Phase(length, start, until)
        start = until
    return Phase(cfg.data.seq_length, start, None)


def data_iterators(cfg: Config, dataset, layout, num_chunks: int, consumed: int, micro_batch_size: int | None = None,
                   wrap: Callable = lambda it: it, whole_steps: bool = False):
    """One iterator per model chunk (interleaved PP advances each chunk's stream separately);
    `layout` (distributed.ParallelLayout) says which DP slice this rank reads; `wrap` wraps each
    iterator (the trainer times the waits in next()). `whole_steps`: one item per training step,
    all its micro-batches stacked with static THD shapes (data/step_batch.py; CUDA-graph steps)."""
    d = cfg.data
    mbs = micro_batch_size or d.micro_batch_size
    steps = {}
    if whole_steps:
        steps = {"microbatches_per_item": cfg.num_microbatches(layout.world_size),
                 "collate_fn": partial(collate_step, micro_batch_size=mbs, max_seqlen=d.seq_length,
                                       longalign=d.loss_weighting == "longalign")}
    iters = [
        wrap(iter(build_dataloader(
            dataset, micro_batch_size=mbs, consumed_samples=consumed,
            data_parallel_rank=layout.dp_rank, data_parallel_size=layout.dp, num_workers=d.num_workers, **steps,
        )))
        for _ in range(num_chunks)
    ]
    return iters if len(iters) > 1 else iters[0]


class DataSchedule:
    """The training data iterators for the phase of the current step: one item per micro-batch, or
    per step with `train.cuda_graph_impl=full_iteration` (data_iterators' `whole_steps`)."""

    def __init__(self, cfg: Config, tokenizer, train_ds, layout, num_chunks: int, wrap: Callable = lambda it: it):
        self.cfg, self.tokenizer, self.train_ds, self.layout, self.num_chunks = cfg, tokenizer, train_ds, layout, num_chunks
        self.wrap = wrap
        self.phase: Phase | None = None  # of the data the iterators read
        self.data_end_step = 0  # the step at which the current phase's data runs out
        self._datasets: dict[int, object] = {}  # warmup phase start step -> its dataset

    def iterators_at(self, step: int):
        """New iterators when 0-based `step` starts another phase than the current one, else None."""
        phase = phase_at(self.cfg, step)
        if phase == self.phase:
            return None
        d = self.cfg.data
        scale = d.seq_length // phase.seq_length
        if phase.until is not None and phase.start not in self._datasets:
            pcfg = dataclasses.replace(self.cfg, data=dataclasses.replace(d, seq_length=phase.seq_length))
            self._datasets[phase.start], _ = build_datasets(
                pcfg, self.tokenizer, num_samples=((phase.until - phase.start) * d.global_batch_size * scale, 0))
        dataset = self.train_ds if phase.until is None else self._datasets[phase.start]
        consumed = (step - phase.start) * d.global_batch_size * scale
        self.phase = phase
        self.data_end_step = phase.start + len(dataset) // (d.global_batch_size * scale)
        return data_iterators(self.cfg, dataset, self.layout, self.num_chunks, consumed, d.micro_batch_size * scale, self.wrap,
                              whole_steps=self.cfg.train.cuda_graph_impl == "full_iteration")
