"""The shipped recipes (stage0.yaml, stage1.yaml) as a step reads them: filled in for WORK, with the
corpus written out as its length parts (CORPUS_PARTS, data/corpus_parts.json), and what a resolved
recipe says (a stage's tokens and retrieval share, its training length)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from context import HERE, Ctx

CORPUS_PARTS = ("corpus_short", "corpus_long")  # the partition: the whole corpus is these two
XL_PART = "corpus_xl"  # the documents of >= Scale.xl_min_tokens: a subset of corpus_long, the `far` ablation's corpus


def corpus_parts(ctx: Ctx) -> dict:
    """data/corpus_parts.json: the length threshold and each part's documents and tokens."""
    path = ctx.p("data", "corpus_parts.json")
    if not path.is_file():
        raise SystemExit(f"{path} missing: the corpus is split by document length since the sixth attempt; "
                         f"run `run.py preprocess` (then `stage`) again")
    return json.loads(path.read_text())


def fill_recipe(ctx: Ctx, name: str, overrides: list[str]) -> tuple[Path, list[str]]:
    """The shipped recipe with WORK filled in, written to WORK/recipes/NAME.yaml (what was run).

    A blend entry "W WORK/data/corpus" is the whole corpus: it is written out as the corpus' length
    parts (`preprocess`), "W x s WORK/data/corpus_short" and "W x (1 - s) WORK/data/corpus_long"
    with s the short part's share of the corpus' tokens (data/corpus_parts.json), so that stage
    reads the corpus mix one dataset of it gave (a part with no documents is left out). WORK in the
    overrides (an ablation's data path) is filled in too. A recipe or override that names a part with no
    documents (corpus_xl included) is refused in one line.
    """
    text = (HERE / f"{name.split('.')[0]}.yaml").read_text().replace("WORK/", f"{ctx.work}/")
    overrides = [o.replace("WORK/", f"{ctx.work}/") for o in overrides]  # an ablation's data path names WORK too
    whole = re.compile(r'"(\S+) ' + re.escape(str(ctx.p("data", "corpus"))) + '"')
    named = [n for n in (*CORPUS_PARTS, XL_PART) if any(f'{ctx.p("data", n)}"' in t for t in (text, *overrides))]
    if whole.search(text) or named:
        parts = corpus_parts(ctx)
        where = f"{HERE / name.split('.')[0]}.yaml" + (f" with {' '.join(overrides)}" if overrides else "")
        if XL_PART in named and XL_PART not in parts:
            raise SystemExit(f"{where} trains on {XL_PART}, which {ctx.p('data', 'corpus_parts.json')} does not "
                             f"record (written before it existed): rerun `run.py preprocess stage --force`")
        empty = [n for n in named if not parts[n]["documents"]]
        if empty:
            what, key = {"corpus_short": ("<", "min_tokens"), "corpus_long": (">=", "min_tokens"),
                         XL_PART: (">=", "xl_min_tokens")}[empty[0]]
            raise SystemExit(f"{where} trains on {empty[0]}, which has no documents "
                             f"({ctx.p('data', 'corpus_parts.json')}: none of the corpus' documents has "
                             f"{what} {parts[key]} tokens); change Scale.{'long' if key == 'min_tokens' else 'xl'}"
                             f"_min_tokens and rerun `run.py preprocess stage`")
        total = sum(p["tokens"] for n, p in parts.items() if n in CORPUS_PARTS)
        text = whole.sub(lambda m: ", ".join(
            f'"{float(m[1]) * parts[n]["tokens"] / total:.4g} {ctx.p("data", n)}"'
            for n in CORPUS_PARTS if parts[n]["documents"]), text)
    out = ctx.p("recipes", f"{name}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    from megaindex import atomic  # a rename: two run.py processes (one per GPU) write the same recipe
    atomic.write_text(out, text, durable=False)  # while the other's child may be reading it
    return out, overrides


def stage_tokens(ctx: Ctx, name: str, overrides: list[str]) -> tuple[int, float]:
    """(tokens the stage trains on, share of the retrieval dataset) from the resolved recipe."""
    from megaindex.config import load_config
    from megaindex.data.builder import parse_blend

    cfg = load_config(HERE / f"{name}.yaml", overrides)
    paths, weights = parse_blend(cfg.data.data_path, "data.data_path")
    share = next(w for p, w in zip(paths, weights) if "retrieval" in p) / sum(weights)
    return cfg.train.train_iters * cfg.data.global_batch_tokens, share


def seq_length(ctx: Ctx, recipe: str, overrides: list[str]) -> int:
    """The training length the run had: the recipe with the scale's overrides and this command's --set."""
    from megaindex.config import load_config

    return load_config(HERE / f"{recipe}.yaml", [*overrides, *ctx.extra]).data.seq_length

