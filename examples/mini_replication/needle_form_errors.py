#!/usr/bin/env python3
"""Where a needle-form probe's answers go wrong (issue #16, v9's question): after a function word or not?

Reads the rows of a needle_form_probe.py (or `megaindex eval`) results JSON and, per form and language, splits the
answers by whether the gold value holds a word right after a function word (English: a word after one of
retrieval_words.EDGE_STOPWORDS, "the"/"a"/"at"/...; Chinese: a character after one of retrieval_subjects'
ZH_FUNCTION_CHARS or 的/了/在), gives the exact-match share of each part, and, over the misses, where the first
wrong word (character) of the prediction sits: after a function word, or elsewhere (the first word, after a
content word). The rows hold the gold and the forced-argmax prediction but not the prompt, so how often the
previous token occurs in the context is not measured here (benchmarks/retrieval_docs_v5.py measures it for the
training documents).

    python examples/mini_replication/needle_form_errors.py runs/needle_form.json [--forms eval,train_frequent]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megaindex.data.retrieval_subjects import ZH_FUNCTION_CHARS  # noqa: E402
from megaindex.data.retrieval_words import EDGE_STOPWORDS  # noqa: E402

ZH_FUNCTION = ZH_FUNCTION_CHARS | set("的了在是")


def items(text: str, lang: str) -> list[str]:
    """English: lowercase words without the closing full stop; Chinese: the characters but the full stop."""
    text = text.strip().rstrip(".。")
    return list(text) if lang == "zh" else text.lower().split()


def is_function(item: str, lang: str) -> bool:
    return item in (ZH_FUNCTION if lang == "zh" else EDGE_STOPWORDS)


def first_wrong(gold: list[str], pred: list[str]) -> int | None:
    """The index of the first gold item the prediction does not match (None: all match)."""
    for i, g in enumerate(gold):
        if i >= len(pred) or pred[i] != g:
            return i
    return None


def analyse(rows: list[dict], forms: list[str] | None = None) -> dict:
    """{form: {lang: {"after_function": {"n", "exact"}, "no_function": {...}, "misses": n, "first_wrong_after_function",
    "first_wrong_first", "first_wrong_after_content"}}}; a row's gold value is the part of its gold answer after the
    answer prefix, which the rows do not hold, so the whole gold is read (the prefix is right: forced)."""
    out: dict = collections.defaultdict(dict)
    for form in forms or sorted({r.get("form", "eval") for r in rows}):
        for lang in ("en", "zh"):
            got = [r for r in rows if r.get("form", "eval") == form and r["lang"] == lang and r["task"] == "needle"]
            if not got:
                continue
            part = {"after_function": [], "no_function": []}
            where = collections.Counter()
            for r in got:
                gold, pred = items(r["gold"], lang), items(r["prediction"], lang)
                has = any(is_function(g, lang) for g in gold[:-1])
                part["after_function" if has else "no_function"].append(bool(r["exact"]))
                i = first_wrong(gold, pred)
                if i is not None and not r["exact"]:
                    where["first" if i == 0 else "after_function" if is_function(gold[i - 1], lang) else "after_content"] += 1
            misses = sum(where.values())
            out[form][lang] = {**{k: {"n": len(v), "exact": round(100 * sum(v) / len(v), 1) if v else None}
                                  for k, v in part.items()},
                               "misses": misses,
                               **{f"first_wrong_{k}": where[k] for k in ("first", "after_function", "after_content")}}
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a needle_form_probe.py / megaindex eval results JSON")
    ap.add_argument("--forms", help="comma-separated forms (default: every form in the file)")
    args = ap.parse_args(argv)
    data = json.loads(args.results.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    result = analyse(rows, args.forms.split(",") if args.forms else None)
    print("| form | lang | gold with a word after a function word: n / exact % | without: n / exact % | misses | "
          "first wrong: first word / after a function word / after a content word |")
    print("|---|---|---|---|---|---|")
    for form, langs in result.items():
        for lang, x in langs.items():
            a, b = x["after_function"], x["no_function"]
            print(f"| {form} | {lang} | {a['n']} / {a['exact']} | {b['n']} / {b['exact']} | {x['misses']} | "
                  f"{x['first_wrong_first']} / {x['first_wrong_after_function']} / {x['first_wrong_after_content']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
