#!/usr/bin/env python3
"""Tokenise JSONL (or .jsonl.gz) into a megatron-core IndexedDataset (PREFIX.bin / PREFIX.idx).

    python tools/preprocess_data.py corpus/*.jsonl -o data/pretrain --tokenizer tokenizer.model --workers 16
    python tools/preprocess_data.py corpus/sft_long.jsonl -o data/sft_long --kind sft --tokenizer tokenizer.model

Pretraining lines are {"text": ...} (EOD `</s>` is appended to every document); SFT lines are
{"messages": [{"role", "content"}, ...]} in Index's chat format. A bad line stops the run with
FILE:LINE and the problem, unless --skip-bad (then it is skipped and counted in the summary).

At scale: the input is cut into partitions (--partitions, default one per 256 MiB, at least 16),
tokenised by --workers processes, and merged into PREFIX.bin/.idx (byte-identical to one process)
or, with --output blend, listed in PREFIX.blend for `data.data_path: ["@PREFIX.blend"]`. A failed or
killed run resumes: rerun the same command and finished partitions are kept. Several machines share
one run with --partition I/N on a shared file system, then any one of them merges:

    for i in 0 1 2 3; do ssh node$i python tools/preprocess_data.py corpus/*.jsonl.gz -o /shared/pt \\
        --tokenizer tokenizer.model --workers 32 --partition $i/4 & done; wait
    python tools/preprocess_data.py corpus/*.jsonl.gz -o /shared/pt --tokenizer tokenizer.model   # merges

Nothing is left on disk under PREFIX unless the whole run succeeds (partitions aside).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex import exit_codes  # noqa: E402
from megaindex.data.preprocess import PreprocessError, preprocess  # noqa: E402
from megaindex.data.tokenizer import TokenizerError  # noqa: E402


def _partition(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--partition {text!r} must look like I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--partition {text}: I must be in 0..N-1")
    return i, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="JSONL or .jsonl.gz files, concatenated in this order")
    ap.add_argument("-o", "--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    ap.add_argument("--tokenizer", required=True, help="SentencePiece tokenizer.model (Index layout)")
    ap.add_argument("--kind", choices=["pretrain", "sft"], default="pretrain")
    ap.add_argument("--json-key", default="text", help="text field of pretraining lines")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (1 = this process, 2 SentencePiece threads)")
    ap.add_argument("--partitions", type=int, default=None, help="partitions (default: one per 256 MiB, at least 16; same on every machine)")
    ap.add_argument("--partition", type=_partition, default=None, metavar="I/N", help="this machine's share: partitions k with k %% N == I")
    ap.add_argument("--output", choices=["merged", "blend"], default="merged", help="one merged dataset, or PREFIX.blend listing the partitions")
    ap.add_argument("--keep-partitions", action="store_true", help="keep the partition files after merging")
    ap.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of stopping")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    try:
        st = preprocess(args.inputs, args.output_prefix, args.tokenizer, kind=args.kind, workers=args.workers,
                        skip_bad=args.skip_bad, json_key=args.json_key, progress=not args.quiet, partitions=args.partitions,
                        partition=args.partition, output=args.output, keep_partitions=args.keep_partitions)
    except (PreprocessError, TokenizerError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.FAILED
    what = f"{args.output_prefix}.blend" if args.output == "blend" else f"{args.output_prefix}.bin/.idx"
    if args.partition:
        what = f"machine {args.partition[0]} of {args.partition[1]}'s partitions (counts include finished ones)"
    print(f"wrote {what}: {st.documents} documents, {st.sequences} sequences, {st.tokens} tokens in {st.seconds:.1f}s "
          f"({st.tokens_per_second / 1e3:.1f}K tokens/s; {st.partitions} partitions, {st.partitions_reused} reused)")
    if st.skipped:
        print(f"skipped {sum(st.skipped.values())} bad lines: " + ", ".join(f"{k}: {v}" for k, v in st.skipped.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
