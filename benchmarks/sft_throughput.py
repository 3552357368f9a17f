"""Stage 2 (long SFT) against stage 1: training throughput of one model on the same GPUs, one process.

    torchrun --nproc-per-node 1 benchmarks/sft_throughput.py --out-dir $OUT \\
        parallel.context_parallel_size=1 train.recompute_granularity=full

Builds one megaindex.training.Trainer of Index-1.9B-32K (the stage-1 recipe
examples/index_1.9b_long_pt_32k.yaml plus the overrides; random weights, no checkpoints) and trains
it on three data sets in turn (`--phases`), each for `--warmup` steps (the first phase) or
`--phase-warmup` steps (the others: new THD shapes), then for up to `--steps` measured steps read
again from the start of its data:

  stage1        packed documents of `--pretrain-data` (default: tests/fixtures/corpus/pretrain.jsonl),
                the stage-1 recipe's data section (reset packing, token-mean loss)
  sft_sorted    stage 2's data section (examples/index_1.9b_long_sft_32k.yaml: chat format, loss on
                the assistant tokens, LongAlign weights 1/(M*N_i), over-length conversations
                truncated) over `--sft-data`, one epoch, LongAlign sorted batching on
  sft_unsorted  the same conversations, sorted batching off (shuffled, then packed in that order)

`--sft-data` defaults to the long conversations tools/make_long_sft.py builds from the fixture
corpus with the real tokenizer (`--long-sft`, written when missing: `--long-count` spans of
`--long-min-tokens`..`--long-max-tokens` tokens, each with a question quoting one of its paragraphs)
plus the fixture's short chats (sft_general.jsonl, sft_long.jsonl), every conversation once per
epoch. An SFT phase measures at most one epoch (its full global batches), so sorted and unsorted
batching read the same conversations.

Per step: time (CUDA-synchronised), tokens of the packed rows and real (not padding) tokens,
sequences per row, model FLOPs as the trainer counts them (megaindex.plan.step_flops: 6 x dense
params per row token + causal attention over the real documents), data-loader wait. Per phase:
medians and totals, tokens/s/GPU (row tokens and real tokens), TFLOP/s/GPU, the mean attention span
(sum n_i^2 / sum n_i: the attention work per token, which differs between data sets), and each
SFT phase against stage 1. `--profile PHASES` adds one step to those phases under torch.profiler
(GPU time of the kernels by family: attention, GEMM, RoPE, other; the kernel table in OUT/profile_PHASE.txt). Writes OUT/sft_throughput.jsonl (one line per
phase, its steps included), OUT/sft_throughput.md (the table) and OUT/sft_throughput.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
PHASES = ("stage1", "sft_sorted", "sft_unsorted")
KERNEL_FAMILIES = {  # substrings of kernel names, first match wins
    "attention": ("fmha", "flash", "cudnn", "attn"),
    "rope": ("rope",),
    "gemm": ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT", "/tmp/megaindex-sft-bench")))
    ap.add_argument("--stage1-recipe", default=str(REPO / "examples" / "index_1.9b_long_pt_32k.yaml"))
    ap.add_argument("--stage2-recipe", default=str(REPO / "examples" / "index_1.9b_long_sft_32k.yaml"))
    ap.add_argument("--tokenizer", default=str(FIX / "tokenizer.model"))
    ap.add_argument("--pretrain-data", default=str(FIX / "corpus" / "pretrain.jsonl"), help="JSONL or IndexedDataset prefix")
    ap.add_argument("--long-sft", type=Path, default=REPO / ".bench_data" / "long_sft.jsonl",
                    help="long conversations; written by tools/make_long_sft.py when missing")
    ap.add_argument("--long-count", type=int, default=28)
    ap.add_argument("--long-min-tokens", type=int, default=4096)
    ap.add_argument("--long-max-tokens", type=int, default=32000)
    ap.add_argument("--sft-data", nargs="+", default=None,
                    help="chat JSONL files or prefixes (default: --long-sft + the fixture's sft_general and sft_long)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--rows-per-step", type=int, default=4, help="global batch in rows of data.seq_length tokens")
    ap.add_argument("--steps", type=int, default=5, help="measured steps per phase (SFT: at most one epoch)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps of the first phase")
    ap.add_argument("--phase-warmup", type=int, default=1, help="warm-up steps of each later phase")
    ap.add_argument("--profile", default="", help="phases (comma-separated) that run one more step under torch.profiler")
    ap.add_argument("overrides", nargs="*", help="config overrides for both stages (section.field=value)")
    args = ap.parse_args(argv)
    args.phases = [p for p in args.phases.split(",") if p]
    args.profile = [p for p in args.profile.split(",") if p]
    for flag, names in (("--phases", args.phases), ("--profile", args.profile)):
        bad = [p for p in names if p not in PHASES]
        if bad or (flag == "--phases" and not names):
            ap.error(f"{flag}: {', '.join(bad) or 'empty'}; choose from {', '.join(PHASES)}")
    if args.sft_data is None:
        args.sft_data = [str(args.long_sft), str(FIX / "corpus" / "sft_general.jsonl"), str(FIX / "corpus" / "sft_long.jsonl")]
    return args


def build_configs(args, run_dir: Path):
    """(stage-1 config, stage-2 config): the stage-1 recipe with the stage-2 recipe's data section."""
    from megaindex.config import load_config

    common = [
        f"data.tokenizer_model={args.tokenizer}", "train.eval_interval=0", "checkpoint.save_interval=0",
        "checkpoint.pretrained=null", f"train.run_dir={run_dir}", "train.overwrite=true", "log.tensorboard=false",
        "log.plot=false", f"data.cache_dir={run_dir}/cache",
    ]
    iters = args.warmup + args.steps + int("stage1" in args.profile)
    s1 = load_config(args.stage1_recipe, [f"data.data_path=[{args.pretrain_data}]", *common, *args.overrides])
    gbt = [f"data.global_batch_tokens={args.rows_per_step * s1.data.seq_length}"]
    s1 = load_config(args.stage1_recipe, [f"data.data_path=[{args.pretrain_data}]", *common, f"train.train_iters={iters}",
                                          *args.overrides, *gbt])
    s2 = load_config(args.stage2_recipe, [f"data.data_path={args.sft_data!r}", *common, "data.split=100,0,0",
                                          "data.num_epochs=1", *args.overrides, *gbt])
    return s1, dataclasses.replace(s1, data=s2.data)


