#!/usr/bin/env python3
"""The miniature Index-1.9B-32K replication, as resumable steps (README.md beside this file).

    python examples/mini_replication/run.py STEP [STEP ...] [--work DIR] [--smoke]
    python examples/mini_replication/run.py all --smoke      # every step at toy scale on CPU (~3 min, 2 cores)
    python examples/mini_replication/run.py status            # which steps are done, how long each took

Steps, in order (each fits one 10-minute command on one H100; a finished step is skipped unless
--force; training steps resume from their last checkpoint):
  here (needs the package registries): corpus, tokenizer, retrieval, preprocess, stage
  on the GPU node:  unstage, stage0, stage1, eval_base, eval_longpt, ablation_<name>..., report

Every training and every evaluation runs as its own `python -m megaindex train|eval ...` process
(this environment, output streamed): a process never holds a second training's CUDA, Transformer
Engine or megatron-core state (on the GPU a second in-process training died with SIGSEGV). A child
that fails stops the command with the step, the exit code or signal, and how to resume.

`--smoke` runs the same code at toy scale on the CI fixture corpus (no downloads): a tiny model,
256/1024-token stages, a few steps, 256-1024-token evaluation. Everything goes under WORK
(default runs/mini_replication, or runs/mini_smoke with --smoke); WORK/steps/STEP.json records
each finished step (seconds, outputs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
PY = sys.executable
PART_BYTES = 45 * 2**20  # one device call carries at most 64 MiB with the working tree
STAGE_PREFIX = ".mini"   # REPO/.mini0, .mini1, ... (git-ignored), one per device call
# Passed on to a running child: training/preemption.py's stop signals (the trainer checkpoints and
# exits PREEMPTED), as they reached it when it ran in this process.
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
ABLATIONS = yaml.safe_load((HERE / "ablations.yaml").read_text())


@dataclass
class Scale:
    """What differs between the real run and the CPU smoke run (the code path does not)."""

    corpus: str                       # "prepare" = tools/prepare_corpus.py; "fixture" = tests/fixtures/corpus
    vocab_size: int
    retrieval_max_tokens: int
    retrieval_min_tokens: int
    stage0: list[str] = field(default_factory=list)   # overrides of stage0.yaml
    stage1: list[str] = field(default_factory=list)   # overrides of stage1.yaml (and every ablation)
    ablations: dict[str, list[str]] = field(default_factory=dict)  # per-ablation extra overrides
    # Steps of every ablation (None: stage1.yaml's, so that the report compares each with Long-PT at
    # one budget). The fifth attempt trained stage 1 for 512 steps and the ablations for 128, with an
    # extra run of the recipe at 128 as their reference; since the sixth, stage 1 is 128 steps again.
    ablation_iters: int | None = None
    lengths: str = "1k,2k,4k,8k,16k,32k"
    depths: str = "0:100:11"
    repeats: int = 3
    # Two evaluation calls for the base model, each with a factor that holds the longest length
    # (megaindex eval refuses a length no requested variant holds; naive then runs it as the baseline).
    base_ropes: tuple[str, ...] = ("naive,dynamic:2,dynamic:16", "dynamic:4,dynamic:8,yarn:16")
    margin: float = 1.1               # synthetic tokens generated over the share the recipe needs
    # The corpus' split by document length (tokens, EOD included): documents with at least this many
    # go to data/corpus_long, stage 1's corpus part; the rest to data/corpus_short. 16384 = half of
    # stage 1's 32K window (step_preprocess says why).
    long_min_tokens: int = 16384


FULL = Scale(corpus="prepare", vocab_size=8000, retrieval_max_tokens=2048, retrieval_min_tokens=128)
SMOKE = Scale(
    corpus="fixture", vocab_size=4000, retrieval_max_tokens=256, retrieval_min_tokens=48,
    stage0=["model.preset=tiny", "model.max_position_embeddings=256", "data.seq_length=256", "data.micro_batch_size=4",
            "data.global_batch_tokens=2048", "data.whole_documents=256", "data.num_workers=0", "train.train_iters=6",
            "train.eval_interval=6", "train.eval_iters=1", "optim.lr_warmup_iters=1", "checkpoint.save_interval=6",
            "log.log_interval=1", "data.split=90,10,0", "eval.interval=6", "eval.lengths=[256]", "eval.repeats=1", "eval.tasks=[passkey]",
            "train.cuda_graph_impl=none", "data.static_thd_shapes=false"],  # CPU: eager (stage0.yaml graphs the GPU run)
    stage1=["model.preset=tiny", "model.max_position_embeddings=1024", "data.seq_length=1024", "data.global_batch_tokens=2048",
            "data.whole_documents=256", "data.num_workers=0", "train.train_iters=3", "train.eval_interval=3",
            "train.eval_iters=1", "optim.lr_warmup_iters=1", "checkpoint.save_interval=3", "log.log_interval=1",
            "data.split=90,10,0", "eval.interval=3", "eval.lengths=[1024]", "eval.tasks=[passkey]"],
    ablations={"ctx_warmup": ["data.context_length_warmup=[[1,256],[2,512]]"]},
    lengths="256,512,1024", depths="0:100:3", repeats=1, base_ropes=("naive,dynamic:4", "dynamic:2,yarn:4"),
    # The fixture's 21 documents are all longer than half the smoke's 1024-token window, so half of it
    # would leave corpus_short empty; the full run's 16384 puts about half of them in each part,
    # so CI runs the two-part blend of stage 0 and the long-only corpus of stage 1.
    long_min_tokens=16384,
)


class Ctx:
    def __init__(self, work: Path, scale: Scale, force: bool, extra: list[str] | None = None):
        self.work, self.scale, self.force = work, scale, force
        self.step = "?"  # the step now running (run_step sets it), for the error of a failed child
        self.extra = list(extra or [])  # --set: overrides for every training step of this command
        self.smoke = scale is SMOKE

    def p(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def recipe(self, name: str, overrides: list[str]) -> tuple[Path, list[str]]:
        """The shipped recipe with WORK filled in, written to WORK/recipes/NAME.yaml (what was run).

        A blend entry "W WORK/data/corpus" is the whole corpus: it is written out as the corpus' length
        parts (`preprocess`), "W x s WORK/data/corpus_short" and "W x (1 - s) WORK/data/corpus_long"
        with s the short part's share of the corpus' tokens (data/corpus_parts.json), so that stage
        reads the corpus mix one dataset of it gave (a part with no documents is left out). A recipe
        that names a part with no documents is refused in one line.
        """
        text = (HERE / f"{name.split('.')[0]}.yaml").read_text().replace("WORK/", f"{self.work}/")
        whole = re.compile(r'"(\S+) ' + re.escape(str(self.p("data", "corpus"))) + '"')
        named = [n for n in CORPUS_PARTS if f'{self.p("data", n)}"' in text]
        if whole.search(text) or named:
            parts = corpus_parts(self)
            empty = [n for n in named if not parts[n]["documents"]]
            if empty:
                raise SystemExit(f"{HERE / name.split('.')[0]}.yaml trains on {empty[0]}, which has no documents "
                                 f"({self.p('data', 'corpus_parts.json')}: none of the corpus' documents has "
                                 f"{'>=' if empty[0] == 'corpus_long' else '<'} {parts['min_tokens']} tokens); "
                                 f"change Scale.long_min_tokens and rerun `run.py preprocess stage`")
            total = sum(p["tokens"] for n, p in parts.items() if n in CORPUS_PARTS)
            text = whole.sub(lambda m: ", ".join(
                f'"{float(m[1]) * parts[n]["tokens"] / total:.4g} {self.p("data", n)}"'
                for n in CORPUS_PARTS if parts[n]["documents"]), text)
        out = self.p("recipes", f"{name}.yaml")
        out.parent.mkdir(parents=True, exist_ok=True)
        from megaindex import atomic  # a rename: two run.py processes (one per GPU) write the same recipe
        atomic.write_text(out, text, durable=False)  # while the other's child may be reading it
        return out, overrides


def log(msg: str) -> None:
    print(f"[mini {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def how_it_ended(rc: int) -> str:
    """'exited with code 75 (PREEMPTED)' or 'was killed by signal SIGSEGV (11)' for a child's return code."""
    from megaindex import exit_codes

    if rc < 0:  # subprocess reports a death by signal N as -N
        try:
            return f"was killed by signal {signal.Signals(-rc).name} ({-rc})"
        except ValueError:
            return f"was killed by signal {-rc}"
    names = {v: k for k, v in vars(exit_codes).items() if k.isupper() and isinstance(v, int)}
    return f"exited with code {rc}" + (f" ({names[rc]})" if rc in names else "")


