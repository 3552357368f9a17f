#!/usr/bin/env python3
"""Is the in-format probe's filler memorised? A model's perplexity on training text against held-out text.

The in-format probe (in_format_probe.py) builds its documents from training-split filler, which the base
has seen several times; if it had memorised that text, the probe would flatter it against the evaluation
(whose haystacks are held out). This measures the same model, the same way, on both files: per language,
up to `--docs` documents of at least 2048 tokens each (drawn with a fixed seed), the perplexity of their
first 1024 and 2048 tokens (one forward per document through the evaluation's transformers engine, NLL
pooled over the tokens; no BOS, as training).
The training side is measured twice: over all its long documents, and over those of the held-out file's
sources only (`source` up to its first "/": the training split has books, the Bible and Shakespeare, that
the held-out split lacks), so that a lower perplexity there is the text being seen, not another kind of text.

    python examples/mini_replication/filler_perplexity.py /work/gpu5/base_hf \\
        --train runs/mini_replication/corpus/pretrain.jsonl --heldout runs/mini_replication/corpus/heldout.jsonl \\
        --out benchmarks/replication_gate6/filler_perplexity.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megaindex.data.retrieval_filler import language_of  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402

LENGTHS = (1024, 2048)


def source_of(row: dict) -> str:
    return row.get("source", "").split("/")[0]


def long_documents(path: Path, tok: IndexTokenizer, lang: str, docs: int, seed: int = 0,
                   sources: set[str] | None = None) -> list[list[int]]:
    """Up to `docs` documents of `path` in `lang` (of `sources` only, when given) with at least max(LENGTHS)
    tokens: their first max(LENGTHS) tokens."""
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    texts = [r["text"] for r in rows if sources is None or source_of(r) in sources]
    texts = [t for t in texts if language_of(t) == lang and len(t) >= max(LENGTHS)]  # >= 1 character a token
    random.Random(f"{seed}:{lang}").shuffle(texts)
    out = []
    for t in texts:
        ids = tok.encode(t)
        if len(ids) >= max(LENGTHS):
            out.append(ids[:max(LENGTHS)])
            if len(out) == docs:
                break
    return out


def perplexity(engine, documents: list[list[int]]) -> dict[str, float | int]:
    """{"documents", "1024", "2048"}: exp(mean NLL) of each document's first L tokens, pooled over documents
    by token (the evaluation's per-token NLL, `engine.nll`, and its `perplexity`)."""
    import torch

    from megaindex.eval.perplexity import perplexity as exp_mean

    nll = [engine.nll(ids) for ids in documents]
    return {"documents": len(nll),
            **{str(L): round(exp_mean(torch.cat([x[:L - 1] for x in nll])), 2) if nll else None for L in LENGTHS}}


def run(model_dir: Path, train: Path, heldout: Path, docs: int) -> dict:
    import torch

    from megaindex.eval.hf_engine import HFEngine

    for p, what in ((train, "--train"), (heldout, "--heldout"), (model_dir / "config.json", "model")):
        if not p.is_file():
            raise SystemExit(f"error: {what} {p}: no such file")
    engine = HFEngine.from_hf_dir(model_dir, dtype=torch.float32)  # as `megaindex eval --engine hf` loads it
    tok = engine.tokenizer
    held_sources = sorted({source_of(json.loads(line)) for line in heldout.open(encoding="utf-8") if line.strip()})
    t0, out = time.time(), {}
    for name, path, sources in (("train", train, None), ("train, held-out sources", train, set(held_sources)),
                                ("heldout", heldout, None)):
        for lang in ("en", "zh"):
            out[f"{name} {lang}"] = perplexity(engine, long_documents(path, tok, lang, docs, sources=sources))
            print(f"[ppl] {name} {lang}: {out[f'{name} {lang}']} ({time.time() - t0:.0f} s)")
    return {"model": str(model_dir), "train": str(train), "heldout": str(heldout), "heldout_sources": held_sources,
            "perplexity": out, "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="Hugging Face model directory with its tokenizer.model")
    ap.add_argument("--train", type=Path, required=True, help="the training split (the probe's filler)")
    ap.add_argument("--heldout", type=Path, required=True, help="the evaluation's held-out text")
    ap.add_argument("--docs", type=int, default=12, help="documents per file and language")
    ap.add_argument("--out", type=Path, required=True, help="JSON to write")
    a = ap.parse_args(argv)
    result = run(a.model, a.train, a.heldout, a.docs)
    result.update(command=" ".join(["python", *sys.argv]) if argv is None else f"main({argv})",
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
