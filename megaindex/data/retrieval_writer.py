"""Writing retrieval documents to JSONL: the stream of documents 0, 1, 2, ..., its token counts and mix.

Owns `write_documents` (serial, or made by forked worker processes with byte-identical output: a
document depends only on its index) and the per-file mix line (`count_mix`, `describe_mix`: tokens
per language, haystack, value kind, document form, subject vocabulary, framing and frequency draws). The documents themselves
are megaindex.data.retrieval_docs.RetrievalDocGenerator's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
from pathlib import Path

from megaindex.data.retrieval_docs import RetrievalDocGenerator


_FORKED: RetrievalDocGenerator | None = None  # the generator the forked workers of write_documents use


def _counted(generator: RetrievalDocGenerator, index: int) -> dict:
    """Document `index` with its "tokens" (EOD included), as write_documents writes it."""
    doc = generator.document(index)
    doc["tokens"] = len(generator.tok.encode(doc["text"])) + 1
    return doc


def _counted_chunk(start: int, count: int) -> list[dict]:
    return [_counted(_FORKED, i) for i in range(start, start + count)]


def _stream(generator: RetrievalDocGenerator, workers: int, chunk: int):
    """Documents 0, 1, 2, ... in index order. With workers > 1 they are made by forked processes, in
    rounds of one `chunk` each: a document depends only on its index, so the stream is the same."""
    if workers < 2:
        for i in itertools.count():
            yield _counted(generator, i)
    global _FORKED
    _FORKED = generator
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for start in itertools.count(0, workers * chunk):
            for docs in pool.starmap(_counted_chunk, [(start + k * chunk, chunk) for k in range(workers)]):
                yield from docs


def write_documents(path: str | Path, generator: RetrievalDocGenerator, *, tokens: int | None = None,
                    count: int | None = None, progress=None, mix: dict | None = None,
                    workers: int = 1) -> tuple[int, int]:
    """Write documents 0, 1, ... as JSONL until `count` documents or `tokens` tokens (EOD included).

    Each line is a `RetrievalDocGenerator.document` plus its "tokens". Written to
    PATH.tmp and renamed at the end. Returns (documents, tokens); `mix`, if given, receives the tokens
    per "lang:zh", "haystack:repetitive", "kind:phrase", ... (see `describe_mix`). `workers` > 1 makes
    the documents in that many forked processes: the same file, faster.
    """
    if (tokens is None) == (count is None):
        raise ValueError("give exactly one of tokens= or count=")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    docs = total = 0
    wanted = count if count is not None else tokens // 300  # documents, roughly: a round should not overshoot
    chunk = max(20, min(1000, wanted // max(workers, 1)))
    with tmp.open("w", encoding="utf-8") as f, contextlib.closing(_stream(generator, workers, chunk)) as stream:
        while (count is None or docs < count) and (tokens is None or total < tokens):
            doc = next(stream)
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            docs += 1
            total += doc["tokens"]
            if mix is not None:
                count_mix(mix, doc)
            if progress is not None and docs % 5000 == 0:
                progress(docs, total)
    tmp.replace(path)
    return docs, total


MIX_KEYS = ("lang", "haystack", "kind", "form", "subjects", "frame", "frequency")


def count_mix(mix: dict, doc: dict) -> None:
    """Add a written document's tokens to `mix` under "lang:zh", "form:same_form", "subjects:open", ...,
    and "frame:framed" / "frame:plain" for documents made with frame_share on (v7; the key is absent before),
    "frequency:drawn" / "frequency:none" (a value or owner drawn by frequency or not) with random_frequency_share on (v9)."""
    if "frequent_values" in doc:
        val = "drawn" if any(doc["frequent_values"]) or any(doc["frequent_owners"]) else "none"
        mix[f"frequency:{val}"] = mix.get(f"frequency:{val}", 0) + doc["tokens"]
    for key in MIX_KEYS:
        if key in doc:
            val = ("plain" if doc[key] is None else "framed") if key == "frame" else doc[key]
            mix[f"{key}:{val}"] = mix.get(f"{key}:{val}", 0) + doc["tokens"]


def describe_mix(mix: dict) -> str:
    """One line: the share of tokens per language, haystack, value kind, document form, subject vocabulary,
    (v7) framing and (v9) documents with a frequency draw."""
    total = sum(v for k, v in mix.items() if k.startswith("lang:")) or 1
    groups: dict[str, list[str]] = {}
    order = {key: i for i, key in enumerate(MIX_KEYS)}
    for k, v in sorted(mix.items(), key=lambda kv: (order.get(kv[0].split(":")[0], len(order)), kv[0])):
        key, val = k.split(":")
        groups.setdefault(key, []).append(f"{val} {v / total:.0%}")
    return "; ".join(f"{key} " + ", ".join(vals) for key, vals in groups.items())
