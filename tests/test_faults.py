"""Fault injection on CPU: what survives a crafted file, a second trainer, a killed save, a corrupt
or missing checkpoint, a NaN, a full disk, a torn metrics line and a changed LR on resume.

Cheap by construction: one tiny model (seq 128, 2 sequences a step), trained in this process
(`megaindex train` through `cli.main`, one thread, so losses are bitwise comparable with the
one-thread subprocesses); one reference run is shared by the module and copied per fault;
subprocesses only where the fault needs a second process (a lock holder, kill -9).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

RECIPE = REPO / "examples" / "tiny_long_pt.yaml"
MARKER_NAME = "code-ran"


class RunsCode:
    """A pickle payload: loading it creates a marker file (stands in for any shell command)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"train.run_dir={run_dir}", f"data.cache_dir={cache}", "data.seq_length=128", "data.global_batch_tokens=256",
        "data.micro_batch_size=1", "train.train_iters=4", "train.eval_interval=0", "checkpoint.save_interval=1",
        "checkpoint.keep_last=0", "optim.lr_warmup_iters=2", "log.tensorboard=false", "log.plot=false", *extra,
    ]


class Result:
    def __init__(self, rc: int, out: str, err: str):
        self.rc, self.out, self.err = rc, out, err

    def error_line(self) -> str:
        """The one line a user error prints (asserting there is no traceback)."""
        assert "Traceback" not in self.err, self.err[-3000:]
        lines = [ln for ln in self.err.splitlines() if ln.startswith(("megaindex:", "error:"))]
        assert len(lines) == 1, self.err[-3000:]
        return lines[0]


def main_in_process(*argv: str, expect: int | None = 0) -> Result:
    """`megaindex ARGV` in this process (one thread), with its stdout/stderr captured."""
    from megaindex import cli

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    finally:
        torch.set_num_threads(threads)
    r = Result(rc, out.getvalue(), err.getvalue())
    if expect is not None:
        assert rc == expect, f"megaindex {' '.join(argv)} exited {rc}, not {expect}:\n{r.out[-2000:]}\n{r.err[-4000:]}"
    return r


def train(run_dir: Path, cache: Path, *extra: str, expect: int | None = 0) -> Result:
    return main_in_process("train", str(RECIPE), *small(run_dir, cache, *extra), expect=expect)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module", autouse=True)
def _restore_process_group():
    """In-process trainers tear down torch.distributed; give later modules their one-rank group back."""
    yield
    import torch.distributed as dist

    from megaindex import distributed

    if not dist.is_initialized():
        distributed.init_single_process()


