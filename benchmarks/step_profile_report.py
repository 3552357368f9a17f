"""The report of benchmarks/step_profile.py: the markdown tables (per category and rank, the step's
busy / communication / idle split, per rule, the largest idle gaps and idle time by host activity,
the top `other` and `elementwise` kernels) and the PNG (a stacked bar per rank of the step's wall
time by category, then exposed communication and idle). Takes step_profile.analyse's results."""

from __future__ import annotations

from pathlib import Path


def markdown(results: list[dict], title: str, order: list[str]) -> str:
    ranks = [f"rank {r['rank'] if r['rank'] is not None else i}" for i, r in enumerate(results)]
    L = [f"# {title}", ""]
    L += [f"- {rk}: `{r['trace']}`, {', '.join(r['steps'])} ({r['kernels']:.0f} GPU events per step)" for rk, r in zip(ranks, results)]
    L += ["", "Per step. GPU ms: sum of kernel durations (overlapping streams can add past 100%); wall: the "
          "step's wall time given to the kernels running at each instant (compute first, then exposed "
          "communication, else idle), so a column adds up to the step.", ""]
    head = "| category | " + " | ".join(f"{rk} GPU ms | % | kernels | wall ms" for rk in ranks) + " |"
    L += [head, "|---" * (1 + 4 * len(results)) + "|"]
    for c in order + ["idle"]:
        if all(r["categories"][c]["gpu_ms"] == 0 and r["categories"][c]["wall_share_ms"] == 0 for r in results):
            continue
        cells = []
        for r in results:
            x = r["categories"][c]
            cells.append(f"{x['gpu_ms']:.1f} | {x['pct_of_step']:.1f} | {x['kernels']:.0f} | {x['wall_share_ms']:.1f}")
        L.append(f"| {c} | " + " | ".join(cells) + " |")
    L += ["", "| step | " + " | ".join(ranks) + " |", "|---" * (1 + len(results)) + "|"]
    rows = [("wall ms", "wall_ms"), ("GPU busy ms (compute union)", "gpu_busy_ms"), ("GPU busy %", "gpu_busy_pct"),
            ("communication ms (NCCL union)", "comm_ms"), ("  hidden under compute ms", "comm_hidden_ms"),
            ("  exposed ms", "comm_exposed_ms"), ("idle ms (no kernel)", "idle_ms"), ("idle %", "idle_pct"),
            ("idle gaps >= 1 ms", "gaps_over_1ms")]
    for label, key in rows:
        L.append(f"| {label} | " + " | ".join(f"{r[key]:.1f}" if isinstance(r[key], float) else str(r[key]) for r in results) + " |")
    L += ["", "Per rule (RULES in benchmarks/step_profile.py, first match wins):", "",
          "| rule | category | " + " | ".join(f"{rk} GPU ms | kernels" for rk in ranks) + " |", "|---" * (2 + 2 * len(results)) + "|"]
    every = sorted({r for x in results for r in x["rules"]}, key=lambda r: -results[0]["rules"].get(r, {"gpu_ms": 0})["gpu_ms"])
    for rule in every:
        cat = next(x["rules"][rule]["category"] for x in results if rule in x["rules"])
        cells = [f"{x['rules'][rule]['gpu_ms']:.1f} | {x['rules'][rule]['kernels']:.0f}" if rule in x["rules"] else "0 | 0" for x in results]
        L.append(f"| {rule} | {cat} | " + " | ".join(cells) + " |")
    L += ["", "Largest idle gaps (ms from the step's start) and what the host was doing:", "",
          "| rank | step | at ms | gap ms | host (step thread, innermost last) | other threads |", "|---|---|---|---|---|---|"]
    for rk, r in zip(ranks, results):
        for g in r["largest_gaps"]:
            L.append(f"| {rk} | {g['step']} | {g['at_ms']:.1f} | {g['ms']:.2f} | `{g['host']}` | {'; '.join(g['other_threads'])} |")
    L += ["", "Idle time by what the step's thread was in (innermost megaindex range > innermost op; all gaps):", "",
          "| rank | host | idle ms | gaps |", "|---|---|---|---|"]
    for rk, r in zip(ranks, results):
        for x in r["idle_by_host"]:
            L.append(f"| {rk} | `{x['host']}` | {x['idle_ms']:.1f} | {x['gaps']:.0f} |")
    for c, why in (("other", "no rule names them: a rule is missing from RULES"),
                   ("elementwise", "generic kernels no op-based rule claimed: the launching ops say what they served")):
        L += ["", f"Top `{c}` kernels ({ranks[0]}): {why}.", "",
              "| kernel | GPU ms | kernels | launched from (the context with most of its GPU time) |", "|---|---|---|---|"]
        for k in results[0]["top_kernels"][c]:
            L.append(f"| `{k['name'][:110]}` | {k['gpu_ms']:.2f} | {k['kernels']:.0f} | {f'`{k['context']}`' if k['context'] else '-'} |")
    return "\n".join(L) + "\n"


COLORS = {"attention": "#d62728", "gemm": "#1f77b4", "norm": "#9467bd", "rope": "#8c564b", "swiglu": "#e377c2",
          "fp8_cast": "#ffbb78", "cross_entropy": "#bcbd22", "norm_head": "#17becf", "optimizer": "#ff7f0e", "comm_p2p": "#2ca02c",
          "comm_all_reduce": "#98df8a", "comm_reduce_scatter": "#3d9970", "comm_all_gather": "#b5e7a0",
          "comm_other": "#006400", "memcpy": "#c5b0d5", "memset": "#c49c94", "elementwise": "#aec7e8",
          "other": "#7f7f7f", "idle": "#ffffff"}


def plot(results: list[dict], title: str, png: Path, order: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.8 * len(results)))
    for i, r in enumerate(results):
        left = 0.0
        for c in order + ["idle"]:
            w = r["categories"][c]["wall_share_ms"]
            if w <= 0:
                continue
            ax.barh(i, w, left=left, color=COLORS[c], edgecolor="black", linewidth=0.4,
                    label=c if i == 0 or not any(results[j]["categories"][c]["wall_share_ms"] > 0 for j in range(i)) else None)
            if w / r["wall_ms"] > 0.04:
                ax.text(left + w / 2, i, f"{c}\n{100 * w / r['wall_ms']:.0f}%", ha="center", va="center", fontsize=7)
            left += w
        ax.text(left, i, f" {r['wall_ms']:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(results)), [f"rank {r['rank']}" for r in results])
    ax.invert_yaxis()
    ax.set_xlabel("ms per step (wall time by what the GPU ran: compute, else exposed communication, else idle)")
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=2, fontsize=7, loc="center left", bbox_to_anchor=(1.06, 0.5))
    fig.tight_layout()
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
