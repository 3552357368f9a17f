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
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import result_line

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "index_1.9b_long_pt_32k.yaml"
TOKENIZER = REPO / "tests" / "fixtures" / "tokenizer.model"
FIXTURE_CORPUS = REPO / "tests" / "fixtures" / "corpus" / "pretrain.jsonl"
FIXTURE_PREFIX = REPO / ".bench_data" / "fixture_pretrain"
ENGINE_MODULES = ("megatron", "transformer_engine")  # what a plain HF script never imports
ROWS_FORMAT = 1
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


def engine_modules_loaded() -> list[str]:
    """Which of ENGINE_MODULES this process has imported (top-level names; empty for a plain HF script)."""
    return sorted({name.split(".")[0] for name in sys.modules} & set(ENGINE_MODULES))


def loaded_libraries(fragment: str) -> list[str] | None:
    """Paths of the shared libraries mapped into this process whose file name contains `fragment`
    (None where /proc/self/maps does not exist)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "/" in line and fragment in line.rsplit("/", 1)[-1]})


def backend_facts() -> dict:
    """What decides which kernels torch runs in this process, for the record of either side: the
    SDPA backends enabled, the cuDNN version torch reports and the cuDNN libraries actually mapped
    (TE can load its own), the matmul precision flags, the engines imported, and the environment
    variables megatron / TE / torch read for this. Call it after the run (asking torch for the
    cuDNN version loads cuDNN).

    Never raises: it runs after the benchmark's work is done, and a fact torch cannot give must not
    cost the record. Each fact that raises is None, its error text in `fact_errors` (e.g. torch's
    "cuDNN version incompatibility ... compiled against (9, 19, 0) but found runtime version
    (9, 14, 0)" when TE's staged cuDNN was loaded first; `cudnn_libraries` then names the files
    actually mapped, i.e. the version that ran)."""
    import torch

    b = torch.backends
    prefixes = ("NVTE_", "CUDNN_", "TORCH_CUDNN", "CUDA_DEVICE_MAX_CONNECTIONS", "PYTORCH_CUDA_ALLOC_CONF",
                "PYTORCH_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG")
    getters = {
        "sdpa_enabled": lambda: {"flash": b.cuda.flash_sdp_enabled(), "mem_efficient": b.cuda.mem_efficient_sdp_enabled(),
                                 "math": b.cuda.math_sdp_enabled(), "cudnn": b.cuda.cudnn_sdp_enabled()},
        "cudnn_version": lambda: b.cudnn.version() if b.cudnn.is_available() else None,
        "cudnn_libraries": lambda: loaded_libraries("libcudnn"),
        "cudnn_benchmark": lambda: b.cudnn.benchmark, "matmul_allow_tf32": lambda: b.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision, "cuda_runtime": lambda: torch.version.cuda,
        "engine_modules_loaded": engine_modules_loaded,
        "env": lambda: {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)},
    }
    facts, errors = {}, {}
    for key, get in getters.items():
        try:
            facts[key] = get()
        except Exception as e:  # noqa: BLE001 (any failure: the record matters more than this fact)
            facts[key], errors[key] = None, f"{type(e).__name__}: {e}"
    return {**facts, "fact_errors": errors}


def rows_meta(cfg, rows: int) -> dict:
    """What decides a rows file's rows: the resolved data section (less the cache and worker count),
    the run length and seed that size and shuffle the sample index, and how many rows (flat
    `section.field` keys, so a mismatch names the field)."""
    decides = {f"data.{k}": v for k, v in cfg.to_dict()["data"].items() if k not in ("cache_dir", "num_workers")}
    decides.update({f"train.{k}": getattr(cfg.train, k) for k in ("train_iters", "train_tokens", "seed")})
    return json.loads(json.dumps({"format": ROWS_FORMAT, "rows": rows, **decides}))  # as the file holds it


def write_rows(args: argparse.Namespace, path: Path) -> dict:
    """Write the work's first steps x sequences_per_step rows to `path` (.npz): `tokens` and
    `targets` (int64, rows x seq_length; targets = the trainer's labels with loss_mask 0 as -100,
    HF's ignore_index) and `meta` (rows_meta of the work's Config, JSON). Row k x sequences + i is
    what the trainer reads for micro-batch i of step k on one GPU. Imports megatron (the dataset):
    run it in its own process, `python benchmarks/same_work.py --write-rows PATH ...`, never in the
    HF baseline's."""
    import numpy as np

    from megaindex.atomic import atomic_file
    from megaindex.data.builder import build_datasets
    from megaindex.data.tokenizer import IndexTokenizer

    cfg, _ = work_config(args, path.parent)
    n = args.steps * args.sequences_per_step
    train_ds, _ = build_datasets(cfg, IndexTokenizer(cfg.data.tokenizer_model))
    samples = [train_ds[i] for i in range(n)]
    tokens = np.stack([np.asarray(s["tokens"], dtype=np.int64) for s in samples])
    targets = np.stack([np.where(np.asarray(s["loss_mask"]) > 0, np.asarray(s["labels"]), -100).astype(np.int64)
                        for s in samples])
    meta = rows_meta(cfg, n)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=tokens, targets=targets, meta=np.array(json.dumps(meta)))
    return meta


def read_rows(cfg, rows: int, path: Path):
    """(tokens, targets) of a rows file written by write_rows for the work of `cfg` (its Config) and
    `rows` rows; numpy only, nothing of megatron. A file written for other work is an error naming
    the config field."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            meta, tokens, targets = json.loads(str(z["meta"])), z["tokens"], z["targets"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not a rows file of benchmarks/same_work.py ({e}): write it with "
                         f"python benchmarks/same_work.py --write-rows {path} ...")
    want = rows_meta(cfg, rows)
    for key, value in want.items():
        if meta.get(key) != value:
            raise SystemExit(f"{path}: written for {key} {meta.get(key)!r}, this run has {value!r}: pass the same "
                             f"work arguments, or delete the file to have it written again")
    shape = (rows, cfg.data.seq_length)
    if tokens.shape != shape or targets.shape != shape:
        raise SystemExit(f"{path}: tokens {tokens.shape} / targets {targets.shape}, expected {shape} each: write it again")
    return tokens, targets


def main() -> int:
    ap = argparse.ArgumentParser(description="Write the benchmark's rows (token ids and loss targets) to a file.")
    ap.add_argument("--write-rows", required=True, type=Path, help=".npz file to write (its directory gets the data cache)")
    add_work_args(ap)
    args = ap.parse_args()
    check_work_args(ap, args)
    args.data = ensure_data(args.data)
    t0 = time.perf_counter()
    meta = write_rows(args, args.write_rows)
    print(f"wrote {meta['rows']} rows of {meta['data.seq_length']} tokens to {args.write_rows}", flush=True)
    result_line.emit({"path": str(args.write_rows), "rows": meta["rows"], "seq_length": meta["data.seq_length"],
                                  "seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
