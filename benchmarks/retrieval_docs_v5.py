#!/usr/bin/env python3
"""Retrieval documents v5 against v4, v6 (and v6b) against v5, v7 against both, v8 against v7, v9 against v8, on one
filler and tokenizer.

    python benchmarks/retrieval_docs_v5.py --filler runs/mini_replication/corpus/pretrain.jsonl \\
        --tokenizer runs/mini_replication/tokenizer.model --count 2000 -o benchmarks/retrieval_docs_v5.json
    python benchmarks/retrieval_docs_v5.py --filler ... --tokenizer ... --count 3000 --mixes v5 v6 v6b --rounds 1 \\
        -o benchmarks/retrieval_docs_v6.json --plot benchmarks/retrieval_docs_v6.png
    python benchmarks/retrieval_docs_v5.py --filler ... --tokenizer ... --count 3000 --mixes v5 v6b v7 --rounds 1 \\
        -o benchmarks/retrieval_docs_v7.json --plot benchmarks/retrieval_docs_v7.png
    python benchmarks/retrieval_docs_v5.py --filler ... --tokenizer ... --count 3000 --mixes v7 v8 --rounds 1 \
        -o benchmarks/retrieval_docs_v8.json --plot benchmarks/retrieval_docs_v8.png
    python benchmarks/retrieval_docs_v5.py --filler ... --tokenizer ... --count 3000 --mixes v8 v9 --rounds 1 \
        -o benchmarks/retrieval_docs_v9.json --plot benchmarks/retrieval_docs_v9.png

Generates documents 0..count-1 with the stage-0 settings (max_tokens 2048, min_tokens 128, seed 0)
--rounds times each, the --mixes in turn: v4 (the v5 code with random_value_share 0 and
open_value_share 0.6, which gives v4's documents byte for byte), v5 (the defaults), v6 (length_draw
"uniform"), v6b (v6 with early_fact_share 0.5), v7 (v5 with frame_share 0.5), in one process, so the speeds compare on the same
machine and load (per wall second and per CPU second of the process; the latter is steadier on a
shared machine). With v5 among them:
the v5 mix by value kind (tokens, EOD included) and the byte-fallback share of the tokens of Chinese
fact values per kind and of the evaluation's Chinese needle words (each encoded on its own, a lone
leading '▁' piece not counted: after "是" in a document there is none).

For every mix: document lengths (tokens, EOD included), facts per 1M tokens, the distance in tokens
from each fact's statement to its answer (v6's question: how often does a document train retrieval
over ~1.5-2K tokens?), and the share of real tokens in stage 0's 2048-token rows packed whole
(`row_fill_2048`, megaindex.data.pretrain.whole_document_rows). The statement is the body's last
occurrence of the value with the subject within 80 characters (a statement's own value, not a filler
span that happens to equal it); the answer is "{subject} is {value}" / "{subject}是{value}" in the
questions; the distance is the tokens of the text before the answer's value minus those before the
statement's. For a mix with framing (v7): the share of documents and tokens framed, the distinct frames
(megaindex.data.retrieval_frames.Frame.key) among the documents, framed documents by preamble kind and
question style, and three framed documents, abridged (`frame_examples`). For every mix (`subjects`, v8's question):
the facts' subjects closed / open / random, among all facts and the keyed documents' (per language), and for a mix
with random-key subjects (v8: context.V8_RETRIEVAL's shares) their count, depth and length in tokens and three
documents that hold them (`random_examples`); `value_kinds`: the value kinds' shares of documents and tokens.
For every mix (`frequent_context`, v9's question): the share of an answer's value tokens (after its first) whose
previous token occurs at least FREQUENT times in the same document, by value kind (random values split into drawn
by frequency and uniformly), the share of random values and random owners drawn by frequency, and (v9) two
documents with frequency-drawn values (`frequency_examples`). For every mix (`particles`, v9's second part): the share
of Chinese values holding 在 / 的 / 了, starting with 在, and of Chinese answers whose first piece is the merged "是在",
by value kind, the share of random-key subjects in prepositional frames (per language), and two documents
(`particle_examples`: a Chinese value starting with 在, a prepositional subject).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex.data.held_out import needle_word_lists  # noqa: E402
from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402

MIXES = {"v4": {"open_value_share": 0.6, "random_value_share": 0.0}, "v5": {}, "v6": {"length_draw": "uniform"},
         "v6b": {"length_draw": "uniform", "early_fact_share": 0.5}, "v7": {"frame_share": 0.5},
         "v8": {"frame_share": 0.5, "random_subject_share": 0.4, "random_value_share": 0.25, "open_value_share": 0.35}}
MIXES["v9"] = {**MIXES["v8"], "random_frequency_share": 0.5, "zh_value_particles": True,  # context.V9_RETRIEVAL's
               "prepositional_frame_share": 0.3}
TITLES = {"v4": "v4", "v5": "log-uniform (v5)", "v6": "uniform (v6)", "v6b": "uniform + early facts (v6b)",
          "v7": "v5 + half framed (v7)", "v8": "v7 + random-key subjects (v8)", "v9": "v8 + frequency draws, zh particles, prepositional keys (v9)"}
FREQUENT = 5  # a token this many times in its document is "frequent" there (a one-token lookup after it is ambiguous)
NEAR = 80  # characters: a statement holds its subject and value within this of each other


def byte_share(tok: IndexTokenizer, texts: list[str]) -> tuple[float, int]:
    """(share of byte-fallback tokens, tokens) over `texts`, each encoded alone."""
    ids = [i for t in texts for i in tok.encode(t) if tok.sp.id_to_piece(i) != "\u2581"]
    return sum(tok.sp.is_byte(i) for i in ids) / max(len(ids), 1), len(ids)


def fact_distances(tok: IndexTokenizer, doc: dict) -> list[int | None]:
    """Per fact of `doc`, tokens from its statement's value to its answer's value (None: not located)."""
    text = doc["text"]
    low = text.lower()
    tail = low.rindex("\n\n")  # the questions follow the body's last blank line
    body = low[:tail]
    out: list[int | None] = []
    for subject, value in doc["facts"]:
        s, v = subject.lower(), value.lower()
        answer = low.find(s + ("是" if doc["lang"] == "zh" else " is ") + v, tail)
        at = [m.start() for m in re.finditer(re.escape(v), body)]
        spots = [i for i in at if s in body[max(0, i - NEAR - len(s)):i + len(v) + NEAR + len(s)]]
        if answer < 0 or not spots:
            out.append(None)
            continue
        answer += len(s) + (1 if doc["lang"] == "zh" else 4)
        out.append(len(tok.encode(text[:answer])) - len(tok.encode(text[:spots[-1]])))
    return out


def share_at_least(xs: list[int], *cuts: int) -> dict[str, float]:
    return {f">={c}": round(sum(x >= c for x in xs) / max(len(xs), 1), 4) for c in cuts}


def quantiles(xs: list[int]) -> dict[str, int]:
    xs = sorted(xs)
    return {f"p{q}": xs[min(len(xs) - 1, len(xs) * q // 100)] for q in (10, 25, 50, 75, 90)} if xs else {}


def lengths_and_distances(tok: IndexTokenizer, docs: list[dict]) -> dict:
    """Document lengths, facts per 1M tokens and fact-to-answer distances of `docs` (see the docstring)."""
    lengths = [len(tok.encode(d["text"])) + 1 for d in docs]
    dist = [x for d in docs for x in fact_distances(tok, d)]
    found = [x for x in dist if x is not None]
    facts = sum(len(d["facts"]) for d in docs)
    return {"documents": len(docs), "tokens": sum(lengths), "mean_length": round(sum(lengths) / len(lengths), 1),
            "length_quantiles": quantiles(lengths), "length_share": share_at_least(lengths, 1024, 1536, 1792),
            "token_share_in_documents": {f">={c}": round(sum(x for x in lengths if x >= c) / sum(lengths), 4)
                                         for c in (1024, 1536, 1792)},
            "facts_per_document": round(facts / len(docs), 3), "facts_per_1M_tokens": round(facts / sum(lengths) * 1e6),
            "facts_located": f"{len(found)} of {len(dist)}", "distance_quantiles": quantiles(found),
            "distance_share": share_at_least(found, 512, 1024, 1536),
            "distances_per_1M_tokens": {k: round(v * len(found) / sum(lengths) * 1e6)
                                        for k, v in share_at_least(found, 1024, 1536).items()},
            "row_fill_2048": row_fill(lengths), "_lengths": lengths, "_distances": found}


def row_fill(lengths: list[int], seq_length: int = 2048, pad: int = 2, seed: int = 0) -> float:
    """Share of real tokens in `seq_length` rows packed as stage 0 packs them (data.whole_documents: first fit
    from a 16-document look-ahead, each document padded to `pad`), the documents in a seeded random order."""
    import numpy as np

    from megaindex.data.pretrain import whole_document_rows

    padded = np.asarray([-(-n // pad) * pad for n in lengths])
    order = np.random.default_rng(seed).permutation(len(lengths))
    _, bounds = whole_document_rows(padded, order, seq_length, seq_length)
    return round(sum(lengths) / ((len(bounds) - 1) * seq_length), 4)


def frame_stats(tok: IndexTokenizer, docs: list[dict]) -> dict:
    """How `docs` (made with frame_share on) are framed: shares, distinct frames, kinds, three examples."""
    framed = [d for d in docs if d.get("frame")]
    tokens = {id(d): len(tok.encode(d["text"])) + 1 for d in docs}
    kinds = Counter(d["frame"].split(":")[1] for d in framed)
    styles = Counter("completion cue" if d["frame"].rsplit("|", 1)[1].startswith("k") else "question" for d in framed)
    examples = [next(d for d in framed if want(d)) for want in (
        lambda d: d["lang"] == "en" and d["form"] == "keyed" and len(d["facts"]) >= 2 and "instruction" in d["frame"],
        lambda d: d["lang"] == "zh" and len(d["facts"]) >= 2,
        lambda d: d["lang"] == "en" and d["form"] == "same_form" and "header" in d["frame"])]
    return {"documents": len(docs), "framed": len(framed), "framed_share": round(len(framed) / len(docs), 4),
            "framed_token_share": round(sum(tokens[id(d)] for d in framed) / sum(tokens.values()), 4),
            "distinct_frames": len({d["frame"] for d in framed}),
            "distinct_preambles": len({d["frame"].split("|")[0] for d in framed}),
            "by_preamble_kind": dict(kinds.most_common()), "by_question_style": dict(styles.most_common()),
            "with_closing": sum("|cNone|" not in d["frame"] for d in framed),
            "by_lang": dict(Counter(d["lang"] for d in framed)), "by_form": dict(Counter(d["form"] for d in framed)),
            "frame_examples": [{"frame": d["frame"], "facts": d["facts"], "text": abridge(d["text"])} for d in examples]}


def subject_stats(tok: IndexTokenizer, docs: list[dict]) -> dict:
    """The facts' subjects (v8): closed / open / random among all facts and among the keyed documents' (same-form
    ones keep their short subjects), per language, the random ones' depth (a thing between attribute and owner) and
    token count, and three v8 documents with random-key subjects, abridged (`random_examples`)."""
    kinds = [(d, k) for d in docs for k in d.get("subject_kinds",  # before v8: the count of open ones per document
                                                 ["open"] * d["open_facts"] + ["closed"] * (len(d["facts"]) - d["open_facts"]))]
    keyed = [k for d, k in kinds if d["form"] == "keyed"]
    share = lambda ks: {k: round(v / max(len(ks), 1), 4) for k, v in sorted(Counter(ks).items())}  # noqa: E731
    out = {"facts": len(kinds), "all_facts": share([k for _, k in kinds]), "keyed_facts": share(keyed),
           "keyed_facts_by_lang": {lang: share([k for d, k in kinds if d["form"] == "keyed" and d["lang"] == lang])
                                   for lang in ("en", "zh")}}
    randoms = [(d, s) for d in docs for (s, _), k in zip(d["facts"], d.get("subject_kinds", [])) if k == "random"]
    if randoms:
        from megaindex.data import retrieval_words as W

        deep = [any(re.search(rf"\b{t}\b", s) for t in W.EN_THINGS) if d["lang"] == "en" else
                any(t in s for t in W.ZH_THINGS) for d, s in randoms]
        out["random_subjects"] = {"count": len(randoms), "distinct": len({s for _, s in randoms}),
                                  "two_slots_deep": round(sum(deep) / len(deep), 4),
                                  "tokens_per_subject": round(sum(len(tok.encode(s)) for _, s in randoms) / len(randoms), 2),
                                  "documents_with_one": round(sum("random" in d.get("subject_kinds", []) for d in docs)
                                                              / len(docs), 4)}
        has = lambda d: sum(k == "random" for k in d["subject_kinds"])  # noqa: E731
        picks = [next(d for d in docs if want(d)) for want in (
            lambda d: d["lang"] == "en" and d["form"] == "keyed" and has(d) >= 2 and not d.get("frame"),
            lambda d: d["lang"] == "zh" and d["form"] == "keyed" and has(d) >= 1,
            lambda d: d["lang"] == "en" and d["form"] == "keyed" and has(d) >= 1 and d.get("frame")
            and any(" of the " in s for (s, _), k in zip(d["facts"], d["subject_kinds"]) if k == "random"))]
        out["random_examples"] = [{"source": d["source"], "frame": d.get("frame"), "kind": d["kind"],
                                   "subject_kinds": d["subject_kinds"], "facts": d["facts"], "text": abridge(d["text"])}
                                  for d in picks]
    return out


def items_in(doc: dict, low: str, _cache: dict = {}) -> Counter[str]:  # noqa: B006 (one document at a time)
    """How often each lowercase word (English) / CJK character (Chinese) occurs in the document's text `low`."""
    if _cache.get("key") != doc["source"]:
        _cache.update(key=doc["source"], counts=Counter(low) if doc["lang"] == "zh" else Counter(re.findall(r"[a-z]+", low)))
    return _cache["counts"]


