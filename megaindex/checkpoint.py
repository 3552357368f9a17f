"""The megaindex checkpoint directory format, on megatron-core dist_checkpointing.

A megaindex checkpoint is a directory:
    <dir>/                   megatron dist checkpoint (torch_dist): {"model": GPTModel.sharded_state_dict()}
                             ({"model0", "model1", ...} with virtual pipeline stages, as Megatron-LM),
                             plus whatever the trainer adds (training/checkpointing.py)
    <dir>/megaindex.json     what wrote it: kind (model|train), step, architecture fields, git revision,
                             and `files`: each data file with its size (written last: its presence
                             marks a complete checkpoint)
    <dir>/config.yaml        the resolved config of the run that wrote it

Every load first `verify`s the directory against that manifest and reads the DCP `.metadata`
through safe_pickle's allowlist, so a truncated, missing or crafted file is named in one line.

A save directory holds training checkpoints as `step_XXXXXXXX/` directories and a `latest` file
naming the newest complete one; older steps beyond `checkpoint.keep_last` are pruned (never one the
trainer protects). `resume_point` picks what a run continues from: `latest`, or, when it is
missing, dangling or damaged, the newest complete step (with a warning).

dist_checkpointing stores global tensors keyed by megatron's parameter names, with the TE and local
module layouts mapped onto the same keys, so a checkpoint loads into any TP/PP/CP/DP layout and
either module layout. Writes go to a temporary sibling directory renamed into place once every
rank has finished, so a crash never leaves a half checkpoint under the final name.

This module owns the format (directories, metadata, `latest`, pruning) and model weights; what a
training resume adds (optimizer, schedule, RNG, data position) lives in training/checkpointing.py.
megatron is imported only where tensors are read or written, so the HF converter can write the
metadata without it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from megaindex import safe_pickle
from megaindex import atomic
from megaindex.atomic import fsync_dir
from megaindex.config import Config
from megaindex.rank import barrier, is_rank0

META_FILE = "megaindex.json"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "latest"
STEP_DIR = "step_{:08d}"
ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "vocab_size", "norm_head")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not match the model."""


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def model_state_keys(n_chunks: int) -> list[str]:
    return ["model"] if n_chunks == 1 else [f"model{i}" for i in range(n_chunks)]


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    return {k: c.sharded_state_dict() for k, c in zip(model_state_keys(len(chunks)), chunks)}


def architecture(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    return {f: (m.kv_heads if f == "num_query_groups" else getattr(m, f)) for f in ARCH_FIELDS}


# ---- metadata -------------------------------------------------------------------------------

def write_meta(path: str | Path, cfg: Config, *, kind: str, step: int = 0, extra_meta: dict[str, Any] | None = None) -> None:
    """Write config.yaml, then megaindex.json (last: its presence marks a complete checkpoint) with
    the manifest of the checkpoint's data files and their sizes, which `verify` checks before a
    load (config.yaml, text a user may read and edit, is checked by parsing it instead)."""
    path = Path(path)
    (path / CONFIG_FILE).write_text(cfg.to_yaml())
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir())
             if p.is_file() and p.name not in (META_FILE, CONFIG_FILE)}
    meta = {"kind": kind, "step": step, "architecture": architecture(cfg), "git_revision": git_revision(),
            **(extra_meta or {}), "files": files}
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta = path / META_FILE
    if not meta.is_file():
        raise CheckpointError(
            f"{path} is not a megaindex checkpoint ({META_FILE} missing); "
            f"convert HF weights with tools/convert_from_hf.py first."
        )
    return json.loads(meta.read_text())


def verify(path: str | Path) -> dict[str, Any]:
    """Check that `path` holds the complete checkpoint its manifest describes (every file present
    with its recorded size; checkpoints written before the manifest skip that part) and read the
    DCP `.metadata` through the restricted unpickler, so a crafted or torn file fails here with one
    line naming it. Also routes megatron's own reads through the safe loaders
    (safe_pickle.install). Every load in megaindex calls this first; returns megaindex.json."""
    safe_pickle.install()
    path = Path(path)
    meta = read_meta(path)
    for name, size in (meta.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing: the checkpoint is incomplete.")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes, {size} were written: the file is truncated or damaged.")
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path / '.metadata'} is missing: the checkpoint is incomplete.")
    try:
        safe_pickle.read_metadata(path)
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as e:  # EOF, garbage: damaged, not crafted
        raise CheckpointError(f"{path / '.metadata'} cannot be read ({type(e).__name__}: {e}): the file is damaged.") from None
    return meta


