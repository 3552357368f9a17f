"""`megaindex eval CKPT_OR_HF_DIR --tasks ... --out DIR`: the long-context evaluation command.

Owns the argument parsing, choosing the haystack (--haystack, else the heldout.jsonl beside the
checkpoint's training data), the progress bar with ETA (tqdm, on stderr), and writing
OUT/results.jsonl (one line per sample, written as they come), OUT/summary.json and the PNGs.
Bad input (missing checkpoint, unknown task or variant, bad --depths, a length no variant holds
without --truncate) ends with one line `megaindex eval: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from megaindex import exit_codes
from megaindex.eval import EvalError
from megaindex.eval.grid import EvalSpec, parse_depths, parse_lengths, parse_tasks, parse_variants


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megaindex eval", description=__doc__.splitlines()[0])
    p.add_argument("path", help="megaindex checkpoint (any layout), a run's checkpoints/ dir or `latest`, or an HF directory")
    p.add_argument("--tasks", default="needle,passkey,ppl", help="comma list of needle, passkey, ppl")
    p.add_argument("--lengths", default="1k,2k,4k", help="prompt lengths in model tokens (k = 1024), e.g. 1k,2k,4k or 9000,13000")
    p.add_argument("--depths", default="0:100:11", help="needle/key depths in %%: start:stop:count or a comma list")
    p.add_argument("--repeats", type=int, default=1, help="samples per (length, depth) with different seeds")
    p.add_argument("--rope", default="naive", help="RoPE variants: naive, linear:F, dynamic:F, yarn:F (comma list)")
    p.add_argument("--train-length", type=int, default=None, help="the length the model was trained at (default: from the checkpoint)")
    p.add_argument("--truncate", choices=["middle"], default=None, help="cut over-long prompts in the middle (Index's OpenCompass rule)")
    p.add_argument("--extrapolate", action="store_true",
                   help="run every variant at every length, past its design limit (e.g. naive alone beyond the training length)")
    p.add_argument("--prompt", choices=["base", "chat"], default="base", help="completion prompt or Index chat format")
    p.add_argument("--engine", choices=["megatron", "hf"], default="megatron", help="megatron forward or transformers")
    p.add_argument("--haystack", default=None, help="held-out JSONL or a recipe (its heldout.jsonl); default: beside the checkpoint's data")
    p.add_argument("--langs", default=None, help="haystack languages (default: all in the held-out set), e.g. en,zh")
    p.add_argument("--generate", action="store_true", help="predictions by greedy generation instead of forced argmax")
    p.add_argument("--batch-size", type=int, default=8, help="samples per engine call")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="output directory")
    return p


def _train_config(resolved: tuple[str, Path]):
    """The training config saved with a megaindex checkpoint, or None (HF directory)."""
    from megaindex.checkpoint import CONFIG_FILE
    from megaindex.config_load import load_config

    kind, path = resolved
    return load_config(path / CONFIG_FILE) if kind == "megaindex" else None


def _samples(spec: EvalSpec, tokenizer, hay_files):
    from megaindex.eval.haystack import Haystack
    from megaindex.eval.run import build_samples

    hay = Haystack.from_files(hay_files, tokenizer) if hay_files else None
    return build_samples(spec, tokenizer, hay)


def run(args: argparse.Namespace) -> dict:
    from megaindex.eval.engine import load_engine, open_tokenizer, resolve_path
    from megaindex.eval.haystack import resolve_haystack
    from megaindex.eval.plots import write_plots
    from megaindex.eval.run import GENERATE_SLACK, check_lengths, run_grid
    from megaindex.eval.summary import summarize

    spec = EvalSpec(tasks=parse_tasks(args.tasks), lengths=parse_lengths(args.lengths), depths=parse_depths(args.depths),
                    repeats=args.repeats, variants=parse_variants(args.rope), prompt=args.prompt, truncate=args.truncate,
                    langs=args.langs.split(",") if args.langs else None, generate=args.generate, extrapolate=args.extrapolate,
                    batch_size=max(1, args.batch_size))
    t0 = time.time()
    resolved = resolve_path(args.path)  # a missing/invalid checkpoint fails before anything is loaded
    train_cfg = _train_config(resolved)
    hay_files = resolve_haystack(args.haystack, train_cfg) if {"needle", "ppl"} & set(spec.tasks) else None
    if train_cfg is not None:  # check the grid before loading the model (a 2B model takes a while)
        tok = open_tokenizer([args.tokenizer, train_cfg.data.tokenizer_model], str(resolved[1]))
        check_lengths(spec, _samples(spec, tok, hay_files), args.train_length or train_cfg.data.seq_length)
    # Without truncation every variant runs every length (past its own limit: the extrapolation
    # baseline); check_lengths refuses lengths that no requested variant holds.
    longest = None if spec.truncate else max(spec.lengths) + (GENERATE_SLACK if spec.generate else 0)
    engine = load_engine(args.path, engine=args.engine, train_length=args.train_length, tokenizer_model=args.tokenizer,
                         max_length=longest)
    samples = _samples(spec, engine.tokenizer, hay_files)
    check_lengths(spec, samples, engine.train_length)

    # Under torchrun (context parallelism) every rank scores every sample; rank 0 writes.
    writer = int(os.environ.get("RANK", "0")) == 0
    out = Path(args.out)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    results = []
    if writer:
        print(f"megaindex eval: {len(samples)} samples x {len(spec.variants)} variants on the {engine.name} engine "
              f"(trained at {engine.train_length} tokens; lengths in model tokens) -> {out}", file=sys.stderr)
    bar = tqdm(total=len(samples) * len(spec.variants), unit="sample", file=sys.stderr, mininterval=1.0,
               dynamic_ncols=True, disable=not writer)
    with open(out / "results.jsonl" if writer else os.devnull, "w") as f, bar:
        def progress(n: int, label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(n)

        for r in run_grid(engine, spec, samples, on_progress=progress):
            results.append(r)
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
    if not writer:
        return {"summary": None, "plots": [], "out": out}
    meta = {"checkpoint": str(resolved[1]), "engine": engine.name, "train_length": engine.train_length,
            "tasks": spec.tasks, "lengths": spec.lengths, "depths": spec.depths, "repeats": spec.repeats,
            "variants": [v.name for v in spec.variants], "prompt": spec.prompt, "truncate": spec.truncate,
            "prediction": "greedy generation" if spec.generate else "forced argmax",
            "token_accuracy": "share of gold answer tokens equal to the forced argmax (teacher forcing), "
                              "with --generate too",
            "length_unit": "model tokens, prompt + gold answer",
            "haystack": [str(p) for p in hay_files] if hay_files else None, "seconds": round(time.time() - t0, 2)}
    summary = summarize(results, meta=meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    plots = write_plots(summary, out)
    return {"summary": summary, "plots": plots, "out": out}


def _print_summary(summary: dict) -> None:
    def tokacc(v: str, s: dict) -> None:  # the forced per-token copy rate, under its exact-match line
        if "token_accuracy_by_length" in s:
            print(f"        {v:<12} token accuracy " +
                  " ".join(f"{L}:{x:.2f}" for L, x in s["token_accuracy_by_length"].items()))

    for v, s in summary.get("needle", {}).items():
        print(f"needle  {v:<12} overall {s['overall']:6.2f}  by length " +
              " ".join(f"{L}:{x:.1f}" for L, x in s["by_length"].items()))
        tokacc(v, s)
    for v, s in summary.get("passkey", {}).items():
        print(f"passkey {v:<12} accuracy " + " ".join(f"{L}:{x:.2f}" for L, x in s["accuracy_by_length"].items()))
        tokacc(v, s)
    for v, s in summary.get("ppl", {}).items():
        print(f"ppl     {v:<12} " + " ".join(f"{L}:{x:.2f}" for L, x in s["by_length"].items()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from megaindex.config import ConfigError

    try:
        r = run(args)
    except (EvalError, ConfigError) as e:
        print(f"megaindex eval: {e}", file=sys.stderr)
        return exit_codes.BAD_USAGE
    if r["summary"] is None:  # not rank 0
        return 0
    _print_summary(r["summary"])
    print(f"wrote {r['out'] / 'results.jsonl'}, {r['out'] / 'summary.json'} and "
          f"{', '.join(p.name for p in r['plots'])}")
    return 0
