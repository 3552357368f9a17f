"""`megaindex plan`'s throughput model against every recorded 32K training run.

    python benchmarks/plan_vs_measured.py                   # markdown table (RESULTS_plan.md)
    python benchmarks/plan_vs_measured.py --fit             # refit the constants on the calibration runs
    python benchmarks/plan_vs_measured.py --png plan.png    # and a chart
    python benchmarks/plan_vs_measured.py --json            # for tests

Reads every megaindex record of benchmarks/results_train_*.jsonl (the HF baseline has no layout),
rebuilds the run's config from its command, and takes the attention span of its data from the
record itself: model FLOPs per token (TFLOP/s over tokens/s) minus 6 x dense parameters is the
attention's share, 6 x layers x h x sum(n_i^2)/tokens. The model's three constants
(megaindex/planner.py) are the least-squares fit of the relative step-time error over the
calibration files below; the table gives each run's error with those constants and its
leave-one-out error (constants refitted without that run, then that run predicted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory_vs_estimate import run_config  # noqa: E402  (the benchmark run's config from its command)

# The runs the constants were fitted on; records added later are shown, not fitted.
CALIBRATION_FILES = ("results_train_2026-11-22.jsonl", "results_train_2026-11-27_h100_issue13.jsonl")


def records(folder: Path = HERE) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("results_train_*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("layout") and r.get("tflops_per_gpu"):
                rows.append({**r, "file": path.name, "calibration": path.name in CALIBRATION_FILES})
    return rows


def model_rows(recs: list[dict]):
    """Per record: the cost model's terms and the measured step time."""
    from megaindex import plan
    from megaindex.planner import step_time_terms

    out = []
    for r in recs:
        cfg = run_config(r)
        cfg.validate(r["gpus"])
        m = cfg.model
        flops_per_token = r["tflops_per_gpu"] * 1e12 / r["tokens_per_s_per_gpu"]
        attention_per_token = flops_per_token - 6 * plan.dense_params(cfg)
        doc_length = attention_per_token / (6 * m.num_layers * m.num_attention_heads * m.head_dim)
        terms = step_time_terms(cfg, r["gpus"], doc_length=doc_length)
        measured = r["global_batch_tokens"] / (r["tokens_per_s_per_gpu"] * r["gpus"])
        out.append((r, cfg, doc_length, terms, measured))
    return out


def fit(rows) -> tuple[float, float, float, float]:
    """Least squares on the relative step-time error; the model is linear in 1/efficiency."""
    import numpy as np

    a = np.array([[t.gemm / s, t.attention / s, t.comm / s, t.pipeline_syncs / s] for _, _, _, t, s in rows])
    x, *_ = np.linalg.lstsq(a, np.ones(len(rows)), rcond=None)
    return (*(float(1 / v) for v in x[:3]), float(x[3]))


def compare(rows, constants) -> list[dict]:
    from megaindex.planner import Constants, predict

    calib = [row for row in rows if row[0]["calibration"]]
    k = Constants(*constants)
    out = []
    for row in rows:
        r, cfg, doc_length, terms, measured = row
        predicted = terms.seconds(k)
        rest = [c for c in calib if c is not row]
        loo = terms.seconds(Constants(*fit(rest))) if r["calibration"] else predicted
        tflops = lambda s: r["tflops_per_gpu"] * measured / s
        out.append({
            "name": r["name"], "device": r["device"], "date": r["date"], "gpus": r["gpus"], "calibration": r["calibration"],
            "recompute": r["recompute"], "doc_length": round(doc_length), "measured_tflops": round(r["tflops_per_gpu"], 1),
            "predicted_tflops": round(tflops(predicted), 1), "error": measured / predicted - 1,
            "loo_tflops": round(tflops(loo), 1), "loo_error": measured / loo - 1,
            "breakdown_s": {kk: round(v, 3) for kk, v in predict(cfg, r["gpus"], doc_length=doc_length, constants=k).breakdown_s.items()},
        })
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| run | device | date | GPUs | attention span | measured TFLOP/s/GPU | predicted | error | leave-one-out | error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(
            f"| {c['name']}{'' if c['calibration'] else ' (not fitted)'} | {c['device'].replace('NVIDIA ', '')} | {c['date']} | "
            f"{c['gpus']} | {c['doc_length']:,} | {c['measured_tflops']:.1f} | {c['predicted_tflops']:.1f} | "
            f"{c['error']:+.1%} | {c['loo_tflops']:.1f} | {c['loo_error']:+.1%} |"
        )
    fitted = [c for c in rows if c["calibration"]]
    lines.append("")
    lines.append(f"Over the {len(fitted)} fitted runs: mean |error| {sum(abs(c['error']) for c in fitted) / len(fitted):.1%}, "
                 f"max {max(abs(c['error']) for c in fitted):.1%}; leave-one-out mean "
                 f"{sum(abs(c['loo_error']) for c in fitted) / len(fitted):.1%}, max {max(abs(c['loo_error']) for c in fitted):.1%}.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    colors = {1: "#1f77b4", 2: "#d62728", 4: "#2ca02c"}
    for c in rows:
        ax.scatter(c["measured_tflops"], c["predicted_tflops"], color=colors.get(c["gpus"], "#7f7f7f"),
                   marker="o" if "H200" in c["device"] else "s")
    lo, hi = 320, 460
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.95, hi * 0.95], [lo * 1.05, hi * 1.05], color="k", alpha=0.08, label="±5%")
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
    ax.set_xlabel("measured model TFLOP/s/GPU")
    ax.set_ylabel("predicted (megaindex plan)")
    ax.set_title("circles H200, squares H100; blue 1, red 2, green 4 GPUs", fontsize=9)
    ax.legend(fontsize=8)
    labels = [f"{c['name']} ({c['device'].split()[1]}, {c['date'][5:]})" for c in rows]
    y = range(len(rows))
    bx.barh([v + 0.2 for v in y], [100 * c["error"] for c in rows], 0.4, label="fitted constants",
            color=[colors.get(c["gpus"], "#7f7f7f") for c in rows])
    bx.barh([v - 0.2 for v in y], [100 * c["loo_error"] for c in rows], 0.4, label="leave-one-out", color="#bbbbbb")
    bx.axvspan(-5, 5, color="k", alpha=0.08)
    bx.set_yticks(list(y), labels, fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("predicted / measured throughput - 1 (%)")
    bx.legend(fontsize=8)
    fig.suptitle("Index-1.9B at 32K: megaindex plan's throughput model vs the recorded runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="print the constants fitted on the calibration runs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    from megaindex import planner

    rows = model_rows(records())
    fitted = fit([row for row in rows if row[0]["calibration"]])
    if args.fit:
        for name, v in zip(("GEMM_EFFICIENCY", "ATTENTION_EFFICIENCY", "COMM_EFFICIENCY", "PIPELINE_SYNC_S"), fitted):
            print(f"{name} = {v:.4g}")
        return 0
    constants = (planner.GEMM_EFFICIENCY, planner.ATTENTION_EFFICIENCY, planner.COMM_EFFICIENCY, planner.PIPELINE_SYNC_S)
    out = compare(rows, constants)
    if args.json:
        print(json.dumps({"constants": constants, "fitted": fitted, "rows": out}, indent=2))
    else:
        print(markdown(out))
    if args.png:
        plot(out, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
