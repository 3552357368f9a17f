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

`--cuda-graph` runs the same with train.cuda_graph_impl=full_iteration (and data.static_thd_shapes=true,
which it needs): steps 1-2 run eagerly, step 3 is captured and replayed, later steps replay, so
measure from step 4 (`--warmup 3`); `--profile` then runs cProfile over one replayed step (no
torch.profiler: the kernels are the eager run's). `--summarize FILE` prints the records of FILE as a markdown table
(tokens/s, ms per micro-batch, each step's loss, and the graphed runs' largest loss difference from
the eager run of the same micro-batch size):

    torchrun --nproc-per-node 1 benchmarks/microbatch_overhead.py --name eager_mbs1 --data P --out R.jsonl \
        data.static_thd_shapes=true
    torchrun --nproc-per-node 1 benchmarks/microbatch_overhead.py --name graph_mbs1 --data P --out R.jsonl \
        --cuda-graph --steps 6 --warmup 3
    python benchmarks/microbatch_overhead.py --summarize R.jsonl
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

import result_line

REPO = Path(__file__).resolve().parents[1]
MODEL_34M = ["model.num_layers=8", "model.hidden_size=512", "model.num_attention_heads=4", "model.num_query_groups=4",
             "model.ffn_hidden_size=1472", "model.vocab_size=8000"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if "--summarize" in sys.argv:
        return summarize(Path(sys.argv[sys.argv.index("--summarize") + 1]))
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="IndexedDataset prefix")
    ap.add_argument("--cuda-graph", action="store_true", help="train.cuda_graph_impl=full_iteration (+ static THD shapes)")
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
        f"data.global_batch_tokens={args.rows * args.seq_length}", *MODEL_34M,
        *(["train.cuda_graph_impl=full_iteration", "data.static_thd_shapes=true"] if args.cuda_graph else []),
        *args.overrides,
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
        # host time in the forward-backward call: with graphs the replay is queued, not waited for
        fb_s = trainer.timers.t.get("forward_backward_s", 0.0)
        rows.append({"step": step + 1, "step_time_s": dt, "data_wait_s": wait_s, "forward_backward_s": fb_s,
                     "microbatches": n_mb, "loss": out["loss"]})
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
        "host_ms_per_microbatch": statistics.median(r["forward_backward_s"] + r["data_wait_s"] for r in measured) / n_mb * 1e3,
        "cuda_graph": trainer.graph is not None, "graphs_captured": trainer.graph.captures if trainer.graph else 0,
        "steps": rows, "overrides": args.overrides,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }

    if args.profile:
        try:
            profile(args, trainer, result, sync)
        except Exception as e:  # keep the timing record: a profiler failure must not lose it
            result["profile_error"] = f"{type(e).__name__}: {e}"
            print(f"[{args.name}] profiling failed: {result['profile_error']}", flush=True)

    result_line.emit(result, args.out, console_omit=("steps",))
    destroy_distributed()
    return 0


def profile(args, trainer, result: dict, sync) -> None:
    """cProfile and torch.profiler over extra forward-backward micro-batches (see the module doc)."""
    import torch

    prof_dir = Path(args.profile_dir)
    prof_dir.mkdir(parents=True, exist_ok=True)
    # with graphs: replays of the step's captured graph (another micro-batch count would be a new shape)
    n = trainer.num_microbatches if trainer.graph else args.profile_microbatches

    def fwd_bwd():
        for m in trainer.model:
            m.zero_grad_buffer()
        if trainer.graph:
            trainer.graph(trainer.train_iters, n)
        else:
            trainer._run(trainer.train_iters, n, forward_only=False)
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

    if trainer.graph:  # the kernels a replay runs are the eager run's; tracing ~500 per micro-batch costs minutes
        return
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


def summarize(path: Path) -> int:
    """A markdown table of the records in `path` (one JSON line per run)."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("| run | micro-batch | CUDA graph | tokens/s | ms per micro-batch | host ms per micro-batch | "
          "GPU ms per micro-batch (profiled) | data wait ms | step losses | max loss diff vs eager |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        losses = [s["loss"] for s in r["steps"]]
        eager = next((e for e in recs if not e.get("cuda_graph") and e["micro_batch_size"] == r["micro_batch_size"]
                      and e["rows_per_step"] == r["rows_per_step"]), None)
        diff = ""
        if r.get("cuda_graph") and eager is not None:
            pairs = list(zip(losses, [s["loss"] for s in eager["steps"]]))
            diff = f"{max(abs(a - b) for a, b in pairs):.2e} over {len(pairs)} steps"
        gpu = r.get("gpu_ms_per_microbatch")
        host = r.get("host_ms_per_microbatch")
        print(f"| {r['name']} | {r['micro_batch_size']} | {'yes' if r.get('cuda_graph') else 'no'} | {r['tokens_per_s']:,.0f} | "
              f"{r['ms_per_microbatch']:.2f} | {'' if host is None else f'{host:.2f}'} | {'' if gpu is None else f'{gpu:.2f}'} | "
              f"{r['data_wait_ms_per_microbatch']:.2f} | {', '.join(f'{x:.5f}' for x in losses)} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