def frequent_context(tok: IndexTokenizer, docs: list[dict]) -> dict:
    """v9's property: of the answers' value tokens after the first (the first follows "is" / "是"), the share whose
    previous token occurs >= FREQUENT times in the document (where copying by "what followed the previous token" is
    ambiguous), by value kind; random values split into "random-frequency" / "random-uniform" when the documents say.
    The value's tokens are those of the text through the answer's value minus those before it. The same over words
    (`words_after_frequent`: a value's English words / CJK characters after its first, the previous one counted
    among the document's lowercase words / characters), which the draw itself sets; the tokens add the tokenizer's
    pieces inside a word."""
    hits: Counter[str] = Counter()
    total: Counter[str] = Counter()
    words_hit: Counter[str] = Counter()
    words_total: Counter[str] = Counter()
    for d in docs:
        text, low = d["text"], d["text"].lower()
        ids = tok.encode(text)
        counts = Counter(ids)
        tail = low.rindex("\n\n")
        flags = d.get("frequent_values", [None] * len(d["facts"]))
        for (subject, value), f in zip(d["facts"], flags):
            head = subject.lower() + ("是" if d["lang"] == "zh" else " is ")
            at = low.find(head + value.lower(), tail)
            if at < 0:
                continue
            a = len(tok.encode(text[:at + len(head)]))
            b = len(tok.encode(text[:at + len(head) + len(value)]))
            kind = d["kind"] if f is None or d["kind"] != "random" else ("random-frequency" if f else "random-uniform")
            items = list(value) if d["lang"] == "zh" else value.lower().split()
            for j in range(a + 1, min(b, len(ids))):
                for k in (kind, "all"):
                    total[k] += 1
                    hits[k] += counts[ids[j - 1]] >= FREQUENT
            for j in range(1, len(items)):
                for k in (kind, "all"):
                    words_total[k] += 1
                    words_hit[k] += items_in(d, low)[items[j - 1]] >= FREQUENT
    out = {k: {"tokens": total[k], "after_frequent": round(hits[k] / total[k], 4), "words": words_total[k],
               "words_after_frequent": round(words_hit[k] / max(words_total[k], 1), 4)} for k in sorted(total)}
    values = [f for d in docs if d["kind"] == "random" for f in d.get("frequent_values", [False] * len(d["facts"]))]
    owners = [f for d in docs for f, k in zip(d.get("frequent_owners", []), d.get("subject_kinds", [])) if k == "random"]
    out["random_values_by_frequency"] = round(sum(values) / max(len(values), 1), 4)
    out["random_owners_by_frequency"] = round(sum(owners) / max(len(owners), 1), 4)
    picks = [next((d for d in docs if want(d)), None) for want in (
        lambda d: d["lang"] == "en" and d["form"] == "keyed" and sum(d.get("frequent_values", [])) >= 2,
        lambda d: d["lang"] == "zh" and any(d.get("frequent_values", [])))]
    out["frequency_examples"] = [{"source": d["source"], "facts": d["facts"], "frequent_values": d["frequent_values"],
                                  "frequent_owners": d["frequent_owners"], "text": abridge(d["text"])}
                                 for d in picks if d is not None]
    return out


