"""The work a training benchmark runs, built the same way by every side of a comparison.

Owns what benchmarks/train_throughput.py (megaindex) and benchmarks/hf_baseline.py (HF
transformers) must agree on to measure the same work: the command-line arguments that define it
(recipe, data, tokenizer, steps, sequences per step, config overrides), the Config both build from
them (same model shape, sequence length, tokens per step and data rows), the benchmark data built
from the repo's own fixture corpus, and the throughput in both FLOP conventions (the formulas are
megaindex/plan.py's).

The benchmark data, from files in the repo (21 documents, ~0.4M tokens; rows repeat once the
steps read more than an epoch, which does not change the cost of a step):

    python tools/preprocess_data.py tests/fixtures/corpus/pretrain.jsonl -o .bench_data/fixture_pretrain \\
        --tokenizer tests/fixtures/tokenizer.model
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "index_1.9b_long_pt_32k.yaml"
TOKENIZER = REPO / "tests" / "fixtures" / "tokenizer.model"
FIXTURE_CORPUS = REPO / "tests" / "fixtures" / "corpus" / "pretrain.jsonl"
FIXTURE_PREFIX = REPO / ".bench_data" / "fixture_pretrain"
if str(REPO) not in sys.path:  # the benchmarks run as scripts: megaindex from this checkout, installed or not
    sys.path.insert(1, str(REPO))


def add_work_args(ap: argparse.ArgumentParser, *, steps: int = 6, warmup: int = 2, sequences: int = 8) -> None:
    """The arguments that define the work (the same names in every benchmark script)."""
    ap.add_argument("--recipe", default=str(RECIPE), help="megaindex recipe: model shape, seq_length, data and optimizer")
    ap.add_argument("--data", default=str(FIXTURE_PREFIX),
                    help="IndexedDataset prefix (or .jsonl) of pretraining text; default: the repo's fixture corpus, "
                         "built on first use from tests/fixtures/corpus/pretrain.jsonl")
    ap.add_argument("--tokenizer", default=str(TOKENIZER))
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps run, warm-up included")
    ap.add_argument("--warmup", type=int, default=warmup, help="first steps left out of the medians")
    ap.add_argument("--sequences-per-step", type=int, default=sequences, help="global batch in seq_length rows")
    ap.add_argument("overrides", nargs="*", help="config overrides (section.field=value)")


def check_work_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse arguments that leave nothing to measure, with the flag named."""
    if args.steps < 1 or args.sequences_per_step < 1:
        ap.error(f"--steps {args.steps} and --sequences-per-step {args.sequences_per_step} must be >= 1")
    if not 0 <= args.warmup < args.steps:
        ap.error(f"--warmup {args.warmup} must leave at least one measured step of --steps {args.steps}")


def work_config(args: argparse.Namespace, run_dir: Path):
    """(Config, overrides) of the benchmark: the recipe plus the data, run length, a batch of
    `sequences_per_step` rows, no evaluation or checkpoints, then the user's overrides."""
    from megaindex.config import load_config

    overrides = [
        f"data.data_path=[{args.data}]", f"data.tokenizer_model={args.tokenizer}", f"train.train_iters={args.steps}",
        "train.eval_interval=0", "checkpoint.save_interval=0", "checkpoint.pretrained=null",
        f"train.run_dir={run_dir}", "train.overwrite=true", "log.tensorboard=false", "log.plot=false",
        "data.num_workers=2", f"data.cache_dir={run_dir}/cache", *args.overrides,
    ]
    cfg = load_config(args.recipe, overrides)
    overrides.append(f"data.global_batch_tokens={args.sequences_per_step * cfg.data.seq_length}")
    return load_config(args.recipe, overrides), overrides


def fixture_data_command(prefix: Path = FIXTURE_PREFIX) -> list[str]:
    """The documented command that builds the benchmark data from the repo's fixture corpus."""
    return [sys.executable, str(REPO / "tools" / "preprocess_data.py"), str(FIXTURE_CORPUS), "-o", str(prefix),
            "--tokenizer", str(TOKENIZER), "--quiet"]


def ensure_data(data: str) -> str:
    """`data` itself when it exists (a .jsonl, or a prefix with .bin/.idx); a missing prefix is
    built from the fixture corpus with fixture_data_command (printed); anything else is an error."""
    p = Path(data)
    if data.endswith((".jsonl", ".jsonl.gz")):
        if not p.is_file():
            raise SystemExit(f"--data {data}: no such file")
        return data
    if Path(data + ".bin").is_file() and Path(data + ".idx").is_file():
        return data
    cmd = fixture_data_command(p)
    print("building the benchmark data from the repo's fixture corpus: " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"--data {data}: building it from {FIXTURE_CORPUS} failed (exit {r.returncode}, see above)")
    return data


def flop_rates(cfg, tokens: int, seq_length: int, causal_flops: float, seconds: float, gpus: int) -> dict[str, float]:
    """TFLOP/s per GPU of a step of `tokens` tokens in rows of `seq_length` in `seconds`, in both
    conventions of megaindex/plan.py: `causal_flops` is the step's count with causal attention over
    the real documents (Megatron-LM's, ours: plan.step_flops, the trainer's model_tflop), and the
    full s x s attention of every row (NeMo's and torchtitan's published tables)."""
    from megaindex.plan import step_flops_full_attention

    per = seconds * gpus * 1e12
    return {"tflops_per_gpu": causal_flops / per,
            "tflops_per_gpu_full_s2": step_flops_full_attention(cfg, tokens, seq_length) / per}
