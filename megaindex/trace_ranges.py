"""The named ranges megaindex writes into torch-profiler traces, and the names benchmarks/step_profile.py
reads back: `megaindex.step#N` around each recorded training step, `megaindex.<phase>` around its
phases (data_wait, forward_backward, reduce_loss, optimizer, eval, checkpoint) and `megaindex.norm_head`
around the Norm-Head's row normalisation (its backward kernels are found through the forward op)."""

from __future__ import annotations

from contextlib import nullcontext

PREFIX = "megaindex."
STEP = PREFIX + "step#"  # + the 1-based step number, as logged


def annotate(name: str):
    """A `megaindex.<name>` range while torch.profiler records, a no-op context otherwise (one C call:
    cheap enough for every micro-batch)."""
    import torch

    if not torch._C._autograd._profiler_enabled():
        return nullcontext()
    return torch.profiler.record_function(PREFIX + name)
