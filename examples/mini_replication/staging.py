"""Staging the data for the GPU node: `stage` packs what it needs (staged_files) into one tar.gz cut
into parts REPO/.mini0, .mini1, ... with a manifest (files, parts, SHA-256), one part per device call;
`unstage` reassembles the parts into WORK and checks the checksum."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

from context import REPO, Ctx, log
from recipes import CORPUS_PARTS, corpus_parts

PART_BYTES = 45 * 2**20  # one device call carries at most 64 MiB with the working tree
STAGE_PREFIX = ".mini"   # REPO/.mini0, .mini1, ... (git-ignored), one per device call


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def staged_files(ctx: Ctx) -> list[str]:
    """What the GPU node needs (relative to WORK): the corpus parts that have documents, retrieval sets, the
    training text (the probe's filler)."""
    parts = corpus_parts(ctx)
    corpus = [f"data/{n}{ext}" for n in CORPUS_PARTS if parts[n]["documents"] for ext in (".bin", ".idx")]
    # corpus/pretrain.jsonl: the in-format probe's filler (probe_base), the training split the documents drew on
    return ["tokenizer.model", "corpus/heldout.jsonl", "corpus/pretrain.jsonl", "data/corpus_parts.json", *corpus,
            "data/retrieval_s0.bin", "data/retrieval_s0.idx", "data/retrieval_s1.bin", "data/retrieval_s1.idx"]


def step_stage(ctx: Ctx) -> list[Path]:
    """Everything the GPU node needs, as one tar.gz cut into parts in REPO/.mini0, .mini1, ..."""
    dest = ctx.p("staged") if ctx.smoke else REPO
    for old in dest.glob(f"{STAGE_PREFIX}[0-9]*"):
        shutil.rmtree(old)
    tar = ctx.p("mini_data.tar.gz")
    staged = staged_files(ctx)
    with tarfile.open(tar, "w:gz", compresslevel=6) as t:
        for rel in staged:
            t.add(ctx.p(rel), arcname=rel)
    manifest = {"sha256": sha256(tar), "bytes": tar.stat().st_size, "files": staged, "parts": []}
    outs = []
    with tar.open("rb") as f:
        for k in range(1 << 10):
            chunk = f.read(PART_BYTES)
            if not chunk:
                break
            d = dest / f"{STAGE_PREFIX}{k}"
            d.mkdir(parents=True)
            (d / f"part{k:02d}").write_bytes(chunk)
            manifest["parts"].append(f"part{k:02d}")
            outs.append(d)
    for d in outs:
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tar.unlink()
    log(f"staged {manifest['bytes'] / 2**20:.1f} MiB in {len(outs)} parts: {', '.join(d.name for d in outs)} "
        f"(one device call each; README.md)")
    return outs


def step_unstage(ctx: Ctx, sources: list[Path] | None = None) -> list[Path]:
    """Reassemble the staged parts (REPO/.mini*, /tmp/mini-parts) into WORK and check them."""
    roots = sources or ([ctx.p("staged")] if ctx.smoke else [REPO, Path("/tmp/mini-parts")])
    parts: dict[str, Path] = {}
    manifest = None
    for root in roots:
        for m in sorted(root.glob(f"{STAGE_PREFIX}[0-9]*/manifest.json")) + sorted(root.glob("manifest.json")):
            manifest = json.loads(m.read_text())
            for p in m.parent.glob("part[0-9]*"):
                parts.setdefault(p.name, p)
    if manifest is None:
        raise SystemExit(f"no staged parts ({STAGE_PREFIX}N/manifest.json) under {', '.join(map(str, roots))}")
    missing = [p for p in manifest["parts"] if p not in parts]
    if missing:
        raise SystemExit(f"staged parts missing: {', '.join(missing)} (carry each {STAGE_PREFIX}N folder; README.md)")
    tar = ctx.p("mini_data.tar.gz")
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tar.open("wb") as f:
        for name in manifest["parts"]:
            f.write(parts[name].read_bytes())
    if sha256(tar) != manifest["sha256"]:
        raise SystemExit(f"{tar}: checksum differs from the manifest; a part is damaged, stage again")
    dest = ctx.p("unstaged") if ctx.smoke else ctx.work
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()
    if ctx.smoke:  # the round trip must give the same bytes
        for rel in manifest["files"]:
            if sha256(dest / rel) != sha256(ctx.p(rel)):
                raise SystemExit(f"unstaged {rel} differs from the staged file")
    return [dest / rel for rel in manifest["files"]]