@pytest.fixture(autouse=True)
def _signal_handlers_unchanged():
    """An in-process trainer, finished, failed or refused, leaves SIGTERM / SIGUSR1 as it found them: a leaked
    recording handler made later forked workers immune to Pool.terminate() (a CI hang, 2026-11-28)."""
    import signal

    from megaindex.training.preemption import STOP_SIGNALS

    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """4 uninterrupted steps, a checkpoint after each: every fault below starts from a copy."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    train(run, cache)
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    return run


def copy_run(reference: Path, dst: Path) -> Path:
    shutil.copytree(reference, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ---- crafted files: nothing from a checkpoint runs ------------------------------------------------
def test_crafted_metadata_is_refused_on_every_load_path(reference, cache, tmp_path):
    marker = tmp_path / MARKER_NAME
    evil = tmp_path / "evil"
    shutil.copytree(reference / "checkpoints" / "step_00000004", evil)
    (evil / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    meta = json.loads((evil / "megaindex.json").read_text())  # an attacker fixes the manifest too
    meta["files"][".metadata"] = (evil / ".metadata").stat().st_size
    (evil / "megaindex.json").write_text(json.dumps(meta))

    resume = train(tmp_path / "resume", cache, f"checkpoint.load={evil}", expect=1)
    assert ".metadata" in resume.error_line() and "may run code" in resume.error_line()
    pretrained = train(tmp_path / "pretrained", cache, f"checkpoint.pretrained={evil}", expect=1)
    assert ".metadata" in pretrained.error_line()
    export = main_in_process("convert", "to-hf", str(evil), str(tmp_path / "hf"), expect=1)
    assert f"{evil}/.metadata: refuses to load 'posix.system'" in export.error_line()
    # DCP itself, as megatron calls it, is covered for the whole process
    from torch.distributed.checkpoint import FileSystemReader

    from megaindex.safe_pickle import UnsafePickleError

    with pytest.raises(UnsafePickleError):
        FileSystemReader(str(evil)).read_metadata()
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()


def test_crafted_checkpoint_object_is_refused(tmp_path):
    """A non-tensor item (as megatron stores RNG state, param groups, the schedule) holding code."""
    import torch.distributed.checkpoint as dcp
    from megatron.core import dist_checkpointing

    from megaindex.convert.dist_io import BACKEND, BACKEND_FILE

    marker = tmp_path / MARKER_NAME
    ck = tmp_path / "ck"
    state = {"common_state/shard_0_1": [RunsCode(marker)], "w": torch.zeros(2)}  # DCP torch.saves objects
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(ck)), no_dist=True)
    (ck / BACKEND_FILE).write_text(json.dumps(BACKEND))
    with pytest.raises(BaseException, match="common_state/shard_0_1' holds .*posix.system"):
        dist_checkpointing.load_common_state_dict(str(ck))
    assert not marker.exists()


def test_crafted_extra_state_is_refused():
    """Transformer Engine unpickles `_extra_state` byte tensors itself (plain pickle) on GPU."""
    from megaindex.safe_pickle import UnsafePickleError, check_extra_state

    evil = torch.frombuffer(bytearray(pickle.dumps(RunsCode(Path("/nonexistent/x")))), dtype=torch.uint8)
    fp8_meta = torch.frombuffer(bytearray(pickle.dumps(
        {"scale_fwd": torch.ones(3), "recipe": None, "extra_fp8_variables": {"dtype": torch.float32, "shape": torch.Size([3])}})),
        dtype=torch.uint8)
    check_extra_state({"model": {"decoder.linear_qkv._extra_state": fp8_meta, "w": torch.ones(2)}}, "ck")
    with pytest.raises(UnsafePickleError, match="'model.decoder.linear_fc1._extra_state' holds a pickle"):
        check_extra_state({"model": {"decoder.linear_fc1._extra_state": evil}}, "ck")


def test_crafted_bin_weights_are_refused(tmp_path):
    from test_convert_fixtures import make_index

    marker = tmp_path / MARKER_NAME
    hf = make_index(tmp_path / "hf", bin_format=True)
    torch.save({"model.embed_tokens.weight": RunsCode(marker)}, hf / "pytorch_model.bin")
    r = main_in_process("convert", "from-hf", str(hf), str(tmp_path / "out"), expect=1)
    assert "pytorch_model.bin: refuses to load posix.system" in r.error_line()
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- converters never delete their input ----------------------------------------------------------
def test_convert_refuses_an_output_that_is_contains_or_is_inside_the_input(tmp_path):
    from test_convert_fixtures import make_index

    hf = make_index(tmp_path / "models" / "hf")
    before = sorted(p.name for p in hf.iterdir())
    for out, relation in ((hf, "is"), (hf / "megaindex", "is inside"), (tmp_path / "models", "contains")):
        r = main_in_process("convert", "from-hf", str(hf), str(out), "--force", expect=1)
        assert f"{relation} the input" in r.error_line(), r.err
    assert sorted(p.name for p in hf.iterdir()) == before


# ---- one trainer per run directory; free ports --------------------------------------------------------
def test_second_trainer_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    from megaindex.training.run_lock import RunDirLock

    run = tmp_path / "busy"
    with RunDirLock(run):
        r = subprocess.run([sys.executable, "-m", "megaindex", "train", str(RECIPE), f"train.run_dir={run}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr[-2000:]
        line = Result(r.returncode, r.stdout, r.stderr).error_line()
        assert f"{run} is in use by pid {os.getpid()}" in line and "another train.run_dir" in line
        assert not (run / "config.yaml").exists()  # refused before touching anything
    with RunDirLock(run):  # released: free again
        pass


def test_single_process_run_takes_a_free_port(tmp_path, cache, monkeypatch):
    """torch's default port 29500 held by another process (as by a concurrent CPU run)."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "try: s.bind(('0.0.0.0', 29500)); s.listen()\nexcept OSError: pass\nprint('ready', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        train(tmp_path / "port", cache, "train.train_iters=1")
    finally:
        holder.kill()
        holder.wait()


# ---- resume never silently starts over -------------------------------------------------------------
def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run)}


