"""JSONL -> megatron-core IndexedDataset (.bin/.idx): reading, validating and tokenising one partition.

Owns reading a byte range of a JSONL / .jsonl.gz file, validating each line, tokenising, writing an
IndexedDataset with megatron-core's IndexedDatasetBuilder, and the failure rules:
  * a bad line (invalid JSON, missing/non-string field, non-UTF-8 bytes, a lone-surrogate escape
    such as "\ud800", empty document, malformed chat) raises PreprocessError naming FILE:LINE and
    the problem, or with skip_bad=True is skipped and counted by reason in the returned stats;
  * a damaged file (truncated or non-gzip .gz), an unwritable output and a tokenizer that is not a
    SentencePiece model are one-line errors too (not skippable: the line is not the problem);
  * output is written under a temporary name (`.tmp-HOST-PID`) and renamed at the end, so an
    interrupted run leaves no half dataset; the next run removes temporaries of dead processes.

`preprocess()` is the entry point; megaindex.data.partitions splits big inputs into partitions
processed by worker processes (or by several machines), resumes finished ones and merges them.

kind="pretrain": one document per line (`text` field), one sequence per document, EOD (`</s>`)
appended. kind="sft": one conversation per line (`messages`), stored as the sequences described in
megaindex.data.chat (prefix, prompt, target, prompt, target, ...).

Inside one partition, SentencePiece's native threads (its batch encode releases the GIL) overlap
with JSON parsing of the next ~8 MB chunk; across partitions, worker processes each read, encode and
write their own partition, so no lines or token arrays are pickled between processes (a first
implementation that shipped lines to a process pool reached 50% of the raw encode rate on 2 cores;
benchmarks/RESULTS_data.md).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gzip
import json
import os
import re
import socket
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from megaindex.data import chat
from megaindex.data.tokenizer import EOS, IndexTokenizer


class PreprocessError(ValueError):
    """A bad input line; the message is 'FILE:LINE: problem' plus what to do."""


@dataclasses.dataclass
class PreprocessStats:
    documents: int = 0
    sequences: int = 0
    tokens: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    partitions: int = 0
    partitions_reused: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def add(self, other: "PreprocessStats") -> None:
        for f in ("documents", "sequences", "tokens", "bytes_read"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.skipped.update(other.skipped)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessStats":
        return cls(**{**d, "skipped": collections.Counter(d.get("skipped", {}))})


# ---- worker side ---------------------------------------------------------------------------------
_TOK: IndexTokenizer | None = None
_THREADS = 1


def _init_worker(model_path: str, threads: int = 1) -> None:
    global _TOK, _THREADS
    _TOK, _THREADS = IndexTokenizer(model_path), max(1, threads)


def _check_unicode(text: str, what: str) -> None:
    """json.loads accepts escapes of lone surrogates ("\\ud800"), which no encoder can write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"invalid Unicode: {what} holds a lone surrogate escape (\\u{ord(text[e.start]):04x} at character {e.start})"
        ) from None


