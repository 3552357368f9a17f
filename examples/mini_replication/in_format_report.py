"""The in-format retrieval probe's report (examples/mini_replication/in_format_probe.py makes the records).

Owns turning per-question records into numbers and pictures: `scores` (exact, first piece, first character,
forced token accuracy, the kinds of misses), `summarize` (those by value kind, language, document kind,
haystack, fact-to-question distance, question rank, for v7 data framed or plain, and the subject's kind: closed /
open / random, v8), `evaluation_rows`
(the same model's `megaindex eval` needle and passkey rows, grouped alike, to set beside the probe),
`markdown`, `plot` and `write` (JSON + MD + PNG). No model here: `in_format_probe.py --rescore` rebuilds the
tables from a JSON's records.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

DISTANCE_BUCKETS = ((0, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 1 << 30))
BREAKDOWNS = ("value_kind", "lang", "doc_kind", "haystack", "distance", "question_rank", "frame", "subject", "key_frame",
              "zh_value")
# records made before v7 have no "frame", before v8 no "subject", before v9's second part no "key_frame" / "zh_value"
DEFAULTS = {"frame": "plain", "subject": "?", "key_frame": "other", "zh_value": "?"}
MISS_EXAMPLES = 15  # misses listed per length in the markdown


class ProbeError(Exception):
    """Bad input, said in one line."""


def distance_bucket(d: int) -> str:
    lo, hi = next((lo, hi) for lo, hi in DISTANCE_BUCKETS if d < hi)
    return f"{lo}-{hi}" if hi < 1 << 30 else f">={lo}"


# ---- aggregation ------------------------------------------------------------------------------------------


def scores(records: list[dict]) -> dict:
    """Counts and rates (%) over `records`: exact, first piece, first character, forced token accuracy, and of
    the misses how many had the first piece / character wrong, how many only the first piece (the forced rest
    all right), how many gave another fact's value (`miss_kind`, set by summarize) and how many spelled the whole
    value but went on instead of stopping (overrun)."""
    n = len(records)
    misses = [r for r in records if not r["exact"]]
    pct = lambda k, total: round(100.0 * k / total, 1) if total else None  # noqa: E731
    return {"questions": n, "exact": sum(r["exact"] for r in records), "first": sum(r["first"] for r in records),
            "first_char": sum(r["first_char"] for r in records),
            "exact_pct": pct(sum(r["exact"] for r in records), n),
            "first_pct": pct(sum(r["first"] for r in records), n),
            "first_char_pct": pct(sum(r["first_char"] for r in records), n),
            "token_accuracy_pct": round(100.0 * sum(r["token_accuracy"] for r in records) / n, 1) if n else None,
            "misses": len(misses), "misses_first_wrong": sum(not r["first"] for r in misses),
            "misses_first_char_wrong": sum(not r["first_char"] for r in misses),
            "misses_overrun": sum(r["prediction"].lstrip().startswith(r["value"]) for r in misses),
            "misses_first_only": sum(not r["first"] and r["rest_forced_right"] for r in misses),
            "misses_other_fact": sum(r.get("miss_kind") == "other_fact" for r in misses)}


def miss_kind(record: dict, others: list[str]) -> str | None:
    """None for an exact answer; else what the greedy answer was: "other_fact" (another fact's value of the same
    document: the wrong key), "overrun" (the value, then no full stop), or "other" (filler or invented)."""
    if record["exact"]:
        return None
    said = record["prediction"].strip().split("\n")[0].rstrip("。.")
    if any(o and said.startswith(o) for o in others):
        return "other_fact"
    return "overrun" if said.startswith(record["value"]) else "other"


def summarize(records: list[dict]) -> dict:
    """{"all": scores, "<breakdown>": {"<group>": scores}} for one length; marks each record's `miss_kind`."""
    values: dict[str, list[str]] = defaultdict(list)
    for r in records:
        values[r["source"]].append(r["value"])
    for r in records:
        r["miss_kind"] = miss_kind(r, [v for v in values[r["source"]] if v != r["value"]])
    out: dict = {"all": scores(records)}
    for key in BREAKDOWNS:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            groups[str(r.get(key, DEFAULTS[key]) if key in DEFAULTS else r[key])].append(r)  # keys older records lack
        out[key] = {g: scores(rs) for g, rs in sorted(groups.items(), key=lambda kv: _order(key, kv[0]))}
    return out


