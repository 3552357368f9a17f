"""The evaluation PNGs: the needle heatmap in the Index report's style, score vs length, NLL per
position bucket and perplexity vs length.

Owns `write_plots(summary, out_dir) -> [paths]`:
  needle_heatmap_<variant>.png  rows = depth (%), columns = length (model tokens), cell = mean
      NeedleBench score, colour map #F0496E -> #EBB839 -> #0CD79F over 0-100, the per-length mean as
      a line on the same 0-100 scale (right axis), overall score in the title;
  score_vs_length.png           needle score and passkey accuracy vs length, one line per variant,
      and dashed in the same colour the forced token accuracy (%) where the summary has it;
  ppl.png                       mean NLL per position bucket and perplexity vs length, one line per
      variant, a dashed line at the training length.
"""

from __future__ import annotations

from pathlib import Path

INDEX_COLORS = ["#F0496E", "#EBB839", "#0CD79F"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return name.replace(":", "")


def _length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _length_ticks(ax, lengths: list[int]) -> None:
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [_length_label(n) for n in ticks])
    ax.minorticks_off()


def heatmap(variant: str, s: dict, out: Path, title: str = "") -> Path:
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    plt = _plt()
    lengths = sorted(s["grid"], key=int)
    depths = sorted({d for L in lengths for d in s["grid"][L]}, key=float)
    z = np.array([[s["grid"][L].get(d, np.nan) for L in lengths] for d in depths])
    cmap = LinearSegmentedColormap.from_list("index", INDEX_COLORS)
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(lengths) + 3), max(4, 0.45 * len(depths) + 2)))
    im = ax.imshow(z, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(z[i, j]):
                ax.text(j, i, f"{z[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [_length_label(int(L)) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{float(d):g}" for d in depths])
    ax.set_xlabel("context length (model tokens)")
    ax.set_ylabel("needle depth (%)")
    ax2 = ax.twinx()
    ax2.plot(range(len(lengths)), [s["by_length"][L] for L in lengths], color="white", marker="o", lw=2,
             label="mean over depths")
    ax2.set_ylim(-5, 105)
    ax2.set_ylabel("mean score per length")
    ax2.legend(loc="lower left", fontsize=8)
    fig.colorbar(im, ax=ax2, pad=0.12, label="NeedleBench score")
    ax.set_title(f"{title}needle in a haystack, RoPE {variant}: overall {s['overall']:.2f}")
    fig.tight_layout()
    path = out / f"needle_heatmap_{_safe(variant)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_vs_length(summary: dict, out: Path, train_length: int | None) -> Path:
    plt = _plt()
    panels = [(k, t) for k, t in (("needle", "needle score (NeedleBench)"), ("passkey", "passkey accuracy (%)"))
              if summary.get(k)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (task, label) in zip(axes[0], panels):
        for variant, s in summary[task].items():
            series = s["by_length"] if task == "needle" else s["accuracy_by_length"]
            xs = sorted(series, key=int)
            scale = 1 if task == "needle" else 100
            line, = ax.plot([int(x) for x in xs], [series[x] * scale for x in xs], marker="o", label=variant)
            tok = s.get("token_accuracy_by_length")
            if tok:
                ts = sorted(tok, key=int)
                ax.plot([int(x) for x in ts], [100 * tok[x] for x in ts], ls="--", marker=".", color=line.get_color(),
                        label=f"{variant} token accuracy (%)")
        if train_length:
            ax.axvline(train_length, color="gray", ls="--", lw=1, label=f"trained at {train_length}")
        ax.set_xscale("log", base=2)
        _length_ticks(ax, [int(x) for s in summary[task].values()
                           for x in (s["by_length"] if task == "needle" else s["accuracy_by_length"])])
        ax.set_xlabel("context length (model tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(-5, 105)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "score_vs_length.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ppl_plot(summary: dict, out: Path, train_length: int | None) -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for variant, s in summary["ppl"].items():
        b = s["nll_by_position"]
        a1.plot([(x[0] + x[1]) / 2 for x in b], [x[2] for x in b], marker=".", label=variant)
        xs = sorted(s["by_length"], key=int)
        a2.plot([int(x) for x in xs], [s["by_length"][x] for x in xs], marker="o", label=variant)
    for ax in (a1, a2):
        if train_length:
            ax.axvline(train_length, color="gray", ls="--", lw=1, label=f"trained at {train_length}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    a1.set_xlabel("position in the document (model tokens)")
    a1.set_ylabel("mean NLL per position bucket")
    a2.set_xscale("log", base=2)
    _length_ticks(a2, [int(x) for s in summary["ppl"].values() for x in s["by_length"]])
    a2.set_yscale("log")
    a2.set_xlabel("context length (model tokens)")
    a2.set_ylabel("perplexity")
    fig.tight_layout()
    path = out / "ppl.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(summary: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    train_length = summary.get("meta", {}).get("train_length")
    paths = [heatmap(v, s, out) for v, s in summary.get("needle", {}).items()]
    if summary.get("needle") or summary.get("passkey"):
        paths.append(score_vs_length(summary, out, train_length))
    if summary.get("ppl"):
        paths.append(ppl_plot(summary, out, train_length))
    return paths
