"""results.jsonl -> summary.json: the means people read and the PNGs plot.

Owns `summarize(results, ...)`. Per RoPE variant:
  needle:  grid[length][depth] = mean score over repeats and languages; by_length[length] = mean of
           that length's per-depth means; overall = mean over lengths of by_length (NeedleBench's
           overall); by_lang[lang] = the same overall per language.
  passkey: accuracy_by_length[length] (fraction exact), grid[length][depth] (accuracy), overall.
  ppl:     by_length[length] = exp(mean NLL over all tokens of that length's samples);
           nll_by_position = [[start, end, mean NLL], ...] over the samples of the longest length
           (positions count from each document's start; shorter lengths read prefixes of the same
           documents, so adding them would only reweight the early buckets).
  needle and passkey also: token_accuracy_by_length[length] = mean per-sample token accuracy (share
           of gold answer tokens equal to the forced argmax, 0-1) and token_accuracy = its mean over
           lengths; left out for rows without the field (results.jsonl written before it existed).
Keys are strings in JSON (lengths in model tokens, depths in %).
"""

from __future__ import annotations

import math
from collections import defaultdict


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _key(x: float) -> str:
    return f"{x:g}"


def _grid(rows: list[dict], value) -> dict[str, dict[str, float]]:
    cells: dict[int, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[r["length"]][r["depth"]].append(value(r))
    return {str(L): {_key(d): round(_mean(v), 4) for d, v in sorted(ds.items())} for L, ds in sorted(cells.items())}


def _needlebench(rows: list[dict]) -> dict:
    grid = _grid(rows, lambda r: r["score"])
    by_length = {L: round(_mean(ds.values()), 4) for L, ds in grid.items()}
    return {"overall": round(_mean(by_length.values()), 4), "by_length": by_length, "grid": grid}


def _token_accuracy(rows: list[dict]) -> dict:
    if not rows or any("token_accuracy" not in r for r in rows):
        return {}
    per: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        per[r["length"]].append(r["token_accuracy"])
    by_length = {L: _mean(v) for L, v in sorted(per.items())}
    return {"token_accuracy": round(_mean(by_length.values()), 4),
            "token_accuracy_by_length": {str(L): round(x, 4) for L, x in by_length.items()}}


def summarize(results: list[dict], *, meta: dict | None = None) -> dict:
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        by[(r["task"], r["variant"])].append(r)
    out: dict = {"meta": meta or {}, "needle": {}, "passkey": {}, "ppl": {}}
    for (task, variant), rows in by.items():
        if task == "needle":
            s = _needlebench(rows)
            langs = sorted({r["lang"] for r in rows})
            s["by_lang"] = {lang: _needlebench([r for r in rows if r["lang"] == lang])["overall"] for lang in langs}
            s.update(_token_accuracy(rows))
            s["samples"] = len(rows)
            out["needle"][variant] = s
        elif task == "passkey":
            grid = _grid(rows, lambda r: float(r["exact"]))
            acc = defaultdict(list)
            for r in rows:
                acc[r["length"]].append(float(r["exact"]))
            out["passkey"][variant] = {
                "overall": round(_mean(float(r["exact"]) for r in rows), 4),
                "accuracy_by_length": {str(L): round(_mean(v), 4) for L, v in sorted(acc.items())},
                "grid": grid, **_token_accuracy(rows), "samples": len(rows)}
        elif task == "ppl":
            per_len: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
            buckets: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0])
            longest = max(r["length"] for r in rows)
            for r in rows:
                for a, b, total, n in r["buckets"]:
                    per_len[r["length"]][0] += total
                    per_len[r["length"]][1] += n
                    if r["length"] == longest:
                        buckets[(a, b)][0] += total
                        buckets[(a, b)][1] += n
            out["ppl"][variant] = {
                "by_length": {str(L): round(math.exp(t / n), 4) for L, (t, n) in sorted(per_len.items())},
                "nll_by_position": [[a, b, round(t / n, 5)] for (a, b), (t, n) in sorted(buckets.items())],
                "samples": len(rows)}
    return {k: v for k, v in out.items() if v or k == "meta"}
