"""Per-micro-batch host overhead of the trainer: a small Index-shaped model on short packed rows.

    python tools/preprocess_data.py tests/fixtures/corpus/pretrain.jsonl -o .bench_data/fixture_pt \
        --tokenizer tests/fixtures/tokenizer.model
    torchrun --nproc-per-node 1 benchmarks/microbatch_overhead.py --name mbs1 --mbs 1 --profile \
        --data .bench_data/fixture_pt

The model is Index-1.9B's shape scaled down (8 layers, hidden 512, 4 heads of 128, SwiGLU 1472,
the 8000-piece test vocabulary, Norm-Head: 34.7M parameters); rows of `--seq-length` tokens
(2048), `--rows` rows per optimizer step (256), micro-batch `--mbs`. Runs `--steps` full training
steps through megaindex.training.Trainer and reports the median step time, tokens/s and time per
micro-batch, and how long the loop waited for the data loader. `--profile` then runs
`--profile-microbatches` forward/backward micro-batches (no optimizer step) once under cProfile
(host Python: where the time per micro-batch goes) and once under torch.profiler (host ops and GPU
kernel time, so host time per micro-batch can be compared with GPU time per micro-batch).
Extra arguments are config overrides. Writes a JSON line to --out and the profiles to --profile-dir.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_34M = ["model.num_layers=8", "model.hidden_size=512", "model.num_attention_heads=4", "model.num_query_groups=4",
             "model.ffn_hidden_size=1472", "model.vocab_size=8000"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="IndexedDataset prefix")
    ap.add_argument("--tokenizer", default=str(REPO / "tests" / "fixtures" / "tokenizer.model"))
    ap.add_argument("--recipe", default=str(REPO / "examples" / "index_1.9b_long_pt_32k.yaml"))
    ap.add_argument("--seq-length", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=256, help="global batch in rows")
    ap.add_argument("--mbs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-microbatches", type=int, default=32)
    ap.add_argument("--profile-dir", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch

    from megaindex.config import load_config
    from megaindex.distributed import destroy_distributed
    from megaindex.training.trainer import Trainer

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", f"/tmp/megaindex-mb-{args.name}"))
    overrides = [
        f"data.data_path=[{args.data}]", f"data.tokenizer_model={args.tokenizer}", f"train.train_iters={args.steps + 100}",
        "train.eval_interval=0", "checkpoint.save_interval=0", "checkpoint.pretrained=null", f"train.run_dir={run_dir}", "train.overwrite=true",
        "log.tensorboard=false", "log.plot=false", f"data.cache_dir={run_dir}/cache", "parallel.context_parallel_size=1",
        f"data.seq_length={args.seq_length}", f"data.micro_batch_size={args.mbs}",
        f"data.global_batch_tokens={args.rows * args.seq_length}", *MODEL_34M, *args.overrides,
    ]
    cfg = load_config(args.recipe, overrides)
    trainer = Trainer(cfg)
    params = sum(p.numel() for c in trainer.chunks for p in c.parameters())
    n_mb = trainer.num_microbatches
    rows = []
    for step in range(args.steps):
        sync()
        trainer.timers.pop()  # the trainer's own phase timers: data wait is charged by its loader wrapper
        t0 = time.perf_counter()
        out = trainer.train_step()
        sync()
        dt = time.perf_counter() - t0
        wait_s = trainer.timers.t.get("data_wait_s", 0.0)
        rows.append({"step": step + 1, "step_time_s": dt, "data_wait_s": wait_s, "microbatches": n_mb, "loss": out["loss"]})
        print(f"[{args.name}] step {step + 1}: {dt:.3f} s, {n_mb} micro-batches, "
              f"{dt / n_mb * 1e3:.2f} ms each (data wait {wait_s / n_mb * 1e3:.2f} ms), loss {out['loss']:.4f}",
              flush=True)
    measured = rows[args.warmup:]
    step_s = statistics.median(r["step_time_s"] for r in measured)
    tokens = args.rows * args.seq_length
    result = {
        "name": args.name, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "params": params, "seq_length": args.seq_length,
        "rows_per_step": args.rows, "micro_batch_size": args.mbs, "microbatches_per_step": n_mb,
        "steps_measured": len(measured), "step_time_s": step_s, "tokens_per_s": tokens / step_s,
        "ms_per_microbatch": step_s / n_mb * 1e3,
        "data_wait_ms_per_microbatch": statistics.median(r["data_wait_s"] for r in measured) / n_mb * 1e3,
        "steps": rows, "overrides": args.overrides,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }

    if args.profile:
        prof_dir = Path(args.profile_dir)
        prof_dir.mkdir(parents=True, exist_ok=True)
        n = args.profile_microbatches

        def fwd_bwd():
            for m in trainer.model:
                m.zero_grad_buffer()
            trainer._run(trainer.train_iters, n, forward_only=False)
            trainer.forward_step.stats.clear()
            sync()

        fwd_bwd()  # warm
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        fwd_bwd()
        pr.disable()
        result["cprofile_ms_per_microbatch"] = (time.perf_counter() - t0) / n * 1e3
        s = io.StringIO()
        st = pstats.Stats(pr, stream=s)
        st.sort_stats("tottime").print_stats(45)
        st.sort_stats("cumulative").print_stats(70)
        (prof_dir / f"{args.name}_cprofile.txt").write_text(s.getvalue())
        print("\n".join(s.getvalue().splitlines()[:40]), flush=True)

        from torch.profiler import ProfilerActivity, profile

        t0 = time.perf_counter()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=acts) as tp:
            fwd_bwd()
        wall = time.perf_counter() - t0
        ka = tp.key_averages()
        by_cpu = ka.table(sort_by="self_cpu_time_total", row_limit=40)
        # The table's own totals (summing key_averages' self device times by hand counts kernels twice).
        unit = {"s": 1e3, "ms": 1.0, "us": 1e-3}
        totals = {k: float(v) * unit[u] for k, v, u in re.findall(r"Self (CPU|CUDA) time total: ([0-9.]+)(ms|us|s)", by_cpu)}
        result["torchprof_wall_ms_per_microbatch"] = wall / n * 1e3
        result["torchprof_cpu_ms_per_microbatch"] = totals.get("CPU", 0.0) / n
        result["gpu_ms_per_microbatch"] = totals.get("CUDA", 0.0) / n
        text = (f"wall {wall * 1e3 / n:.2f} ms / micro-batch, GPU (self CUDA) {totals.get('CUDA', 0.0) / n:.2f} ms / micro-batch\n"
                + by_cpu + "\n" + ka.table(sort_by="self_device_time_total", row_limit=30))
        (prof_dir / f"{args.name}_torchprof.txt").write_text(text)
        print("\n".join(text.splitlines()[:30]), flush=True)

    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "steps"}), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
