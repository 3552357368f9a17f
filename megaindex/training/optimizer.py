"""Optimizer and LR schedule: megatron's (distributed) Adam and OptimizerParamScheduler.

Also owns the guards for megatron-core's per-parameter `step` with torch AdamW (no TE/apex, e.g.
CPU): loading fails with KeyError 'step' (`_guard_step_key_on_load`), and after loading a DistributedOptimizer state, megatron assigns ONE step tensor to every
parameter; torch AdamW increments each parameter's step in place, so the shared tensor advances
once per parameter per update and bias correction drifts after a resume. `fix_shared_step`
gives every parameter its own copy.
"""

from __future__ import annotations

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megaindex.config import Config


def _guard_step_key_on_load() -> None:
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


def build_optimizer(cfg: Config, chunks: list[torch.nn.Module], dtype: torch.dtype):
    _guard_step_key_on_load()
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


def prime_state_for_load(optimizer) -> None:
    """Create (zero) Adam states with a per-parameter `step` before a checkpoint load.

    megatron's DistributedOptimizer builds its load template from `state_dict()`, which with torch
    AdamW (no TE/apex) reads every parameter's `step` — absent on a fresh optimizer (megatron's own
    init_state_fn creates only exp_avg/exp_avg_sq), so the load would fail. The values are
    overwritten by the load; `fix_shared_step` runs after it.
    """
    for opt in inner_optimizers(optimizer):
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
