"""Bringing stage 0's base back from the GPU node, where everything is lost after the session: `pack_base`
(there) exports the base as a Hugging Face directory in bf16 (`megaindex convert to-hf`, the project's own
converter: stock transformers loads it) and packs it as one tar.gz cut into parts of at most 15 MiB in
WORK/base_parts/ (part00, part01, ... + manifest.json, parts.py), one device call's $OUT (at most 8 files of
at most 16 MiB); `unpack_base` (here) reassembles them, checks the tar's and every file's SHA-256 and
extracts the directory to WORK/base_hf (or --dest) for the CPU probes."""

from __future__ import annotations

import shutil
from pathlib import Path

from child_process import megaindex
from context import HERE, NEEDLE_FORMS, Ctx, log
from parts import extract, pack_and_split, reassemble_and_check, sha256

BASE_PART_BYTES = 15 * 2**20  # $OUT brings back files of at most 16 MiB
OUT_FILES = 8                 # ... and at most 8 of them: the parts and manifest.json
EXPORT_DTYPE = "bf16"         # the 35M base: ~70 MB of safetensors (fp32 would be twice that, 9-10 parts)


def step_pack_base(ctx: Ctx) -> list[Path]:
    """Stage 0's last checkpoint as an HF directory (WORK/export/base_hf, bf16), packed in WORK/base_parts/."""
    hf, dest = ctx.p("export", "base_hf"), ctx.p("base_parts")
    megaindex(ctx, "convert", "to-hf", ctx.p("stage0", "checkpoints"), hf, "--dtype", EXPORT_DTYPE, "--force",
              hint="rerun `run.py pack_base` (stage 0's checkpoint is kept)")
    files = sorted(str(f.relative_to(hf)) for f in hf.rglob("*") if f.is_file())
    shutil.rmtree(dest, ignore_errors=True)
    manifest, parts = pack_and_split(hf, files, ctx.p("base_hf.tar.gz"), BASE_PART_BYTES, lambda k: dest,
                                     extra={"dtype": EXPORT_DTYPE, "file_sha256": {f: sha256(hf / f) for f in files}})
    if len(parts) + 1 > OUT_FILES:
        raise SystemExit(f"{dest}: {len(parts)} parts and the manifest are more than the {OUT_FILES} files one "
                         f"device call's $OUT returns; copy them in two calls (README.md)")
    log(f"base packed: {len(files)} files ({EXPORT_DTYPE}), {manifest['bytes'] / 2**20:.1f} MiB tar.gz in "
        f"{len(parts)} parts of <= {BASE_PART_BYTES >> 20} MiB in {dest}. Bring them back in one device call: "
        f"cp {dest}/* $OUT/   then here: python {HERE.relative_to(HERE.parents[1])}/run.py unpack_base DIR")
    return [*parts, dest / "manifest.json"]


def step_unpack_base(ctx: Ctx, sources: list[Path] | None = None, dest: Path | None = None) -> list[Path]:
    """The parts in `sources` (default WORK/base_parts) reassembled, checked and extracted to `dest`
    (default WORK/base_hf; replaced only once everything checked)."""
    roots = sources or [ctx.p("base_parts")]
    manifests = [r / "manifest.json" for r in roots if (r / "manifest.json").is_file()]
    if not manifests:
        raise SystemExit(f"no manifest.json under {', '.join(map(str, roots))}: give the folder(s) holding "
                         f"pack_base's part00, part01, ... and manifest.json")
    tar = ctx.p("base_hf.tar.gz")
    manifest = reassemble_and_check(manifests, tar, "base", "copy every part of WORK/base_parts from the GPU node",
                                    "copy the parts again")
    dest = dest or ctx.p("base_hf")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    extract(tar, tmp)
    for rel, want in manifest.get("file_sha256", {}).items():
        if sha256(tmp / rel) != want:
            raise SystemExit(f"{tmp / rel}: SHA-256 differs from pack_base's manifest; copy the parts again")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    here, corpus = HERE.relative_to(HERE.parents[1]), ctx.p("corpus")
    log(f"base unpacked: {len(manifest['files'])} files ({manifest.get('dtype', '?')}) in {dest}; probe it (fp32) with\n"
        f"  python {here}/needle_form_probe.py {dest} --haystack {corpus}/heldout.jsonl --filler {corpus}/pretrain.jsonl "
        f"--forms {','.join(NEEDLE_FORMS)} --lengths 1024,2048 --out {ctx.p('probe', 'needle_form_base')}\n"
        f"  python {here}/in_format_probe.py {dest} --filler {corpus}/pretrain.jsonl --data {ctx.scale.probe_data} "
        f"--lengths {ctx.scale.probe_lengths} --docs {ctx.scale.probe_docs} --out {ctx.p('probe', 'in_format_base')}\n"
        f"({corpus}: the held-out and training text of the run, from `run.py corpus` or unstage)")
    return [dest / rel for rel in manifest["files"]]