def keep_steps(run: Path, upto: int) -> Path:
    """Cut a copied run back to its checkpoint after step `upto` (as if it had stopped there)."""
    ck = run / "checkpoints"
    for p in ck.glob("step_*"):
        if int(p.name[5:]) > upto:
            shutil.rmtree(p)
    (ck / "latest").write_text(f"step_{upto:08d}\n")
    return run


@pytest.mark.parametrize("fault", ["deleted", "dangling"])
def test_missing_or_dangling_latest_resumes_from_newest_complete_step(reference, cache, tmp_path, fault):
    run = copy_run(reference, tmp_path / fault)
    latest = run / "checkpoints" / "latest"
    if fault == "deleted":
        latest.unlink()
    else:
        latest.write_text("step_00000009\n")
    r = train(run, cache)
    assert ("latest is missing" if fault == "deleted" else "names step_00000009, which does not exist") in r.out
    assert "resuming from step_00000004, the newest complete checkpoint" in r.out
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'} at step 4" in r.out
    assert metrics(run) == metrics(reference)  # nothing retrained, nothing rewritten


@pytest.mark.parametrize("fault", ["truncated", "missing"])
def test_damaged_latest_falls_back_to_previous_step_and_continues_bitwise(reference, cache, tmp_path, fault):
    from megaindex import checkpoint

    run = copy_run(reference, tmp_path / fault)
    shard = run / "checkpoints" / "step_00000004" / "__0_0.distcp"
    if fault == "truncated":
        with shard.open("r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    else:
        shard.unlink()
    r = train(run, cache)
    assert f"{shard}" in r.out and "resuming from step_00000003" in r.out, r.out
    assert losses(run) == losses(reference)  # step 4 re-run from step 3: bitwise the same
    assert checkpoint.verify(run / "checkpoints" / "step_00000004")["step"] == 4  # rewritten whole
    if fault == "truncated":  # an explicit load has no fallback: one line naming the file
        bad = copy_run(reference / "checkpoints" / "step_00000004", tmp_path / "bad")
        with (bad / "__0_0.distcp").open("r+b") as f:
            f.truncate(1000)
        line = main_in_process("convert", "to-hf", str(bad), str(tmp_path / "hf"), expect=1).error_line()
        assert f"{bad / '__0_0.distcp'} has 1000 bytes" in line and "truncated" in line
        line = train(tmp_path / "stage2", cache, f"checkpoint.pretrained={bad}", expect=1).error_line()
        assert f"{bad / '__0_0.distcp'} has 1000 bytes" in line


def test_a_run_without_checkpoints_is_not_overwritten_without_the_flag(reference, cache, tmp_path):
    run = copy_run(reference, tmp_path / "no_ckpt")
    shutil.rmtree(run / "checkpoints")
    config_before = (run / "config.yaml").read_bytes()
    line = train(run, cache, expect=1).error_line()
    assert f"{run} already holds a run (metrics.jsonl with 4 lines)" in line and "train.overwrite=true" in line
    assert metrics(run) == metrics(reference) and (run / "config.yaml").read_bytes() == config_before
    train(run, cache, "train.overwrite=true")
    assert losses(run) == losses(reference)  # started over: the same run again, bitwise


# ---- NaN policies keep the recovery point ----------------------------------------------------------------
@pytest.fixture
def nan_from(monkeypatch):
    """Make the loss of steps >= N non-finite (as a diverged model's), for in-process trainers."""
    from megaindex.training.trainer import Trainer

    def inject(first: int, last: int = 10**9) -> None:
        real = Trainer._reduce_loss

        def reduce_loss(self, losses):
            loss, *stats = real(self, losses)  # stats: document statistics of the step
            return (float("nan") if first <= self.progress.step + 1 <= last else loss), *stats

        monkeypatch.setattr(Trainer, "_reduce_loss", reduce_loss)

    yield inject


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_stops_without_saving_and_keeps_the_last_good_checkpoint(reference, cache, tmp_path, nan_from, monkeypatch, policy):
    from megaindex import checkpoint

    run = keep_steps(copy_run(reference, tmp_path / policy), 1)
    ck = run / "checkpoints"
    nan_from(3)  # step 2 trains, step 3 diverges: step_00000002's weights gave the NaN
    r = train(run, cache, f"train.nan_policy={policy}", "train.max_consecutive_skips=2", "checkpoint.keep_last=1", expect=3)
    line = r.error_line()
    stop_step = 3 if policy == "stop" else 4
    assert line.startswith(f"megaindex: step {stop_step}: loss nan") and "stopped without saving" in line
    assert f"latest names step_00000001" in line and "optim.lr=" in line
    assert (ck / "latest").read_text().strip() == "step_00000001"
    checkpoint.verify(ck / "step_00000001")  # never pruned (keep_last=1)
    assert not (ck / f"step_{stop_step:08d}").exists()  # the diverged state is never saved
    assert [m["step"] for m in metrics(run)] == list(range(1, stop_step + 1))
    monkeypatch.undo()  # the data / LR problem fixed: the same command continues from step 1
    train(run, cache, f"train.nan_policy={policy}", "checkpoint.keep_last=1")
    assert losses(run) == losses(reference)


def test_nan_skip_rides_out_a_transient_nan(reference, cache, tmp_path, nan_from):
    run = keep_steps(copy_run(reference, tmp_path / "transient"), 2)
    nan_from(3, 3)
    train(run, cache, "train.nan_policy=skip", "train.max_consecutive_skips=2")
    got = metrics(run)
    assert [m["skipped_steps"] for m in got] == [0, 0, 1, 1] and got[3]["loss"] == got[3]["loss"]  # step 4 finite


# ---- disk full, torn metrics, changed settings on resume ----------------------------------------------
def test_disk_full_names_enospc_and_keeps_latest(reference, cache, tmp_path, monkeypatch):
    import errno

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    run = keep_steps(copy_run(reference, tmp_path / "full"), 2)
    real = filesystem_async._write_item

    def write_then_fill(*args, **kwargs):
        stream = next(a for a in args if hasattr(a, "write"))
        stream.write(b"\0" * 4096)  # part of the shard reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem_async, "_write_item", write_then_fill)
    line = train(run, cache, expect=1).error_line()
    assert "no space left on device (ENOSPC)" in line and f"{run / 'checkpoints'}" in line
    assert "latest still names step_00000002" in line
    ck = run / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_00000002" and not list(ck.glob(".step_*"))
    monkeypatch.setattr(filesystem_async, "_write_item", real)
    train(run, cache)  # space freed: continues from step 2
    assert losses(run) == losses(reference)


def test_disk_full_in_a_background_write_is_named(tmp_path, monkeypatch):
    """GPU saves are asynchronous: the writer's OSError reaches the trainer only as megatron's
    "Worker failure ... <class 'OSError'>"; a full disk is still named, with the checkpoint."""
    import collections
    import shutil as sh

    from torch.distributed.checkpoint.api import CheckpointException

    from megaindex import checkpoint

    save_dir = tmp_path / "checkpoints"
    (save_dir / ".step_00000005.tmp").mkdir(parents=True)
    (save_dir / "latest").write_text("step_00000004\n")

    class FailedWrite:  # megatron's AsyncCallsQueue after its background writer failed
        megaindex_writing = save_dir / "step_00000005"

        def maybe_finalize_async_calls(self, blocking=False):
            raise CheckpointException("finalize", {0: (RuntimeError(
                "Worker failure: An error is caught while starting worker 0, error: <class 'OSError'>"), None)})

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda _: usage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.finalize_async(FailedWrite(), blocking=True)
    assert str(e.value) == (f"writing checkpoint {save_dir / 'step_00000005'} failed: no space left on device (ENOSPC) "
                            f"under {save_dir}; {save_dir / 'latest'} still names step_00000004. Free space (or set "
                            f"checkpoint.save elsewhere) and rerun to resume.")
    assert not (save_dir / ".step_00000005.tmp").exists()


def test_torn_metrics_line_is_trimmed_with_a_warning(reference, cache, tmp_path):
    run = keep_steps(copy_run(reference, tmp_path / "torn"), 2)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "consumed_tok')  # killed mid-line
    r = train(run, cache)
    assert f"{run / 'metrics.jsonl'}:5: dropped a torn line" in r.out
    assert losses(run) == losses(reference)


def test_lr_and_schedule_changes_apply_on_resume(reference, cache, tmp_path):
    import torch.nn as nn

    from megaindex.config_load import load_config
    from megaindex.training.optimizer import build_scheduler

    run = keep_steps(copy_run(reference, tmp_path / "lr"), 2)
    r = train(run, cache, "optim.lr=1e-3", "train.train_iters=6")
    assert "resume: optim.lr 0.003 -> 0.001, train.train_iters 4 -> 6" in r.out
    got = metrics(run)
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    assert got[2]["loss"] == metrics(reference)[2]["loss"]  # step 3 runs step 2's weights: unchanged
    cfg = load_config(RECIPE, small(run, cache, "optim.lr=1e-3", "train.train_iters=6"))
    sched = build_scheduler(cfg, torch.optim.AdamW(nn.Linear(1, 1).parameters()))
    for m in got[2:]:  # the new schedule from its position (step 2), as if the run had always had it
        sched.step(increment=m["step"] - sched.num_steps)
        assert m["lr"] == sched.optimizer.param_groups[0]["lr"], (m, sched.num_steps)


def test_changed_rope_base_is_refused_on_resume_and_noted_for_a_new_stage(reference, cache, tmp_path):
    run = copy_run(reference, tmp_path / "rope")
    line = train(run, cache, "model.rotary_base=20000", expect=1).error_line()
    assert "model.rotary_base 320000 -> 20000" in line and "checkpoint.pretrained=" in line
    stage = train(tmp_path / "stage", cache, f"checkpoint.pretrained={reference / 'checkpoints'}",
                  "model.rotary_base=20000", "train.train_iters=1")
    assert "model.rotary_base 320000 -> 20000 (the recipe's change)" in stage.out


# ---- kill -9 at random points, with a second trainer knocking -----------------------------------------
def tolerant_metrics(run: Path) -> list[dict]:
    """metrics.jsonl as a killed run left it (its last line may be torn)."""
    out = []
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(ln))
    return out


