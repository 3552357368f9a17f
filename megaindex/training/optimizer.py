"""Optimizer and LR schedule: megatron's (distributed) Adam and OptimizerParamScheduler (cosine,
linear, constant, WSD).

Saving and loading their state (and the guards megatron-core's optimizer state needs for that with
torch AdamW) is training/checkpointing.py's.
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
    decay = max(o.lr_decay_iters or t.train_iters, o.lr_warmup_iters + 1)
    wsd = {}
    if o.lr_decay_style == "wsd":  # megatron's WSD: stable at max_lr until decay - wsd_decay_steps
        anneal = o.lr_wsd_decay_iters if o.lr_wsd_decay_iters is not None else max(1, round(0.1 * decay))
        wsd = dict(wsd_decay_steps=min(anneal, decay - o.lr_warmup_iters), lr_wsd_decay_style=o.lr_wsd_decay_style)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters,
        lr_decay_steps=decay,
        lr_decay_style="WSD" if wsd else o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=t.train_iters,
        wd_incr_style="constant",
        # On resume this config's schedule fields win over the checkpoint's (Megatron's
        # --override-opt-param-scheduler); only the position in the schedule is restored.
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
        **wsd,
    )
