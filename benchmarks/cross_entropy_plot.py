"""One PNG of what benchmarks/cross_entropy_h100.sh measured.

    python benchmarks/cross_entropy_plot.py $OUT/cross_entropy.jsonl $OUT/train.jsonl --png $OUT/cross_entropy.png

Left: the head + loss alone per kernel (benchmarks/cross_entropy.py): peak bytes per logit above
what was held, and milliseconds per forward+backward of one 32K row. Right: the trainer runs
(benchmarks/train_throughput.py): model TFLOP/s per GPU and peak allocated GiB per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read(path: str) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("head_jsonl")
    ap.add_argument("train_jsonl")
    ap.add_argument("--png", required=True)
    args = ap.parse_args()
    head, train = read(args.head_jsonl), read(args.train_jsonl)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [f"{r['fusion']}\n(ran {r.get('kernel_used', '?')})" for r in head]
    x = range(len(head))
    ax1.bar([i - 0.2 for i in x], [r["bytes_per_logit"] or 0 for r in head], 0.4, color="#4C72B0", label="peak bytes per logit")
    ax1.set_ylabel("peak bytes per logit (above held)")
    ax1b = ax1.twinx()
    ax1b.bar([i + 0.2 for i in x], [r["ms_median"] for r in head], 0.4, color="#DD8452", label="ms per fwd+bwd")
    ax1b.set_ylabel("ms per forward + backward")
    ax1.set_xticks(list(x), names)
    tokens = head[0]["tokens"] if head else 0
    ax1.set_title(f"LM head + loss alone, {tokens} tokens x vocab {head[0]['padded_vocab'] if head else '?'}")
    ax1.legend(loc="upper left")
    ax1b.legend(loc="upper right")

    labels = [r["name"].replace("1gpu_", "") for r in train]
    x = range(len(train))
    ax2.bar([i - 0.2 for i in x], [r.get("tflops_per_gpu") or 0 for r in train], 0.4, color="#55A868", label="TFLOP/s per GPU")
    ax2.set_ylabel("model TFLOP/s per GPU")
    ax2b = ax2.twinx()
    ax2b.bar([i + 0.2 for i in x], [r.get("peak_allocated_gib") or r.get("peak_mem_gib") or 0 for r in train], 0.4,
             color="#C44E52", label="peak allocated GiB")
    ax2b.set_ylabel("peak allocated GiB")
    ax2.set_xticks(list(x), labels, rotation=10)
    ax2.set_title("Index-1.9B-32K through the trainer, one GPU")
    ax2.legend(loc="upper left")
    ax2b.legend(loc="upper right")
    for ax in (ax1, ax1b, ax2, ax2b):  # headroom for the legends
        ax.set_ylim(0, 1.35 * max(ax.get_ylim()[1], 1e-9))
    device = (head or train or [{}])[0].get("device", "?")
    fig.suptitle(f"model.cross_entropy_fusion on {device}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
