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
* A step reads all its micro-batches as ONE loader item (data/step_batch.py `collate_step`, made in
  the DataLoader's workers while the previous step's replay runs): stacked, THD metadata padded to
  the step's slot count (max_seqlen = data.seq_length), loss count and document statistics already
  computed. The step copies it into static GPU buffers (one asynchronous copy per tensor kind,
  from the memory the loader pinned). The forward step (training/loss.py `make_static_forward_step`)
  reads those buffers only.
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
from megaindex.data.batch import THD_KEYS, pad_thd_slots
from megaindex.data.step_batch import TOKEN_KEYS
from megaindex.training.loss import DOC_SQ_KEY, LOSS_KEY, REAL_TOKENS_KEY

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


class _Shape:
    """Static buffers and (once captured) the graph of one step shape.

    One [micro-batches, width] buffer per tensor kind, filled from the step batch (data/step_batch.py)
    with one host-to-device copy per kind, straight from the pinned memory the DataLoader's pin
    thread made (no host copy on the step's critical path); micro-batch i's tensor is a view into
    row i, and rows are padded to ALIGN elements so every view starts 256-byte aligned (a plain stack
    of 33-entry cu_seqlens would put TE's int32 offsets at 132-byte steps)."""

    def __init__(self, step: dict, device: torch.device):
        n = step["count"].shape[0]
        self.numel = {k: step[k][0].numel() for k in BUFFER_KEYS}
        # what the forward step reads per micro-batch: one packed row [1, B*S], cu_seqlens [slots+1], count ()
        shapes = {k: (1, self.numel[k]) for k in TOKEN_KEYS} | {k: (self.numel[k],) for k in THD_KEYS} | {"count": ()}
        self.buffers = {k: torch.zeros((n, -(-self.numel[k] // ALIGN) * ALIGN), dtype=step[k].dtype, device=device)
                        for k in BUFFER_KEYS}
        # Views into the buffers: fixed addresses, which is what the graph reads.
        self.microbatches = [{k: self.buffers[k][i, :self.numel[k]].view(shapes[k]) for k in BUFFER_KEYS}
                             for i in range(n)]
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logs: list[dict] | None = None
        self.load(step)

    def load(self, step: dict) -> None:
        """Copy a step batch into the buffers. On the GPU the copies are asynchronous and ordered
        before the step's replay on the same stream; torch's pinned-memory allocator keeps the source
        alive until they are done (memory that is not pinned is pinned first, a host copy)."""
        cuda = self.buffers["tokens"].is_cuda  # (CPU: the host-side logic under test, tests/test_cuda_graph.py)
        for k in BUFFER_KEYS:
            src = step[k].reshape(len(step[k]), -1)
            if cuda and not src.is_pinned():
                src = src.pin_memory()
            self.buffers[k][:, :self.numel[k]].copy_(src, non_blocking=cuda)


class FullIterationGraph:
    """Runs a training step's forward-backward as a replayed CUDA graph (see the module doc).

    `run(data_iterator, num_microbatches)` is the eager forward-backward over an iterator of
    static micro-batches (megatron's schedule with `make_static_forward_step`); it returns
    megatron's per-micro-batch logs. Calling the object with an iterator of step batches (one item
    per step, data/step_batch.py) returns the same logs, with the host statistics of each
    micro-batch added, as the trainer's eager step does.
    """

    def __init__(self, run: Callable, *, stream: torch.cuda.Stream | None, log: Callable[[str], None] = print,
                 device: torch.device | None = None):
        self.run, self.stream, self.log = run, stream, log
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self.shapes: dict[tuple[int, int], _Shape] = {}
        self.captures = 0  # graphs captured so far (one per step shape)

    def __call__(self, data_iterator, num_microbatches: int) -> list[dict]:
        it = data_iterator[0] if isinstance(data_iterator, list) else data_iterator
        step = next(it)  # all micro-batches of the step, stacked (data/step_batch.py)
        if len(step["count"]) != num_microbatches:
            raise ValueError(f"the step batch holds {len(step['count'])} micro-batches, the step needs {num_microbatches}")
        own = step["cu_seqlens"].shape[1] - 1
        slots = self._agree(own)
        if slots != own:
            step = pad_thd_slots(step, slots)
        key = (slots, num_microbatches)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = _Shape(step, self.device)
        else:
            shape.load(step)
        if shape.graph is None and shape.eager_steps < EAGER_STEPS:
            shape.eager_steps += 1
            logs = self.run(iter(shape.microbatches), num_microbatches)
        else:
            if shape.graph is None:
                self._capture(shape, key)
            shape.graph.replay()
            logs = shape.logs
        doc_sq, real = step["doc_sq_sum"].tolist(), step["real_tokens"].tolist()
        return [{LOSS_KEY: rec[LOSS_KEY], DOC_SQ_KEY: d, REAL_TOKENS_KEY: r} for rec, d, r in zip(logs, doc_sq, real)]

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
