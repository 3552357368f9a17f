#!/usr/bin/env python3
"""The miniature Index-1.9B-32K replication, as resumable steps (README.md beside this file).

    python examples/mini_replication/run.py STEP [STEP ...] [--work DIR] [--smoke]
    python examples/mini_replication/run.py all --smoke      # every step at toy scale on CPU (~2 min, 2 cores)
    python examples/mini_replication/run.py status            # which steps are done, how long each took

Steps, in order (each fits one 10-minute command on one H100; a finished step is skipped unless
--force; training steps resume from their last checkpoint):
  here (needs the package registries): corpus, tokenizer, retrieval, preprocess, stage
  on the GPU node:  unstage, stage0, stage1, eval_base, eval_longpt, probe_base, needle_form, pack_base,
                    ablation_<name>..., report
  here, after it:   unpack_base PARTS_DIR [PARTS_DIR ...] [--dest DIR]   (pack_base's parts, copied back)

Every training and every evaluation runs as its own `python -m megaindex train|eval ...` process
(this environment, output streamed): a process never holds a second training's CUDA, Transformer
Engine or megatron-core state (on the GPU a second in-process training died with SIGSEGV). A child
that fails stops the command with the step, the exit code or signal, and how to resume.

`--smoke` runs the same code at toy scale on the CI fixture corpus (no downloads): a tiny model,
256/1024-token stages, a few steps, 256-1024-token evaluation. Everything goes under WORK
(default runs/mini_replication, or runs/mini_smoke with --smoke); WORK/steps/STEP.json records
each finished step (seconds, outputs).

This file owns the steps, their order and the command line. Beside it, one concept each:
context.py (Scale, FULL/SMOKE, Ctx, log), child_process.py (`sh`, `megaindex`: the children),
recipes.py (the recipes filled in for WORK, the corpus' length parts), parts.py (a tar.gz in parts
with a manifest), staging.py (`stage`, `unstage`), base_transfer.py (`pack_base`, `unpack_base`) and
report.py (`report`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # REPO: this checkout's megaindex
sys.path.insert(0, str(Path(__file__).resolve().parent))      # HERE: the modules beside this file

from child_process import megaindex, sh  # noqa: E402
from base_transfer import step_pack_base, step_unpack_base  # noqa: E402
from context import FULL, HERE, NEEDLE_FORMS, PY, REPO, SMOKE, Ctx, log  # noqa: E402
from recipes import CORPUS_PARTS, XL_PART, fill_recipe, seq_length, stage_tokens  # noqa: E402
from staging import step_stage, step_unstage  # noqa: E402

ABLATIONS = yaml.safe_load((HERE / "ablations.yaml").read_text())


# ---- steps here: data ------------------------------------------------------------------------------
def step_corpus(ctx: Ctx) -> list[Path]:
    out = ctx.p("corpus")
    if ctx.scale.corpus == "fixture":
        out.mkdir(parents=True, exist_ok=True)
        for name in ("pretrain.jsonl", "heldout.jsonl"):
            shutil.copyfile(REPO / "tests/fixtures/corpus" / name, out / name)
    else:
        sh(ctx, PY, "tools/prepare_corpus.py", out, "--work", Path.home() / ".cache/megaindex/corpus")
    files = [out / "pretrain.jsonl", out / "heldout.jsonl"]
    for f in files:
        if not f.is_file():
            raise SystemExit(f"{f} missing: tools/prepare_corpus.py writes pretrain.jsonl and the held-out heldout.jsonl")
    return files


def step_tokenizer(ctx: Ctx) -> list[Path]:
    out = ctx.p("tokenizer.model")
    sh(ctx, PY, "tools/train_tokenizer.py", ctx.p("corpus/pretrain.jsonl"), "-o", out, "--vocab-size", str(ctx.scale.vocab_size))
    return [out]

def step_retrieval(ctx: Ctx) -> list[Path]:
    from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator
    from megaindex.data.retrieval_writer import describe_mix, write_documents
    from megaindex.data.tokenizer import IndexTokenizer

    tok = IndexTokenizer(ctx.p("tokenizer.model"))
    filler = FillerText([ctx.p("corpus/pretrain.jsonl")])  # training text only: never heldout.jsonl
    log(filler.summary())
    outs = []
    for seed, (stage, overrides) in enumerate((("stage0", ctx.scale.stage0), ("stage1", ctx.scale.stage1))):
        tokens, share = stage_tokens(ctx, stage, overrides)
        want = int(tokens * share * ctx.scale.margin)
        cfg = RetrievalDocConfig(max_tokens=ctx.scale.retrieval_max_tokens, min_tokens=ctx.scale.retrieval_min_tokens,
                                 seed=seed, **ctx.scale.retrieval)  # v7 in FULL and SMOKE (context.py says why)
        out = ctx.p("corpus", f"retrieval_s{seed}.jsonl")
        t0 = time.time()
        mix: dict = {}
        docs, got = write_documents(out, RetrievalDocGenerator(tok, filler, cfg), tokens=want, mix=mix,
                                    workers=min(8, os.cpu_count() or 1),
                                    progress=lambda d, t: log(f"  {out.name}: {d} documents, {t / 1e6:.1f}M tokens"))
        log(f"{out.name} tokens by kind: {describe_mix(mix)}")
        log(f"{out.name}: {docs} documents, {got} tokens ({share:.0%} of {stage}'s {tokens} x {ctx.scale.margin}) "
            f"in {time.time() - t0:.0f}s")
        outs.append(out)
    return outs

def _up_to_date(prefix: Path, *sources: Path) -> bool:
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    return idx.is_file() and bin_.is_file() and min(idx.stat().st_mtime, bin_.stat().st_mtime) >= max(
        s.stat().st_mtime for s in sources)


def step_preprocess(ctx: Ctx) -> list[Path]:
    """Token files: both retrieval sets, and the corpus split by document length into data/corpus_short
    (< Scale.long_min_tokens tokens) and data/corpus_long, a partition; and data/corpus_xl, the documents of
    >= Scale.xl_min_tokens (a subset of corpus_long, staged beside it: the `far` ablation's corpus).

    Why split: stage 1 trains on the long documents only (the report's "curated long corpus"). Mixed
    with short ones, few of its tokens sat far into the 32K window (the fifth attempt's recipe: 8.5% at
    positions >= 24K; 12.3% now, stage1.yaml), though documents of >= 16K tokens hold 72% of the tokens. The threshold, half the
    window: every such document fills at least half a row with one context, and the part keeps most of
    the corpus (~1.45 passes in stage 1's 128 steps, where >= 32K would leave 57% for more repeats).
    A retrieval dataset newer than its JSONL and the tokenizer is kept (delete it to rebuild it).
    """
    from megaindex.data.length_split import split_by_length
    from megaindex.data.preprocess import preprocess

    data, tok = ctx.p("data"), ctx.p("tokenizer.model")
    data.mkdir(parents=True, exist_ok=True)
    workers = min(2, os.cpu_count() or 1)
    outs = []
    for name in ("retrieval_s0", "retrieval_s1"):
        prefix, src = data / name, ctx.p("corpus", f"{name}.jsonl")
        if _up_to_date(prefix, src, tok):
            log(f"{name}: newer than {src.name} and the tokenizer; kept")
        else:
            st = preprocess([str(src)], str(prefix), str(tok), kind="pretrain", workers=workers, progress=False)
            log(f"{name}: {st.documents} documents, {st.tokens} tokens")
        outs += [Path(f"{prefix}.bin"), Path(f"{prefix}.idx")]
    whole = data / "corpus_whole"  # tokenised once, then split; removed
    st = preprocess([str(ctx.p("corpus", "pretrain.jsonl"))], str(whole), str(tok), kind="pretrain", workers=workers,
                    progress=False)
    parts = split_by_length(whole, ctx.scale.long_min_tokens, data / "corpus_short", data / "corpus_long")
    parts["xl"] = split_by_length(whole, ctx.scale.xl_min_tokens, None, data / XL_PART)["long"]  # a subset of long
    for old in ("corpus_whole", "corpus"):  # "corpus": the single dataset before the split
        for ext in (".bin", ".idx"):
            (data / f"{old}{ext}").unlink(missing_ok=True)
    record = {"min_tokens": ctx.scale.long_min_tokens, "xl_min_tokens": ctx.scale.xl_min_tokens,
              "documents": st.documents, "tokens": st.tokens,
              **{f"corpus_{k}": {"documents": v["documents"], "tokens": v["tokens"]} for k, v in parts.items()}}
    ctx.p("data", "corpus_parts.json").write_text(json.dumps(record, indent=1) + "\n")
    for name in (*CORPUS_PARTS, XL_PART):
        p = record[name]
        log(f"{name}: {p['documents']} documents, {p['tokens']} tokens ({p['tokens'] / max(st.tokens, 1):.1%} of the "
            f"corpus' {st.tokens})" + ("" if p["documents"] else "; none: not written"))
        outs += [data / f"{name}{ext}" for ext in (".bin", ".idx")] if p["documents"] else []
    return [*outs, ctx.p("data", "corpus_parts.json")]

# ---- steps on the GPU node: training -----------------------------------------------------------------
def _train(ctx: Ctx, recipe: str, overrides: list[str], run_name: str) -> list[Path]:
    from megaindex.config import load_config

    from megaindex import checkpoint

    path, overrides = fill_recipe(ctx, recipe, overrides)
    overrides = [*overrides, *ctx.extra, f"train.run_dir={ctx.p(run_name)}", f"data.cache_dir={ctx.p('cache')}"]
    if checkpoint.resume_point(ctx.p(run_name, "checkpoints"))[0] is None:
        # nothing to resume (first attempt, or one killed before its first checkpoint): start clean
        # rather than be refused over the metrics an unfinished attempt left
        overrides.append("train.overwrite=true")
    if recipe != "stage0":
        overrides.append(f"checkpoint.pretrained={ctx.p('stage0', 'checkpoints')}")
    megaindex(ctx, "train", path, *overrides,
              hint=f"rerun `run.py {ctx.step}` to resume {run_name} from its last checkpoint, if it saved one")
    last, _ = checkpoint.resume_point(ctx.p(run_name, "checkpoints"))
    want = load_config(path, overrides).train.train_iters
    got = int(last.name[5:]) if last is not None else 0
    if want is not None and got < want:  # stopped on purpose (train.exit_at_step, a time limit): not done, resumable
        raise SystemExit(f"{run_name} stopped at step {got} of {want} (checkpoint {last}); "
                         f"rerun the step to resume it")
    return [ctx.p(run_name, "checkpoints", "latest"), ctx.p(run_name, "metrics.jsonl")]


def step_stage0(ctx: Ctx) -> list[Path]:
    return _train(ctx, "stage0", ctx.scale.stage0, "stage0")


def step_stage1(ctx: Ctx) -> list[Path]:
    return _train(ctx, "stage1", ctx.scale.stage1, "stage1")


def _eval(ctx: Ctx, run_name: str, out: str, ropes: str, train_length: int) -> Path:
    dest = ctx.p("eval", out)
    if (dest / "summary.json").is_file() and not ctx.force:
        log(f"{dest}/summary.json exists; skipped")
        return dest / "summary.json"
    args = [str(ctx.p(run_name, "checkpoints")), "--tasks", "needle,passkey,ppl", "--lengths", ctx.scale.lengths,
            "--depths", ctx.scale.depths, "--repeats", str(ctx.scale.repeats), "--rope", ropes,
            "--train-length", str(train_length), "--haystack", str(ctx.p("corpus", "heldout.jsonl")),
            "--out", str(dest)]
    megaindex(ctx, "eval", *args, hint=f"rerun `run.py {ctx.step}`: it redoes this evaluation of {run_name} "
                                       f"(its training and finished evaluations are kept)")
    return dest / "summary.json"

def step_eval_base(ctx: Ctx) -> list[Path]:
    L = seq_length(ctx, "stage0", ctx.scale.stage0)
    return [_eval(ctx, "stage0", f"base_{i}", ropes, L) for i, ropes in enumerate(ctx.scale.base_ropes)]


def step_eval_longpt(ctx: Ctx) -> list[Path]:
    return [_eval(ctx, "stage1", "longpt", "naive", seq_length(ctx, "stage1", ctx.scale.stage1))]


def make_ablation_step(name: str):
    def step(ctx: Ctx) -> list[Path]:
        budget = [] if ctx.scale.ablation_iters is None else [f"train.train_iters={ctx.scale.ablation_iters}"]
        overrides = [*ctx.scale.stage1, *budget, *(f"{k}={json.dumps(v)}" for k, v in (ABLATIONS[name] or {}).items()),
                     *ctx.scale.ablations.get(name, [])]
        outs = _train(ctx, "stage1", overrides, f"ablation_{name}")
        return outs + [_eval(ctx, f"ablation_{name}", f"ablation_{name}", "naive", seq_length(ctx, "stage1", overrides))]
    step.__doc__ = f"stage 1 with {ABLATIONS[name]}, then its evaluation"
    return step


def step_probe_base(ctx: Ctx) -> list[Path]:
    """The base's in-format retrieval probe: in_format_probe.py on stage 0's checkpoint (loaded as `megaindex
    eval --engine hf` loads it, on the GPU where there is one) with held-out documents of the training
    generator and training-split filler. Beside the evaluation it tells a retrieval miss from a transfer
    miss (README)."""
    out = ctx.p("probe", "in_format")
    if out.with_suffix(".json").is_file() and not ctx.force:
        log(f"{out}.json exists; skipped")
        return [out.with_suffix(".json")]
    evaluation = ctx.p("eval", "base_0", "results.jsonl")  # the base's naive rows, set beside the probe's
    compare = ["--compare", evaluation] if evaluation.is_file() else []
    sh(ctx, PY, HERE / "in_format_probe.py", ctx.p("stage0", "checkpoints"),
       "--filler", ctx.p("corpus", "pretrain.jsonl"), "--data", ctx.scale.probe_data, "--lengths", ctx.scale.probe_lengths, "--docs", str(ctx.scale.probe_docs),
       *compare, "--out", out)
    return [out.with_suffix(".json"), out.with_suffix(".md")]


def step_needle_form(ctx: Ctx) -> list[Path]:
    """needle_form_probe.py on stage 0's checkpoint (fp32, on the GPU where there is one) with the forms that
    need no unseen-document file (context.NEEDLE_FORMS): which part of the evaluation's needle costs the base."""
    out = ctx.p("probe", "needle_form")
    if out.with_suffix(".json").is_file() and not ctx.force:
        log(f"{out}.json exists; skipped")
        return [out.with_suffix(".json"), out.with_suffix(".md")]
    sh(ctx, PY, HERE / "needle_form_probe.py", ctx.p("stage0", "checkpoints"), "--haystack", ctx.p("corpus", "heldout.jsonl"),
       "--filler", ctx.p("corpus", "pretrain.jsonl"), "--forms", ",".join(NEEDLE_FORMS),
       "--lengths", ctx.scale.needle_form_lengths, "--repeats", str(ctx.scale.needle_form_repeats), "--out", out,
       what="needle_form_probe.py", hint="rerun `run.py needle_form`")
    return [out.with_suffix(".json"), out.with_suffix(".md")]


def step_report(ctx: Ctx, publish: bool = False) -> list[Path]:
    import report

    return report.write_report(ctx.p("eval"), ctx.p("report"), publish_to=REPO / "benchmarks" if publish else None)


STEPS = {
    "corpus": step_corpus, "tokenizer": step_tokenizer, "retrieval": step_retrieval, "preprocess": step_preprocess,
    "stage": step_stage, "unstage": step_unstage, "stage0": step_stage0, "stage1": step_stage1,
    "eval_base": step_eval_base, "eval_longpt": step_eval_longpt,
    "probe_base": step_probe_base, "needle_form": step_needle_form, "pack_base": step_pack_base,
    "unpack_base": step_unpack_base,
    **{f"ablation_{n}": make_ablation_step(n) for n in ABLATIONS},
    "report": step_report,
}


def status(ctx: Ctx) -> None:
    for name in STEPS:
        rec = ctx.p("steps", f"{name}.json")
        done = json.loads(rec.read_text()) if rec.is_file() else None
        print(f"  {name:<22} {'done in %6.1f s' % done['seconds'] if done else 'not done'}")


def run_step(ctx: Ctx, name: str, **kw) -> None:
    rec = ctx.p("steps", f"{name}.json")
    if rec.is_file() and not ctx.force:
        log(f"step {name}: done before ({rec}); skipped (--force to redo)")
        return
    log(f"step {name} ...")
    ctx.step = name
    t0 = time.time()
    outs = STEPS[name](ctx, **kw)
    missing = [str(o) for o in outs if not Path(o).exists()]
    if missing:
        raise SystemExit(f"step {name} finished without its outputs: {', '.join(missing)}")
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"step": name, "seconds": round(time.time() - t0, 1), "smoke": ctx.smoke,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "outputs": [str(o) for o in outs]}, indent=1) + "\n")
    log(f"step {name} done in {time.time() - t0:.1f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="+", help=f"all, status, or steps: {', '.join(STEPS)}; unpack_base may be "
                                             f"followed by the folders holding pack_base's parts")
    ap.add_argument("--smoke", action="store_true", help="toy scale on CPU (the CI fixture corpus, no downloads)")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default runs/mini_replication or runs/mini_smoke)")
    ap.add_argument("--force", action="store_true", help="redo steps already done")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every training step of this command, e.g. train.exit_at_step=1024 "
                         "to split a long stage over two device calls (the step is then not done until rerun)")
    ap.add_argument("--dest", type=Path, default=None, help="unpack_base: the HF directory to write (default WORK/base_hf)")
    ap.add_argument("--publish", action="store_true", help="report: also write benchmarks/replication_summary.json and PNGs")
    args = ap.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    work = (args.work or REPO / "runs" / ("mini_smoke" if args.smoke else "mini_replication")).resolve()
    ctx = Ctx(work, scale, args.force, args.extra)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.steps == ["status"]:
        status(ctx)
        return 0
    names, parts_dirs = (list(STEPS), []) if args.steps == ["all"] else ([], [])
    for word in [] if names else args.steps:  # the words after unpack_base that are no step: its folders
        if word not in STEPS and names[-1:] == ["unpack_base"] and Path(word).is_dir():
            parts_dirs.append(Path(word))
        else:
            names.append(word)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)} (unpack_base's folders must exist)")
    kw = {"report": {"publish": True} if args.publish else {},
          "unpack_base": {"sources": parts_dirs or None, "dest": args.dest and args.dest.resolve()}}
    for name in names:
        run_step(ctx, name, **kw.get(name, {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
