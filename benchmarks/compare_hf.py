"""One invocation, two engines, the same work: HF transformers and megaindex, and their ratio.

    python benchmarks/compare_hf.py --out OUT_DIR        # one GPU: Index-1.9B-32K, 4 x 32K rows per step

Writes the work's rows once (benchmarks/same_work.py --write-rows: token ids and loss targets, in a
process of its own, since building megaindex's dataset imports megatron and with it Transformer
Engine), then runs benchmarks/hf_baseline.py on that file (LlamaForCausalLM, SDPA, gradient
checkpointing, bf16; a process with no megatron and no TE in it, as a user's HF script) and then
benchmarks/train_throughput.py (the megaindex trainer; default layout one GPU, full recompute), each
in its own process with clean GPU memory, on the same work (benchmarks/same_work.py): the same
recipe and overrides, so the same model shape, sequence length, tokens per step and data rows,
packed with data.packing=concat (one causal sequence per row: what HF computes). Before comparing
it checks the two records describe the same work (tokens per step, row length, dense parameters,
model FLOPs per step) and refuses a comparison that is not. Both records carry the SDPA backends
enabled and the cuDNN version and libraries of their process (same_work.backend_facts).

Prints and writes to OUT_DIR: compare_hf.jsonl (the HF record, the megaindex record, the
comparison), compare_hf.md (a markdown table row per run), compare_hf.png, each process's console
(rows.log, hf.log, megaindex.log), the rows (runs/rows/rows.npz) and each side's run directory. Every
rate is per GPU: tokens/s and TFLOP/s in both FLOP conventions of megaindex/plan.py, causal attention
over the real documents (Megatron-LM's, ours) and the full s^2 attention of every row (NeMo's and
torchtitan's published tables), and megaindex / HF. Data: --data defaults to the repo's fixture
corpus, built on first use with the command in same_work.py. On CPU (no GPU) both sides run in fp32:

    python benchmarks/compare_hf.py --out /tmp/cmp --recipe examples/tiny_long_pt.yaml --steps 3 \\
        --warmup 1 --sequences-per-step 2 data.seq_length=256
"""

from __future__ import annotations

import argparse
import os
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import result_line
import same_work

HERE = Path(__file__).resolve().parent
LAYOUT = "parallel.context_parallel_size=1 train.recompute_granularity=full"