def particle_stats(tok: IndexTokenizer, docs: list[dict]) -> dict:
    """v9's second part: Chinese values holding 在/的/了 (any, each), starting with 在, and answers whose first piece is
    the merged "是在" (the text through the answer's "是" and the value's first character ends in one piece), per value
    kind (random split by frequency draw), over all facts; random-key subjects in prepositional frames per language."""
    rows: dict[str, Counter[str]] = {}
    for d in docs:
        if d["lang"] != "zh":
            continue
        flags = d.get("frequent_values", [None] * len(d["facts"]))
        for (subject, value), f in zip(d["facts"], flags):
            kind = d["kind"] if f is None or d["kind"] != "random" else ("random-frequency" if f else "random-uniform")
            for k in (kind, "all"):
                c = rows.setdefault(k, Counter())
                c["values"] += 1
                c["hold_any"] += bool(set(value) & set("在的了"))
                for ch in "在的了":
                    c[f"hold_{ch}"] += ch in value
                c["start_在"] += value.startswith("在")
                c["merged_是在"] += tok.sp.id_to_piece(tok.encode(f"{subject}是{value[0]}")[-1]) == "是在"
    out = {k: {"values": c["values"], **{x: round(c[x] / c["values"], 4) for x in
                                         ("hold_any", "hold_在", "hold_的", "hold_了", "start_在", "merged_是在")}}
           for k, c in sorted(rows.items())}
    prep = [(d["lang"], p) for d in docs for p, k in zip(d.get("prepositional_subjects", []), d.get("subject_kinds", []))
            if k == "random"]
    out["random_subjects_prepositional"] = {lang: round(sum(p for x, p in prep if x == lang) /
                                                        max(sum(x == lang for x, _ in prep), 1), 4) for lang in ("en", "zh")}
    picks = [next((d for d in docs if want(d)), None) for want in (
        lambda d: d["lang"] == "zh" and d["form"] == "keyed" and any(v.startswith("在") for _, v in d["facts"]),
        lambda d: d["lang"] == "en" and any(d.get("prepositional_subjects", [])))]
    out["particle_examples"] = [{"source": d["source"], "kind": d["kind"], "facts": d["facts"],
                                 "prepositional_subjects": d.get("prepositional_subjects"), "text": abridge(d["text"])}
                                for d in picks if d is not None]
    return out


