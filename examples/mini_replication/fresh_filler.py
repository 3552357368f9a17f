#!/usr/bin/env python3
"""Unseen filler text for the in-format probe (issue #16): real documents the mini replication's models never read.

The retrieval documents take their filler from the training corpus (tools/prepare_corpus.py), which stage 0
reads ~7 times over (27.7M corpus tokens in 188M corpus-share tokens, plus the retrieval documents' filler
on top), so the base knows that text (replication_gate6/filler_perplexity.json: perplexity 3-5 on training
documents against 5.5-8.7 on held-out ones). The evaluation's haystacks come from held-out documents
(heldout.jsonl), which the probe must not use. This script writes a third kind of text, from Debian packages
that no part of the corpus comes from — the Git manual pages and guides (English, asciidoc) and the Debian
FAQ and the Debian New Maintainers' Guide in Simplified Chinese — so the probe can ask: does the base still
retrieve in its own training format when the text around the facts is new to it?

    python examples/mini_replication/fresh_filler.py runs/fresh_filler     # -> runs/fresh_filler/fresh.jsonl
    python examples/mini_replication/in_format_probe.py BASE --filler runs/fresh_filler/fresh.jsonl ...

Packages are fetched with `apt-get download` (no root needed) and unpacked with `dpkg-deb -x`. Each Git text is
one document; each Chinese book is cut at blank lines into documents of ~4,000 characters. Writes
{"text", "source", "lang"} per line and prints the counts. Refuses a package that the corpus builder fetches.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.prepare_corpus import DEBS  # noqa: E402  (the corpus' own packages, which fresh text must avoid)

PACKAGES = {"git-doc": "en", "debian-faq-zh-cn": "zh", "maint-guide-zh-cn": "zh"}
CJK = re.compile(r"[\u3400-\u9fff]")
CHUNK_CHARS = 4000


class FetchError(RuntimeError):
    """apt-get download or dpkg-deb failed; the message is one line naming the command and apt's last words."""


def fetch(work: Path) -> Path:
    """apt-get download + dpkg-deb -x every package into WORK/root (skipped when already unpacked)."""
    root, dl = work / "root", work / "downloads"
    if (work / ".unpacked").exists():
        return root
    dl.mkdir(parents=True, exist_ok=True)

    def run(cmd: list[str], cwd: Path | None = None) -> None:
        try:
            subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            said = (getattr(e, "stderr", None) or str(e)).strip().splitlines() or ["no message"]
            raise FetchError(f"`{' '.join(cmd)}` failed: {said[-1]} (needs Debian 12 apt sources and dpkg-deb; "
                             f"or unpack the packages into {root} and touch {work / '.unpacked'})") from e

    run(["apt-get", "download", *PACKAGES], cwd=dl)
    for deb in sorted(dl.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(root)])
    (work / ".unpacked").write_text(" ".join(PACKAGES))
    return root


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Consecutive blank-line-separated paragraphs joined until about `size` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= size:
            out.append(cur.strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def documents(root: Path):
    share = root / "usr/share/doc"
    for path in sorted((share / "git-doc").glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > 200:
            yield {"text": text, "source": f"git-doc:{path.stem}", "lang": "en"}
    for source, path in (("debian-faq-zh-cn", share / "debian/FAQ/debian-faq.zh-cn.txt.gz"),
                         ("maint-guide-zh-cn", share / "maint-guide-zh-cn/maint-guide.zh-cn.txt.gz")):
        text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
        for i, piece in enumerate(chunks(text)):
            if len(CJK.findall(piece)) > 0.2 * len(piece):  # the Chinese prose, not command listings
                yield {"text": piece, "source": f"{source}:{i}", "lang": "zh"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="work directory: downloads/, root/ and fresh.jsonl")
    args = ap.parse_args(argv)
    clash = sorted(set(PACKAGES) & set(DEBS))
    if clash:
        print(f"error: {clash} are corpus packages (tools/prepare_corpus.py DEBS); fresh text must come from others",
              file=sys.stderr)
        return 2
    try:
        root = fetch(args.work)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    docs = list(documents(root))
    out = args.work / "fresh.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    for lang in ("en", "zh"):
        sel = [d for d in docs if d["lang"] == lang]
        print(f"{lang}: {len(sel)} documents, {sum(len(d['text']) for d in sel):,} characters")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
