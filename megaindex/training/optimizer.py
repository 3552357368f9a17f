"""Optimizer and LR schedule: megatron's (distributed) Adam and OptimizerParamScheduler.

Also owns the guard for megatron-core's per-parameter `step` with torch AdamW (no TE/apex, e.g.
CPU): after loading a DistributedOptimizer state, megatron assigns ONE step tensor to every
parameter; torch AdamW increments each parameter's step in place, so the shared tensor advances
once per parameter per update and bias correction drifts after a resume. `fix_shared_step`
gives every parameter its own copy.
"""

from __future__ import annotations

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megaindex.config import Config


def build_optimizer(cfg: Config, chunks: list[torch.nn.Module], dtype: torch.dtype):
    o = cfg.optim
    oc = OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        overlap_param_gather_with_optimizer_step=False,
    )
    return get_megatron_optimizer(oc, chunks)


def build_scheduler(cfg: Config, optimizer) -> OptimizerParamScheduler:
    o, t = cfg.optim, cfg.train
    decay = o.lr_decay_iters or t.train_iters
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters,
        lr_decay_steps=max(decay, o.lr_warmup_iters + 1),
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=t.train_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )


def inner_optimizers(optimizer) -> list:
    chained = getattr(optimizer, "chained_optimizers", None)
    return list(chained) if chained is not None else [optimizer]


def fix_shared_step(optimizer) -> int:
    """Give every parameter its own `step` tensor (see module doc); returns how many were shared."""
    fixed = 0
    for opt in inner_optimizers(optimizer):
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
