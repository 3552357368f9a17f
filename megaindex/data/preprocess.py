"""JSONL -> megatron-core IndexedDataset (.bin/.idx), with parallel tokenisation.

Owns: reading JSONL / .jsonl.gz, validating each line, tokenising in parallel, writing an
IndexedDataset with megatron-core's IndexedDatasetBuilder, and the failure rules:
  * a bad line (invalid JSON, missing/non-string field, non-UTF-8 bytes, empty document, malformed
    chat) raises PreprocessError naming FILE:LINE and the problem, or with skip_bad=True is skipped
    and counted by reason in the returned stats;
  * output is written under a temporary prefix and renamed at the end, so an interrupted or failed
    run leaves no half dataset behind.

kind="pretrain": one document per line (`text` field), one sequence per document, EOD (`</s>`)
appended. kind="sft": one conversation per line (`messages`), stored as the sequences described in
megaindex.data.chat (prefix, prompt, target, prompt, target, ...).

Parallelism: `workers` native SentencePiece threads (its batch encode releases the GIL) over
chunks of ~8 MB, not worker processes: on a 2-core box, shipping lines to processes and token
arrays back (pickling) cost half the throughput (50% of the raw encode rate measured, against >80%
with threads; benchmarks/RESULTS_data.md). JSON parsing and writing stay in this process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gzip
import json
import os
import sys
import time
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

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


# ---- worker side ---------------------------------------------------------------------------------
_TOK: IndexTokenizer | None = None
_THREADS = 1


def _init_worker(model_path: str, threads: int = 1) -> None:
    global _TOK, _THREADS
    _TOK, _THREADS = IndexTokenizer(model_path), max(1, threads)


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
            return chat.validate_messages(rec)
        except chat.ChatFormatError as e:
            raise ValueError(str(e)) from None
    if not isinstance(rec, dict) or json_key not in rec:
        raise ValueError(f'missing field "{json_key}"')
    text = rec[json_key]
    if not isinstance(text, str):
        raise ValueError(f'field "{json_key}" is {type(text).__name__}, not a string')
    if not text.strip():
        raise ValueError("empty document")
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


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _chunks(path: Path, kind: str, json_key: str, chunk_bytes: int):
    with _open(path) as f:
        lineno, lines, size = 1, [], 0
        for raw in f:
            lines.append(raw)
            size += len(raw)
            if size >= chunk_bytes:
                yield (lineno, lines, kind, json_key)
                lineno, lines, size = lineno + len(lines), [], 0
        if lines:
            yield (lineno, lines, kind, json_key)


class _Progress:
    def __init__(self, total_bytes: int, enabled: bool, every: float = 2.0):
        self.total, self.enabled, self.every = total_bytes, enabled, every
        self.t0 = self.last = time.time()

    def update(self, stats: PreprocessStats, force: bool = False) -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every and not force):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        frac = stats.bytes_read / max(self.total, 1)
        eta = dt * (1 - frac) / max(frac, 1e-9)
        print(
            f"  {stats.bytes_read / 1e6:8.1f}/{self.total / 1e6:.1f} MB  {stats.documents:>8} docs  "
            f"{stats.tokens / 1e6:8.2f}M tokens  {stats.tokens / dt / 1e3:8.1f}K tok/s  ETA {eta:5.0f}s",
            file=sys.stderr, flush=True,
        )


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
) -> PreprocessStats:
    """Tokenise JSONL files into OUTPUT_PREFIX.bin/.idx; see the module docstring for the rules."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    if kind not in ("pretrain", "sft"):
        raise ValueError(f"kind must be pretrain or sft, got {kind!r}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input {p} does not exist")
    tok = IndexTokenizer(tokenizer_model)
    dtype = DType.optimal_dtype(tok.vocab_size)
    prefix = str(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{prefix}.tmp{os.getpid()}"
    stats = PreprocessStats()
    prog = _Progress(sum(p.stat().st_size for p in paths), progress)
    t0 = time.time()
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
    _init_worker(str(tokenizer_model), workers)
    try:
        for path in paths:
            tasks = _chunks(path, kind, json_key, chunk_bytes)
            results = _ordered_map(_encode_chunk, tasks, ahead=2)
            for tokens, seq_lengths, per_doc, errors, nbytes in results:
                for lineno, reason in errors:
                    if not skip_bad:
                        raise PreprocessError(
                            f"{path}:{lineno}: {reason}. Fix or remove the line, or pass --skip-bad to skip and count bad lines."
                        )
                    stats.skipped[reason.split(" (")[0]] += 1
                # Write whole documents: add_document takes the tokens and per-sequence lengths.
                off = s = 0
                for n in per_doc:
                    lens = seq_lengths[s:s + n]
                    total = int(lens.sum())
                    builder.add_document(tokens[off:off + total], lens.tolist())
                    off, s = off + total, s + n
                stats.documents += len(per_doc)
                stats.sequences += len(seq_lengths)
                stats.tokens += len(tokens)
                stats.bytes_read += nbytes
                prog.update(stats)
        if stats.documents == 0:
            raise PreprocessError(f"no documents in {', '.join(map(str, paths))}; nothing written.")
        builder.finalize(tmp + ".idx")
        # .bin first, .idx last: a reader needs the .idx, so a prefix is only visible once complete.
        os.replace(tmp + ".bin", prefix + ".bin")
        os.replace(tmp + ".idx", prefix + ".idx")
    except BaseException:
        builder.data_file.close()
        for ext in (".bin", ".idx"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)
        raise
    stats.seconds = time.time() - t0
    prog.update(stats, force=True)
    return stats
