#!/usr/bin/env python3
"""Retrieval documents v5 against v4 on one filler and tokenizer: mix, byte fallback, generation speed.

    python benchmarks/retrieval_docs_v5.py --filler runs/mini_replication/corpus/pretrain.jsonl \\
        --tokenizer runs/mini_replication/tokenizer.model --count 2000 -o benchmarks/retrieval_docs_v5.json

Generates documents 0..count-1 with the stage-0 settings (max_tokens 2048, min_tokens 128, seed 0)
--rounds times each, alternating v4 (the v5 code with random_value_share 0 and open_value_share 0.6,
which gives v4's documents byte for byte) and v5 (the defaults), in one process, so the speeds compare
on the same machine and load (per wall second and per CPU second of the process; the latter is
steadier on a shared machine). Reports the v5 mix by value kind (tokens, EOD included) and the
byte-fallback share of the tokens of Chinese fact values per kind and of the evaluation's Chinese
needle words (each encoded on its own, a lone leading '▁' piece not counted: after "是" in a
document there is none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex.data.held_out import needle_word_lists  # noqa: E402
from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402

MIXES = {"v4": {"open_value_share": 0.6, "random_value_share": 0.0}, "v5": {}}


def byte_share(tok: IndexTokenizer, texts: list[str]) -> tuple[float, int]:
    """(share of byte-fallback tokens, tokens) over `texts`, each encoded alone."""
    ids = [i for t in texts for i in tok.encode(t) if tok.sp.id_to_piece(i) != "\u2581"]
    return sum(tok.sp.is_byte(i) for i in ids) / max(len(ids), 1), len(ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filler", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2, help="v4 then v5, this many times (speeds vary with load)")
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    tok = IndexTokenizer(args.tokenizer)
    filler = FillerText([args.filler])
    print(filler.summary(), flush=True)
    out: dict = {"filler": filler.summary(), "count": args.count, "docs_per_s": {"v4": [], "v5": []},
                 "docs_per_cpu_s": {"v4": [], "v5": []}}
    t0 = time.time()
    vocab = {lang: len(filler.vocabulary(lang)) for lang in ("en", "zh")}
    out["vocabulary"] = {**vocab, "build_s": round(time.time() - t0, 2)}
    print(f"vocabulary: {vocab} in {out['vocabulary']['build_s']} s", flush=True)
    docs: dict[str, list[dict]] = {}
    for name in ("v4", "v5") * args.rounds:
        cfg = RetrievalDocConfig(max_tokens=2048, min_tokens=128, seed=0, **MIXES[name])
        gen = RetrievalDocGenerator(tok, filler, cfg)
        t0, c0 = time.time(), time.process_time()
        got = [gen.document(i) for i in range(args.count)]
        rate, cpu_rate = args.count / (time.time() - t0), args.count / (time.process_time() - c0)
        out["docs_per_s"][name].append(round(rate, 1))
        out["docs_per_cpu_s"][name].append(round(cpu_rate, 1))
        print(f"{name}: {args.count} documents, {rate:.1f} documents/s ({cpu_rate:.1f} per CPU second)", flush=True)
        docs[name] = got
    tokens: dict[str, int] = {}
    for d in docs["v5"]:
        tokens[d["kind"]] = tokens.get(d["kind"], 0) + len(tok.encode(d["text"])) + 1
    total = sum(tokens.values())
    out["v5_tokens"] = total
    out["v5_kind_token_share"] = {k: round(v / total, 4) for k, v in sorted(tokens.items())}
    out["v5_kind_doc_share"] = {k: round(sum(d["kind"] == k for d in docs["v5"]) / len(docs["v5"]), 4)
                                for k in sorted(tokens)}
    values = {k: [v for d in docs["v5"] if d["lang"] == "zh" and d["kind"] == k for _, v in d["facts"]]
              for k in ("random", "open", "phrase", "word")}
    values["needle words"] = needle_word_lists()["zh"]
    out["zh_byte_fallback"] = {}
    for k, texts in values.items():
        share, n = byte_share(tok, texts)
        out["zh_byte_fallback"][k] = {"values": len(texts), "tokens": n, "byte_share": round(share, 4)}
    en_random = [v for d in docs["v5"] if d["lang"] == "en" and d["kind"] == "random" for _, v in d["facts"]]
    out["en_random_values"] = {"values": len(en_random), "distinct": len(set(en_random)),
                               "tokens_per_value": round(sum(len(tok.encode(v)) for v in en_random)
                                                         / max(len(en_random), 1), 2)}
    print(json.dumps(out, indent=1, ensure_ascii=False))
    if args.output:
        args.output.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
