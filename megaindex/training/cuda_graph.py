"""Full-iteration CUDA graphs (`train.cuda_graph_impl=full_iteration`): the forward and backward of
all micro-batches of a training step, captured once as one CUDA graph and replayed every step.

Why: on a small model the GPU work of a micro-batch (34.7M parameters, 2K tokens: ~4-5 ms) is a
fraction of the host time megatron, Transformer Engine and autograd take to launch it eagerly
(~50 ms, ~480 kernel launches; benchmarks/RESULTS_microbatch.md). A replay launches the same
kernels without the Python.

The recipe is megatron-core's full-iteration graph (`megatron/core/full_cuda_graph.py`,
`FullCudaGraphWrapper`, and how megatron/training/training.py sets it up), adapted to two things
that wrapper does not handle: the host-side statistics of megaindex's loss logs and THD metadata
whose shapes must not change between replays.

* One side stream is the current stream of the whole run, made so before the model and DDP are
  built (`activate_capture_stream`): the gradient-accumulation nodes DDP hooks into remember the
  stream they were created on, and a node on another stream would pull it into the capture
  (megatron-LM builds DDP on its capture stream for the same reason).
* A step first reads all its micro-batches, pads their THD metadata to the step's slot count
  (data/batch.py `static_thd_shapes`, max_seqlen = data.seq_length), computes the loss count and
  the document statistics on the host, and copies everything into static GPU buffers (one pinned
  staging tensor and one copy per tensor kind). The forward step (training/loss.py
  `make_static_forward_step`) reads those buffers only.
* The first EAGER_STEPS (2) steps of a shape (THD slot count x micro-batches) run eagerly on the
  buffers: cuDNN graphs, TE's attention backend, the torch.compile'd fusions and the NCCL
  communicators are made there. The next step of that shape is captured - megatron's own schedule, finalize_model_grads
  included (DP gradient all-reduce, division by the global token count) - and replayed; every later
  step is one replay. TE is not told it is being captured, so the capture runs exactly the code the
  eager step ran (same cuDNN graphs, same backend: nothing is built inside the capture).
* The optimizer step, the loss reduction, validation, the probe and checkpoints stay eager. The
  parameters and gradient buffers are updated in place, so the graph always sees the current ones.

Combinations that cannot be captured are config errors (config_layout.py `cuda_graph_errors`); a
missing GPU or Transformer Engine is refused here, at start-up.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
import torch.distributed as dist

from megaindex.config import Config, ConfigError
from megaindex.data.batch import static_thd_shapes, thd_slots
from megaindex.training.loss import LOSS_KEY, batch_count, document_stats

# The tensors of one micro-batch that live in the static buffers (make_static_forward_step's inputs).
BUFFER_KEYS = ("tokens", "labels", "loss_mask", "cu_seqlens", "cu_seqlens_padded", "count")
# Eager steps of a shape before its capture: megatron-core's FullCudaGraphWrapper defaults to 1,
# megatron-LM's training passes cuda_graph_warmup_steps (3); a second eager step is cheap insurance
# that nothing is still set up lazily when the capture runs.
EAGER_STEPS = 2
ALIGN = 64  # elements per buffer row are padded to a multiple of this (>= 256 bytes)


def check_runtime(cfg: Config) -> None:
    """ConfigError unless this process can capture (a CUDA GPU, the Transformer Engine path); then
    NCCL_GRAPH_REGISTER=0 unless set: NCCL registering graph-captured buffers that torch allocated
    with expandable segments (the trainer's default allocator setting) can access freed memory -
    megatron-LM refuses that combination for its TE graphs. Call before distributed setup."""
    from megaindex.model.build import use_transformer_engine

    if not torch.cuda.is_available():
        raise ConfigError("train.cuda_graph_impl=full_iteration needs a CUDA GPU and none is visible; "
                          "set train.cuda_graph_impl=none on this machine.")
    if not use_transformer_engine(cfg):
        raise ConfigError("train.cuda_graph_impl=full_iteration needs the Transformer Engine path (THD attention "
                          "with static shapes); install the `gpu` extra or set train.cuda_graph_impl=none.")
    os.environ.setdefault("NCCL_GRAPH_REGISTER", "0")


def activate_capture_stream() -> torch.cuda.Stream:
    """Make a new side stream this thread's current stream; call before building the model and DDP."""
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    torch.cuda.set_stream(stream)
    return stream


def stage_microbatch(batch: dict, slots: int, max_seqlen: int, longalign: bool) -> tuple[dict, dict]:
    """(the tensors for the static buffers, the host statistics) of one collated CPU micro-batch,
    its THD metadata padded to `slots` sequences (zero-length ones) and `max_seqlen`."""
    stats = document_stats(batch, cp_rank=0)  # CP > 1 is refused by the config
    count = batch_count(batch, longalign, cp_rank=0)
    padded = static_thd_shapes(batch, max_seqlen, min_slots=slots)
    tensors = {k: padded[k] for k in BUFFER_KEYS if k != "count"}
    tensors["count"] = count
    return tensors, stats


def step_slots(batches: list[dict]) -> int:
    """THD slots for a step: the most any of its micro-batches needs (a power of two >= 32)."""
    return max(thd_slots(len(b["cu_seqlens"]) - 1) for b in batches)


class _Shape:
    """Static buffers, their pinned staging copies and (once captured) the graph of one step shape.

    One [micro-batches, width] buffer per tensor kind; micro-batch i's tensor is a view into row i,
    and rows are padded to ALIGN elements so every view starts 256-byte aligned (a plain stack of
    33-entry cu_seqlens would put TE's int32 offsets at 132-byte steps)."""

    def __init__(self, staged: list[dict], device: torch.device):
        cuda = device.type == "cuda"  # (CPU: the host-side logic under test, tests/test_cuda_graph.py)
        n, first = len(staged), staged[0]
        self.numel = {k: first[k].numel() for k in BUFFER_KEYS}
        self.staging, self.buffers = {}, {}
        for k in BUFFER_KEYS:
            width = -(-self.numel[k] // ALIGN) * ALIGN
            self.staging[k] = torch.zeros((n, width), dtype=first[k].dtype, **({"pin_memory": True} if cuda else {}))
            self.buffers[k] = torch.zeros((n, width), dtype=first[k].dtype, device=device)
        # Views into the buffers: fixed addresses, which is what the graph reads.
        self.microbatches = [{k: self.buffers[k][i, :self.numel[k]].view(first[k].shape) for k in BUFFER_KEYS}
                             for i in range(n)]
        self.copied = torch.cuda.Event() if cuda else None
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logs: list[dict] | None = None
        self.load(staged)

    def load(self, staged: list[dict]) -> None:
        """Copy a step's staged micro-batches into the buffers (through the pinned staging rows)."""
        if self.copied is not None:
            self.copied.synchronize()  # the previous step's copy has finished reading the staging memory
        for k in BUFFER_KEYS:
            rows, numel = self.staging[k], self.numel[k]
            for i, s in enumerate(staged):
                rows[i, :numel].copy_(s[k].reshape(-1))
            self.buffers[k].copy_(rows, non_blocking=True)
        if self.copied is not None:
            self.copied.record()


class FullIterationGraph:
    """Runs a training step's forward-backward as a replayed CUDA graph (see the module doc).

    `run(data_iterator, num_microbatches)` is the eager forward-backward over an iterator of
    static micro-batches (megatron's schedule with `make_static_forward_step`); it returns
    megatron's per-micro-batch logs. Calling the object returns the same logs, with the host
    statistics of each micro-batch added, as the trainer's eager step does.
    """

    def __init__(self, run: Callable, *, stream: torch.cuda.Stream | None, max_seqlen: int, longalign: bool,
                 log: Callable[[str], None] = print, device: torch.device | None = None):
        self.run, self.stream, self.max_seqlen, self.longalign, self.log = run, stream, max_seqlen, longalign, log
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self.shapes: dict[tuple[int, int], _Shape] = {}
        self.captures = 0  # graphs captured so far (one per step shape)

    def __call__(self, data_iterator, num_microbatches: int) -> list[dict]:
        it = data_iterator[0] if isinstance(data_iterator, list) else data_iterator
        batches = [next(it) for _ in range(num_microbatches)]
        slots = self._agree(step_slots(batches))
        staged, stats = zip(*(stage_microbatch(b, slots, self.max_seqlen, self.longalign) for b in batches))
        key = (slots, num_microbatches)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = _Shape(list(staged), self.device)
        else:
            shape.load(list(staged))
        if shape.graph is None and shape.eager_steps < EAGER_STEPS:
            shape.eager_steps += 1
            logs = self.run(iter(shape.microbatches), num_microbatches)
        else:
            if shape.graph is None:
                self._capture(shape, key)
            shape.graph.replay()
            logs = shape.logs
        return [{LOSS_KEY: rec[LOSS_KEY], **s} for rec, s in zip(logs, stats)]

    def _agree(self, slots: int) -> int:
        """The same slot count on every rank (so all ranks run eagerly, capture or replay together)."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return slots
        t = torch.tensor([slots], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _capture(self, shape: _Shape, key: tuple[int, int]) -> None:
        slots, n = key
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # every rank captures the same collectives at the same point
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # torch >= 2.12 (megatron sets it for full-iteration capture): an autograd node that still
        # names a non-capturing stream uses the capturing one instead of breaking the capture.
        override = getattr(torch.autograd.graph, "set_override_stale_capture_stream", None)
        if override is not None:
            override(True)
        start = time.perf_counter()
        try:
            # thread_local: the DataLoader's pin-memory thread may allocate pinned memory meanwhile.
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                logs = self.run(iter(shape.microbatches), n)
        finally:
            if override is not None:
                override(False)
        torch.cuda.synchronize()
        shape.graph, shape.logs = graph, logs
        self.captures += 1
        self.log(f"CUDA graph captured: forward-backward of {n} micro-batches ({slots} THD slots) in "
                 f"{time.perf_counter() - start:.1f} s; steps of this shape replay it")
