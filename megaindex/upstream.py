"""Every workaround megaindex applies to an upstream library, in one place, with why and for which version.

megaindex pins megatron-core (PINNED below, setup.py); each entry says what goes wrong in that
version and what megaindex does. When the pin moves, tests/test_upstream.py fails until each entry
here is re-checked against the new version (and removed where upstream fixed it).

megatron-core 0.19.2, DistributedOptimizer with torch AdamW (the CPU path: no TE/apex fused Adam).
We found no upstream issue for these; tests/test_train.py's resume tests run through all three:
1. `guard_step_key_on_load`: loading a fully-reshardable DistributedOptimizer state copies every
   tensor of a parameter's optimizer state from the checkpoint, including torch AdamW's
   per-parameter `step`, which the checkpoint keeps per param group -> KeyError 'step'.
2. `prime_state_for_load`: megatron builds its load template from `state_dict()`, which reads a
   per-parameter `step` that a fresh optimizer lacks (its init_state_fn creates only exp_avg and
   exp_avg_sq) -> the load fails.
3. `fix_shared_step`: after loading, megatron assigns ONE step tensor to every parameter; torch
   AdamW increments each parameter's step in place, so the shared tensor advances once per
   parameter per update and the bias correction drifts after a resume.

Applied elsewhere, listed here so that this file is the whole list:
4. Interleaved pipeline with PP=2 and batched p2p gives silently wrong gradients (Megatron-LM
   #750): config.py turns batch_p2p_comm off there and refuses it when forced on.
5. megatron-core's pretraining packing does not pad documents to 2 x CP under context parallelism
   (Megatron-LM #1131): data/packing.py packs its own rows.
6. megatron-core assumes CUDA for streams, events and RNG states: cpu_backend.py redirects them
   on CPU (and trips on any CUDA call it does not cover).

megatron-core 0.19.2, dist_checkpointing (CPU and GPU alike):
7. `in_process_write_results`: a synchronous `dist_checkpointing.save` hands its write results to
   itself through a multiprocessing Manager queue; the Manager's server process is spawned at a
   process's first save and imports torch to unpickle the results: ~2 s added to the first save of
   every process (measured on CPU, 2026-11-28). checkpoint.py's synchronous save uses an in-process
   queue instead; asynchronous saves keep the Manager's (their writer is another process).
8. `gc_frozen`: `IndexedDatasetBuilder.add_index` runs `gc.collect()` for every dataset it appends;
   with torch and megatron loaded each takes ~0.2 s, and data/partitions.py merges at least 16
   partitions: ~3 s per multi-worker preprocess whatever its size (2026-11-28). The merge runs
   with the objects that existed before it frozen, so each collection walks only the new ones.
"""

from __future__ import annotations

import contextlib
import gc
import queue
from typing import Iterator

import torch

PINNED = {"megatron-core": "0.19.2"}


def guard_step_key_on_load() -> None:
    """megatron-core bug (torch AdamW path): loading a fully-reshardable DistributedOptimizer state
    copies every tensor of the parameter's optimizer state from the checkpoint, including torch
    AdamW's per-parameter `step`, which the checkpoint keeps per param group -> KeyError 'step'.
    The step is restored from the param group by megatron itself; skip it here."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig = DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(orig, "_megaindex_guard", False):
        return

    def guarded(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        step = state.pop("step", None) if "step" not in tensors else None
        try:
            orig(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    guarded._megaindex_guard = True
    DistributedOptimizer._set_main_param_and_optimizer_states = guarded


def _inner_optimizers(optimizer) -> list:
    chained = getattr(optimizer, "chained_optimizers", None)
    return list(chained) if chained is not None else [optimizer]


def fix_shared_step(optimizer) -> int:
    """Give every parameter its own `step` tensor (see module doc); returns how many were shared."""
    fixed = 0
    for opt in _inner_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        seen: set[int] = set()
        for state in inner.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.detach().clone()
                    fixed += 1
                seen.add(id(state["step"]))
    return fixed


def prime_state_for_load(optimizer) -> None:
    """Create (zero) Adam states with a per-parameter `step` before a checkpoint load.

    megatron's DistributedOptimizer builds its load template from `state_dict()`, which with torch
    AdamW (no TE/apex) reads every parameter's `step` — absent on a fresh optimizer (megatron's own
    init_state_fn creates only exp_avg/exp_avg_sq), so the load would fail. The values are
    overwritten by the load; `fix_shared_step` runs after it.
    """
    for opt in _inner_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        init = getattr(opt, "init_state_fn", None)
        # Only torch's Adam keeps a per-parameter `step`; TE's FusedAdam keeps it per group and
        # refuses unknown state names.
        if inner is None or not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        if init is not None:
            init(inner, getattr(opt, "config", None))
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if "exp_avg" in state and "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)


@contextlib.contextmanager
def in_process_write_results() -> Iterator[None]:
    """Within this block a synchronous dist_checkpointing.save passes its write results through a
    plain queue.Queue, not a spawned Manager's (see module doc); megatron's own queue, if it made
    one, is put back afterwards for the asynchronous saves that need it."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    before = filesystem_async._results_queue
    filesystem_async._results_queue = queue.Queue()  # what get_write_results_queue() hands out
    try:
        yield
    finally:
        filesystem_async._results_queue = before


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Within this block gc.collect() skips every object that existed before it (gc.freeze; see
    module doc, 8); unreferenced objects are still freed at once. Afterwards everything frozen is
    collectable again (gc.unfreeze: also the few hundred objects Python froze at start, which only
    makes full collections walk them)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