def sh(ctx: Ctx, *cmd: str | Path, what: str = "", hint: str = "") -> None:
    """Run CMD in REPO as a child process with this environment (output streamed); a failure ends the command.

    SIGTERM and SIGUSR1 sent to this script while the child runs go on to the child. The error names
    the step, WHAT ran (default: the script), its exit code or signal, and HINT (how to go on).
    """
    cmd = [str(c) for c in cmd]
    log("$ " + shlex.join(cmd))
    # The child imports the megaindex of this checkout, as this script does (sys.path above).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child: subprocess.Popen | None = None
    pending: list[int] = []  # stop signals that came while the child was being started

    def forward(signum, frame):
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    # Installed before the child starts: a stop signal during Popen reaches the child, not this
    # script's default action (which would kill run.py and leave the child running unsupervised).
    before = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        child = subprocess.Popen(cmd, cwd=REPO, env=env)
        for signum in pending:
            child.send_signal(signum)
        rc = child.wait()
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or an error here: no child goes on writing into WORK
        if child is not None:
            child.kill()
            child.wait()
        raise
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if rc != 0:
        what = what or Path(cmd[1] if cmd[0] == PY else cmd[0]).name
        raise SystemExit(f"step {ctx.step}: {what} {how_it_ended(rc)}" + (f"; {hint}" if hint else ""))


