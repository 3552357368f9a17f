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
    fp8_meta = torch.frombuffer(bytearray(pickle.dumps({"scale_fwd": torch.ones(3), "recipe": None})), dtype=torch.uint8)
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
