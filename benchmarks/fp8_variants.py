"""The FP8 benchmark at CP2 (issue #13 item 4): its variants, their CPU dry run, and the summary.

    python benchmarks/fp8_variants.py list                      # NAME<TAB>ENV<TAB>OVERRIDES (ENV '-': none), for fp8_h100x2.sh
    python benchmarks/fp8_variants.py dry-run                   # every variant's config on CPU, as an H100 (sm90) sees it
    python benchmarks/fp8_variants.py summary OUT/fp8.jsonl --md OUT/fp8_summary.md --png OUT/fp8_summary.png

Every variant is Index-1.9B-32K at CP2 on two GPUs through benchmarks/train_throughput.py; it
differs from its baseline (bf16, same rows, same layout) in the FP8 settings only. FP8 attention
needs concat rows fed as sbhd (no FP8 kernel for THD rows: megaindex/config_fp8.py), so the
attention variants compare with `bf16_concat_sbhd`, the others with `bf16_reset` (the recipe's
packing); `bf16_concat` (THD) against `bf16_concat_sbhd` is what the layout itself costs.
The order is the order of importance: benchmarks/fp8_h100x2.sh stops starting variants when its
time budget is spent and the summary lists those not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CP2 = ["parallel.context_parallel_size=2"]
RESET, CONCAT = ["data.packing=reset"], ["data.packing=concat"]
SBHD = ["data.packing=concat", "data.row_layout=sbhd"]  # what FP8 attention runs on (auto picks it there)
DELAYED = ["train.fp8=hybrid", "train.fp8_recipe=delayed"]
TENSORWISE = ["train.fp8=hybrid", "train.fp8_recipe=tensorwise"]
ATTN = ["train.fp8_dot_product_attention=true"]
ENDS_BF16 = ["train.num_layers_at_start_in_bf16=1", "train.num_layers_at_end_in_bf16=1"]

# name -> (environment, overrides). Not here: mxfp8 (Blackwell only: TE's check_mxfp8_support needs
# sm100; megatron documents it "for Blackwell architecture only"), FP8 attention with reset packing
# (no kernel), first/last layers bf16 with delayed scaling (megatron-core refuses it).
VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "bf16_reset": ({}, CP2 + RESET),
    "fp8_delayed_reset": ({}, CP2 + RESET + DELAYED),
    "bf16_concat_sbhd": ({}, CP2 + SBHD),
    "fp8_delayed_attn_concat_sbhd": ({}, CP2 + SBHD + DELAYED + ATTN),
    "fp8_delayed_concat_sbhd": ({}, CP2 + SBHD + DELAYED),
    "fp8_tensorwise_reset": ({}, CP2 + RESET + TENSORWISE),
    "bf16_concat": ({}, CP2 + CONCAT),  # the same rows as THD: what the sbhd layout itself changes
    "fp8_tensorwise_ends_bf16_reset": ({}, CP2 + RESET + TENSORWISE + ENDS_BF16),
    "fp8_blockwise_reset": ({}, CP2 + RESET + ["train.fp8=e4m3", "train.fp8_recipe=blockwise"]),
    # tensorwise GEMMs + delayed-scaling FP8 attention: TE's recipe mix for sm90 (config_fp8.py)
    "fp8_tensorwise_attn_ds_concat_sbhd": ({"NVTE_DPA_FP8_RECIPE": "DelayedScaling"}, CP2 + SBHD + TENSORWISE + ATTN),
}
BASELINE = {("reset", "thd"): "bf16_reset", ("concat", "thd"): "bf16_concat", ("concat", "sbhd"): "bf16_concat_sbhd"}
H100 = (9, 0)


def baseline_of(record: dict) -> str:
    """The bf16 variant with the same rows in the same layout."""
    return BASELINE[record.get("packing", "reset"), record.get("row_layout", "thd")]


def cmd_list(_args) -> int:
    for name, (env, overrides) in VARIANTS.items():
        # '-' for no environment: bash's `read` with IFS=tab merges two tabs into one separator, which
        # would shift the overrides into ENV (and `env` would take them as variables)
        print("\t".join([name, " ".join(f"{k}={v}" for k, v in env.items()) or "-", " ".join(overrides)]))
    return 0


def dry_run(recipe: str | None = None, world_size: int = 2, capability: tuple[int, int] = H100,
            cuda_version: str = "13.0") -> dict[str, dict]:
    """Build every variant's config on this (CPU) machine as train_throughput.py would, validate it
    for `world_size` GPUs, apply the device rules of a `capability` GPU with the variant's environment,
    and build megatron's TransformerConfig (local modules: TE's fused RoPE is not on a CPU machine).
    Returns {name: FP8 fields of the TransformerConfig}; raises on the first variant that cannot run."""
    import tempfile

    import same_work
    from megaindex.config import ConfigError
    from megaindex.config_fp8 import fp8_device_errors
    from megaindex.model.build import to_transformer_config

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (env, overrides) in VARIANTS.items():
            args = argparse.Namespace(recipe=recipe or str(same_work.RECIPE), data=str(same_work.FIXTURE_PREFIX),
                                      tokenizer=str(same_work.TOKENIZER), steps=8, warmup=2, sequences_per_step=2,
                                      overrides=overrides)
            cfg, _ = same_work.work_config(args, Path(tmp) / name)
            cfg.validate(world_size)
            errors = fp8_device_errors(cfg, capability, env, cuda_version)
            if errors:
                raise ConfigError(f"variant {name}: " + "; ".join(errors))
            tc = to_transformer_config(cfg, use_te=False)
            out[name] = {k: getattr(tc, k) for k in ("fp8", "fp8_recipe", "fp8_dot_product_attention", "first_last_layers_bf16",
                                                     "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16",
                                                     "context_parallel_size")}
            out[name]["packing"] = cfg.data.packing
            out[name]["row_layout"] = "thd" if cfg.rows_as_thd else "sbhd"
    return out


def cmd_dry_run(args) -> int:
    for name, fields in dry_run(args.recipe).items():
        print(f"{name:34s} ok  {json.dumps(fields)}")
    return 0


def attention_backend(record: dict) -> str:
    b = record.get("te_attention_backend") or {}
    if b.get("use_fused_attention"):
        return "cuDNN FP8" if "FP8" in str(b.get("fused_attention_backend")) else "cuDNN bf16"
    if b.get("use_flash_attention"):
        return "flash"
    return "?" if not b else "unfused"


def recipe_label(record: dict) -> str:
    """The GEMMs' FP8 recipe, and attention's when NVTE_DPA_FP8_RECIPE gave it another one."""
    if not record.get("fp8"):
        return "-"
    dpa = (record.get("env") or {}).get("NVTE_DPA_FP8_RECIPE")
    return f"{record.get('fp8_recipe')} (attention: {dpa})" if dpa else str(record.get("fp8_recipe"))


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per variant (the last record of each name), with its change against its baseline."""
    last = {r["name"]: r for r in records}
    rows = []
    for name in VARIANTS:
        r = last.get(name)
        if r is None:
            rows.append({"name": name, "ran": False})
            continue
        base = last.get(baseline_of(r))
        gain = (r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"] - 1) * 100 if base else None
        rows.append({"name": name, "ran": True, "packing": f"{r.get('packing')} ({r.get('row_layout', 'thd')})", "fp8": r.get("fp8"),
                     "recipe": recipe_label(r), "attention": attention_backend(r),
                     "bf16_layers": f"{r.get('num_layers_at_start_in_bf16', 0)}+{r.get('num_layers_at_end_in_bf16', 0)}",
                     "tokens_per_s_per_gpu": r["tokens_per_s_per_gpu"], "tflops": r["tflops_per_gpu"],
                     "gain_pct": gain, "baseline": baseline_of(r), "steps": r.get("steps_measured"),
                     "peak_gib": r.get("peak_allocated_gib"), "loss_last": (r.get("loss_first_last") or [None, None])[-1]})
    return rows


def summary_markdown(rows: list[dict], device: str) -> str:
    head = ("| variant | packing (layout) | FP8 recipe | attention kernel | bf16 layers | tokens/s/GPU | TFLOP/s/GPU (causal) | "
            "vs bf16, same rows and layout | steps | peak GiB | last loss |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if not r["ran"]:
            lines.append(f"| {r['name']} | not run (time budget or failure: see fp8_runs.log) | | | | | | | | | |")
            continue
        gain = "baseline" if r["name"] == r["baseline"] else (f"{r['gain_pct']:+.1f}%" if r["gain_pct"] is not None else "no baseline")
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "?"
        loss = f"{r['loss_last']:.4f}" if r["loss_last"] is not None else "?"
        lines.append(f"| {r['name']} | {r['packing']} | {r['recipe']} | {r['attention']} | {r['bf16_layers']} | "
                     f"{r['tokens_per_s_per_gpu']:,.0f} | {r['tflops']:.1f} | {gain} | {r['steps']} | {peak} | {loss} |")
    return f"FP8 at CP2, Index-1.9B-32K, {device}\n\n" + head + "\n".join(lines) + "\n"


def summary_png(rows: list[dict], path: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in rows if r["ran"]]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    colors = ["#4C72B0" if r["packing"].startswith("reset") else "#DD8452" for r in ran]
    ax.bar(range(len(ran)), [r["tflops"] for r in ran], color=colors)
    for i, r in enumerate(ran):
        label = "base" if r["name"] == r["baseline"] else (f"{r['gain_pct']:+.1f}%" if r["gain_pct"] is not None else "")
        ax.text(i, r["tflops"], label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(ran)), [f"{r['name']}\n[{r['attention']}]" for r in ran], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("model TFLOP/s per GPU (causal attention)")
    ax.set_title(f"FP8 variants at CP2 (blue: reset packing, orange: concat), {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cmd_summary(args) -> int:
    p = Path(args.jsonl)
    records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
    rows = summary_rows(records)
    device = records[0].get("device", "?") if records else "no records"
    text = summary_markdown(rows, device)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.png and any(r["ran"] for r in rows):
        summary_png(rows, args.png, device)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list").set_defaults(func=cmd_list)
    d = sub.add_parser("dry-run")
    d.add_argument("--recipe", default=None)
    d.set_defaults(func=cmd_dry_run)
    s = sub.add_parser("summary")
    s.add_argument("jsonl")
    s.add_argument("--md")
    s.add_argument("--png")
    s.set_defaults(func=cmd_summary)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
