"""HF transformers baseline at 32K on one GPU: the reference point for benchmarks/train_throughput.py.

    python benchmarks/hf_baseline.py --steps 4 --warmup 1 --out results.jsonl [--compare results.jsonl]

LlamaForCausalLM in the Index-1.9B shape (36 x 2048, 16 heads, SwiGLU 5888, vocab 65029; Norm-Head
does not change the cost), bf16 weights, SDPA attention, gradient checkpointing on every layer,
torch AdamW (fused), batch 1 x 32768 tokens of one causal sequence per micro-batch (HF has no
per-document packed attention with SDPA). Reports tokens/s, model TFLOP/s with the same FLOP count
as megaindex (megaindex/plan.py: 6 x dense params + causal attention over the documents,
here one 32K document per row) and peak memory; with --compare, prints the ratio against the
megaindex records of the same device in that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-length", type=int, default=32768)
    ap.add_argument("--micro-batches", type=int, default=4, help="sequences per optimizer step (accumulated)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare", default=None, help="JSONL of benchmarks/train_throughput.py results")
    args = ap.parse_args()

    import torch
    import transformers

    from megaindex.config import load_config
    from megaindex.plan import step_flops

    from megaindex.convert.hf_config import hf_config_dict

    cfg = load_config(None, ["model.preset=index-1.9b-32k", f"data.seq_length={args.seq_length}"])
    # the same config.json the exporter writes for this model (stock Llama layout)
    hf_cfg = transformers.LlamaConfig(**hf_config_dict(cfg.model, "llama", "bfloat16"), attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    tokens_per_step = args.micro_batches * args.seq_length
    flops = step_flops(cfg, tokens_per_step, args.micro_batches * args.seq_length * args.seq_length)
    times = []
    for step in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.micro_batches):
            ids = torch.randint(5, 8000, (1, args.seq_length), device="cuda", generator=gen)
            loss = model(input_ids=ids, labels=ids).loss / args.micro_batches
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        times.append(dt)
        print(f"step {step + 1}/{args.steps}: {dt:.2f} s, {tokens_per_step / dt:,.0f} tok/s, "
              f"{flops / dt / 1e12:.1f} TFLOP/s, loss {loss.item() * args.micro_batches:.3f}", flush=True)
    dt = statistics.median(times[args.warmup:])
    result = {
        "name": "hf_transformers_sdpa_checkpointing", "device": torch.cuda.get_device_name(), "gpus": 1,
        "transformers": transformers.__version__, "seq_length": args.seq_length, "global_batch_tokens": tokens_per_step,
        "steps_measured": len(times) - args.warmup, "step_time_s": dt, "tokens_per_s_per_gpu": tokens_per_step / dt,
        "tflops_per_gpu": flops / dt / 1e12, "mfu": flops / dt / 1e12 / cfg.log.peak_tflops,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
    }
    print("RESULT " + json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.compare:
        rows = [json.loads(line) for line in open(args.compare) if line.strip()]
        for r in rows:
            if r.get("device") == result["device"] and r["name"] != result["name"]:
                print(f"megaindex {r['name']}: {r['tflops_per_gpu']:.1f} TFLOP/s/GPU = "
                      f"{r['tflops_per_gpu'] / result['tflops_per_gpu']:.2f}x HF", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
