"""The replication's results: summary JSON, markdown table, plots and the pre-registered thresholds.

Reads the `summary.json` files `megaindex eval` wrote under EVAL_DIR (base_*/ for the stage-0 model
with every RoPE variant, longpt/ for stage 1, ablation_*/ for the ablations) and writes into OUT:
  replication_summary.json  per model variant: mean needle score per length and per language,
                            passkey accuracy per length, perplexity per length, the forced token accuracy per length of
                            both tasks (share of answer tokens right under teacher forcing: partial
                            retrieval that exact match hides); the thresholds, each met or missed
  results.md                the same as tables, plus the thresholds and the ablations against their
                            reference, Long-PT at the same training budget (validation loss from
                            WORK/<run>/validation.jsonl)
  heatmaps.png              needle heatmaps side by side: base + naive, base + Dynamic NTK, Long-PT
  score_vs_length.png       needle score and passkey accuracy vs length, one line per variant
  probe.png                 training curves of stage 0 and stage 1 (WORK/stage*/metrics.jsonl, when
                            present): loss, and the in-training probe's exact score and token accuracy
With publish_to (benchmarks/), replication_summary.json and the PNGs are copied there as
replication_summary.json, replication_heatmaps.png, replication_score_vs_length.png, replication_probe.png.

The thresholds are the issue's, fixed before the run (README.md "Thresholds"); "Dynamic NTK" is the
factor most favourable to the baseline at each comparison (the best of 2, 4, 8, 16).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import yaml

SCHEMA = "megaindex.replication_summary/1"
COLOURS = ["#F0496E", "#EBB839", "#0CD79F"]  # NeedleBench's red -> yellow -> green over 0..100


def _num(d: dict) -> dict[int, float]:
    return {int(k): float(v) for k, v in d.items()}


def load_variants(eval_dir: Path) -> dict[str, dict]:
    """{variant name: {model, rope, needle, passkey, ppl (by length), grid}} from every summary.json."""
    variants: dict[str, dict] = {}
    for path in sorted(Path(eval_dir).glob("*/summary.json")):
        s = json.loads(path.read_text())
        group = path.parent.name
        model = "base" if group.startswith("base") else group
        ropes = set(s.get("needle", {})) | set(s.get("passkey", {})) | set(s.get("ppl", {}))
        for rope in sorted(ropes):
            name = f"base+{rope}" if model == "base" else (model if rope == "naive" else f"{model}+{rope}")
            n, p, q = s.get("needle", {}).get(rope, {}), s.get("passkey", {}).get(rope, {}), s.get("ppl", {}).get(rope, {})
            variants[name] = {
                "model": model, "rope": rope,
                "needle_mean_by_length": _num(n.get("by_length", {})),
                "passkey_accuracy_by_length": _num(p.get("accuracy_by_length", {})),
                "ppl_by_length": _num(q.get("by_length", {})),
                "needle_token_accuracy_by_length": _num(n.get("token_accuracy_by_length", {})),
                "passkey_token_accuracy_by_length": _num(p.get("token_accuracy_by_length", {})),
                "needle_grid": {int(L): {float(d): float(x) for d, x in ds.items()} for L, ds in n.get("grid", {}).items()},
                "needle_by_lang": {lang: float(x) for lang, x in n.get("by_lang", {}).items()},
                "train_length": s.get("meta", {}).get("train_length"),
            }
    def order(name: str):  # base + naive, NTK by factor, other RoPE variants, Long-PT, ablations
        v = variants[name]
        rope, _, factor = v["rope"].partition(":")
        return (("base", "longpt").index(v["model"]) if v["model"] in ("base", "longpt") else 2,
                rope != "naive", rope != "dynamic", float(factor or 0), name)

    return {k: variants[k] for k in sorted(variants, key=order)}


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _check(tid: str, text: str, value: float | None, target: str, ok) -> dict:
    measurable = value is not None and not (isinstance(value, float) and math.isnan(value))
    return {"id": tid, "threshold": text, "value": None if not measurable else round(value, 2), "target": target,
            "status": "met" if measurable and ok(value) else ("missed" if measurable else "not measured")}


def check_thresholds(variants: dict[str, dict], train_length: int) -> list[dict]:
    """The issue's pre-registered thresholds, each met / missed / not measured."""
    base, lp = variants.get("base+naive"), variants.get("longpt")
    ntk = {k: v for k, v in variants.items() if v["model"] == "base" and v["rope"].startswith("dynamic")}

    def at(v, key, pred):
        return [x for L, x in (v or {}).get(key, {}).items() if pred(L)]

    short = lambda L: L <= train_length  # noqa: E731
    long_ = lambda L: L > train_length  # noqa: E731
    out = [
        _check("gate_needle", f"base + naive: needle score >= 90 at every length <= {train_length}",
               min(at(base, "needle_mean_by_length", short), default=None), ">= 90", lambda x: x >= 90),
        _check("gate_passkey", f"base + naive: passkey accuracy >= 95% at every length <= {train_length}",
               min((100 * x for x in at(base, "passkey_accuracy_by_length", short)), default=None), ">= 95",
               lambda x: x >= 95),
        _check("longpt_mean", "Long-PT: needle score >= 85 averaged over the lengths up to 32K",
               _mean(at(lp, "needle_mean_by_length", lambda L: True)) if lp else None, ">= 85", lambda x: x >= 85),
        _check("longpt_min", "Long-PT: no length below 70",
               min(at(lp, "needle_mean_by_length", lambda L: True), default=None), ">= 70", lambda x: x >= 70),
        _check("longpt_passkey", "Long-PT: passkey accuracy >= 90% (mean over lengths)",
               100 * _mean(at(lp, "passkey_accuracy_by_length", lambda L: True)) if lp else None, ">= 90",
               lambda x: x >= 90),
        _check("naive_low", f"base + naive: needle score <= 20 at every length > {train_length}",
               max(at(base, "needle_mean_by_length", long_), default=None), "<= 20", lambda x: x <= 20),
    ]
    first_long = min((L for L in (base or {}).get("needle_mean_by_length", {}) if L > train_length), default=None)
    best_at = max((v["needle_mean_by_length"].get(first_long, float("nan")) for v in ntk.values()), default=None) \
        if first_long else None
    naive_at = (base or {}).get("needle_mean_by_length", {}).get(first_long)
    out.append(_check("ntk_above_naive", f"Dynamic NTK (best factor) above naive at {first_long} tokens",
                      None if best_at is None or naive_at is None else best_at - naive_at, "> 0", lambda x: x > 0))
    ntk_long = max((_mean(at(v, "needle_mean_by_length", long_)) for v in ntk.values()), default=None)
    lp_long = _mean(at(lp, "needle_mean_by_length", long_)) if lp else None
    out.append(_check("ntk_gap", f"Long-PT at least 30 points above Dynamic NTK (best factor), mean over {first_long}+",
                      None if ntk_long is None or lp_long is None else lp_long - ntk_long, ">= 30", lambda x: x >= 30))
    return out