def kernel_families(prof) -> dict[str, float]:
    """GPU milliseconds of one profiled step by kernel family: the device-side events (kernels,
    memcpy, memset), less the GPU-side spans of `record_function` ranges. Those are CUDA events
    too (`is_user_annotation`): counting them put the whole `megaindex.forward_backward` range
    (7.3 s) into `other` on 2026-11-28 (profiler table footer: "Self CUDA time total" leaves them out)."""
    out = dict.fromkeys([*KERNEL_FAMILIES, "other"], 0.0)
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", 0.0) or 0.0
        if not us or e.device_type.name != "CUDA" or getattr(e, "is_user_annotation", False):
            continue
        name = e.key.lower()
        fam = next((f for f, keys in KERNEL_FAMILIES.items() if any(k in name for k in keys)), "other")
        out[fam] += us / 1e3
    return {k: round(v, 2) for k, v in out.items()}


def run_phase(trainer, name: str, cfg, ds, *, warmup: int, steps: int, profile: bool, out_dir: Path, log) -> dict:
    import torch

    from megaindex.plan import step_flops
    from megaindex.training.trainer import TrainingPosition

    gpu = torch.cuda.is_available()
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    gbs, seq, world = cfg.data.global_batch_size, cfg.data.seq_length, trainer.layout.world_size

    def rewind():
        trainer.progress = TrainingPosition()
        trainer.use_data(cfg, ds)
        trainer.timers.pop()

    def one_step(k: int) -> dict:
        sync()
        t0 = time.perf_counter()
        out = trainer.train_step()
        sync()
        dt = time.perf_counter() - t0
        timers = trainer.timers.pop()
        cu_pad = [ds[i]["cu_seqlens_padded"] for i in range(k * gbs, (k + 1) * gbs)]
        tokens = gbs * seq
        flops = step_flops(cfg, tokens, out["doc_sq_sum"])
        # TE's fused THD RoPE launches (max_seqlen x sequences) blocks per row; those past a
        # sequence's end return at once. Blocks per token: 1 for one document per row.
        rope_grid = sum(int((c[1:] - c[:-1]).max()) * (len(c) - 1) for c in cu_pad) / tokens
        return {"step": k + 1, "step_time_s": dt, "tokens": tokens, "real_tokens": out["real_tokens"],
                "sequences": sum(len(c) - 1 for c in cu_pad), "rope_grid_per_token": rope_grid, "doc_sq_sum": out["doc_sq_sum"],
                "tokens_per_s_per_gpu": tokens / dt / world, "tflops_per_gpu": flops / dt / world / 1e12,
                "model_tflop": flops / 1e12, "data_wait_s": timers["data_wait_s"], "loss": out["loss"]}

    rewind()
    warm = []
    for k in range(warmup):
        warm.append(one_step(k)["step_time_s"])
        log(f"[{name}] warm-up step {k + 1}/{warmup}: {warm[-1]:.2f} s")
    rewind()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for k in range(steps):
        rows.append(one_step(k))
        r = rows[-1]
        log(f"[{name}] step {k + 1}/{steps}: {r['step_time_s']:.2f} s, {r['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, "
            f"{r['real_tokens'] / r['tokens']:.1%} real, {r['sequences'] / gbs:.1f} sequences/row, "
            f"{r['tflops_per_gpu']:.1f} TFLOP/s/GPU, loss {r['loss']:.3f}")
    total = lambda key: sum(r[key] for r in rows)  # noqa: E731
    time_s = total("step_time_s")
    res = {
        "phase": name, "steps_measured": len(rows), "warmup_step_times_s": warm, "rows_per_step": gbs, "seq_length": seq,
        "data_kind": cfg.data.kind, "loss_weighting": cfg.data.loss_weighting, "sorted_batching": cfg.data.sorted_batching,
        "step_time_s_median": statistics.median(r["step_time_s"] for r in rows),
        "tokens_per_s_per_gpu_median": statistics.median(r["tokens_per_s_per_gpu"] for r in rows),
        "tokens_per_s_per_gpu": total("tokens") / time_s / world,
        "real_tokens_per_s_per_gpu": total("real_tokens") / time_s / world,
        "packing_efficiency": total("real_tokens") / total("tokens"),
        "sequences_per_row": total("sequences") / (len(rows) * gbs),
        "mean_attention_span": total("doc_sq_sum") / max(total("real_tokens"), 1),
        "rope_grid_per_token": total("rope_grid_per_token") / len(rows),
        "tflops_per_gpu": total("model_tflop") * 1e12 / time_s / world / 1e12,
        "data_wait_s_median": statistics.median(r["data_wait_s"] for r in rows),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "steps": rows,
    }
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        rewind()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with torch_profile(activities=acts) as prof:
            one_step(0)
        res["profile_gpu_ms_by_kernel_family"] = kernel_families(prof) if gpu else {}
        table = prof.key_averages().table(sort_by="self_device_time_total" if gpu else "self_cpu_time_total", row_limit=30)
        (out_dir / f"profile_{name}.txt").write_text(table)
        log(f"[{name}] profiled step: GPU ms by kernel family {res['profile_gpu_ms_by_kernel_family']}")
    return res


