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

Prints per step: the data wait, the time in the buffer copies (`_Shape.load`: a host memcpy into
CPU "buffers" here, an asynchronous host-to-device copy on the GPU) and the host time of the call
without the emulated GPU time (as measured: a loaded machine oversleeps), all in
ms per micro-batch; then the median over `--steps` steps after `--warmup`, each of `--repeat` runs
and their median (the machine may be loaded: repeat). `--profile FILE` writes a cProfile of the
measured steps of the first run. `--json FILE` appends one record; `--plot FILE OUT.png` draws
the before/after records of FILE as bars.
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

import result_line

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
    # The buffer copies, timed apart: here a host memcpy into CPU "buffers", on the GPU an asynchronous
    # copy (after the change; before it, `load` also copied each micro-batch into pinned staging rows).
    in_load, real_load = [], cuda_graph._Shape.load

    def timed_load(self, *a, **kw):
        t0 = time.perf_counter()
        real_load(self, *a, **kw)
        in_load.append(time.perf_counter() - t0)

    cuda_graph._Shape.load = timed_load
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
        rows.append({"host_ms": dt / n * 1e3, "wait_ms": wait / n * 1e3, "load_ms": in_load[-1] / n * 1e3})
        in_load.clear()
    if prof is not None:
        prof.disable()
        with open(profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(40)
    measured = rows[args.warmup:]
    return {"microbatches": n, "host_ms": statistics.median(r["host_ms"] for r in measured),
            "wait_ms": statistics.median(r["wait_ms"] for r in measured),
            "load_ms": statistics.median(r["load_ms"] for r in measured), "num_workers": cfg.data.num_workers}


def plot(records: Path, out: Path) -> None:
    """Before/after bars of the host ms per micro-batch (medians over all runs of each configuration in
    `records`), split into data wait, buffer copies and the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    configs = sorted({(r["mbs"], r["num_workers"]) for r in recs}, key=lambda c: (-c[1], c[0]))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    labels, x = [], 0
    for mbs, workers in configs:
        for label, color in (("before", "#c44e52"), ("after", "#4c72b0")):
            runs = [u for r in recs if (r["mbs"], r["num_workers"], r["label"]) == (mbs, workers, label) for u in r["runs"]]
            if not runs:
                continue
            # (records written before the buffer copies were timed have no load_ms)
            med = {k: statistics.median([u[k] for u in runs if k in u] or [0.0]) for k in ("host_ms", "wait_ms", "load_ms")}
            parts = [med["wait_ms"], min(med["load_ms"], med["host_ms"] - med["wait_ms"])]
            parts.append(max(med["host_ms"] - sum(parts), 0.0))
            bottom = 0.0
            for part, alpha in zip(parts, (1.0, 0.55, 0.2)):
                ax.bar(x, part, bottom=bottom, color=color, alpha=alpha)
                bottom += part
            ax.text(x, bottom, f"{med['host_ms']:.2f}", ha="center", va="bottom", fontsize=8)
            labels.append((x, f"{label}\nmbs {mbs}\n{workers} workers\n{len(runs)} runs"))
            x += 1
        x += 0.5
    ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_ylabel("host ms per micro-batch before the replay")
    ax.set_title("CUDA-graph step staging on CPU (stage-0 shape, 128 x 2K rows per step; medians)\n"
                 "dark: data wait, mid: buffer copies (async DMA on a GPU), light: the rest", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    if "--plot" in sys.argv:  # --plot RECORDS.jsonl OUT.png
        i = sys.argv.index("--plot")
        plot(Path(sys.argv[i + 1]), Path(sys.argv[i + 2]))
        return 0
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
              f"host {r['host_ms']:.3f} ms per micro-batch (data wait {r['wait_ms']:.3f}, buffer load {r['load_ms']:.3f})",
              flush=True)
    rec = {"label": args.label, "mbs": args.mbs, "rows": args.rows, "gpu_ms": args.gpu_ms,
           "num_workers": runs[0]["num_workers"], "microbatches": runs[0]["microbatches"],
           "host_ms_per_microbatch": statistics.median(r["host_ms"] for r in runs),
           "data_wait_ms_per_microbatch": statistics.median(r["wait_ms"] for r in runs),
           "buffer_load_ms_per_microbatch": statistics.median(r["load_ms"] for r in runs),
           "runs": runs, "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": " ".join(sys.argv)}
    result_line.emit(rec, args.json, console_omit=("runs",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