def check_architecture(cfg: Config, path: str | Path) -> None:
    """Refuse a checkpoint written for another model, naming the first differing field."""
    saved = read_meta(path).get("architecture", {})
    mine = architecture(cfg)
    diffs = [f"{k}: checkpoint {saved[k]} vs config {mine[k]}" for k in mine if k in saved and saved[k] != mine[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written for a different model: " + "; ".join(diffs))


# ---- writing --------------------------------------------------------------------------------

def save_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    cfg: Config,
    *,
    kind: str,
    step: int = 0,
    extra_meta: dict[str, Any] | None = None,
    async_queue=None,
    on_complete: Callable[[], None] | None = None,
) -> Path:
    """Collectively write `state` (a sharded state dict) to `path` atomically; returns the path.

    With `async_queue` (megatron's AsyncCallsQueue, GPU) the tensors are staged to host memory and
    written by a background process; the metadata, the rename into place and `on_complete` run when
    the queue finalises the write (`maybe_finalize_async_calls`). One write is in flight at a time.
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    from megaindex.upstream import in_process_write_results

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if async_queue is not None:
        finalize_async(async_queue, blocking=True)
    if is_rank0():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()

    def complete() -> None:
        if is_rank0():
            write_meta(tmp, cfg, kind=kind, step=step, extra_meta=extra_meta)
            fsync_dir(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            if on_complete is not None:
                on_complete()
        barrier()

    if async_queue is None:
        with _WriterErrors() as logged:
            try:
                with in_process_write_results():  # no Manager process per save (upstream.py, 7)
                    dist_checkpointing.save(state, str(tmp))
                barrier()
                complete()
            except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
                raise _save_error(e, path, tmp, logged.messages) from None
    else:
        request = dist_checkpointing.save(state, str(tmp), async_sharded_save=True, async_strategy="mcore")
        request.add_finalize_fn(complete)
        async_queue.schedule_async_request(request)
        async_queue.megaindex_writing = path  # what a failure at finalisation names
    return path


def finalize_async(async_queue, blocking: bool) -> None:
    """Complete the background writes that are done (all with `blocking`); a failed write becomes
    one CheckpointError naming its checkpoint, its partial write removed (collective)."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        async_queue.maybe_finalize_async_calls(blocking=blocking)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        path = getattr(async_queue, "megaindex_writing", None)
        if path is None:
            raise
        raise _save_error(e, path, path.with_name(f".{path.name}.tmp"), []) from None


class _WriterErrors(logging.Handler):
    """Collects what megatron's checkpoint writers log while a save runs: a writer thread's OSError
    reaches the caller only as "error: <class 'OSError'>", its message only the log."""

    LOGGER = "megatron.core.dist_checkpointing"

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "_WriterErrors":
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


def _save_error(e: BaseException, path: Path, tmp: Path, logged: list[str]) -> CheckpointError:
    """One line for a failed write (the disk-full case named as such); the partial write is removed."""
    shutil.rmtree(tmp, ignore_errors=True)
    code, text = _os_error(e, logged)
    if code is None and _nearly_full(path.parent):  # a background writer's errno does not reach us
        code = errno.ENOSPC
    latest = path.parent / LATEST_FILE
    keeps = f"; {latest} still names {latest.read_text().strip()}" if latest.is_file() else ""
    if code == errno.ENOSPC:
        return CheckpointError(f"writing checkpoint {path} failed: no space left on device (ENOSPC) under {path.parent}"
                               f"{keeps}. Free space (or set checkpoint.save elsewhere) and rerun to resume.")
    why = f"{text} ({errno.errorcode.get(code, code)})" if code is not None else str(e).splitlines()[0]
    return CheckpointError(f"writing checkpoint {path} failed: {why}{keeps}.")


def _nearly_full(directory: Path) -> bool:
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return False
    return usage.free < max(64 * 2**20, usage.total // 1000)


def _os_error(e: BaseException, logged: list[str]) -> tuple[int | None, str]:
    """(errno, message) of the OS error behind `e`: its causes, DCP's per-rank failures, and the
    writers' log lines (`[Errno 28] No space left on device`)."""
    seen, todo, texts = set(), [e], list(logged)
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno is not None:
            return x.errno, x.strerror or str(x)
        texts.append(str(x))
        todo += [x.__cause__, x.__context__]
        todo += [f[0] if isinstance(f, tuple) else f for f in getattr(x, "failures", {}).values()]
    for text in texts:
        m = re.search(r"\[Errno (\d+)\] ([^'\"\n]+)", text)
        if m:
            return int(m.group(1)), m.group(2).strip()
    return None, ""


def save_model(chunks: list[torch.nn.Module], path: str | Path, cfg: Config, **meta: Any) -> Path:
    """Write model weights only (what the HF converter produces and stage 2 starts from)."""
    return save_checkpoint(path, model_sharded_state_dict(chunks), cfg, kind="model", extra_meta=meta)


# ---- a save directory: step directories, the `latest` pointer, keep-last-N --------------------

def save_step(save_dir: str | Path, step: int, state: dict[str, Any], cfg: Config, *,
              extra_meta: dict[str, Any] | None = None, async_queue=None, protect: Iterable[str] = ()) -> Path:
    """Write `state` as save_dir/step_XXXXXXXX, then point `latest` at it, then prune to
    checkpoint.keep_last, never pruning the step directories named in `protect` (in the background
    with `async_queue`: `latest` moves only once the write is complete)."""
    save_dir = Path(save_dir)
    if is_rank0():
        save_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    name = STEP_DIR.format(step)
    keep = {name, *protect}

    def point_latest() -> None:  # rank 0, after the checkpoint is complete under its final name
        write_latest(save_dir, name)
        _prune(save_dir, cfg.checkpoint.keep_last, keep=keep, keep_every=cfg.checkpoint.keep_every)

    return save_checkpoint(save_dir / name, state, cfg, kind="train", step=step, extra_meta=extra_meta,
                           async_queue=async_queue, on_complete=point_latest)


def step_dirs(save_dir: str | Path) -> list[Path]:
    """The step directories of a save directory (complete or not), oldest first."""
    return sorted(p for p in Path(save_dir).glob("step_*") if p.is_dir() and p.name[5:].isdigit())


def resume_point(save_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The checkpoint a run in `save_dir` continues from, and warnings about what was skipped.

    `latest` decides when it names a checkpoint that verifies. A damaged one falls back to the newest
    complete step before it; a missing or dangling `latest` to the newest complete step overall.
    None when no step directory holds a complete checkpoint.
    """
    save_dir = Path(save_dir)
    pointer = save_dir / LATEST_FILE
    steps = step_dirs(save_dir)[::-1]
    warnings: list[str] = []
    if pointer.is_file():
        named = save_dir / pointer.read_text().strip()
        if named.is_dir():
            try:
                verify(named)
                return named, warnings
            except CheckpointError as e:
                warnings.append(f"{pointer} names a damaged checkpoint: {e}")
            steps = [p for p in steps if p.name < named.name]
        else:
            warnings.append(f"{pointer} names {named.name}, which does not exist")
    elif steps:
        warnings.append(f"{pointer} is missing")
    for path in steps:
        try:
            verify(path)
        except CheckpointError as e:
            warnings.append(f"skipped {path.name}: {e}")
            continue
        if warnings:
            warnings.append(f"resuming from {path.name}, the newest complete checkpoint")
        return path, warnings
    return None, warnings


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The checkpoint `save_dir/latest` names (verified), or None when there is none yet."""
    save_dir = Path(save_dir)
    pointer = save_dir / LATEST_FILE
    if not pointer.is_file():
        return None
    path = save_dir / pointer.read_text().strip()
    verify(path)
    return path


def write_latest(save_dir: Path, name: str) -> None:
    """Point `save_dir/latest` at the step directory `name` (atomically; rank 0)."""
    atomic.write_text(save_dir / LATEST_FILE, name + "\n")  # readers see the old or the new name, never half


def _prune(save_dir: Path, keep_last: int, keep: set[str], keep_every: int = 0) -> None:
    """Remove all but the newest keep_last checkpoints; milestones (step % keep_every == 0) stay."""
    if keep_last <= 0:
        return
    steps = [p for p in step_dirs(save_dir) if (p / META_FILE).is_file()]
    if keep_every > 0:
        steps = [p for p in steps if int(p.name[5:]) % keep_every]  # step_dirs: step_<digits> only
    for old in steps[:-keep_last]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for stale in save_dir.glob(".step_*.tmp"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


# ---- reading --------------------------------------------------------------------------------

def load_model(chunks: list[torch.nn.Module], path: str | Path, cfg: Config | None = None) -> dict[str, Any]:
    """Load model weights from any megaindex checkpoint into this rank's chunks (any layout).

    `path` may also be a save directory: its `latest` checkpoint is used.
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    path = Path(path)
    if (path / LATEST_FILE).is_file():
        path = latest_checkpoint(path)
    if cfg is not None:
        check_architecture(cfg, path)
    else:
        read_meta(path)
    verify(path)
    sharded = model_sharded_state_dict(chunks)
    try:
        # Extra keys (optimizer, RNG of a training checkpoint) are fine; a missing model tensor is
        # not. Transformer Engine's `_extra_state` (FP8 scaling metadata) is absent from checkpoints
        # written by the local layout or by the HF converter; TE starts it fresh.
        loaded, _, unexpected = dist_checkpointing.load(sharded, str(path), strict="return_unexpected")
    except (Exception, CheckpointException) as e:  # several types (one a BaseException); name the checkpoint
        raise CheckpointError(f"loading model weights from {path} failed: {e}") from e
    missing = sorted(k for k in unexpected if not k.endswith("_extra_state"))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks model tensors: {', '.join(missing[:8])}")
    safe_pickle.check_extra_state(loaded, str(path))
    for key, chunk in zip(model_state_keys(len(chunks)), chunks):
        result = chunk.load_state_dict(loaded[key], strict=False)
        absent = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if absent or result.unexpected_keys:
            raise CheckpointError(f"checkpoint {path} does not match the model: missing {absent}, unexpected {result.unexpected_keys}")
    return read_meta(path)
