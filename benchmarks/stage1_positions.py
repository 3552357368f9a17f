#!/usr/bin/env python3
"""How far into the 32K window stage 1's tokens sit, whole corpus vs its long documents; FLOPs per token.

    python benchmarks/stage1_positions.py --work runs/mini_replication --whole-corpus PREFIX \\
        -o benchmarks/stage1_positions.json

Builds the training set of examples/mini_replication/stage1.yaml with `build_datasets`, as run.py
fills it in (WORK/data/corpus_long), of the same recipe with the fifth attempt's corpus part
(`--whole-corpus`: the corpus as one IndexedDataset, "0.85 PREFIX", and its split 995,5,0), and of the
`far` ablation (ablations.yaml: WORK/data/corpus_xl, the documents of >= 32K), and reads the first `--rows`
rows of each (1024 = 128 steps x 8 rows: all of stage 1). Per recipe: the share of real tokens (not
padding) at positions >= 8K, 16K and 24K (positions reset per document: a token's distance from its
document's start in the row), the share of rows' tokens from the corpus part, and the passes the rows
make over that part's training split. Also training FLOPs per token (megaindex.plan.step_flops, with
the rows' documents: causal attention per document) for mini-index and mini-index-m on those rows and
on the first `--rows0` rows of stage 0's training set, to estimate the larger model's wall times from
the 34.7M model's measured ones (same FLOP rate assumed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples" / "mini_replication"))


def measure(recipe: Path, overrides: list[str], rows: int, marks=(8192, 16384, 24576)) -> dict:
    """Position shares, corpus-part passes and FLOPs/token of the first `rows` rows of cfg's training set."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megaindex.config import load_config
    from megaindex.data.blend import parse_blend
    from megaindex.data.builder import _split_ranges, build_datasets
    from megaindex.data.length_split import document_lengths
    from megaindex.data.tokenizer import load_tokenizer
    from megaindex.plan import step_flops

    cfg = load_config(recipe, overrides)
    train, _ = build_datasets(cfg, load_tokenizer(cfg.data.tokenizer_model))
    at = np.zeros(len(marks), dtype=np.int64)
    real = from_corpus = sq = 0
    for i in range(rows):
        s = train[i]
        cu, cup, pos = s["cu_seqlens"].numpy(), s["cu_seqlens_padded"].numpy(), s["position_ids"].numpy()
        mask = np.zeros(len(pos), dtype=bool)
        for k in range(len(cu) - 1):
            mask[cup[k]:cup[k] + cu[k + 1] - cu[k]] = True
        n = int(mask.sum())
        real += n
        sq += int((np.diff(cu).astype(np.int64) ** 2).sum())
        at += np.array([int((pos[mask] >= m).sum()) for m in marks])
        if getattr(train, "source", None) is None or train.source(i)[0] == 0:
            from_corpus += n
    paths, _ = parse_blend(cfg.data.data_path, "data.data_path")
    lengths = document_lengths(IndexedDataset(paths[0], multimodal=False, mmap=True))
    a, b = _split_ranges(len(lengths), cfg.data.split)[0]
    flops = {}
    for preset in ("mini-index", "mini-index-m"):
        c = load_config(recipe, [*overrides, f"model.preset={preset}"])
        flops[preset] = step_flops(c, real, sq) / real
    return {"rows": rows, "real_tokens": real, "corpus_part": paths[0],
            "share_at_or_beyond": {str(m): round(int(x) / real, 4) for m, x in zip(marks, at)},
            "corpus_part_token_share": round(from_corpus / real, 4),
            "corpus_part_train_tokens": int(lengths[a:b].sum()),
            "passes_over_corpus_part": round(from_corpus / int(lengths[a:b].sum()), 3),
            "mean_document_length_weighted": round(sq / real, 1),
            "flops_per_token": {k: round(v / 1e6, 2) for k, v in flops.items()}, "flops_unit": "MFLOP"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "mini_replication")
    ap.add_argument("--whole-corpus", help="the corpus as one IndexedDataset prefix (fifth attempt); whole_corpus needs it")
    ap.add_argument("--only", default="long_documents,whole_corpus,xl_documents,stage0",
                    help="which to measure; the others keep their entries of an existing -o file")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--rows0", type=int, default=256, help="stage-0 rows for its FLOPs per token")
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()

    import run

    from megaindex.config import load_config

    only = args.only.split(",")
    if "whole_corpus" in only and not args.whole_corpus:
        ap.error("whole_corpus needs --whole-corpus (or leave it out of --only)")
    ctx = run.Ctx(args.work.resolve(), run.FULL, force=False)
    out: dict = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    with tempfile.TemporaryDirectory() as cache:
        common = [f"data.cache_dir={cache}", "data.num_workers=0"]
        path, _ = run.fill_recipe(ctx, "stage1", [])
        data_path = load_config(path).data.data_path
        retrieval = [e for e in data_path if "retrieval" in e]
        far = [f"{k}={json.dumps(v)}" for k, v in run.ABLATIONS["far"].items()]
        for name, overrides in (("long_documents", []),
                                ("whole_corpus", [f"data.data_path={json.dumps([f'0.85 {args.whole_corpus}', *retrieval])}",
                                                  "data.split=995,5,0"]),  # the fifth attempt's recipe
                                ("xl_documents", run.fill_recipe(ctx, "stage1", far)[1])):  # the far ablation
            if name in only:
                t0 = time.time()
                out[name] = {**measure(path, [*common, *overrides], args.rows), "date": time.strftime("%Y-%m-%d"),
                             "seconds": round(time.time() - t0)}
                print(name, json.dumps(out[name]), flush=True)
        if "stage0" in only:
            path0, _ = run.fill_recipe(ctx, "stage0", [])
            out["stage0"] = measure(path0, common, args.rows0)
            print("stage0", json.dumps(out["stage0"]), flush=True)
    out.update(date=time.strftime("%Y-%m-%d"), work=str(args.work))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
