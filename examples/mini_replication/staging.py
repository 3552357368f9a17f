"""Staging the data for the GPU node: `stage` packs what it needs (staged_files) into one tar.gz cut
into parts REPO/.mini0, .mini1, ... with a manifest (files, parts, SHA-256), one part per device call;
`unstage` reassembles the parts into WORK and checks the checksum (both through parts.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from context import REPO, Ctx, log
from parts import extract, pack_and_split, reassemble_and_check, sha256
from recipes import CORPUS_PARTS, XL_PART, corpus_parts

PART_BYTES = 45 * 2**20  # one device call carries at most 64 MiB with the working tree
STAGE_PREFIX = ".mini"   # REPO/.mini0, .mini1, ... (git-ignored), one per device call


def staged_files(ctx: Ctx) -> list[str]:
    """What the GPU node needs (relative to WORK): the corpus parts that have documents (corpus_xl too, the
    `far` ablation's, where recorded), retrieval sets, the training text (the probe's filler)."""
    parts = corpus_parts(ctx)
    corpus = [f"data/{n}{ext}" for n in (*CORPUS_PARTS, XL_PART) if parts.get(n, {}).get("documents")
              for ext in (".bin", ".idx")]
    # corpus/pretrain.jsonl: the in-format probe's filler (probe_base), the training split the documents drew on
    return ["tokenizer.model", "corpus/heldout.jsonl", "corpus/pretrain.jsonl", "data/corpus_parts.json", *corpus,
            "data/retrieval_s0.bin", "data/retrieval_s0.idx", "data/retrieval_s1.bin", "data/retrieval_s1.idx"]


def step_stage(ctx: Ctx) -> list[Path]:
    """Everything the GPU node needs, as one tar.gz cut into parts in REPO/.mini0, .mini1, ..."""
    dest = ctx.p("staged") if ctx.smoke else REPO
    for old in dest.glob(f"{STAGE_PREFIX}[0-9]*"):
        shutil.rmtree(old)
    manifest, parts = pack_and_split(ctx.work, staged_files(ctx), ctx.p("mini_data.tar.gz"), PART_BYTES,
                                     lambda k: dest / f"{STAGE_PREFIX}{k}")
    outs = [p.parent for p in parts]
    log(f"staged {manifest['bytes'] / 2**20:.1f} MiB in {len(outs)} parts: {', '.join(d.name for d in outs)} "
        f"(one device call each; README.md)")
    return outs


def step_unstage(ctx: Ctx, sources: list[Path] | None = None) -> list[Path]:
    """Reassemble the staged parts (REPO/.mini*, /tmp/mini-parts) into WORK and check them."""
    roots = sources or ([ctx.p("staged")] if ctx.smoke else [REPO, Path("/tmp/mini-parts")])
    manifests = [m for root in roots for m in
                 sorted(root.glob(f"{STAGE_PREFIX}[0-9]*/manifest.json")) + sorted(root.glob("manifest.json"))]
    if not manifests:
        raise SystemExit(f"no staged parts ({STAGE_PREFIX}N/manifest.json) under {', '.join(map(str, roots))}")
    tar = ctx.p("mini_data.tar.gz")
    manifest = reassemble_and_check(manifests, tar, "staged", f"carry each {STAGE_PREFIX}N folder; README.md",
                                    "stage again")
    dest = ctx.p("unstaged") if ctx.smoke else ctx.work
    extract(tar, dest)
    if ctx.smoke:  # the round trip must give the same bytes
        for rel in manifest["files"]:
            if sha256(dest / rel) != sha256(ctx.p(rel)):
                raise SystemExit(f"unstaged {rel} differs from the staged file")
    return [dest / rel for rel in manifest["files"]]