def megaindex(ctx: Ctx, *args: str | Path, hint: str) -> None:
    """`python -m megaindex ARGS` in its own process: the only way this script trains or evaluates.

    One process per training or evaluation: on one H100 (2026-11-28) the second `megaindex train`
    of one process died with SIGSEGV right after it started (the first had run TE + cuDNN attention;
    stage 0 replays CUDA graphs), while each run alone in its own process worked. `-X faulthandler`:
    a child killed by SIGSEGV, SIGABRT, SIGBUS, SIGILL or SIGFPE prints its Python stack first.
    """
    sh(ctx, PY, "-X", "faulthandler", "-m", "megaindex", *args, what=f"megaindex {args[0]}", hint=hint)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _stage_tokens(ctx: Ctx, name: str, overrides: list[str]) -> tuple[int, float]:
    """(tokens the stage trains on, share of the retrieval dataset) from the resolved recipe."""
    from megaindex.config import load_config
    from megaindex.data.builder import parse_blend

    cfg = load_config(HERE / f"{name}.yaml", overrides)
    paths, weights = parse_blend(cfg.data.data_path, "data.data_path")
    share = next(w for p, w in zip(paths, weights) if "retrieval" in p) / sum(weights)
    return cfg.train.train_iters * cfg.data.global_batch_tokens, share


def step_retrieval(ctx: Ctx) -> list[Path]:
    from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator
    from megaindex.data.retrieval_writer import describe_mix, write_documents
    from megaindex.data.tokenizer import IndexTokenizer

    tok = IndexTokenizer(ctx.p("tokenizer.model"))
    filler = FillerText([ctx.p("corpus/pretrain.jsonl")])  # training text only: never heldout.jsonl
    log(filler.summary())
    outs = []
    for seed, (stage, overrides) in enumerate((("stage0", ctx.scale.stage0), ("stage1", ctx.scale.stage1))):
        tokens, share = _stage_tokens(ctx, stage, overrides)
        want = int(tokens * share * ctx.scale.margin)
        cfg = RetrievalDocConfig(max_tokens=ctx.scale.retrieval_max_tokens, min_tokens=ctx.scale.retrieval_min_tokens,
                                 seed=seed, length_draw="uniform", early_fact_share=0.5)  # v6, v6b: long spans
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


CORPUS_PARTS = ("corpus_short", "corpus_long")


def corpus_parts(ctx: Ctx) -> dict:
    """data/corpus_parts.json: the length threshold and each part's documents and tokens."""
    path = ctx.p("data", "corpus_parts.json")
    if not path.is_file():
        raise SystemExit(f"{path} missing: the corpus is split by document length since the sixth attempt; "
                         f"run `run.py preprocess` (then `stage`) again")
    return json.loads(path.read_text())


