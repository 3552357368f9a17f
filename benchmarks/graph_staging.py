"""Host cost of a CUDA-graph training step before its replay (CPU only): the data wait and the staging.

    python tools/preprocess_data.py tests/fixtures/corpus/pretrain.jsonl -o .bench_data/fixture_pt \
        --tokenizer tests/fixtures/tokenizer.model
    python benchmarks/graph_staging.py --data .bench_data/fixture_pt --mbs 1 --repeat 5

With `train.cuda_graph_impl=full_iteration` a step first reads all its micro-batches from the data
loader and stages them into the static buffers (training/cuda_graph.py), and only then queues the
replay: that host time is on the step's critical path (the GPU idles), unlike in eager steps where
the loader's workers prefetch while the GPU runs. This times exactly that path without a GPU: the
stage-0 shape of the mini replication (examples/mini_replication/stage0.yaml: 2K rows, packing with
resets, whole documents, its data.num_workers) on the given IndexedDataset, `--rows` rows per step,
the trainer's own data iterators (data/schedule.py, the loader wait timed as the trainer times it)
and `FullIterationGraph` on CPU buffers, with the forward-backward replaced by a sleep of
`--gpu-ms` per micro-batch (the GPU time a replay takes, ~5.2 ms on one H100 at micro-batch 1,
during which the loader's workers prefetch the next step as they would on the GPU node).

Prints per step: the data wait and the host time of the call without the emulated GPU time (as
measured: a loaded machine oversleeps), both in
ms per micro-batch; then the median over `--steps` steps after `--warmup`, each of `--repeat` runs
and their median (the machine may be loaded: repeat). `--profile FILE` writes a cProfile of the
measured steps of the first run. `--json FILE` appends one record.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(args, profile: str | None) -> dict:
    import torch

    from megaindex.config import load_config
    from megaindex.data.builder import build_datasets
    from megaindex.data.schedule import DataSchedule
    from megaindex.data.tokenizer import IndexTokenizer
    from megaindex.distributed import ParallelLayout
    from megaindex.training import cuda_graph
    from megaindex.training.tracking import PhaseTimers, TimedIterator

    work = tempfile.mkdtemp(prefix="graph-staging-")
    cfg = load_config(str(REPO / "examples" / "mini_replication" / "stage0.yaml"), [
        f"data.data_path=[{args.data}]", f"data.tokenizer_model={args.tokenizer}", f"train.run_dir={work}",
        f"data.cache_dir={work}/cache", f"data.micro_batch_size={args.mbs}",
        f"data.global_batch_tokens={args.rows * 2048}", f"train.train_iters={args.warmup + args.steps}",
        "train.eval_interval=0", "eval.interval=0", "data.split=100,0,0",
        "train.cuda_graph_impl=full_iteration", "data.static_thd_shapes=true",
        *([f"data.num_workers={args.workers}"] if args.workers is not None else []),
    ])
    cfg.validate(1)
    layout = ParallelLayout(rank=0, world_size=1, tp=1, pp=1, cp=1, dp=1, vpp=None)
    tokenizer = IndexTokenizer(cfg.data.tokenizer_model)
    train_ds, _ = build_datasets(cfg, tokenizer)
    timers = PhaseTimers()
    schedule = DataSchedule(cfg, tokenizer, train_ds, layout, num_chunks=1, wrap=lambda it: TimedIterator(it, timers))
    iters = schedule.iterators_at(0)
    n = cfg.num_microbatches(1)
    gpu_s = args.gpu_ms * n / 1e3

    in_run = []

    def run(it, num):  # stands in for the forward-backward: reads the static micro-batches, "GPU" time
        t0 = time.perf_counter()
        for _ in range(num):
            next(it)
        time.sleep(gpu_s)
        in_run.append(time.perf_counter() - t0)  # measured: a loaded machine oversleeps
        return [{"lm loss": torch.zeros(2)} for _ in range(num)]

    cuda_graph.EAGER_STEPS = 10**9  # every step calls `run` (no capture on CPU)
    # (the same file measured the code before the step batch, whose constructor took two more arguments)
    accepted = inspect.signature(cuda_graph.FullIterationGraph).parameters
    extra = {"max_seqlen": cfg.data.seq_length, "longalign": cfg.data.loss_weighting == "longalign"}
    graph = cuda_graph.FullIterationGraph(run, stream=None, log=lambda m: None, device=torch.device("cpu"),
                                          **{k: v for k, v in extra.items() if k in accepted})
    prof = cProfile.Profile() if profile else None
    rows = []
    for step in range(args.warmup + args.steps):
        timers.pop()
        if prof is not None and step == args.warmup:
            prof.enable()
        t0 = time.perf_counter()
        graph(iters, n)
        dt = time.perf_counter() - t0 - in_run[-1]
        wait = timers.t.get("data_wait_s", 0.0)
        rows.append({"host_ms": dt / n * 1e3, "wait_ms": wait / n * 1e3})
    if prof is not None:
        prof.disable()
        with open(profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(40)
    measured = rows[args.warmup:]
    return {"microbatches": n, "host_ms": statistics.median(r["host_ms"] for r in measured),
            "wait_ms": statistics.median(r["wait_ms"] for r in measured), "num_workers": cfg.data.num_workers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="IndexedDataset prefix")
    ap.add_argument("--tokenizer", default=str(REPO / "tests" / "fixtures" / "tokenizer.model"))
    ap.add_argument("--mbs", type=int, default=1)
    ap.add_argument("--rows", type=int, default=128, help="rows per step")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers (default: stage0.yaml's)")
    ap.add_argument("--gpu-ms", type=float, default=5.2, help="emulated GPU time per micro-batch")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    runs = []
    for i in range(args.repeat):
        r = one_run(args, args.profile if i == 0 else None)
        runs.append(r)
        print(f"run {i + 1}: {r['microbatches']} micro-batches of {args.mbs} x 2K, {r['num_workers']} workers: "
              f"host {r['host_ms']:.3f} ms per micro-batch (data wait {r['wait_ms']:.3f})", flush=True)
    rec = {"label": args.label, "mbs": args.mbs, "rows": args.rows, "gpu_ms": args.gpu_ms,
           "num_workers": runs[0]["num_workers"], "microbatches": runs[0]["microbatches"],
           "host_ms_per_microbatch": statistics.median(r["host_ms"] for r in runs),
           "data_wait_ms_per_microbatch": statistics.median(r["wait_ms"] for r in runs),
           "runs": runs, "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": " ".join(sys.argv)}
    print("RESULT " + json.dumps({k: v for k, v in rec.items() if k != "runs"}), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
