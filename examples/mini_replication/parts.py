"""Files carried between machines as one tar.gz cut into parts with a manifest (SHA-256, bytes, files,
parts), the one implementation behind `stage`/`unstage` (the data to the GPU node, staging.py) and
`pack_base`/`unpack_base` (stage 0's base back from it, base_transfer.py): `pack_and_split` writes the
parts, `reassemble_and_check` puts them together and refuses a missing or damaged part."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack_and_split(root: Path, files: list[str], tar: Path, part_bytes: int, part_dir: Callable[[int], Path],
                   extra: dict | None = None) -> tuple[dict, list[Path]]:
    """`files` (relative to `root`) as one tar.gz at `tar` (gzip level 6), cut into parts of `part_bytes`:
    part k goes to part_dir(k)/partKK (its folder made here), every such folder gets manifest.json, and the
    tar is removed. `extra` adds keys to the manifest. Returns the manifest and the part files."""
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar, "w:gz", compresslevel=6) as t:
        for rel in files:
            t.add(root / rel, arcname=rel)
    manifest = {"sha256": sha256(tar), "bytes": tar.stat().st_size, "files": files, "parts": [], **(extra or {})}
    outs = []
    with tar.open("rb") as f:
        for k in range(1 << 10):
            chunk = f.read(part_bytes)
            if not chunk:
                break
            d = part_dir(k)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"part{k:02d}").write_bytes(chunk)
            manifest["parts"].append(f"part{k:02d}")
            outs.append(d / f"part{k:02d}")
    for d in dict.fromkeys(o.parent for o in outs):
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tar.unlink()
    return manifest, outs


def reassemble_and_check(manifests: list[Path], tar: Path, what: str, missing_hint: str, damaged_hint: str) -> dict:
    """The parts beside `manifests` (the last manifest names them; a part found twice is taken from the
    first folder) joined into `tar`, whose SHA-256 must be the manifest's. Returns the manifest; a missing
    part or a checksum that differs stops with one line: "{what} parts missing: ... (missing_hint)", or the
    damaged tar and damaged_hint."""
    parts: dict[str, Path] = {}
    manifest = None
    for m in manifests:
        manifest = json.loads(m.read_text())
        for p in m.parent.glob("part[0-9]*"):
            parts.setdefault(p.name, p)
    if manifest is None:
        raise SystemExit(f"no manifest.json given ({missing_hint})")
    missing = [p for p in manifest["parts"] if p not in parts]
    if missing:
        raise SystemExit(f"{what} parts missing: {', '.join(missing)} ({missing_hint})")
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tar.open("wb") as f:
        for name in manifest["parts"]:
            f.write(parts[name].read_bytes())
    if sha256(tar) != manifest["sha256"]:
        tar.unlink()
        raise SystemExit(f"{tar}: checksum differs from the manifest; a part is damaged, {damaged_hint}")
    return manifest


def extract(tar: Path, dest: Path) -> None:
    """The tar's files under `dest` (tarfile's "data" filter: nothing outside it), then the tar removed."""
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()