def _lengths(variants: dict[str, dict]) -> list[int]:
    return sorted({L for v in variants.values() for L in v["needle_mean_by_length"]})


def markdown(variants: dict[str, dict], thresholds: list[dict]) -> str:
    lengths = _lengths(variants)
    fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    head = "| variant | " + " | ".join(f"{L}" for L in lengths) + " |\n|---|" + "---|" * len(lengths) + "\n"

    def rows(field: str, scale: float = 1.0) -> str:
        return "".join(f"| {k} | " + " | ".join(fmt(None if L not in v.get(field, {}) else scale * v[field][L])
                                                 for L in lengths) + " |\n" for k, v in variants.items())

    def table(title: str, field: str, scale: float = 1.0) -> str:
        return f"## {title}\n\n{head}{rows(field, scale)}\n"

    th = "| threshold | value | target | status |\n|---|---|---|---|\n" + "".join(
        f"| {t['threshold']} | {fmt(t['value'])} | {t['target']} | **{t['status']}** |\n" for t in thresholds)
    tokacc = "".join(table(f"{t.capitalize()} token accuracy (%, forced: answer tokens right under teacher forcing)",
                           f"{t}_token_accuracy_by_length", 100)
                     for t in ("passkey", "needle") if any(v.get(f"{t}_token_accuracy_by_length") for v in variants.values()))
    langs = sorted({lang for v in variants.values() for lang in v.get("needle_by_lang", {})})
    by_lang = ("## Needle score by language (mean over lengths)\n\n| variant | " + " | ".join(langs) + " |\n|---|"
               + "---|" * len(langs) + "\n" + "".join(
                   f"| {k} | " + " | ".join(fmt(v["needle_by_lang"].get(lang)) for lang in langs) + " |\n"
                   for k, v in variants.items()) + "\n") if langs else ""
    return (table("Needle score (0-100) by length (model tokens)", "needle_mean_by_length") + by_lang
            + table("Passkey accuracy (%) by length", "passkey_accuracy_by_length", 100) + tokacc
            + table("Perplexity by length", "ppl_by_length") + f"## Pre-registered thresholds\n\n{th}")


