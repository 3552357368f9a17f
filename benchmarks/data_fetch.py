#!/usr/bin/env python3
"""Benchmark: time to fetch one 32K packed sample (goal < 5 ms, i.e. < 1% of a training step).

Builds the Long-PT dataset (and optionally the Long-SFT one) exactly as training does
(build_datasets, seq_length 32768, CP 8 so every piece is padded to 16), then times `dataset[i]`
for random i after one warm-up pass over the indices (the page cache holds the .bin, as it does
after the first steps of a run).

    python benchmarks/data_fetch.py --pretrain /work/corpus_full/pt --sft /work/corpus_full/sft_long \\
        --tokenizer tests/fixtures/tokenizer.model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex.config import load_config  # noqa: E402
from megaindex.data.builder import build_datasets  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402


def bench(name: str, ds, n: int) -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), n)
    for i in idx:  # warm-up: page cache and lazily loaded indices
        ds[int(i)]
    times = []
    for i in idx:
        t0 = time.perf_counter()
        s = ds[int(i)]
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times)
    pieces = len(s["cu_seqlens"]) - 1
    print(f"{name:<9} {len(ds):>6} samples  fetch ms: mean {t.mean():.3f}  p50 {np.median(t):.3f}  "
          f"p99 {np.percentile(t, 99):.3f}  max {t.max():.3f}   (last sample: {pieces} pieces)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain", required=True, help="IndexedDataset prefix of the long documents")
    ap.add_argument("--sft", help="IndexedDataset prefix of chat data (optional)")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--seq-length", type=int, default=32768)
    ap.add_argument("--cp", type=int, default=8)
    ap.add_argument("-n", type=int, default=300)
    args = ap.parse_args()
    tok = IndexTokenizer(args.tokenizer)
    common = [f"data.seq_length={args.seq_length}", f"data.global_batch_tokens={args.seq_length * 8}",
              f"parallel.context_parallel_size={args.cp}", "data.split=100,0,0", "data.num_epochs=1",
              "model.max_position_embeddings=32768"]
    t0 = time.perf_counter()
    pt, _ = build_datasets(load_config(None, [f"data.data_path=['{args.pretrain}']", *common]), tok)
    print(f"pretrain index built/loaded in {time.perf_counter() - t0:.2f}s")
    bench("pretrain", pt, args.n)
    if args.sft:
        sft, _ = build_datasets(load_config(None, ["data.kind=sft", f"data.data_path=['{args.sft}']",
                                                   "data.loss_weighting=longalign", "data.sft_overlength=truncate", *common]), tok)
        bench("sft", sft, args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
