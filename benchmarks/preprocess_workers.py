#!/usr/bin/env python3
"""Benchmark: tools/preprocess_data.py tokens/s against the number of worker processes.

Each configuration runs the real tool in a fresh process (JSONL -> partitions on N workers -> one
merged .bin/.idx), alternating configurations over --rounds so that other load on a shared box hits
all of them alike; the best wall time of each counts, and the CPU seconds of the tool and its
workers are reported too (load does not inflate them). Writes a Markdown table, a JSON record and a
PNG next to --out.

    python benchmarks/preprocess_workers.py /work/corpus_full/pretrain.jsonl --tokenizer tests/fixtures/tokenizer.model \
        --workers 1 2 --out benchmarks/preprocess_workers
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(inputs: list[str], tokenizer: str, workers: int, partitions: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "tools/preprocess_data.py"), *inputs, "-o", f"{tmp}/ds", "--tokenizer", tokenizer,
               "--workers", str(workers), "--quiet"] + (["--partitions", str(partitions)] if partitions else [])
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
        m = re.search(r"(\d+) tokens in ([\d.]+)s", r.stdout)
        return {"workers": workers, "tokens": int(m[1]), "tool_s": float(m[2]), "process_wall_s": wall,
                "cpu_s": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime), "cmd": " ".join(cmd[1:])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--partitions", type=int, default=None, help="default: the tool's (one per 256 MiB, at least 16)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/preprocess_workers", help="writes OUT.json and OUT.png")
    args = ap.parse_args()

    runs = []
    for r in range(args.rounds):
        order = args.workers if r % 2 == 0 else list(reversed(args.workers))
        for w in order:
            rec = run_once(args.inputs, args.tokenizer, w, args.partitions)
            rec["load_avg_1m"] = os.getloadavg()[0]
            runs.append(rec)
            print(f"round {r + 1}: workers {w}: {rec['tokens'] / rec['tool_s'] / 1e3:8.1f}K tokens/s "
                  f"({rec['tool_s']:.1f}s in the tool, {rec['cpu_s']:.1f} CPU s, load {rec['load_avg_1m']:.1f})", flush=True)
    best = {w: min((x for x in runs if x["workers"] == w), key=lambda x: x["tool_s"]) for w in args.workers}
    size = sum(Path(p).stat().st_size for p in args.inputs)
    print(f"\ninput: {', '.join(args.inputs)} ({size / 1e6:.1f} MB, {best[args.workers[0]]['tokens'] / 1e6:.2f}M tokens)")
    print("| workers | best time in the tool | tokens/s | CPU s (that run) | speed-up vs 1 |")
    print("|---|---|---|---|---|")
    base = best[args.workers[0]]["tool_s"]
    for w in args.workers:
        b = best[w]
        print(f"| {w} | {b['tool_s']:.1f} s | {b['tokens'] / b['tool_s'] / 1e3:.0f}K | {b['cpu_s']:.1f} | {base / b['tool_s']:.2f}x |")
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}",
              "inputs": args.inputs, "bytes": size, "runs": runs}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ws = [str(w) for w in args.workers]
    ax.bar(ws, [best[w]["tokens"] / best[w]["tool_s"] / 1e6 for w in args.workers], color="#4c72b0")
    for w in args.workers:
        ax.scatter([str(w)] * sum(1 for x in runs if x["workers"] == w),
                   [x["tokens"] / x["tool_s"] / 1e6 for x in runs if x["workers"] == w], color="k", s=12, zorder=3)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("M tokens/s (bar: best, dots: all runs)")
    loads = [x["load_avg_1m"] for x in runs]
    ax.set_title(f"preprocess_data on {size / 1e6:.0f} MB, {os.cpu_count()} cores, load {min(loads):.0f}-{max(loads):.0f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