def run_side(tag: str, cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run one side, streaming its console (prefixed with the tag) to ours and to `log`; its RESULT record."""
    print(f"[{tag}] $ {' '.join(cmd)}", flush=True)
    result = None
    with log.open("w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env={**os.environ, **(env or {})}, cwd=same_work.REPO) as proc:
        for line in proc.stdout:
            f.write(line)
            print(f"[{tag}] {line}", end="", flush=True)
            result = result_line.parse(line) or result
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"compare_hf: the {tag} side failed (exit {proc.returncode}); its console is in {log}")
    return result


def same_work_errors(hf: dict, mi: dict) -> list[str]:
    """Why the two records do not describe the same work (empty when they do)."""
    errors = [f"{k}: HF {hf[k]} vs megaindex {mi[k]}" for k in ("seq_length", "global_batch_tokens", "dense_params")
              if hf[k] != mi[k]]
    if not math.isclose(hf["model_tflop_per_step"], mi["model_tflop_per_step"], rel_tol=1e-9):
        errors.append(f"model TFLOP per step (causal attention over the documents): HF {hf['model_tflop_per_step']:.6f} "
                      f"vs megaindex {mi['model_tflop_per_step']:.6f}: the megaindex rows are not one causal sequence each")
    return errors


def layout_text(mi: dict) -> str:
    lay = mi["layout"]
    parts = [f"{k.upper()}{v}" for k, v in lay.items() if v > 1] or ["CPU" if mi["device"] == "cpu" else "1 GPU"]
    return ", ".join(parts + [f"{mi['recompute'] or 'no'} recompute"])


def tf(x: float) -> str:
    """TFLOP/s as the tables print them (0.1 on GPUs; 3 digits for a CPU's small numbers)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def comparison(hf: dict, mi: dict, work: str, command: str) -> dict:
    ratio = mi["tokens_per_s_per_gpu"] / hf["tokens_per_s_per_gpu"]
    side = lambda r: {k: r.get(k) for k in ("name", "device", "gpus", "step_time_s", "tokens_per_s_per_gpu",  # noqa: E731
                                             "tflops_per_gpu", "tflops_per_gpu_full_s2", "peak_mem_gib", "sdpa_enabled",
                                             "cudnn_version", "cudnn_libraries", "engine_modules_loaded", "fact_errors")}
    return {"name": "compare_hf", "date": time.strftime("%Y-%m-%d"), "device": hf["device"], "work": work,
            "megaindex_layout": layout_text(mi), "hf": side(hf), "megaindex": side(mi),
            "megaindex_over_hf": ratio, "command": command}


def facts_text(r: dict) -> str:
    """One line of a record's backend facts (same_work.backend_facts); a fact torch could not give
    shows its error instead."""
    errors = r.get("fact_errors") or {}
    sdpa = ",".join(k for k, on in (r["sdpa_enabled"] or {}).items() if on) or "none"
    cudnn = r["cudnn_version"] if "cudnn_version" not in errors else f"? ({errors['cudnn_version']})"
    engines = ", ".join(r["engine_modules_loaded"] or []) or "none"
    return (f"cuDNN {cudnn} ({', '.join(r['cudnn_libraries'] or ['-'])}), SDPA enabled: {sdpa}, engines imported: {engines}"
            + "".join(f"; {k}: {v}" for k, v in errors.items() if k != "cudnn_version"))


MD_HEADER = ("| date | device | work | HF tokens/s/GPU | HF TFLOP/s/GPU causal / full s² | megaindex layout "
             "| megaindex tokens/s/GPU | megaindex TFLOP/s/GPU causal / full s² | megaindex / HF |\n"
             "|---|---|---|---|---|---|---|---|---|\n")


def markdown_row(c: dict) -> str:
    h, m = c["hf"], c["megaindex"]
    return (f"| {c['date']} | {c['device']} | {c['work']} | {h['tokens_per_s_per_gpu']:,.0f} | "
            f"{tf(h['tflops_per_gpu'])} / {tf(h['tflops_per_gpu_full_s2'])} | {c['megaindex_layout']} | "
            f"{m['tokens_per_s_per_gpu']:,.0f} | {tf(m['tflops_per_gpu'])} / {tf(m['tflops_per_gpu_full_s2'])} | "
            f"**{c['megaindex_over_hf']:.2f}x** |\n")


def plot(c: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, m = c["hf"], c["megaindex"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    names = ["HF transformers", f"megaindex\n({c['megaindex_layout']})"]
    bars = a.bar(names, [h["tokens_per_s_per_gpu"], m["tokens_per_s_per_gpu"]], color=["#999999", "#0C7BDC"])
    a.bar_label(bars, fmt="{:,.0f}")
    a.set_ylim(0, 1.15 * max(h["tokens_per_s_per_gpu"], m["tokens_per_s_per_gpu"]))
    a.set_ylabel("tokens/s per GPU")
    a.set_title(f"megaindex / HF = {c['megaindex_over_hf']:.2f}x")
    x = [0, 1]
    for i, (r, name, color) in enumerate([(h, "HF transformers", "#999999"), (m, "megaindex", "#0C7BDC")]):
        bb = b.bar([v + (i - 0.5) * 0.38 for v in x], [r["tflops_per_gpu"], r["tflops_per_gpu_full_s2"]], 0.38,
                   label=name, color=color)
        b.bar_label(bb, labels=[tf(v) for v in (r["tflops_per_gpu"], r["tflops_per_gpu_full_s2"])])
    b.set_xticks(x, ["causal, over the documents\n(Megatron-LM, megaindex)", "full s² per row\n(NeMo, torchtitan)"])
    b.set_ylabel("model TFLOP/s per GPU")
    b.set_ylim(0, 1.35 * max(r[k] for r in (h, m) for k in ("tflops_per_gpu", "tflops_per_gpu_full_s2")))
    b.legend(loc="upper center", ncol=2)
    fig.suptitle(f"{c['device']}, {c['date']}: {c['work']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--out", required=True, type=Path, help="directory for the records, the table row, the PNG and logs")
    ap.add_argument("--layout", default=LAYOUT, help=f"megaindex-only overrides (default: {LAYOUT!r})")
    ap.add_argument("--nproc", type=int, default=1, help="megaindex processes (torchrun when > 1); HF runs on one GPU")
    # 4 rows per step (the earlier records' work); 6 steps keep one GPU's wall near 4 min (see RESULTS_train.md)
    same_work.add_work_args(ap, steps=6, warmup=2, sequences=4)
    args = ap.parse_args()
    same_work.check_work_args(ap, args)
    if args.nproc < 1:
        ap.error(f"--nproc {args.nproc} must be >= 1")
    overrides = ["data.packing=concat", *args.overrides]
    cfg, _ = same_work.work_config(argparse.Namespace(**{**vars(args), "overrides": overrides}), args.out / "runs")
    if cfg.data.packing != "concat":
        ap.error("the comparison runs data.packing=concat (HF attends each row as one causal sequence): drop the override")
    args.out.mkdir(parents=True, exist_ok=True)
    data = same_work.ensure_data(args.data)
    m = cfg.model
    work = (f"{m.num_layers}x{m.hidden_size} (vocab {m.vocab_size}), {args.sequences_per_step} x {cfg.data.seq_length} "
            f"tokens per step, concat, median of {args.steps - args.warmup} steps after {args.warmup}")
    common = ["--recipe", args.recipe, "--data", data, "--tokenizer", args.tokenizer, "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--sequences-per-step", str(args.sequences_per_step)]
    rows = args.out / "runs" / "rows" / "rows.npz"  # its data cache goes beside it
    run_side("rows", [sys.executable, str(HERE / "same_work.py"), "--write-rows", str(rows), *common, *overrides],
             args.out / "rows.log")
    hf = run_side("hf", [sys.executable, str(HERE / "hf_baseline.py"), "--run-dir", str(args.out / "runs" / "hf"),
                         "--rows", str(rows), *common, *overrides], args.out / "hf.log")
    launch = [sys.executable] if args.nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       f"--nproc-per-node={args.nproc}"]
    mi = run_side("megaindex", [*launch, str(HERE / "train_throughput.py"), "--name", "megaindex_concat", *common,
                                overrides[0], *args.layout.split(), *overrides[1:]],  # the user's overrides win
                  args.out / "megaindex.log", env={"BENCH_RUN_DIR": str(args.out / "runs" / "megaindex")})
    errors = same_work_errors(hf, mi)
    if hf["engine_modules_loaded"]:
        errors.append(f"the HF process imported {hf['engine_modules_loaded']}")
    if hf["device"] != mi["device"]:
        errors.append(f"device: HF {hf['device']} vs megaindex {mi['device']}")
    if errors:
        raise SystemExit("compare_hf: the two runs did not do the same work: " + "; ".join(errors))
    c = comparison(hf, mi, work, " ".join(sys.argv))
    with (args.out / "compare_hf.jsonl").open("a") as f:
        for rec in (hf, mi, c):
            f.write(json.dumps(rec) + "\n")
    md = args.out / "compare_hf.md"
    header = MD_HEADER if not md.exists() or md.stat().st_size == 0 else ""
    with md.open("a") as f:
        f.write(header + markdown_row(c))
    plot(c, args.out / "compare_hf.png")
    h = c["hf"]
    print(f"\n{c['device']}: {work}")
    print(f"{'':40}{'tokens/s/GPU':>14}{'TFLOP/s causal':>16}{'TFLOP/s full s^2':>18}{'peak GiB':>10}")
    for name, r in (("HF transformers (SDPA, checkpointing)", h), (f"megaindex ({c['megaindex_layout']})", c["megaindex"])):
        peak = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{name[:39]:40}{r['tokens_per_s_per_gpu']:>14,.0f}{tf(r['tflops_per_gpu']):>16}"
              f"{tf(r['tflops_per_gpu_full_s2']):>18}{peak:>10}")
    for name, r in (("HF", h), ("megaindex", c["megaindex"])):
        print(f"{name}: {facts_text(r)}")
    print(f"megaindex / HF: {c['megaindex_over_hf']:.2f}x (tokens/s per GPU; the same in either FLOP convention)")
    print(f"records: {args.out / 'compare_hf.jsonl'}, table row: {md}, plot: {args.out / 'compare_hf.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
