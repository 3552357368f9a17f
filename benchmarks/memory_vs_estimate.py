"""`megaindex info`'s memory estimate against the peaks the 32K benchmarks measured on the GPU node.

    python benchmarks/memory_vs_estimate.py                  # markdown table
    python benchmarks/memory_vs_estimate.py --png memory.png # and a bar chart
    python benchmarks/memory_vs_estimate.py --json           # for tests

Reads every record of benchmarks/results_train_*.jsonl that carries the per-rank memory breakdown
(written by train_throughput.py), rebuilds the run's config from its command line, and compares:
* allocated: the estimate's peak_allocated vs torch.cuda.max_memory_allocated() on the most
  loaded rank;
* footprint: the estimate's total vs peak reserved + memory outside torch's allocator (CUDA
  context, NCCL, workspaces), i.e. what the GPU must hold.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "examples" / "index_1.9b_long_pt_32k.yaml"


def measured_records(folder: Path = REPO / "benchmarks") -> list[dict]:
    rows = []
    for path in sorted(folder.glob("results_train_*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "peak_allocated_gib" in r and "layout" in r:
                rows.append(r)
    return rows


def run_config(record: dict):
    """The benchmark run's config: its recipe and overrides, its global batch, bf16, and the
    cross-entropy kernel it ran: `cross_entropy_kernel_used` (after any fallback) over what the command
    asked for; records without the field ran what the command named or megatron's unfused loss, the
    default before `auto`."""
    from megaindex.config import load_config

    argv = shlex.split(record["command"])
    recipe = argv[argv.index("--recipe") + 1] if "--recipe" in argv else str(DEFAULT_RECIPE)
    used = record.get("cross_entropy_kernel_used")
    overrides = ["model.cross_entropy_fusion=none"] + [t for t in argv if "=" in t and not t.startswith("-")]
    overrides += [f"model.cross_entropy_fusion={used}"] if used else []
    overrides += [f"data.global_batch_tokens={record['global_batch_tokens']}", "train.precision=bf16"]
    return load_config(recipe, overrides)


def compare(records: list[dict]) -> list[dict]:
    from megaindex.plan import GiB, memory_estimate, parameter_counts

    out = []
    for r in records:
        cfg = run_config(r)
        cfg.validate(r["gpus"])
        est = memory_estimate(cfg, parameter_counts(cfg), r["gpus"])
        footprint = r["peak_reserved_gib"] + r["outside_torch_gib"]
        out.append({
            "name": r["name"], "gpus": r["gpus"], "date": r["date"], "device": r["device"],
            "measured_allocated_gib": round(r["peak_allocated_gib"], 2),
            "estimated_allocated_gib": round(est.peak_allocated / GiB, 2),
            "allocated_error": est.peak_allocated / GiB / r["peak_allocated_gib"] - 1,
            "measured_footprint_gib": round(footprint, 2),
            "estimated_total_gib": round(est.total / GiB, 2),
            "footprint_error": est.total / GiB / footprint - 1,
        })
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| layout | GPUs | peak allocated | estimate | error | reserved + outside torch | estimate (total) | error |",
             "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(
            f"| {c['name']} | {c['gpus']} | {c['measured_allocated_gib']:.2f} GiB | {c['estimated_allocated_gib']:.2f} GiB | "
            f"{c['allocated_error']:+.1%} | {c['measured_footprint_gib']:.2f} GiB | {c['estimated_total_gib']:.2f} GiB | "
            f"{c['footprint_error']:+.1%} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(len(rows))
    w = 0.2
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(rows)), 4.5))
    series = [("measured_allocated_gib", "peak allocated (measured)", "#1f77b4"),
              ("estimated_allocated_gib", "allocated (estimate)", "#aec7e8"),
              ("measured_footprint_gib", "reserved + outside torch (measured)", "#d62728"),
              ("estimated_total_gib", "total (estimate)", "#ff9896")]
    for i, (key, label, color) in enumerate(series):
        ax.bar([v + (i - 1.5) * w for v in x], [c[key] for c in rows], w, label=label, color=color)
    ax.set_xticks(list(x), [f"{c['name']}\n{c['gpus']} GPU" for c in rows], fontsize=8)
    ax.set_ylabel("GiB per GPU")
    ax.set_title("Index-1.9B at 32K: megaindex info estimate vs measured peak (H200)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    records = measured_records()
    if not records:
        print("no benchmark records with a memory breakdown under benchmarks/", file=sys.stderr)
        return 1
    rows = compare(records)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown(rows))
    if args.png:
        plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
