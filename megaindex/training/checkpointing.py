"""Training checkpoints: what a resume needs beyond the model weights.

A training checkpoint is a step directory of the format in megaindex/checkpoint.py holding one
sharded state dict: the model chunks, the (distributed) optimizer, the LR schedule, the data
position (`progress`: step, consumed samples, skipped steps) and every rank's RNG states.
This module also owns the asynchronous write queue. Loading the optimizer state with torch AdamW
(CPU, no TE/apex) needs three guards around megatron-core; they live with every other upstream
workaround in megaindex/upstream.py.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megaindex import checkpoint, safe_pickle
from megaindex.checkpoint import CheckpointError
from megaindex.config import Config
from megaindex.distributed import ParallelLayout
from megaindex.upstream import fix_shared_step, guard_step_key_on_load, prime_state_for_load


def make_async_queue(cfg: Config):
    """An AsyncCallsQueue when checkpoint.async_save is on and a GPU is present, else None."""
    if not (cfg.checkpoint.async_save and torch.cuda.is_available()):
        return None
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    return AsyncCallsQueue()


def _sharding_metadata(cfg: Config) -> dict[str, Any]:
    kind = "fully_reshardable" if cfg.checkpoint.fully_reshardable else "dp_reshardable"
    return {"distrib_optim_sharding_type": kind, "chained_optim_avoid_prefix": True, "singleton_local_shards": False}


def _rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {
        "random": random.getstate(),
        "np": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def train_state_dict(chunks, optimizer, scheduler, cfg: Config, *, layout: ParallelLayout, is_loading: bool,
                     progress: dict[str, Any]) -> dict[str, Any]:
    """Everything a resume needs, as one sharded state dict (model, optimizer, schedule, data, RNG)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    metadata = _sharding_metadata(cfg)
    model_sd = {k: c.sharded_state_dict(metadata=metadata) for k, c in zip(checkpoint.model_state_keys(len(chunks)), chunks)}
    state: dict[str, Any] = dict(model_sd)
    state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
    state["opt_param_scheduler"] = scheduler.state_dict()
    state["progress"] = dict(progress)
    state["rng_state"] = ShardedObject(
        "rng_state",
        _rng_state(),
        (layout.pp, layout.tp, layout.cp),  # one RNG state per model-parallel rank, replicated over DP
        (layout.pp_rank, layout.tp_rank, layout.cp_rank),
        replica_id=layout.dp_rank,
    )
    return state


def save_train_checkpoint(save_dir: str | Path, chunks, optimizer, scheduler, cfg: Config, progress: dict[str, Any],
                          *, layout: ParallelLayout, async_queue=None, protect: set[str] = frozenset()) -> Path:
    """step_XXXXXXXX under save_dir, then `latest` -> it, then prune to keep_last, keeping the step
    directories in `protect` (checkpoint.save_step)."""
    state = train_state_dict(chunks, optimizer, scheduler, cfg, layout=layout, is_loading=False, progress=progress)
    return checkpoint.save_step(save_dir, int(progress["step"]), state, cfg, extra_meta={"progress": dict(progress)},
                                async_queue=async_queue, protect=protect)


def load_train_checkpoint(path: str | Path, chunks, optimizer, scheduler, cfg: Config, *, layout: ParallelLayout) -> dict[str, Any]:
    """Restore model, optimizer, schedule and RNG; returns the saved progress (step, samples, ...)."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    path = Path(path)
    checkpoint.check_architecture(cfg, path)
    meta = checkpoint.verify(path)
    if meta.get("kind") != "train":
        raise CheckpointError(f"{path} holds model weights only; start from it with checkpoint.pretrained={path}.")
    guard_step_key_on_load()
    prime_state_for_load(optimizer)
    template = train_state_dict(chunks, optimizer, scheduler, cfg, layout=layout, is_loading=True, progress=meta["progress"])
    try:
        state = dist_checkpointing.load(template, str(path))
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        raise CheckpointError(f"resuming from {path} failed: {e}") from e
    safe_pickle.check_extra_state({k: state[k] for k in checkpoint.model_state_keys(len(chunks))}, str(path))
    for key, chunk in zip(checkpoint.model_state_keys(len(chunks)), chunks):
        chunk.load_state_dict(state[key], strict=True)
    apply_config_to_saved_groups(state["optimizer"], optimizer)
    optimizer.load_state_dict(state["optimizer"])
    fix_shared_step(optimizer)
    for group in optimizer.param_groups:  # the saved groups came back with the saved Adam settings
        group["betas"], group["eps"] = (cfg.optim.adam_beta1, cfg.optim.adam_beta2), cfg.optim.adam_eps
    # The schedule's own fields come from this config (built with override_opt_param_scheduler);
    # only its position (num_steps) is the checkpoint's.
    scheduler.load_state_dict(state["opt_param_scheduler"])
    _set_rng_state(state["rng_state"])
    return state["progress"]


# ---- optimizer hyper-parameters changed on resume -------------------------------------------

# megatron's ParamGroupOverride keys: values of a group (this run's config decides them) ...
GROUP_VALUE_KEYS = ("max_lr", "min_lr", "start_wd", "end_wd")
# ... and what tells groups apart (the same in any run of one model)
GROUP_KIND_KEYS = ("optimizer", "wd_mult", "lr_mult", "is_expert_parallel", "is_decoupled_lr")


def apply_config_to_saved_groups(saved: Any, optimizer) -> None:
    """Give the checkpoint's param groups this run's LR and weight-decay values.

    megatron's DistributedOptimizer pairs saved with current param groups by a tuple that includes
    max_lr / min_lr, so a changed optim.lr found no saved group (a raw KeyError). Saved groups are
    matched to the current ones by their kind instead and take the current values; moments, step
    counts and everything else stay the checkpoint's.
    """
    kind = lambda g: tuple(g.get(k) for k in GROUP_KIND_KEYS)  # noqa: E731
    current: dict[tuple, dict] = {}
    for g in optimizer.param_groups:
        current.setdefault(kind(g), {k: g[k] for k in GROUP_VALUE_KEYS if k in g})
    for groups in _saved_param_groups(saved):
        for g in groups:
            g.update(current.get(kind(g), {}))


def _saved_param_groups(state: Any):
    if isinstance(state, dict):
        if isinstance(state.get("param_groups"), list):
            yield state["param_groups"]
        for v in state.values():
            yield from _saved_param_groups(v)