def _parse(raw: bytes, kind: str, json_key: str):
    """One line -> the text (pretrain) or (system, turns) (sft); raises ValueError with the reason."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {e.start} of the line); re-encode the file as UTF-8") from None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if kind == "sft":
        try:
            system, turns = chat.validate_messages(rec)
        except chat.ChatFormatError as e:
            raise ValueError(str(e)) from None
        for i, text in enumerate([system] + [t for turn in turns for t in turn]):
            _check_unicode(text, "a message" if i else "the system message")
        return system, turns
    if not isinstance(rec, dict) or json_key not in rec:
        raise ValueError(f'missing field "{json_key}"')
    text = rec[json_key]
    if not isinstance(text, str):
        raise ValueError(f'field "{json_key}" is {type(text).__name__}, not a string')
    if not text.strip():
        raise ValueError("empty document")
    _check_unicode(text, f'field "{json_key}"')
    return text


def _encode_chunk(task):
    """(lineno0, lines) -> (tokens, seq_lengths, seqs_per_doc, errors[(lineno, reason)], bytes)."""
    first_lineno, lines, kind, json_key = task
    parsed, errors = [], []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        try:
            parsed.append(_parse(raw, kind, json_key))
        except ValueError as e:
            errors.append((first_lineno + i, str(e)))
    seqs: list[np.ndarray] = []
    per_doc: list[int] = []
    if kind == "pretrain":
        for ids in _TOK.encode_batch(parsed, num_threads=_THREADS):
            ids.append(EOS)
            seqs.append(np.asarray(ids, dtype=np.int32))
            per_doc.append(1)
    else:
        for system, turns in parsed:
            conv = chat.encode_conversation(system, turns, _TOK.encode)
            seqs.extend(conv)
            per_doc.append(len(conv))
    tokens = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
    return tokens, np.array([len(s) for s in seqs], np.int32), per_doc, errors, sum(map(len, lines))


# ---- main side -----------------------------------------------------------------------------------
def _ordered_map(fn, tasks, ahead: int):
    """map() with `ahead` chunks in flight on threads: while SentencePiece encodes one chunk (GIL
    released), the next chunk's JSON is parsed and the previous one is written."""
    with concurrent.futures.ThreadPoolExecutor(ahead) as ex:
        pending = collections.deque()
        for t in tasks:
            pending.append(ex.submit(fn, t))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def is_gzip(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def line_number(path: str | Path, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` of a plain file."""
    if offset == 0:
        return 1
    n, left = 1, offset
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(left, 16 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def _chunks(path: Path, start: int, end: int | None, kind: str, json_key: str, chunk_bytes: int):
    """(line number relative to `start`, lines, kind, json_key) chunks of bytes [start, end) of a
    plain file (start and end at line starts), or of a whole .gz file; a damaged gzip is an error."""
    lineno, lines, size = 1, [], 0
    try:
        if is_gzip(path):
            f = gzip.open(path, "rb")
        else:
            f = open(path, "rb")
            f.seek(start)
        with f:
            pos = start
            for raw in f:
                lines.append(raw)
                size += len(raw)
                pos += len(raw)
                if size >= chunk_bytes:
                    yield (lineno, lines, kind, json_key)
                    lineno, lines, size = lineno + len(lines), [], 0
                if end is not None and not is_gzip(path) and pos >= end:
                    break
    except (OSError, EOFError, zlib.error) as e:
        if not is_gzip(path):
            raise
        what = "truncated (it ends before the gzip end marker)" if isinstance(e, EOFError) else f"not a valid gzip file ({e})"
        raise PreprocessError(
            f"{path}: {what}, after {lineno + len(lines) - 1} complete lines; re-create or re-download it "
            f"(a .gz file is read as a whole: nothing of it is written)."
        ) from None
    if lines:
        yield (lineno, lines, kind, json_key)


class _ThroughputLog:
    """Prints MB read, tokens, tokens/s and ETA every `every` seconds (stderr)."""

    def __init__(self, total_bytes: int, enabled: bool, every: float = 2.0):
        self.total, self.enabled, self.every = total_bytes, enabled, every
        self.t0 = self.last = time.time()

    def update(self, done_bytes: int, tokens: int, force: bool = False, note: str = "") -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every and not force):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        frac = done_bytes / max(self.total, 1)
        eta = dt * (1 - frac) / max(frac, 1e-9)
        print(
            f"  {done_bytes / 1e6:8.1f}/{self.total / 1e6:.1f} MB  {tokens / 1e6:8.2f}M tokens  "
            f"{tokens / dt / 1e3:8.1f}K tok/s  ETA {eta:5.0f}s{note}",
            file=sys.stderr, flush=True,
        )


def publish_dataset(builder, tmp: str, prefix: str) -> None:
    """Finish `builder` (written under the temporary name `tmp`) and rename it to PREFIX.bin/.idx:
    .bin first, .idx last: a reader needs the .idx, so a prefix is only visible once complete."""
    builder.finalize(tmp + ".idx")
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")


def discard_dataset(builder, tmp: str) -> None:
    """Close and remove a half-written dataset (after any error, interrupts included)."""
    builder.data_file.close()
    for ext in (".bin", ".idx"):
        Path(tmp + ext).unlink(missing_ok=True)


def temp_name(prefix: str) -> str:
    """The temporary name a process writes `prefix` under (host and pid: see clean_stale_temporaries)."""
    return f"{prefix}.tmp-{socket.gethostname()}-{os.getpid()}"


_TMP = re.compile(r"\.tmp-(?P<host>.+)-(?P<pid>\d+)(\.(bin|idx|json))?$|\.tmp(?P<oldpid>\d+)\.(bin|idx)$")


def clean_stale_temporaries(prefix: str, log=print) -> list[Path]:
    """Remove this host's temporaries under `prefix` whose writing process is gone (SIGKILL, OOM)."""
    out = Path(prefix)
    removed = []
    if not out.parent.is_dir():
        return removed
    host = socket.gethostname()
    for p in out.parent.glob(f"{out.name}*.tmp*"):
        m = _TMP.search(p.name)
        if not m or (m["host"] is not None and m["host"] != host):
            continue  # another machine's (a multi-node run on a shared file system): it may be alive
        pid = int(m["pid"] or m["oldpid"])
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log(f"removed {len(removed)} temporary files of a dead run (e.g. {removed[0].name})")
    return removed


def writable_dir(prefix: str) -> None:
    """Create the output directory or fail in one line: an unwritable -o is not a traceback."""
    d = Path(prefix).parent
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PreprocessError(f"cannot write the output {prefix}.bin/.idx: {d}: {e.strerror or e}; choose a writable -o.") from None


def encode_partition(units, prefix: str, tokenizer_model: str, *, kind: str, json_key: str, skip_bad: bool,
                     threads: int, chunk_bytes: int, on_chunk=None) -> PreprocessStats:
    """Tokenise `units` [(path, start, end)] into PREFIX.bin/.idx (atomically); returns its stats.

    `on_chunk(nbytes, ntokens)` is called after every chunk (progress)."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    if _TOK is None or _TOK.model_path != str(tokenizer_model):
        _init_worker(str(tokenizer_model), threads)
    tmp = temp_name(prefix)
    stats = PreprocessStats()
    t0 = time.time()
    try:
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype=DType.optimal_dtype(_TOK.vocab_size))
    except OSError as e:
        raise PreprocessError(f"cannot write {tmp}.bin: {e.strerror or e}; choose a writable -o.") from None
    try:
        for path, start, end in units:
            first_line = None
            for tokens, seq_lengths, per_doc, errors, nbytes in _ordered_map(
                    _encode_chunk, _chunks(Path(path), start, end, kind, json_key, chunk_bytes), ahead=2):
                for rel, reason in errors:
                    if first_line is None:
                        first_line = line_number(path, start)
                    if not skip_bad:
                        raise PreprocessError(
                            f"{path}:{first_line + rel - 1}: {reason}. Fix or remove the line, or pass --skip-bad to skip and count bad lines."
                        )
                    stats.skipped[reason.split(" (")[0]] += 1
                off = s = 0  # write whole documents: add_document takes the tokens and per-sequence lengths
                for n in per_doc:
                    lens = seq_lengths[s:s + n]
                    total = int(lens.sum())
                    builder.add_document(tokens[off:off + total], lens.tolist())
                    off, s = off + total, s + n
                stats.documents += len(per_doc)
                stats.sequences += len(seq_lengths)
                stats.tokens += len(tokens)
                stats.bytes_read += nbytes
                if on_chunk is not None:
                    on_chunk(nbytes, len(tokens))
        publish_dataset(builder, tmp, prefix)
    except BaseException:
        discard_dataset(builder, tmp)
        raise
    stats.seconds = time.time() - t0
    return stats


def preprocess(
    inputs: list[str | Path],
    output_prefix: str | Path,
    tokenizer_model: str | Path,
    *,
    kind: str = "pretrain",
    workers: int = 2,
    skip_bad: bool = False,
    json_key: str = "text",
    chunk_bytes: int = 8 << 20,
    progress: bool = True,
    partitions: int | None = None,
    partition: tuple[int, int] | None = None,
    output: str = "merged",
    keep_partitions: bool = False,
) -> PreprocessStats:
    """Tokenise JSONL files into OUTPUT_PREFIX.bin/.idx (or a blend file of partitions).

    workers <= 1 and no partitions: one pass in this process (SentencePiece threads = 2). Otherwise
    megaindex.data.partitions: `partitions` pieces (default from the input size), `workers`
    processes, `partition=(i, N)` for machine i of N, resumable; see that module.
    """
    from megaindex.data.tokenizer import load_tokenizer

    if kind not in ("pretrain", "sft"):
        raise ValueError(f"kind must be pretrain or sft, got {kind!r}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input {p} does not exist")
    tok = load_tokenizer(tokenizer_model)  # a TokenizerError now, not in a worker
    prefix = str(output_prefix)
    writable_dir(prefix)
    clean_stale_temporaries(prefix, log=(lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None))
    if workers <= 1 and partitions is None and partition is None and output == "merged":
        prog = _ThroughputLog(sum(p.stat().st_size for p in paths), progress)
        done = [0, 0]

        def on_chunk(nbytes, ntokens):
            done[0] += nbytes
            done[1] += ntokens
            prog.update(*done)

        stats = encode_partition([(str(p), 0, None) for p in paths], prefix, tok.model_path, kind=kind, json_key=json_key,
                                 skip_bad=skip_bad, threads=2, chunk_bytes=chunk_bytes, on_chunk=on_chunk)
        if stats.documents == 0:
            for ext in (".bin", ".idx"):
                os.remove(prefix + ext)
            raise PreprocessError(f"no documents in {', '.join(map(str, paths))}; nothing written.")
        prog.update(stats.bytes_read, stats.tokens, force=True)
        stats.partitions = 1
        return stats
    from megaindex.data.partitions import run_partitioned

    return run_partitioned(paths, prefix, tok.model_path, kind=kind, workers=max(workers, 1), skip_bad=skip_bad,
                           json_key=json_key, chunk_bytes=chunk_bytes, progress=progress, partitions=partitions,
                           partition=partition, output=output, keep_partitions=keep_partitions)