def test_kill_9_at_random_points_of_saves_loses_nothing(tmp_path, cache):
    """Two runs killed at random moments of a save-every-step run (DCP write, metadata, rename,
    `latest`, pruning); after each, the checkpoint a resume picks verifies, and every re-run step's
    loss equals the first time it ran, bitwise. While the first runs, a second trainer on its run
    directory is refused, naming it."""
    import random
    import signal
    import time

    from megaindex import checkpoint

    seed = random.randrange(2**31)
    rng = random.Random(seed)
    run = tmp_path / "killed"
    ck = run / "checkpoints"
    args = small(run, cache, "train.train_iters=40", "checkpoint.keep_last=2")
    env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}  # a free port, as a user's run
    env["OMP_NUM_THREADS"] = "1"
    first_loss: dict[int, float] = {}

    def record(where: str) -> None:
        for m in tolerant_metrics(run):
            if m["step"] in first_loss:
                assert m["loss"] == first_loss[m["step"]], f"{where}: step {m['step']} (seed {seed})"
            first_loss.setdefault(m["step"], m["loss"])

    resumed_at = 0
    for attempt in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "megaindex", "train", str(RECIPE), *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline:  # wait for a checkpoint of this run
                latest = ck / "latest"
                if latest.is_file() and int(latest.read_text().strip()[5:] or 0) > resumed_at:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            if attempt == 0:
                other = subprocess.run([sys.executable, "-m", "megaindex", "train", str(RECIPE), *args], cwd=REPO,
                                       env=env, capture_output=True, text=True, timeout=120)
                line = Result(other.returncode, other.stdout, other.stderr).error_line()
                assert other.returncode == 1 and f"in use by pid {proc.pid}" in line, line
            time.sleep(rng.uniform(0.0, 0.8))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        record(f"after kill {attempt + 1}")
        path, warnings = checkpoint.resume_point(ck)
        assert path is not None, (warnings, seed)
        checkpoint.verify(path)
        resumed_at = int(path.name[5:])
    r = train(run, cache, "train.train_iters=40", "checkpoint.keep_last=2", f"train.exit_at_step={resumed_at + 2}")
    assert f"resumed from {path} at step {resumed_at}" in r.out
    record("after the final resume")
    assert max(first_loss) >= resumed_at + 2


@pytest.mark.parametrize("override,says", [
    ("model.vocab_size=100", "has 8000 pieces but model.vocab_size is 100"),
    ("data.tokenizer_model=/nonexistent/tokenizer.model", "tokenizer model /nonexistent/tokenizer.model does not exist"),
    ("model.transformer_impl=transformer_engine", "model.transformer_impl=transformer_engine but Transformer Engine"),
])
def test_setup_errors_are_one_line(tmp_path, cache, override, says):
    if override.startswith("model.transformer_impl") and torch.cuda.is_available():
        pytest.skip("TE may be present on a GPU node")
    line = train(tmp_path / "run", cache, override, expect=2).error_line()
    assert says in line, line
