"""Which FP8 settings of a config megatron-core 0.19.2, Transformer Engine 2.20 and cuDNN can run.

Owns the rules for `train.fp8`, `train.fp8_recipe`, `train.fp8_dot_product_attention` and
`train.num_layers_at_{start,end}_in_bf16`: `fp8_errors(cfg)` (the config alone; Config.validate runs
it) and `fp8_device_errors(...)` (what one GPU and the launch environment add; model/build.py runs it
before building on a GPU), and `without_fp8(train)` (every FP8 field off: what the evaluation and the
converters' parity check run a checkpoint with). Each rule cites where the library refuses or silently ignores the
combination, so a run fails at validation with the field to change instead of deep inside TE
("No dot product attention backend is available") or, worse, running bf16 while claiming FP8.

The attention rules, read in TE 2.20 (main at 2.20.0.dev0, d0067d0) and megatron-core 0.19.2:
* cuDNN's FP8 fused attention (the only FP8 attention kernel TE trains with) takes the bshd/sbhd
  layouts only (bhsd too from cuDNN 9.21), never THD: `nvte_get_fused_attn_backend` in
  transformer_engine/common/fused_attn/fused_attn.cpp. With context parallelism TE's
  `get_attention_backend` (pytorch/attention/dot_product_attention/utils.py) also disables
  FusedAttention for "FP8 attention and THD format", and FlashAttention and the unfused path for FP8
  with CP, so packed per-document rows (data.packing=reset, SFT) have no FP8 attention at all.
  What runs is one causal sequence per row (data.packing=concat), which the trainer then feeds in
  the sbhd layout; the in-training probe (eval.interval), which scores THD rows, is refused with it. (TE PR #2994 "Plumb FP8+THD", after this snapshot, adds FP8 THD attention for
  cuDNN 9.23+; its own support matrix gives H100 delayed scaling forward only, FP8 backward and
  current scaling on Blackwell only. Revisit this rule with the TE pin, setup.py: 2.20.2.)
* cuDNN's FP8 attention trains with head dim 128 on sm90 (at most 128 on sm100), cuDNN >= 9.2.1
  (not 9.10.0), causal or no mask. On Hopper (sm90) TE disables FusedAttention "for FP8 current
  scaling on arch < sm100" and for MXFP8: FP8 attention there means delayed scaling, either the
  whole recipe (fp8_recipe=delayed) or attention only (NVTE_DPA_FP8_RECIPE=DelayedScaling with
  tensorwise GEMMs, TE's documented recipe mix; TE reads the variable when it is imported).
* megatron-core's `get_fp8_recipe` (fp8_utils.py) passes `fp8_dpa` to the delayed, tensorwise and
  mxfp8 recipes only (blockwise would silently keep bf16 attention); TE's Float8BlockScaling asserts
  "FP8 attention is not supported".
* megatron's `fp8_multi_head_attention` (TE's fp8_mha) is not offered: megatron-core never asks TE's
  linears or attention for FP8 outputs (no `fp8_output` anywhere in megatron/core), so in its GPT
  path it only forces fp8_dpa on, which `fp8_dot_product_attention` already does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megaindex.config import Config, TrainConfig

ATTN = "train.fp8_dot_product_attention"
DPA_RECIPE_ENV = "NVTE_DPA_FP8_RECIPE"  # TE: the recipe attention uses when it differs from the GEMMs'


def fp8_errors(cfg: Config) -> list[str]:
    """Why the FP8 settings of `cfg` cannot run, in words (empty: they can, device permitting)."""
    m, p, d, t = cfg.model, cfg.parallel, cfg.data, cfg.train
    start, end = t.num_layers_at_start_in_bf16, t.num_layers_at_end_in_bf16
    errors = []
    if not t.fp8:
        if t.fp8_dot_product_attention:
            errors.append(f"{ATTN}=true needs train.fp8 (e4m3 or hybrid): FP8 attention is part of TE's FP8 recipe (fp8_dpa).")
        if start or end:
            errors.append("train.num_layers_at_start_in_bf16 / num_layers_at_end_in_bf16 apply to FP8 runs only; "
                          "set train.fp8 or leave them 0.")
        return errors
    if m.transformer_impl == "local":
        errors.append("train.fp8 runs in Transformer Engine's modules only: set model.transformer_impl=auto or transformer_engine.")
    if (start or end) and t.fp8_recipe == "delayed":
        errors.append("train.num_layers_at_start_in_bf16 / num_layers_at_end_in_bf16 with train.fp8_recipe=delayed: megatron-core "
                      "refuses it (delayed scaling wraps the whole block in one fp8_autocast; leaving it per layer breaks the "
                      "amax reduction); use train.fp8_recipe=tensorwise or blockwise.")
    per_stage = m.num_layers // p.pipeline_model_parallel_size
    for name, n in (("num_layers_at_start_in_bf16", start), ("num_layers_at_end_in_bf16", end)):
        if n > per_stage:
            errors.append(f"train.{name} {n} is more than the {per_stage} layers of a pipeline stage (megatron-core's limit).")
    if start + end >= m.num_layers:
        errors.append(f"train.num_layers_at_start_in_bf16 + num_layers_at_end_in_bf16 = {start + end} leaves none of the "
                      f"{m.num_layers} layers in FP8; use train.fp8=null for a bf16 run.")
    if t.fp8_dot_product_attention:
        if d.kind == "sft" or d.packing != "concat":
            rows = "SFT rows are packed conversations" if d.kind == "sft" else "data.packing=reset rows are packed documents"
            errors.append(
                f"{ATTN}=true: {rows} (THD layout, per-document attention), and cuDNN's FP8 attention has no THD kernel "
                f"(TE 2.20 fused_attn.cpp: bshd/sbhd only; with CP, utils.py disables it for 'FP8 attention and THD "
                f"format'). Use data.packing=concat (one causal sequence per row, fed as sbhd) or leave FP8 attention off.")
        elif d.row_layout == "thd":
            errors.append(f"{ATTN}=true with data.row_layout=thd: cuDNN's FP8 attention has no THD kernel; "
                          f"use data.row_layout auto or sbhd.")
        if cfg.eval.interval:
            errors.append(f"{ATTN}=true with eval.interval={cfg.eval.interval}: the in-training probe scores packed THD "
                          f"rows (megaindex/eval/probe.py) inside megatron's FP8 context, and FP8 attention has no THD "
                          f"kernel; set eval.interval=0 and score the checkpoints with `megaindex eval` (bf16).")
        if t.fp8_recipe == "blockwise":
            errors.append(f"{ATTN}=true with train.fp8_recipe=blockwise: megatron-core 0.19.2 does not pass fp8_dpa to "
                          f"Float8BlockScaling (attention would silently stay bf16) and TE's Float8BlockScaling refuses "
                          f"FP8 attention; use train.fp8_recipe=delayed.")
    return errors


def fp8_device_errors(cfg: Config, capability: tuple[int, int], env: Mapping[str, str],
                      cuda_version: str | None = None) -> list[str]:
    """Why this GPU (compute capability) and launch environment cannot run `cfg`'s FP8 settings."""
    t = cfg.train
    if not t.fp8:
        return []
    arch = f"sm{capability[0]}{capability[1]}"
    gpu = f"this GPU is {arch}"
    errors = []
    if capability < (8, 9):
        errors.append(f"train.fp8 needs compute capability 8.9 or higher (Ada, Hopper, Blackwell); {gpu}.")
        return errors
    if t.fp8_recipe == "mxfp8" and not (10, 0) <= capability < (12, 0):
        errors.append(f"train.fp8_recipe=mxfp8 needs Blackwell (sm100/sm103; TE's check_mxfp8_support); {gpu}: "
                      f"use delayed, tensorwise or blockwise.")
    if t.fp8_recipe == "blockwise" and (capability < (9, 0) or (cuda_version and _version(cuda_version) < (12, 9))):
        errors.append(f"train.fp8_recipe=blockwise needs sm90+ and CUDA 12.9+ (TE's check_fp8_block_scaling_support); "
                      f"{gpu}, CUDA {cuda_version}.")
    if t.fp8_dot_product_attention:
        d = cfg.model.head_dim
        if d % 16 or (d != 128 if capability < (10, 0) else d > 128):
            need = "128" if capability < (10, 0) else "at most 128 and a multiple of 16"
            errors.append(f"{ATTN}=true: cuDNN's FP8 attention trains with a head dimension of {need} on {arch} "
                          f"(TE fused_attn.cpp); model head dim is {d} (hidden_size / num_attention_heads).")
        dpa_recipe = env.get(DPA_RECIPE_ENV, "")
        if dpa_recipe == "F16":
            errors.append(f"{ATTN}=true but {DPA_RECIPE_ENV}=F16 in the environment turns FP8 attention off; unset one of them.")
        elif env.get("NVTE_FUSED_ATTN", "1") == "0":
            errors.append(f"{ATTN}=true but NVTE_FUSED_ATTN=0: cuDNN fused attention is the only FP8 attention kernel for training.")
        elif capability < (10, 0) and dpa_recipe and dpa_recipe != "DelayedScaling":
            errors.append(f"{ATTN}=true with {DPA_RECIPE_ENV}={dpa_recipe}: TE's FP8 attention runs delayed scaling only "
                          f"below sm100 ({gpu}); set {DPA_RECIPE_ENV}=DelayedScaling or unset it.")
        elif capability < (10, 0) and t.fp8_recipe == "tensorwise" and dpa_recipe != "DelayedScaling":
            errors.append(
                f"{ATTN}=true with train.fp8_recipe=tensorwise: TE has no FP8 current-scaling attention below sm100 ({gpu}). "
                f"Launch with {DPA_RECIPE_ENV}=DelayedScaling (attention in delayed scaling, GEMMs tensorwise) or use "
                f"train.fp8_recipe=delayed.")
    return errors


def without_fp8(train: TrainConfig) -> TrainConfig:
    """`train` with FP8 off and the FP8-only fields reset, which validation refuses without train.fp8."""
    return dataclasses.replace(train, fp8=None, fp8_dot_product_attention=False,
                               num_layers_at_start_in_bf16=0, num_layers_at_end_in_bf16=0)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2] if x.isdigit())
