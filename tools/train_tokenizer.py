#!/usr/bin/env python3
"""Train a SentencePiece BPE tokenizer with Index-1.9B's special-token layout.

For the tiny presets and tests (the real Index tokenizer is not obtainable offline). The layout is
Index's: `<unk>`0 `<s>`1 `</s>`2 `reserved_0`3 `reserved_1`4, the reserved ones as control symbols
(text never encodes to them), byte fallback so any Chinese character round-trips.

Digits are split (`split_digits`, on by default; `--no-split-digits` turns it off), as in Llama's
and most LLM SentencePiece tokenizers: every digit is its own piece (so is the '▁' before a number),
never merged with another digit or with punctuation. Without it BPE learns pieces like '99' and '6.',
so a number tokenises differently by what follows it: the passkey line "The pass key is 90996.
Remember it." gave '▁9' '0' '99' '6.' while the answer " 90996" is '▁9' '0' '99' '6', and a model
that copied the key from the text was scored wrong (the mini replication's third run: 21 of the
base's 66 passkey answers at <= 2K were the key plus '.'). tests/fixtures/tokenizer.model predates the flag (trained
without it; many tests pin its ids, so it is kept).

    python tools/train_tokenizer.py tests/fixtures/corpus/*.jsonl -o tests/fixtures/tokenizer.model --vocab-size 8000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex.atomic import atomic_file  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402


def texts(paths: list[Path]):
    """Every document's text and every chat message's content, one paragraph per line."""
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                parts = [rec["text"]] if "text" in rec else [m["content"] for m in rec.get("messages", [])]
                for part in parts:
                    for para in part.split("\n"):
                        if para.strip():
                            yield para


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="JSONL files ({'text'} or {'messages'})")
    ap.add_argument("-o", "--output", type=Path, required=True, help="where tokenizer.model goes")
    ap.add_argument("--vocab-size", type=int, default=8000, help="8000 for the tiny presets")
    ap.add_argument("--no-split-digits", dest="split_digits", action="store_false",
                    help="let BPE merge digits with each other and with punctuation (the default splits them)")
    ap.add_argument("--character-coverage", type=float, default=0.9995,
                    help="share of the corpus's characters that get their own piece (the rest fall back to bytes): "
                         "SentencePiece's 0.9995 suits one language; a corpus with a small share of CJK text needs "
                         "more (0.9999) or its rarer CJK characters become 3 byte tokens each")
    ap.add_argument("--max-sentences", type=int, default=2_000_000, help="sample at most this many lines")
    args = ap.parse_args(argv)
    if not 0.98 <= args.character_coverage <= 1.0:  # SentencePiece's own check comes only after reading the corpus
        ap.error(f"--character-coverage {args.character_coverage}: SentencePiece accepts 0.98 to 1.0 "
                 f"(0.9995 for one language, 0.9999 or 1.0 for a corpus with a small CJK share)")

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        n = 0
        with corpus.open("w", encoding="utf-8") as f:
            for para in texts(args.inputs):
                f.write(para + "\n")
                n += 1
        print(f"training BPE vocab {args.vocab_size} on {n} lines (split_digits={args.split_digits}) ...", file=sys.stderr)
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "sp"),
            model_type="bpe",
            vocab_size=args.vocab_size,
            character_coverage=args.character_coverage,
            normalization_rule_name="identity",  # exact round trips (decode checks in tests)
            remove_extra_whitespaces=False,  # keep code indentation and blank lines
            byte_fallback=True,
            split_digits=args.split_digits,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            control_symbols=["reserved_0", "reserved_1"],
            input_sentence_size=args.max_sentences,
            shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(args.output) as tmp_out:
            shutil.copyfile(Path(tmp) / "sp.model", tmp_out)
    tok = IndexTokenizer(args.output)  # checks the special-id layout
    print(f"wrote {args.output} ({tok.vocab_size} pieces) in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