def markdown(results: list[dict], meta: dict) -> str:
    base = next((r for r in results if r["phase"] == "stage1"), None)
    vs = lambda r, k: f"{r[k] / base[k]:.3f}" if base and r is not base else "1" if r is base else ""  # noqa: E731
    lines = [
        f"# Stage 2 (long SFT) vs stage 1 throughput ({meta['date']})", "",
        f"Device: {meta['device']} x {meta['gpus']}; layout {meta['layout']}, recompute {meta['recompute']}; "
        f"{meta['rows_per_step']} rows of {meta['seq_length']} tokens per step; command `{meta['command']}`.", "",
        "| phase | steps | step time (median) | tokens/s/GPU | real tokens/s/GPU | vs stage 1 (tokens, real tokens) "
        "| TFLOP/s/GPU | vs stage 1 | packing | sequences/row | mean attention span | RoPE grid/token | data wait | peak alloc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else ""
        lines.append(
            f"| {r['phase']} | {r['steps_measured']} | {r['step_time_s_median']:.2f} s | {r['tokens_per_s_per_gpu']:,.0f} "
            f"| {r['real_tokens_per_s_per_gpu']:,.0f} | {vs(r, 'tokens_per_s_per_gpu')}, {vs(r, 'real_tokens_per_s_per_gpu')} "
            f"| {r['tflops_per_gpu']:.1f} | {vs(r, 'tflops_per_gpu')} | {r['packing_efficiency']:.1%} "
            f"| {r['sequences_per_row']:.1f} | {r['mean_attention_span']:,.0f} | {r['rope_grid_per_token']:.1f} "
            f"| {r['data_wait_s_median'] * 1e3:.1f} ms | {mem} |")
    lines += ["", "tokens/s count the packed rows (padding included; the trainer's tokens/s); real tokens leave "
              "the padding out. Totals over the measured steps (sum of tokens / sum of step times). Mean attention "
              "span = sum n_i^2 / sum n_i over the real documents: the causal attention work per token, which "
              "TFLOP/s (6 x dense params per row token + attention over the real documents) takes into account "
              "and tokens/s does not. RoPE grid/token: blocks TE's fused THD RoPE launches per token "
              "(longest padded sequence x sequences, per row; 1 = one document per row)."]
    fams = [r for r in results if r.get("profile_gpu_ms_by_kernel_family")]
    if fams:
        keys = list(fams[0]["profile_gpu_ms_by_kernel_family"])
        lines += ["", "GPU time of one profiled step by kernel family (ms):", "",
                  "| phase | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {r['phase']} | " + " | ".join(f"{r['profile_gpu_ms_by_kernel_family'][k]:,.0f}" for k in keys) + " |"
                  for r in fams]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [s["step"] for s in r["steps"]]
        axes[0].plot(steps, [s["tokens_per_s_per_gpu"] for s in r["steps"]], "o-", label=f"{r['phase']} (rows)")
        axes[0].plot(steps, [s["real_tokens"] / s["step_time_s"] for s in r["steps"]], "x--", label=f"{r['phase']} (real)")
        axes[1].plot(steps, [s["tflops_per_gpu"] for s in r["steps"]], "o-", label=r["phase"])
    axes[0].set(xlabel="measured step", ylabel="tokens/s/GPU", title="tokens/s per step")
    axes[1].set(xlabel="measured step", ylabel="model TFLOP/s/GPU", title="TFLOP/s per step")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "/tmp/megaindex-sft-bench-run"))
    sft_phases = [p for p in args.phases if p != "stage1"]
    if sft_phases and not args.long_sft.is_file() and str(args.long_sft) in args.sft_data:
        if int(os.environ.get("RANK", "0")) == 0:
            sys.path.insert(0, str(REPO / "tools"))
            from make_long_sft import write_long_sft

            lengths = write_long_sft([Path(args.pretrain_data)], Path(args.tokenizer), args.long_sft, count=args.long_count,
                                     min_tokens=args.long_min_tokens, max_tokens=args.long_max_tokens)
            print(f"wrote {args.long_sft}: {len(lengths)} long conversations, {sum(lengths):,} tokens", flush=True)
        else:
            while not args.long_sft.is_file():
                time.sleep(0.5)

    import torch

    from megaindex.data.builder import build_datasets
    from megaindex.distributed import destroy_distributed
    from megaindex.training.trainer import Trainer

    s1, s2 = build_configs(args, run_dir)
    trainer = Trainer(s1)
    log = (lambda msg: print(msg, flush=True)) if trainer.rank == 0 else (lambda msg: None)
    stage1_ds = trainer.train_ds
    results = []
    for k, name in enumerate(args.phases):
        if name == "stage1":
            cfg, ds, steps = s1, stage1_ds, args.steps
        else:
            cfg = dataclasses.replace(s2, data=dataclasses.replace(s2.data, sorted_batching=name == "sft_sorted"))
            ds, _ = build_datasets(cfg, trainer.tokenizer, num_samples=(None, 0))
            steps = min(args.steps, len(ds) // cfg.data.global_batch_size)
            if steps < 1:
                raise SystemExit(f"{name}: one epoch of --sft-data packs {len(ds)} rows, fewer than a step's "
                                 f"{cfg.data.global_batch_size}; add conversations (--long-count) or lower --rows-per-step")
            log(f"[{name}] {len(ds)} rows in one epoch ({ds.stats['conversations']} conversations, "
                f"{ds.stats['truncated']} truncated, {ds.stats['dropped_overlength']} dropped); measuring {steps} steps")
        warmup = args.warmup if k == 0 else args.phase_warmup
        args.out_dir.mkdir(parents=True, exist_ok=True)
        results.append(run_phase(trainer, name, cfg, ds, warmup=min(warmup, steps), steps=steps, profile=name in args.profile,
                                 out_dir=args.out_dir, log=log))
    if trainer.rank == 0:
        gpu = torch.cuda.is_available()
        lay = trainer.layout
        meta = {"device": torch.cuda.get_device_name() if gpu else "cpu", "gpus": lay.world_size,
                "layout": f"TP{lay.tp} PP{lay.pp} CP{lay.cp} DP{lay.dp}", "recompute": s1.train.recompute_granularity,
                "rows_per_step": args.rows_per_step, "seq_length": s1.data.seq_length, "date": time.strftime("%Y-%m-%d"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "sft_data": args.sft_data,
                "pretrain_data": args.pretrain_data}
        with open(args.out_dir / "sft_throughput.jsonl", "a") as f:
            for r in results:
                f.write(json.dumps({**meta, **r}) + "\n")
        table = markdown(results, meta)
        (args.out_dir / "sft_throughput.md").write_text(table)
        plot(results, args.out_dir / "sft_throughput.png")
        print(table, flush=True)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