def plots(variants: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("needlebench", COLOURS)
    ntk = [k for k in variants if k.startswith("base+dynamic")]
    best_ntk = max(ntk, key=lambda k: _mean(variants[k]["needle_mean_by_length"].values()), default=None)
    panels = [k for k in ("base+naive", best_ntk, "longpt") if k in variants]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        grid = variants[name]["needle_grid"]
        lengths = sorted(grid)
        depths = sorted({d for ds in grid.values() for d in ds})
        data = [[grid[L].get(d, float("nan")) for L in lengths] for d in depths]
        im = ax.imshow(data, cmap=cmap, vmin=0, vmax=100, aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{L // 1024}K" if L >= 1024 else str(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_xlabel("length (model tokens)")
        if ax is axes[0][0]:
            ax.set_ylabel("depth (%)")
        mean = _mean(variants[name]["needle_mean_by_length"].values())
        ax.set_title(f"{name}: {mean:.1f}", fontsize=10)
    if panels:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    heat = out / "heatmaps.png"
    fig.savefig(heat, dpi=80, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab20").colors
    for ax, field, label, scale in ((axes[0], "needle_mean_by_length", "needle score", 1.0),
                                    (axes[1], "passkey_accuracy_by_length", "passkey accuracy (%)", 100.0)):
        for i, (name, v) in enumerate(variants.items()):
            xs = sorted(v[field])
            ax.plot(xs, [scale * v[field][L] for L in xs], marker="o", markersize=3, label=name, color=colours[i % 20],
                    linestyle="--" if name.startswith("ablation") else "-",
                    linewidth=2.5 if name == "longpt" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("length (model tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    line = out / "score_vs_length.png"
    fig.savefig(line, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return [heat, line]


def probe_plot(runs: dict[str, Path], out: Path) -> Path | None:
    """Loss and the in-training probe (exact and forced token accuracy, mean over its lengths) per
    step, one row per stage whose metrics.jsonl exists; None when no stage logged a probe."""
    curves = {}
    for stage, metrics in runs.items():
        if not metrics.is_file():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        probe = [r for r in rows if any(k.startswith("probe_") for k in r)]
        if probe:
            curves[stage] = (loss, probe)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 2, figsize=(10, 3.2 * len(curves)), squeeze=False)
    for (stage, (loss, probe)), (ax_l, ax_p) in zip(curves.items(), axes):
        ax_l.plot(*zip(*loss), linewidth=0.8)
        ax_l.set_title(f"{stage}: training loss", fontsize=10)
        ax_l.set_xlabel("step")
        ax_l.grid(alpha=0.3)
        steps = [r["step"] for r in probe]
        for key, label, style in (("probe_passkey", "passkey exact (%)", "-o"), ("probe_passkey_tokacc", "passkey token acc. (%)", "--o"),
                                  ("probe_needle", "needle score", "-s"), ("probe_needle_tokacc", "needle token acc. (%)", "--s")):
            if all(key in r for r in probe):
                ax_p.plot(steps, [r[key] for r in probe], style, label=label, markersize=3)
        ax_p.set_ylim(-2, 102)
        ax_p.set_title(f"{stage}: in-training probe (mean over its lengths)", fontsize=10)
        ax_p.set_xlabel("step")
        ax_p.legend(fontsize=7)
        ax_p.grid(alpha=0.3)
    path = out / "probe.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def validation(run_dir: Path) -> tuple[int, float] | None:
    """(step, loss) of the last validation a training run logged (its validation.jsonl), or None."""
    path = run_dir / "validation.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "val_loss" in r]
    return (int(rows[-1]["step"]), float(rows[-1]["val_loss"])) if rows else None


def validation_data(run_dir: Path) -> tuple | None:
    """What a training run validated on (data.data_path by file name and weight, valid_data_path, split, from its
    config.yaml), or None without one: two runs' validation losses compare only where this is equal."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()).get("data", {})
    name = lambda entries: tuple(" ".join([*e.split()[:-1], Path(e.split()[-1]).name]) for e in entries)  # noqa: E731
    return name(data.get("data_path", [])), name(data.get("valid_data_path", [])), str(data.get("split"))


def ablation_table(variants: dict[str, dict], work: Path) -> tuple[str, dict[str, dict]]:
    """Markdown and {variant: {validation_step, validation_loss, delta_pct[, note]}} for every ablation
    against the recipe at the same budget: Long-PT (WORK/stage1/validation.jsonl; stage 1 and the
    ablations train the same steps), or `ablation_reference` where one ran (the fifth attempt, whose
    stage 1 was 4x the ablations'). A run whose last validation is at another step than the
    reference's, or on other data (the `far` ablation's corpus_xl), gets no delta, and its row says so."""
    runs = {name: validation(work / name) for name in variants if name.startswith("ablation_")}
    runs = {k: v for k, v in runs.items() if v is not None}
    if not runs:
        return "", {}
    ref_name = "ablation_reference" if "ablation_reference" in runs else "longpt"
    ref = runs.get(ref_name) or validation(work / "stage1")
    rows = {ref_name: ref} if ref_name == "longpt" and ref is not None else {}
    rows.update(runs)
    ref_data = validation_data(work / ("stage1" if ref_name == "longpt" else ref_name))
    lengths = [L for L in _lengths(variants) if L > 2048]
    out: dict[str, dict] = {}
    what = f"{ref_name}, validation at step {ref[0]}" if ref else "none (stage1/validation.jsonl missing): no deltas"
    md = ("## Ablations against the recipe at the same budget\n\n"
          f"Reference: {what}. Needle score / passkey accuracy (%) at {', '.join(str(L) for L in lengths)} tokens.\n\n"
          "| variant | validation loss | vs reference | needle | passkey |\n|---|---|---|---|---|\n")
    for name, (step, loss) in rows.items():
        out[name] = {"validation_step": step, "validation_loss": round(loss, 4), "delta_pct": None}
        if ref is None:
            cell = "no reference"
        elif step != ref[0]:  # stopped early, or another budget: a loss at another step is no comparison
            cell = f"not compared: step {step}, reference at step {ref[0]}"
            out[name]["note"] = cell
        elif ref_data is not None and validation_data(work / name) not in (None, ref_data):
            cell = "not compared: validated on other data"  # another data.data_path / split: another loss
            out[name]["note"] = cell
        else:
            out[name]["delta_pct"] = round(100 * (loss / ref[1] - 1), 2)
            cell = f"{100 * (loss / ref[1] - 1):+.1f}%"
        v = variants.get(name, {})
        needle = " / ".join(f"{v['needle_mean_by_length'][L]:.1f}" if L in v.get("needle_mean_by_length", {}) else "-" for L in lengths)
        passkey = " / ".join(f"{100 * v['passkey_accuracy_by_length'][L]:.0f}" if L in v.get("passkey_accuracy_by_length", {}) else "-"
                             for L in lengths)
        md += f"| {name} | {loss:.4f} (step {step}) | {cell} | {needle} | {passkey} |\n"
    return md + "\n", out


def write_report(eval_dir: Path, out: Path, *, publish_to: Path | None = None) -> list[Path]:
    variants = load_variants(eval_dir)
    if not variants:
        raise SystemExit(f"no summary.json under {eval_dir}: run the evaluation steps first")
    base = variants.get("base+naive") or next(iter(variants.values()))
    train_length = int(base.get("train_length") or 2048)
    thresholds = check_thresholds(variants, train_length)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "schema": SCHEMA, "length_unit": "model tokens", "base_train_length": train_length,
        "lengths": _lengths(variants),
        "variants": {k: {f: ({str(L): round(x, 4) for L, x in v[f].items()} if isinstance(v[f], dict) else v[f])
                         for f in ("model", "rope", "needle_mean_by_length", "passkey_accuracy_by_length", "ppl_by_length",
                                   "needle_token_accuracy_by_length", "passkey_token_accuracy_by_length", "needle_by_lang")}
                     for k, v in variants.items()},
        "thresholds": thresholds,
    }
    work = eval_dir.parent
    ablations_md, ablations = ablation_table(variants, work)
    if ablations:
        summary["ablations"] = ablations
    js = out / "replication_summary.json"
    js.write_text(json.dumps(summary, indent=1) + "\n")
    md = out / "results.md"
    md.write_text(markdown(variants, thresholds) + ablations_md)
    pngs = plots(variants, out)
    probe = probe_plot({s: work / s / "metrics.jsonl" for s in ("stage0", "stage1")}, out)
    pngs += [probe] if probe else []
    for t in thresholds:
        print(f"  {t['status']:<12} {t['threshold']} (value {t['value']}, target {t['target']})")
    if publish_to is not None:
        shutil.copyfile(js, publish_to / "replication_summary.json")
        for p in pngs:
            shutil.copyfile(p, publish_to / f"replication_{p.name}")
    return [js, md, *pngs]
