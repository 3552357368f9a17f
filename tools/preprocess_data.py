#!/usr/bin/env python3
"""Tokenise JSONL (or .jsonl.gz) into a megatron-core IndexedDataset (PREFIX.bin / PREFIX.idx).

    python tools/preprocess_data.py corpus/pretrain.jsonl -o data/pretrain --tokenizer tokenizer.model
    python tools/preprocess_data.py corpus/sft_long.jsonl -o data/sft_long --kind sft --tokenizer tokenizer.model

Pretraining lines are {"text": ...} (EOD `</s>` is appended to every document); SFT lines are
{"messages": [{"role", "content"}, ...]} in Index's chat format. A bad line stops the run with
FILE:LINE and the problem, unless --skip-bad (then it is skipped and counted in the summary).
Nothing is left on disk under PREFIX unless the whole run succeeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex.data.preprocess import PreprocessError, preprocess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="JSONL or .jsonl.gz files, concatenated in this order")
    ap.add_argument("-o", "--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    ap.add_argument("--tokenizer", required=True, help="SentencePiece tokenizer.model (Index layout)")
    ap.add_argument("--kind", choices=["pretrain", "sft"], default="pretrain")
    ap.add_argument("--json-key", default="text", help="text field of pretraining lines")
    ap.add_argument("--workers", type=int, default=2, help="SentencePiece tokeniser threads")
    ap.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of stopping")
    args = ap.parse_args(argv)
    try:
        st = preprocess(args.inputs, args.output_prefix, args.tokenizer, kind=args.kind, workers=args.workers,
                        skip_bad=args.skip_bad, json_key=args.json_key)
    except (PreprocessError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_prefix}.bin/.idx: {st.documents} documents, {st.sequences} sequences, "
          f"{st.tokens} tokens in {st.seconds:.1f}s ({st.tokens_per_second / 1e3:.1f}K tokens/s)")
    if st.skipped:
        print(f"skipped {sum(st.skipped.values())} bad lines: " + ", ".join(f"{k}: {v}" for k, v in st.skipped.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
