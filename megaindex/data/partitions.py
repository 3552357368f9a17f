"""Preprocessing at scale: partitions, worker processes, several machines, resume, merge or blend.

Owns splitting the input into partitions, running them on worker processes (and, with
`partition=(i, N)`, only machine i's share of them), skipping partitions a previous run finished,
and the final step: merging the partitions into one IndexedDataset or writing a blend file.

* Plan: plain files are cut at line starts into pieces of about total/P bytes; a .gz file (which
  cannot be entered in the middle) is one piece. Consecutive pieces are grouped into P partitions
  in input order. The plan depends only on the inputs and P (default: one per 256 MiB, at least
  16), never on the worker count, so every machine of a multi-node run computes the same plan.
* Partition k is written as PREFIX.partKKKKK-of-PPPPP.bin/.idx plus a .json (its statistics and a
  fingerprint of its input ranges, the files' sizes and mtimes, the tokenizer and the options),
  the .json last; a rerun skips every partition whose .json matches. Machine i of N runs the
  partitions k with k % N == i; any later run without `partition` merges once all are there.
* Merge: megatron's IndexedDatasetBuilder.add_index concatenates the partitions in order, so the
  merged dataset is byte-identical to a single-process run over the same files. `output="blend"`
  keeps the partitions and writes PREFIX.blend (one partition prefix per line; unweighted, i.e. by
  tokens: the same corpus) for `data.data_path: ["@PREFIX.blend"]`.
* Workers are forked processes (megatron-core is imported once, before the fork); each reads,
  tokenises and writes its own partition, so nothing but statistics crosses processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from megaindex.data import preprocess as pp

PARTITION_BYTES = 256 << 20
MIN_PARTITIONS = 16


def plan_partitions(paths: list[Path], num_partitions: int | None = None) -> list[list[tuple[str, int, int | None]]]:
    """[[(path, start, end), ...] per partition]: plain files cut at line starts, .gz whole."""
    sizes = [p.stat().st_size for p in paths]
    total = max(sum(sizes), 1)
    n = num_partitions or max(MIN_PARTITIONS, math.ceil(total / PARTITION_BYTES))
    target = max(1, math.ceil(total / n))
    units = []
    for p, size in zip(paths, sizes):
        if pp.is_gzip(p):
            units.append((str(p), 0, None, size))
            continue
        start = 0
        with open(p, "rb") as f:
            while start < size:
                end = min(size, start + target)
                if end < size:
                    f.seek(end - 1)  # the line holding byte end-1 ends the piece
                    f.readline()
                    end = f.tell()
                units.append((str(p), start, end, end - start))
                start = end
    parts, cur, cur_bytes = [], [], 0
    for path, start, end, nbytes in units:
        cur.append((path, start, end))
        cur_bytes += nbytes
        if cur_bytes >= target:
            parts.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        parts.append(cur)
    return parts


def part_prefix(prefix: str, k: int, n: int) -> str:
    return f"{prefix}.part{k:05d}-of-{n:05d}"


def fingerprint(units, tokenizer_model: str, options: dict) -> str:
    """What a finished partition was made from: its byte ranges, the files' size and mtime, the
    tokenizer and the options. A rerun reuses a partition only when this matches."""
    files = {u[0] for u in units} | {tokenizer_model}
    stat = {f: [os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in sorted(files)}
    key = json.dumps({"units": [[os.path.abspath(u[0]), u[1], u[2]] for u in units], "files": stat, **options}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _finished(prefix: str, fp: str) -> pp.PreprocessStats | None:
    meta = Path(prefix + ".json")
    if not (meta.is_file() and Path(prefix + ".bin").is_file() and Path(prefix + ".idx").is_file()):
        return None
    try:
        rec = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return pp.PreprocessStats.from_dict(rec["stats"]) if rec.get("fingerprint") == fp else None


# ---- worker side ---------------------------------------------------------------------------------
_DONE = None  # shared byte counter (progress), inherited through fork


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what Pool.terminate and Slurm send


def _init(counter, tokenizer_model: str, threads: int) -> None:
    global _DONE
    # A forked worker inherits the parent's Python signal handlers: under a trainer's PreemptionWatcher (or any
    # handler that only records SIGTERM), Pool.terminate()'s SIGTERM would set a flag and leave a worker that
    # waits for a task forever, and the parent's join would hang (seen in CI, 2026-11-28). Workers die on it.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    _DONE = counter
    pp._init_worker(tokenizer_model, threads)


def _on_chunk(nbytes: int, ntokens: int) -> None:
    with _DONE.get_lock():
        _DONE.value += nbytes


def _run_one(job: dict) -> dict:
    stats = pp.encode_partition(job["units"], job["prefix"], job["tokenizer"], kind=job["kind"], json_key=job["json_key"],
                                skip_bad=job["skip_bad"], threads=job["threads"], chunk_bytes=job["chunk_bytes"],
                                on_chunk=_on_chunk if _DONE is not None else None)
    tmp = pp.temp_name(job["prefix"]) + ".json"
    Path(tmp).write_text(json.dumps({"fingerprint": job["fingerprint"], "stats": stats.to_dict(), "units": job["units"]}))
    os.replace(tmp, job["prefix"] + ".json")  # last: the partition counts as finished only now
    return stats.to_dict()


# ---- main side -----------------------------------------------------------------------------------
def _run_jobs(jobs: list[dict], workers: int, tokenizer_model: str, total_bytes: int, progress: bool) -> list[pp.PreprocessStats]:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401  imported before the fork

    threads = 2 if workers == 1 else 1
    for j in jobs:
        j["threads"] = threads
    prog = pp._ThroughputLog(total_bytes, progress)
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    if workers == 1:  # in this process: no fork, same code
        _init(counter, tokenizer_model, threads)
        out = []
        for j in jobs:
            out.append(pp.PreprocessStats.from_dict(_run_one(j)))
            prog.update(counter.value, sum(s.tokens for s in out), note=f"  {len(out)}/{len(jobs)} partitions")
        return out
    pool = ctx.Pool(workers, initializer=_init, initargs=(counter, tokenizer_model, threads))
    try:
        pending = [pool.apply_async(_run_one, (j,)) for j in jobs]
        results: list = [None] * len(jobs)
        while any(r is None for r in results):
            for i, a in enumerate(pending):
                if results[i] is None and a.ready():
                    results[i] = pp.PreprocessStats.from_dict(a.get())  # re-raises a worker's error here
            done = [r for r in results if r is not None]
            prog.update(counter.value, sum(s.tokens for s in done), note=f"  {len(done)}/{len(jobs)} partitions")
            time.sleep(0.2)
        pool.close()
        return results
    except BaseException:
        pool.terminate()  # finished partitions stay (the next run resumes); the others' temporaries
        pool.join()       # belong to dead processes now and go
        pp.clean_stale_temporaries(jobs[0]["prefix"].rsplit(".part", 1)[0], log=lambda m: None)
        raise
    finally:
        pool.join()


def run_partitioned(paths: list[Path], prefix: str, tokenizer_model: str, *, kind: str, workers: int, skip_bad: bool,
                    json_key: str, chunk_bytes: int, progress: bool, partitions: int | None,
                    partition: tuple[int, int] | None, output: str, keep_partitions: bool) -> pp.PreprocessStats:
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    if output not in ("merged", "blend"):
        raise ValueError(f"output must be merged or blend, got {output!r}")
    plan = plan_partitions(paths, partitions)
    n = len(plan)
    # skip_bad is not part of it: a partition that finished without it had no bad line, so a rerun
    # with --skip-bad after a bad-line error keeps every partition finished before the error.
    options = {"kind": kind, "json_key": json_key, "partitions": n}
    t0 = time.time()
    jobs, reused, stats = [], [], pp.PreprocessStats()
    for k, units in enumerate(plan):
        fp = fingerprint(units, tokenizer_model, options)
        pre = part_prefix(prefix, k, n)
        done = _finished(pre, fp)
        if done is not None:
            reused.append(done)
        elif partition is None or k % partition[1] == partition[0]:
            jobs.append({"units": units, "prefix": pre, "tokenizer": tokenizer_model, "kind": kind, "json_key": json_key,
                         "skip_bad": skip_bad, "chunk_bytes": chunk_bytes, "fingerprint": fp})
    if reused:
        log(f"resuming: {len(reused)} of {n} partitions already finished")
    todo_bytes = sum((os.path.getsize(u[0]) if u[2] is None else u[2] - u[1]) for j in jobs for u in j["units"])
    if jobs:
        log(f"{len(jobs)} partitions ({todo_bytes / 1e6:.1f} MB) on {min(workers, len(jobs))} worker processes"
            + (f", machine {partition[0]} of {partition[1]}" if partition else ""))
    new = _run_jobs(jobs, min(workers, len(jobs)), tokenizer_model, todo_bytes, progress) if jobs else []
    for s in reused + new:
        stats.add(s)
    stats.partitions, stats.partitions_reused = n, len(reused)
    stats.seconds = time.time() - t0
    missing = [part_prefix(prefix, k, n) for k in range(n) if not Path(part_prefix(prefix, k, n) + ".json").is_file()]
    if partition is not None or missing:  # merging is one run's job: two machines must not merge at once
        log(f"{n - len(missing)} of {n} partitions finished; when all machines are done, run the same command "
            f"without --partition to {'merge them' if output == 'merged' else 'write the blend file'}.")
        return stats
    if stats.documents == 0:
        raise pp.PreprocessError(f"no documents in {', '.join(map(str, paths))}; nothing written.")
    parts = [part_prefix(prefix, k, n) for k in range(n)]
    if output == "blend":
        blend = Path(prefix + ".blend")
        tmp = Path(pp.temp_name(prefix) + ".blend")
        tmp.write_text("# megaindex preprocess: one partition per line (unweighted = by tokens); data.data_path: ['@"
                       + blend.name + "']\n" + "".join(Path(p).name + "\n" for p in parts))
        os.replace(tmp, blend)
        return stats
    _merge(parts, prefix, tokenizer_model)
    if not keep_partitions:
        for p in parts:
            for ext in (".bin", ".idx", ".json"):
                Path(p + ext).unlink(missing_ok=True)
    return stats


def _merge(parts: list[str], prefix: str, tokenizer_model: str) -> None:
    """Concatenate the partitions in order into PREFIX.bin/.idx (temporary name, then renamed)."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megaindex.data.tokenizer import IndexTokenizer
    from megaindex.upstream import gc_frozen

    tmp = pp.temp_name(prefix)
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=DType.optimal_dtype(IndexTokenizer(tokenizer_model).vocab_size))
    try:
        with gc_frozen():  # add_index's gc.collect() per partition walks only new objects (upstream.py, 8)
            for p in parts:
                builder.add_index(p)
        pp.publish_dataset(builder, tmp, prefix)
    except BaseException:
        pp.discard_dataset(builder, tmp)
        raise