def evaluation_rows(path: Path, variant: str = "naive") -> dict:
    """The same model's `megaindex eval` per-row results (results_*.jsonl[.gz]) as comparison groups:
    {"<task> <group>": {"<length>": {"questions", "exact_pct", "token_accuracy_pct"}}} for needle and passkey,
    all / by language / by distance bucket (approximate: (1 - actual_depth / 100) * input_length tokens)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("variant") != variant or r.get("task") not in ("needle", "passkey"):
            continue
        d = (1 - r["actual_depth"] / 100) * r["input_length"]
        for g in ("all", r["lang"], f"distance {distance_bucket(int(d))}"):
            groups[(f"{r['task']} {g}", str(r["length"]))].append(r)
    if not groups:
        raise ProbeError(f"--compare {path}: no needle or passkey rows of variant {variant!r}")
    out: dict = defaultdict(dict)
    for (g, L), rs in sorted(groups.items()):
        out[g][L] = {"questions": len(rs), "exact_pct": round(100.0 * sum(r["exact"] for r in rs) / len(rs), 1),
                     "token_accuracy_pct": round(100.0 * sum(r["token_accuracy"] for r in rs) / len(rs), 1)}
    return {"file": str(path), "variant": variant, "groups": dict(out)}


def _order(key: str, group: str):
    if key == "distance":
        return int(group.lstrip(">=").split("-")[0])
    if key == "question_rank":
        return ("1st", "2nd-3rd", "4th+").index(group)
    return group


def markdown(result: dict) -> str:
    """The tables: one per breakdown, the lengths side by side (n, exact %, first piece %, first character %,
    forced token %), and the misses."""
    lengths = list(result["by_length"])
    head = "| {} | " + " | ".join(f"{_k(L)} n | exact | first piece | first char | forced token"
                                  for L in lengths) + " |"
    rule = "|---|" + "---|---|---|---|---|" * len(lengths)
    intro = [f"In-format retrieval probe: `{result['model']}` on held-out retrieval documents "
             f"{result['generator']['version']} (seed {result['seed']}, filler `{result['filler']}`), greedy, fp32, "
             "transformers on CPU.", ""]
    for field in ("command", "date", "machine"):
        if field in result:
            intro.append(f"- {field}: `{result[field]}`" if field == "command" else f"- {field}: {result[field]}")
    intro.append("- documents per length: " + ", ".join(
        f"{_k(L)}: {result['by_length'][L]['documents']} (mean {result['by_length'][L]['mean_document_tokens']} tokens)"
        for L in lengths) + f"; {result['seconds']} s")
    intro.append("- percentages of questions: exact = every greedy token of the value and its full stop right; first "
                 "piece = the first greedy token; first char = the first character it spells; forced token = teacher-"
                 "forced share of the answer's tokens right")
    lines = ["", *intro]
    for key in ("all", *BREAKDOWNS):
        groups: list[str] = []
        for L in lengths:
            part = result["by_length"][L][key]
            for g in (["all"] if key == "all" else part):
                if g not in groups:
                    groups.append(g)
        lines += ["", head.format(key.replace("_", " ")), rule]
        for g in groups:
            cells = []
            for L in lengths:
                part = result["by_length"][L][key]
                sc = part if key == "all" else part.get(g)
                cells.append(" — | — | — | — | — " if sc is None else
                             f" {sc['questions']} | {sc['exact_pct']} | {sc['first_pct']} | {sc['first_char_pct']} | "
                             f"{sc['token_accuracy_pct']} ")
            lines.append(f"| {g} |" + "|".join(cells) + "|")
    if "evaluation" in result:
        ev = result["evaluation"]
        lines += ["", f"The same model on the evaluation (`{ev['file']}`, base + {ev['variant']}; distance "
                  "approximate) "
                  "against this probe: exact % / forced token %", "",
                  "| | " + " | ".join(f"{_k(L)} n | exact | forced token" for L in lengths) + " |",
                  "|---|" + "---|---|---|" * len(lengths)]
        mine = [("probe all", "all", None), ("probe en", "lang", "en"), ("probe zh", "lang", "zh"),
                ("probe prose haystack", "haystack", "prose"), ("probe numbers", "value_kind", "number"),
                ("probe single-key", "doc_kind", "single-key"),
                ("probe distance 1024-2048", "distance", "1024-2048")]
        for label, key, g in mine:
            cells = []
            for L in lengths:
                sc = result["by_length"][L][key] if g is None else result["by_length"][L][key].get(g)
                cells.append(" — | — | — " if sc is None else
                             f" {sc['questions']} | {sc['exact_pct']} | {sc['token_accuracy_pct']} ")
            lines.append(f"| {label} |" + "|".join(cells) + "|")
        shown = [g for g in ev["groups"] if (g.startswith("needle") or g == "passkey all")  # passkey: English only
                 and any(L in ev["groups"][g] for L in lengths)]
        shown.sort(key=lambda g: (g.split()[0], g.split()[1] == "distance", _order("distance", g.split()[-1])
                                  if "distance" in g else g != "needle all", g))
        for g in shown:
            per = ev["groups"][g]
            cells = [" — | — | — " if L not in per else
                     f" {per[L]['questions']} | {per[L]['exact_pct']} | {per[L]['token_accuracy_pct']} "
                     for L in lengths]
            lines.append(f"| eval {g} |" + "|".join(cells) + "|")
    miss = ["", "| misses | " + " | ".join(_k(L) for L in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for label, field in (("misses", "misses"), ("first piece wrong", "misses_first_wrong"),
                         ("first character wrong", "misses_first_char_wrong"),
                         ("another fact's value of the document (the wrong key)", "misses_other_fact"),
                         ("the value right, then no full stop (copied on past its end)", "misses_overrun"),
                         ("only the first piece wrong (forced rest right)", "misses_first_only")):
        miss.append(f"| {label} | " + " | ".join(str(result["by_length"][L]["all"][field]) for L in lengths) + " |")
    for L in lengths:
        wrong = [r for r in result["records"][L] if not r["exact"]][:MISS_EXAMPLES]
        miss += ["", f"Misses at {_k(L)} (first {len(wrong)}): gold → greedy (value kind, language, distance in "
                 "tokens)", ""]
        miss += [f"- `{r['gold']!r}` → `{r['prediction']!r}` ({r['value_kind']}, {r['lang']}, {r['distance_tokens']})"
                 for r in wrong]
    return "\n".join(lines[1:] + miss) + "\n"


def _k(length) -> str:
    n = int(length)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def plot(result: dict, path: Path) -> None:
    """Exact match (bars) and first-piece accuracy (dots) per group, one panel per breakdown, one colour per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = list(result["by_length"])
    framed = any("framed" in result["by_length"][L].get("frame", {}) for L in lengths)  # v7 data: a panel more
    keyed = any("random" in result["by_length"][L].get("subject", {}) for L in lengths)  # v8 data: one more
    keys = ("value_kind", "lang", "doc_kind", "distance") + (("frame",) if framed else ()) + (("subject",) if keyed else ())
    colors = ["#0CD79F", "#F0496E", "#EBB839", "#4A7BF0"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), sharey=True)
    for ax, key in zip(axes, keys):
        groups = list(dict.fromkeys(g for L in lengths for g in result["by_length"][L][key]))
        groups.sort(key=lambda g: _order(key, g))
        width = 0.8 / len(lengths)
        for i, L in enumerate(lengths):
            part = result["by_length"][L][key]
            xs = [j + (i - (len(lengths) - 1) / 2) * width for j in range(len(groups))]
            ex = [part[g]["exact_pct"] if g in part else 0 for g in groups]
            fp = [part[g]["first_pct"] if g in part else float("nan") for g in groups]
            ax.bar(xs, ex, width, color=colors[i % len(colors)], label=f"{_k(L)} exact")
            ax.plot(xs, fp, "o", color="black", ms=3, label="first piece" if i == 0 else None)
            for x, g in zip(xs, groups):
                if g in part:
                    ax.text(x, 1, str(part[g]["questions"]), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(groups)), groups, rotation=30, fontsize=8)
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% of questions (n at the bar foot)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper right", ncol=len(labels))
    fig.suptitle(f"in-format retrieval probe: {result['model']} on held-out {result['generator']['version']} "
                 "documents", fontsize=10, x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    Path(f"{out}.md").write_text(markdown(result), encoding="utf-8")
    plot(result, Path(f"{out}.png"))
    print(markdown(result))
    print(f"[probe] wrote {out}.json, .md, .png")
