#!/usr/bin/env python3
"""Write synthetic retrieval documents (megaindex/data/retrieval_docs.py) as pretraining JSONL.

    python tools/make_retrieval_docs.py --filler corpus/pretrain.jsonl --tokenizer tokenizer.model \\
        --tokens 40000000 --max-tokens 2048 -o data/retrieval.jsonl

Each line is {"text", "facts": [[subject, value], ...], "lang", "haystack", "kind", "form", "subjects",
"open_facts", "distractors", "tokens", "source"} (and "frame" with --frame-share above 0, "subject_kinds" with --random-subject-share above 0); "tokens" counts the document with its EOD, never above
--max-tokens. Document i depends only on (--seed, i), so two runs with the same arguments write the same file. The filler must be training text only (never the
evaluation's held-out documents).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex import exit_codes  # noqa: E402
from megaindex.data.retrieval_docs import (  # noqa: E402
    LENGTH_DRAWS, FillerText, RetrievalDocConfig, RetrievalDocGenerator)
from megaindex.data.retrieval_writer import write_documents  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer, TokenizerError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filler", nargs="+", required=True, help="JSONL files of training text ({'text'} lines)")
    ap.add_argument("--tokenizer", required=True, help="SentencePiece tokenizer.model (lengths are counted in it)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="JSONL to write")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--tokens", type=int, help="write documents until they hold at least this many tokens")
    what.add_argument("--count", type=int, help="write this many documents")
    ap.add_argument("--max-tokens", type=int, default=2048, help="longest document, EOD included")
    ap.add_argument("--min-tokens", type=int, default=128, help="target lengths are drawn in [min, max]")
    ap.add_argument("--length-draw", choices=LENGTH_DRAWS, default="log-uniform",
                    help="how target lengths are drawn: log-uniform (v1-v5) or uniform (v6)")
    ap.add_argument("--max-facts", type=int, default=8, help="facts per multi-key document: 2..this")
    ap.add_argument("--single-key-share", type=float, default=0.25, help="share of one-fact documents")
    defaults = RetrievalDocConfig()
    shares = ("open_value_share", "random_value_share", "phrase_value_share", "word_value_share", "repetitive_share",
              "chinese_share", "same_form_share", "open_subject_share", "early_fact_share", "frame_share",
              "random_subject_share")
    for name in shares:
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name),
                        help=f"RetrievalDocConfig.{name} (default {getattr(defaults, name)})")
    ap.add_argument("--seed", type=int, default=0, help="different seeds give different streams of documents")
    args = ap.parse_args(argv)
    try:
        cfg = RetrievalDocConfig(max_tokens=args.max_tokens, min_tokens=args.min_tokens, max_facts=args.max_facts,
                                 single_key_share=args.single_key_share, seed=args.seed, length_draw=args.length_draw,
                                 **{name: getattr(args, name) for name in shares})
        filler = FillerText(args.filler)
        print(filler.summary(), file=sys.stderr)
        gen = RetrievalDocGenerator(IndexTokenizer(args.tokenizer), filler, cfg)
    except (ValueError, TokenizerError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.FAILED
    t0 = time.time()
    docs, tokens = write_documents(
        args.output, gen, tokens=args.tokens, count=args.count,
        progress=lambda d, t: print(f"  {d} documents, {t / 1e6:.1f}M tokens, {time.time() - t0:.0f}s",
                                    file=sys.stderr, flush=True))
    print(f"wrote {args.output}: {docs} documents, {tokens} tokens (mean {tokens / max(docs, 1):.0f}) "
          f"in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
