"""Training throughput of the real trainer (optimizer, packed corpus data) at 32K on GPUs.

    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --name cp2 --data .bench_data/long \
        parallel.context_parallel_size=2
    torchrun --nproc-per-node 1 benchmarks/train_throughput.py --name 1gpu_full_recompute --data ... \
        parallel.context_parallel_size=1 train.recompute_granularity=full
    # TE's fused cross-entropy, and the layers it lets skip recompute on one 80 GiB GPU:
    torchrun --nproc-per-node 1 benchmarks/train_throughput.py --name 1gpu_block26_te --data ... \
        parallel.context_parallel_size=1 train.recompute_granularity=full train.recompute_method=block \
        train.recompute_num_layers=26 model.cross_entropy_fusion=te
    # FP8 variants at CP2 (benchmarks/fp8_h100x2.sh runs them all):
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --name fp8_delayed_attn_concat_sbhd --data ... \
        parallel.context_parallel_size=2 data.packing=concat train.fp8=hybrid train.fp8_dot_product_attention=true

Runs `--steps` full training steps of Index-1.9B-32K (examples/index_1.9b_long_pt_32k.yaml plus the
overrides; the work is defined in benchmarks/same_work.py, which benchmarks/hf_baseline.py shares)
through megaindex.training.Trainer, skips the first `--warmup` steps, and reports the median
tokens/s/GPU, model TFLOP/s/GPU in both conventions (causal attention over the actual documents,
the trainer's own count, and NeMo's / torchtitan's full s^2 per row; megaindex/plan.py), MFU
against 989 TFLOP/s, peak allocated memory, and megaindex.plan's memory estimate for the same
layout (what `megaindex info` prints), the FP8 settings and the attention backend TE ran. Writes a JSON line to --out. `--data` defaults to the repo's
fixture corpus (same_work.py has the command that builds it). One process runs without torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import result_line
import same_work


def memory_by_rank() -> dict:
    """Each rank's memory after the run, gathered: peak allocated and reserved, what stays allocated
    between steps (weights, grads, optimizer state), and what the process holds outside torch's
    allocator (CUDA context, NCCL, workspaces) = device used - reserved."""
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    mine = torch.tensor([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(), torch.cuda.memory_allocated(),
                         (total - free) - torch.cuda.memory_reserved()], dtype=torch.float64, device="cuda") / 2**30
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    rows = torch.stack(every).tolist()
    keys = ["peak_allocated_gib", "peak_reserved_gib", "static_gib", "outside_torch_gib"]
    return {"per_rank": [dict(zip(keys, (round(v, 2) for v in r))) for r in rows],
            **{k: max(r[i] for r in rows) for i, k in enumerate(keys)}}


def loss_kernel(chunks) -> str | None:
    """The cross-entropy kernel the run's LM head ran (model/lm_loss.py), from the rank that holds it:
    with PP rank 0, which writes the record, has no head. Every rank calls it (an all-gather)."""
    import torch.distributed as dist

    from megaindex.model.lm_loss import lm_loss_kernel

    mine = next((k for k in map(lm_loss_kernel, reversed(chunks)) if k is not None), None)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return next((k for k in every if k is not None), None)


def te_attention_backend() -> dict | None:
    """The attention backend Transformer Engine selected last in this process (its module-level
    `_attention_backends`: FlashAttention, cuDNN fused (F16 or FP8 sub-backend) or unfused); None
    without TE. Tells whether `train.fp8_dot_product_attention` really ran cuDNN's FP8 kernel."""
    mod = sys.modules.get("transformer_engine.pytorch.attention.dot_product_attention.dot_product_attention")
    chosen = getattr(mod, "_attention_backends", None)
    if not chosen:
        return None
    return {k: str(v) if k.endswith("_backend") else v for k, v in chosen.items()
            if k in ("use_flash_attention", "use_fused_attention", "fused_attention_backend", "use_unfused_attention")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default=None, help="JSONL file the result line is appended to")
    same_work.add_work_args(ap)
    args = ap.parse_args()
    same_work.check_work_args(ap, args)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # several ranks would race to build it: build it first
        args.data = same_work.ensure_data(args.data)

    from megaindex.config import load_config
    from megaindex.distributed import destroy_distributed
    from megaindex.plan import dense_params, memory_estimate, parameter_counts
    from megaindex.training.trainer import Trainer

    run_dir = Path(os.environ.get("BENCH_RUN_DIR", f"/tmp/megaindex-bench-{args.name}"))
    cfg, overrides = same_work.work_config(args, run_dir)
    t0 = time.time()
    trainer = Trainer(cfg)
    setup_s = time.time() - t0
    trainer.train()
    world = trainer.layout.world_size
    mem = memory_by_rank()
    kernel = loss_kernel(trainer.chunks)
    if trainer.rank == 0:
        every = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows = every[args.warmup:]
        med = lambda k: statistics.median(r[k] for r in rows)
        # The same estimate `megaindex info` prints (pure arithmetic: fine inside this TP/PP process).
        est_cfg = load_config(args.recipe, [*overrides, "train.precision=bf16"])
        est = memory_estimate(est_cfg, parameter_counts(est_cfg), world).as_gib()
        import torch

        gpu = torch.cuda.is_available()
        tokens = cfg.data.global_batch_tokens
        # both conventions per step (the causal count is the trainer's, over the step's real documents)
        rates = [same_work.flop_rates(cfg, tokens, r["seq_length"], r["model_tflop"] * 1e12, r["step_time_s"], world)
                 for r in rows]
        result = {
            "name": args.name, "engine": "megaindex", "device": torch.cuda.get_device_name() if gpu else "cpu", "gpus": world,
            "layout": {"tp": trainer.layout.tp, "pp": trainer.layout.pp, "cp": trainer.layout.cp, "dp": trainer.layout.dp},
            "recompute": cfg.train.recompute_granularity, "recompute_method": cfg.train.recompute_method,
            "recompute_num_layers": cfg.train.recompute_num_layers, "cross_entropy_fusion": cfg.model.cross_entropy_fusion,
            "cross_entropy_kernel_used": kernel,
            "fp8": cfg.train.fp8, "fp8_recipe": cfg.train.fp8_recipe,
            "fp8_dot_product_attention": cfg.train.fp8_dot_product_attention,
            "num_layers_at_start_in_bf16": cfg.train.num_layers_at_start_in_bf16,
            "num_layers_at_end_in_bf16": cfg.train.num_layers_at_end_in_bf16, "te_attention_backend": te_attention_backend(),
            "packing": cfg.data.packing, "row_layout": "thd" if cfg.rows_as_thd else "sbhd", "seq_length": cfg.data.seq_length,
            "global_batch_tokens": tokens, "rows_per_step": args.sequences_per_step,
            "dense_params": dense_params(cfg), "model_tflop_per_step": med("model_tflop"), "steps_measured": len(rows),
            "step_time_s": med("step_time_s"), "step_times_s": [r["step_time_s"] for r in every],
            "tokens_per_s_per_gpu": med("tokens_per_s") / world,
            **{k: statistics.median(r[k] for r in rates) for k in rates[0]},
            "mfu": med("mfu") if gpu else None,
            "peak_mem_gib": max(r["mem_gib"] for r in rows),
            **mem,
            "estimate": est,
            "allocator_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
            "setup_s": setup_s, **same_work.backend_facts(),
            "loss_first_last": [rows[0]["loss"], rows[-1]["loss"]],
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
        }
        result_line.emit(result, args.out)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