def _up_to_date(prefix: Path, *sources: Path) -> bool:
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    return idx.is_file() and bin_.is_file() and min(idx.stat().st_mtime, bin_.stat().st_mtime) >= max(
        s.stat().st_mtime for s in sources)


def step_preprocess(ctx: Ctx) -> list[Path]:
    """Token files: both retrieval sets, and the corpus split by document length into data/corpus_short
    (< Scale.long_min_tokens tokens) and data/corpus_long, a partition (the staged data does not grow).

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
    for old in ("corpus_whole", "corpus"):  # "corpus": the single dataset before the split
        for ext in (".bin", ".idx"):
            (data / f"{old}{ext}").unlink(missing_ok=True)
    record = {"min_tokens": ctx.scale.long_min_tokens, "documents": st.documents, "tokens": st.tokens,
              **{f"corpus_{k}": {"documents": v["documents"], "tokens": v["tokens"]} for k, v in parts.items()}}
    ctx.p("data", "corpus_parts.json").write_text(json.dumps(record, indent=1) + "\n")
    for name in CORPUS_PARTS:
        p = record[name]
        log(f"{name}: {p['documents']} documents, {p['tokens']} tokens ({p['tokens'] / max(st.tokens, 1):.1%} of the "
            f"corpus' {st.tokens})" + ("" if p["documents"] else "; none: not written"))
        outs += [data / f"{name}{ext}" for ext in (".bin", ".idx")] if p["documents"] else []
    return [*outs, ctx.p("data", "corpus_parts.json")]


def staged_files(ctx: Ctx) -> list[str]:
    """What the GPU node needs (relative to WORK): the corpus parts that have documents, retrieval sets."""
    parts = corpus_parts(ctx)
    corpus = [f"data/{n}{ext}" for n in CORPUS_PARTS if parts[n]["documents"] for ext in (".bin", ".idx")]
    return ["tokenizer.model", "corpus/heldout.jsonl", "data/corpus_parts.json", *corpus, "data/retrieval_s0.bin",
            "data/retrieval_s0.idx", "data/retrieval_s1.bin", "data/retrieval_s1.idx"]


def step_stage(ctx: Ctx) -> list[Path]:
    """Everything the GPU node needs, as one tar.gz cut into parts in REPO/.mini0, .mini1, ..."""
    dest = ctx.p("staged") if ctx.smoke else REPO
    for old in dest.glob(f"{STAGE_PREFIX}[0-9]*"):
        shutil.rmtree(old)
    tar = ctx.p("mini_data.tar.gz")
    staged = staged_files(ctx)
    with tarfile.open(tar, "w:gz", compresslevel=6) as t:
        for rel in staged:
            t.add(ctx.p(rel), arcname=rel)
    manifest = {"sha256": sha256(tar), "bytes": tar.stat().st_size, "files": staged, "parts": []}
    outs = []
    with tar.open("rb") as f:
        for k in range(1 << 10):
            chunk = f.read(PART_BYTES)
            if not chunk:
                break
            d = dest / f"{STAGE_PREFIX}{k}"
            d.mkdir(parents=True)
            (d / f"part{k:02d}").write_bytes(chunk)
            manifest["parts"].append(f"part{k:02d}")
            outs.append(d)
    for d in outs:
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tar.unlink()
    log(f"staged {manifest['bytes'] / 2**20:.1f} MiB in {len(outs)} parts: {', '.join(d.name for d in outs)} "
        f"(one device call each; README.md)")
    return outs


def step_unstage(ctx: Ctx, sources: list[Path] | None = None) -> list[Path]:
    """Reassemble the staged parts (REPO/.mini*, /tmp/mini-parts) into WORK and check them."""
    roots = sources or ([ctx.p("staged")] if ctx.smoke else [REPO, Path("/tmp/mini-parts")])
    parts: dict[str, Path] = {}
    manifest = None
    for root in roots:
        for m in sorted(root.glob(f"{STAGE_PREFIX}[0-9]*/manifest.json")) + sorted(root.glob("manifest.json")):
            manifest = json.loads(m.read_text())
            for p in m.parent.glob("part[0-9]*"):
                parts.setdefault(p.name, p)
    if manifest is None:
        raise SystemExit(f"no staged parts ({STAGE_PREFIX}N/manifest.json) under {', '.join(map(str, roots))}")
    missing = [p for p in manifest["parts"] if p not in parts]
    if missing:
        raise SystemExit(f"staged parts missing: {', '.join(missing)} (carry each {STAGE_PREFIX}N folder; README.md)")
    tar = ctx.p("mini_data.tar.gz")
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tar.open("wb") as f:
        for name in manifest["parts"]:
            f.write(parts[name].read_bytes())
    if sha256(tar) != manifest["sha256"]:
        raise SystemExit(f"{tar}: checksum differs from the manifest; a part is damaged, stage again")
    dest = ctx.p("unstaged") if ctx.smoke else ctx.work
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()
    if ctx.smoke:  # the round trip must give the same bytes
        for rel in manifest["files"]:
            if sha256(dest / rel) != sha256(ctx.p(rel)):
                raise SystemExit(f"unstaged {rel} differs from the staged file")
    return [dest / rel for rel in manifest["files"]]


# ---- steps on the GPU node: training -----------------------------------------------------------------
def _train(ctx: Ctx, recipe: str, overrides: list[str], run_name: str) -> list[Path]:
    from megaindex.config import load_config

    from megaindex import checkpoint

    path, overrides = ctx.recipe(recipe, overrides)
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


def _seq(ctx: Ctx, recipe: str, overrides: list[str]) -> int:
    """The training length the run had: the recipe with the scale's overrides and this command's --set."""
    from megaindex.config import load_config

    return load_config(HERE / f"{recipe}.yaml", [*overrides, *ctx.extra]).data.seq_length


def step_eval_base(ctx: Ctx) -> list[Path]:
    L = _seq(ctx, "stage0", ctx.scale.stage0)
    return [_eval(ctx, "stage0", f"base_{i}", ropes, L) for i, ropes in enumerate(ctx.scale.base_ropes)]


def step_eval_longpt(ctx: Ctx) -> list[Path]:
    return [_eval(ctx, "stage1", "longpt", "naive", _seq(ctx, "stage1", ctx.scale.stage1))]


def make_ablation_step(name: str):
    def step(ctx: Ctx) -> list[Path]:
        budget = [] if ctx.scale.ablation_iters is None else [f"train.train_iters={ctx.scale.ablation_iters}"]
        overrides = [*ctx.scale.stage1, *budget, *(f"{k}={json.dumps(v)}" for k, v in (ABLATIONS[name] or {}).items()),
                     *ctx.scale.ablations.get(name, [])]
        outs = _train(ctx, "stage1", overrides, f"ablation_{name}")
        return outs + [_eval(ctx, f"ablation_{name}", f"ablation_{name}", "naive", _seq(ctx, "stage1", overrides))]
    step.__doc__ = f"stage 1 with {ABLATIONS[name]}, then its evaluation"
    return step


def step_report(ctx: Ctx, publish: bool = False) -> list[Path]:
    import report

    return report.write_report(ctx.p("eval"), ctx.p("report"), publish_to=REPO / "benchmarks" if publish else None)


STEPS = {
    "corpus": step_corpus, "tokenizer": step_tokenizer, "retrieval": step_retrieval, "preprocess": step_preprocess,
    "stage": step_stage, "unstage": step_unstage, "stage0": step_stage0, "stage1": step_stage1,
    "eval_base": step_eval_base, "eval_longpt": step_eval_longpt,
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
    ap.add_argument("steps", nargs="+", help=f"all, status, or steps: {', '.join(STEPS)}")
    ap.add_argument("--smoke", action="store_true", help="toy scale on CPU (the CI fixture corpus, no downloads)")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default runs/mini_replication or runs/mini_smoke)")
    ap.add_argument("--force", action="store_true", help="redo steps already done")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every training step of this command, e.g. train.exit_at_step=1024 "
                         "to split a long stage over two device calls (the step is then not done until rerun)")
    ap.add_argument("--publish", action="store_true", help="report: also write benchmarks/replication_summary.json and PNGs")
    args = ap.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    work = (args.work or REPO / "runs" / ("mini_smoke" if args.smoke else "mini_replication")).resolve()
    ctx = Ctx(work, scale, args.force, args.extra)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    names = list(STEPS) if args.steps == ["all"] else args.steps
    if names == ["status"]:
        status(ctx)
        return 0
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    for name in names:
        run_step(ctx, name, **({"publish": True} if name == "report" and args.publish else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
