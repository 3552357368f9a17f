"""HF transformers baseline: the same training work as benchmarks/train_throughput.py, in stock transformers.

    python benchmarks/hf_baseline.py --steps 6 --warmup 2 --sequences-per-step 4 --out results.jsonl

(benchmarks/compare_hf.py runs this and megaindex one after the other and prints the ratio.)
LlamaForCausalLM in the recipe's shape (Index-1.9B-32K: 36 x 2048, 16 heads, SwiGLU 5888, vocab
65029; built from the config.json megaindex's exporter writes, hf_config_dict; Norm-Head does not
change the cost), bf16 weights on GPU (fp32 on CPU: train.precision auto), SDPA attention,
gradient checkpointing on every layer, torch AdamW (fused on GPU), one row of seq_length tokens per
micro-batch, attended as one causal sequence (HF has no per-document packed attention with SDPA:
the config runs data.packing=concat, which megaindex computes the same way).

The rows are megaindex's own, read from a file (benchmarks/same_work.py --write-rows, run in a
process of its own: compare_hf.py does it first; without --rows this script starts it): the same
Config builds the same PackedGPTDataset, and step k reads rows k x sequences .. (k+1) x sequences - 1,
as the trainer does on one GPU; the loss targets are the trainer's (labels, with loss_mask 0 as
ignore_index). This process stays what a user's HF script is: torch, transformers and megaindex's
pure modules (config, plan, convert.hf_config) only; it refuses to measure with megatron or
transformer_engine imported (megatron.core imports TE on a GPU machine, and TE loads its own cuDNN).
Reports the median step time, tokens/s, TFLOP/s in both FLOP conventions (same_work.flop_rates),
peak memory and the SDPA / cuDNN facts of the process (same_work.backend_facts); writes one JSON
line to --out.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import result_line
import same_work


def refuse_engines(when: str) -> None:
    """Stop when megatron or Transformer Engine got into this process: the number would not be a plain HF script's."""
    loaded = same_work.engine_modules_loaded()
    if loaded:
        raise SystemExit(f"hf_baseline: {' and '.join(loaded)} imported into the HF process ({when}): the baseline "
                         f"must run as a plain HF script; find the import with python -X importtime")


def ensure_rows(args: argparse.Namespace) -> Path:
    """args.rows, written first by a process of its own (same_work.py --write-rows) when it does not exist."""
    path = Path(args.rows) if args.rows else Path(args.run_dir) / "rows.npz"
    if args.rows and path.is_file():
        return path
    cmd = [sys.executable, str(Path(same_work.__file__).resolve()), "--write-rows", str(path), "--recipe", args.recipe,
           "--data", args.data, "--tokenizer", args.tokenizer, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--sequences-per-step", str(args.sequences_per_step), *args.overrides]
    print("writing the rows in a separate process: " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=same_work.REPO).returncode != 0:
        raise SystemExit(f"hf_baseline: writing the rows to {path} failed (see above)")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="hf_transformers_sdpa_checkpointing")
    ap.add_argument("--out", default=None, help="JSONL file the result line is appended to")
    ap.add_argument("--run-dir", default="/tmp/megaindex-bench-hf", help="rows.npz (without --rows) goes under it")
    ap.add_argument("--rows", default=None, help="rows file of benchmarks/same_work.py --write-rows for the same work "
                    "arguments (written first when it does not exist; default: written now to RUN_DIR/rows.npz)")
    same_work.add_work_args(ap, steps=6, warmup=2, sequences=4)
    args = ap.parse_args(argv)
    same_work.check_work_args(ap, args)
    args.overrides = ["data.packing=concat", *args.overrides]

    import torch
    import transformers

    from megaindex.convert.hf_config import hf_config_dict
    from megaindex.plan import dense_params, step_flops

    cfg, _ = same_work.work_config(args, Path(args.run_dir))
    if cfg.data.packing != "concat":
        ap.error("the HF baseline attends each row as one causal sequence: it runs data.packing=concat only")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.float32 if cfg.train.precision == "fp32" or (cfg.train.precision == "auto" and not gpu) else torch.bfloat16
    seq, rows = cfg.data.seq_length, args.sequences_per_step

    rows_path = ensure_rows(args)
    tokens, targets = same_work.read_rows(cfg, args.steps * rows, rows_path)  # up front: the step time is the model's
    batches = [(torch.from_numpy(t)[None], torch.from_numpy(y)[None]) for t, y in zip(tokens, targets)]

    # the same config.json the exporter writes for this model (stock Llama layout)
    hf_cfg = transformers.LlamaConfig(**hf_config_dict(cfg.model, "llama", str(dtype).split(".")[1]),
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    with device:
        model = transformers.LlamaForCausalLM(hf_cfg).to(dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=(o.adam_beta1, o.adam_beta2),
                            eps=o.adam_eps, fused=gpu)
    refuse_engines("after building the model and reading the rows")
    tokens_per_step = rows * seq
    causal = step_flops(cfg, tokens_per_step, rows * seq * seq)  # every row one causal document
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    times, losses = [], []
    for step in range(args.steps):
        sync()
        t0 = time.perf_counter()
        total = 0.0
        for ids, labels in batches[step * rows:(step + 1) * rows]:
            ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            # shift_labels: the trainer's targets as they are (HF would otherwise shift `labels` itself)
            loss = model(input_ids=ids, labels=labels, shift_labels=labels).loss / rows
            loss.backward()
            total += loss.detach()
        if o.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total))  # a host sync, as the trainer's loss logging
        sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        rate = same_work.flop_rates(cfg, tokens_per_step, seq, causal, dt, 1)
        print(f"HF step {step + 1}/{args.steps}: {dt:.2f} s, {tokens_per_step / dt:,.0f} tok/s, "
              f"{rate['tflops_per_gpu']:.1f} TFLOP/s causal, {rate['tflops_per_gpu_full_s2']:.1f} full s^2, "
              f"loss {losses[-1]:.4f}", flush=True)
    refuse_engines("after the steps")
    dt = statistics.median(times[args.warmup:])
    rates = same_work.flop_rates(cfg, tokens_per_step, seq, causal, dt, 1)
    result = {
        "name": args.name, "engine": "hf", "device": torch.cuda.get_device_name() if gpu else "cpu", "gpus": 1,
        "transformers": transformers.__version__, "torch": torch.__version__, "dtype": str(dtype).split(".")[1],
        "attention": "sdpa", "recompute": "full (gradient checkpointing, every layer)", "packing": cfg.data.packing,
        "seq_length": seq, "global_batch_tokens": tokens_per_step, "rows_per_step": rows,
        "dense_params": dense_params(cfg), "model_tflop_per_step": causal / 1e12,
        "steps_measured": len(times) - args.warmup, "step_time_s": dt, "step_times_s": times,
        "tokens_per_s_per_gpu": tokens_per_step / dt, **rates,
        "mfu": rates["tflops_per_gpu"] / cfg.log.peak_tflops if gpu else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "loss_first_last": [losses[0], losses[-1]], "rows_file": str(rows_path), **same_work.backend_facts(),
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }
    result_line.emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