def kind_shares(tok: IndexTokenizer, docs: list[dict]) -> dict:
    """Value kinds: share of documents and of tokens (EOD included)."""
    tokens = Counter()
    for d in docs:
        tokens[d["kind"]] += len(tok.encode(d["text"])) + 1
    total = sum(tokens.values())
    return {"documents": {k: round(v / len(docs), 4) for k, v in sorted(Counter(d["kind"] for d in docs).items())},
            "tokens": {k: round(v / total, 4) for k, v in sorted(tokens.items())}}


def abridge(text: str, head: int = 240, tail: int = 120) -> str:
    """The text with the middle of its body cut ("[...]"): the preamble, the body's start and end (where a closing
    line is) and every question whole."""
    body, _, questions = text.rpartition("\n\n")
    if len(body) > head + tail + 20:
        body = f"{body[:head]} [...] {body[-tail:]}"
    return f"{body}\n\n{questions}"


def plot(stats: dict[str, dict], path: Path, frames: dict | None = None, subjects: dict | None = None,
         frequent: dict | None = None, particles: dict | None = None) -> None:
    """Lengths and distances per mix; with `frames`, the first framed mix's framing; with `subjects` holding a mix
    with random-key subjects (v8), the keyed documents' subjects by kind per mix and language; with `frequent` holding
    a mix with frequency draws (v9), the share of value tokens after a frequent token per mix and value kind; with
    `particles` holding a mix with particle values (v9's second part), their shares and the prepositional subjects'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keyed = subjects if subjects and any("random_subjects" in x for x in subjects.values()) else None
    freq = frequent if frequent and any("random-frequency" in x for x in frequent.values()) else None
    part = particles if particles and any(x.get("all", {}).get("hold_在") for x in particles.values()) else None
    panels = 2 + bool(frames) + bool(keyed) + bool(freq) + bool(part)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    for k, (name, st) in enumerate(stats.items()):
        style = {"histtype": "step", "linewidth": 1.5, "linestyle": ("-", "--", ":")[k % 3]}  # v6b's lengths are v6's
        axes[0].hist(st["_lengths"], bins=range(0, 2049, 64), **style,
                     weights=[100 / len(st["_lengths"])] * len(st["_lengths"]), label=f"{name} ({len(st['_lengths'])})")
        axes[1].hist(st["_distances"], bins=range(0, 2049, 64), **style,
                     weights=[1e6 / st["tokens"]] * len(st["_distances"]),
                     label=f"{name}: {st['facts_per_1M_tokens']} facts / 1M tokens")
    axes[0].set(title="document length (tokens, EOD included)", ylabel="% of documents per 64 tokens")
    axes[1].set(title="fact statement -> its answer (tokens)", ylabel="facts per 1M tokens per 64 tokens", yscale="log")
    if frames:
        name, fr = next(iter(frames.items()))
        bars = {**{f"preamble: {k}": v for k, v in fr["by_preamble_kind"].items()},
                **{f"asked by {k}": v for k, v in fr["by_question_style"].items()},
                "closing line": fr["with_closing"]}
        axes[2].barh(list(bars)[::-1], [100 * v / fr["framed"] for v in bars.values()][::-1], color="#4A7BF0")
        axes[2].set(title=f"{name}: {fr['framed']} of {fr['documents']} framed, {fr['distinct_frames']} distinct frames",
                    xlabel="% of framed documents")
        axes[2].tick_params(axis="y", labelsize=8)
    if keyed:
        ax, rows = axes[2 + bool(frames)], [(f"{m} {lang}", part) for m, x in keyed.items()
                              for lang, part in x["keyed_facts_by_lang"].items()][::-1]
        left = [0.0] * len(rows)
        for kind, color in (("closed", "#BBBBBB"), ("open", "#0CD79F"), ("random", "#F0496E")):
            share = [100 * part.get(kind, 0) for _, part in rows]
            ax.barh([r for r, _ in rows], share, left=left, color=color, label=kind)
            left = [a + b for a, b in zip(left, share)]
        ax.set(title="keyed documents' facts: subject kind", xlabel="% of facts", xlim=(0, 100))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    if part:
        ax, bars = axes[-1], [(f"{m}: {label}", v) for m, x in part.items() for label, v in (
            ("zh values holding zai/de/le", x["all"]["hold_any"]), ("zh values starting with zai", x["all"]["start_在"]),
            ("zh answers' first piece shi+zai", x["all"]["merged_是在"]),
            ("random keys prepositional, en", x["random_subjects_prepositional"]["en"]),
            ("random keys prepositional, zh", x["random_subjects_prepositional"]["zh"]))][::-1]
        ax.barh([r for r, _ in bars], [100 * v for _, v in bars], color=["#F0496E" if "v9" in r else "#4A7BF0"
                                                                       for r, _ in bars])
        ax.set(title="Chinese value particles (zai/de/le: the glyphs), prepositional keys", xlabel="%")
        ax.tick_params(axis="y", labelsize=8)
    if freq:
        ax, kinds = axes[-1 - bool(part)], ["all", "open", "random-uniform", "random", "random-frequency", "phrase", "word", "number"]
        rows = [(f"{m}: {k}", x[k]["after_frequent"]) for m, x in freq.items() for k in kinds if k in x][::-1]
        ax.barh([r for r, _ in rows], [100 * v for _, v in rows],
                color=["#F0496E" if "frequency" in r else "#4A7BF0" for r, _ in rows])
        ax.set(title=f"value tokens after a token >= {FREQUENT}x in its document", xlabel="% of tokens")
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.title.set_fontsize(10)
    fig.suptitle("retrieval documents, 128-2048 tokens: " + " vs ".join(TITLES[m] for m in stats), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filler", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2, help="the mixes in turn, this many times (speeds vary with load)")
    ap.add_argument("--mixes", nargs="+", choices=sorted(MIXES), default=["v4", "v5"])
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG: histograms of lengths and fact-to-answer distances per mix")
    args = ap.parse_args()
    tok = IndexTokenizer(args.tokenizer)
    filler = FillerText([args.filler])
    print(filler.summary(), flush=True)
    out: dict = {"filler": filler.summary(), "count": args.count, "docs_per_s": {m: [] for m in args.mixes},
                 "docs_per_cpu_s": {m: [] for m in args.mixes}}
    t0 = time.time()
    vocab = {lang: len(filler.vocabulary(lang)) for lang in ("en", "zh")}
    out["vocabulary"] = {**vocab, "build_s": round(time.time() - t0, 2)}
    print(f"vocabulary: {vocab} in {out['vocabulary']['build_s']} s", flush=True)
    docs: dict[str, list[dict]] = {}
    for name in args.mixes * args.rounds:
        cfg = RetrievalDocConfig(max_tokens=2048, min_tokens=128, seed=0, **MIXES[name])
        gen = RetrievalDocGenerator(tok, filler, cfg)
        t0, c0 = time.time(), time.process_time()
        got = [gen.document(i) for i in range(args.count)]
        rate, cpu_rate = args.count / (time.time() - t0), args.count / (time.process_time() - c0)
        out["docs_per_s"][name].append(round(rate, 1))
        out["docs_per_cpu_s"][name].append(round(cpu_rate, 1))
        print(f"{name}: {args.count} documents, {rate:.1f} documents/s ({cpu_rate:.1f} per CPU second)", flush=True)
        docs[name] = got
    stats = {name: lengths_and_distances(tok, got) for name, got in docs.items()}
    out["lengths_and_distances"] = {name: {k: v for k, v in st.items() if not k.startswith("_")}
                                    for name, st in stats.items()}
    frames = {name: frame_stats(tok, got) for name, got in docs.items() if MIXES[name].get("frame_share")}
    out["frames"] = frames
    out["subjects"] = {name: subject_stats(tok, got) for name, got in docs.items()}
    out["value_kinds"] = {name: kind_shares(tok, got) for name, got in docs.items()}
    out["frequent_context"] = {name: frequent_context(tok, got) for name, got in docs.items()}
    out["particles"] = {name: particle_stats(tok, got) for name, got in docs.items()}
    if args.plot:
        plot(stats, args.plot, frames, out["subjects"], out["frequent_context"], out["particles"])
    if "v5" in docs:
        v5_mix(tok, docs["v5"], out)
    print(json.dumps(out, indent=1, ensure_ascii=False))
    if args.output:
        args.output.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return 0


def v5_mix(tok: IndexTokenizer, v5: list[dict], out: dict) -> None:
    """v5's mix by value kind and the byte-fallback shares (the v5 measurement), into `out`."""
    docs = {"v5": v5}
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


if __name__ == "__main__":
    sys.exit(main())
