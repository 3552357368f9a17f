"""The Slurm launch scripts, run unchanged under the fake sbatch/srun/scontrol of tests/fake_slurm:
stage 1 on 2 nodes x 2 processes (one 4-rank gloo job through torchrun's c10d rendezvous), a
SIGUSR1 that makes the job checkpoint, requeue itself and resume with the same losses, stage 2
from stage 1's checkpoint, the three-job pipeline, and the container / export command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port

FAKE_SLURM = REPO / "tests" / "fake_slurm"
TINY_PT = "examples/tiny_long_pt.yaml"
TINY_SFT = "examples/tiny_long_sft.yaml"
STEPS = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


def tiny(run_dir: Path, cache: Path, steps: int = STEPS) -> list[str]:
    return [f"train.run_dir={run_dir}", f"data.cache_dir={cache}", "data.seq_length=256", "data.global_batch_tokens=1024",
            f"train.train_iters={steps}", "train.eval_interval=0", "checkpoint.save_interval=100", "log.log_interval=1",
            "log.tensorboard=false", "log.plot=false"]


def slurm_env(state: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RECIPE", "PRETRAINED", "MEGAINDEX_CONTAINER", "MEGAINDEX_IMAGE")}
    env.update({
        "PATH": f"{FAKE_SLURM}:{env['PATH']}", "FAKE_SLURM_DIR": str(state / "slurm"), "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1", "LOG_DIR": str(state / "logs"), "MASTER_PORT": str(free_port()), "GPUS_PER_NODE": "2",
    })
    env.update(extra)
    return env


def sbatch(state: Path, env: dict, *args: str, wait: bool = True):
    """Submit like a user would; with FAKE_SLURM_RUN=1 the job runs before sbatch returns."""
    cmd = ["sbatch", f"--output={state / 'logs'}/%x-%j.out", *args]
    (state / "logs").mkdir(parents=True, exist_ok=True)
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def job_file(state: Path, job: int, name: str) -> Path:
    return state / "slurm" / "jobs" / str(job) / name


def argv(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\0")[:-1]


def job_log(state: Path, name: str, job: int = 1000) -> str:
    return (state / "logs" / f"{name}-{job}.out").read_text()


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_job_ok(state: Path, name: str, job: int = 1000) -> str:
    log = job_log(state, name, job)
    rc = job_file(state, job, "rc").read_text().strip()
    assert rc == "0", f"job {job} exited {rc}:\n{log[-6000:]}"
    return log


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, cache):
    """launch/long_pt.slurm on 2 fake nodes x 2 processes, uninterrupted: the reference run."""
    state = tmp_path_factory.mktemp("stage1")
    run = state / "run"
    env = slurm_env(state, FAKE_SLURM_RUN="1", RECIPE=TINY_PT)
    overrides = tiny(run, cache)
    r = sbatch(state, env, "--nodes=2", "launch/long_pt.slurm", *overrides)
    assert r.returncode == 0 and r.stdout.strip() == "Submitted batch job 1000", r.stdout + r.stderr
    log = assert_job_ok(state, "megaindex-long-pt")  # job name and log path from the #SBATCH lines
    return {"state": state, "run": run, "log": log, "port": env["MASTER_PORT"], "overrides": overrides}


def test_long_pt_runs_on_two_fake_nodes_of_two_processes(stage1):
    state, run, log = stage1["state"], stage1["run"], stage1["log"]
    assert "4 ranks (TP 1 x PP 1 x CP 1 x DP 4)" in log
    assert [m["step"] for m in metrics(run)] == list(range(1, STEPS + 1))
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert (run / "checkpoints" / f"step_{STEPS:08d}").is_dir()
    # One srun, one torchrun agent per node, all meeting at the first node of the nodelist.
    a = argv(job_file(state, 1000, "srun.argv"))
    assert "--nodes=2" in a and "--ntasks-per-node=1" in a and "--kill-on-bad-exit=1" in a
    t = a[a.index("torch.distributed.run"):]
    pairs = {t[i]: t[i + 1] for i in range(1, len(t) - 1) if t[i].startswith("--")}
    assert pairs["--nnodes"] == "2" and pairs["--nproc-per-node"] == "2" and pairs["--rdzv-backend"] == "c10d"
    assert pairs["--rdzv-endpoint"] == f"127.0.0.1:{stage1['port']}" and pairs["--rdzv-id"] == "1000"
    assert "SIGUSR1" in pairs["--signals-to-handle"].split(",")
    assert t[t.index("-m") + 1:t.index("-m") + 4] == ["megaindex", "train", TINY_PT]
    assert t[-len(stage1["overrides"]):] == stage1["overrides"]  # sbatch's script arguments, in order
    assert (state / "slurm" / "scontrol.log").read_text().startswith("show hostnames 127.0.0.1,127.0.0.2")
    assert "requeue" not in (state / "slurm" / "scontrol.log").read_text()


def test_sigusr1_checkpoints_requeues_and_resumes_with_identical_losses(stage1, tmp_path, cache):
    """Slurm's --signal=USR1 reaches the torchrun agent of node 0 only: it forwards it to ranks 0-1,
    ranks 2-3 learn of it through the stop-flag all-reduce; all stop after the same step with a
    checkpoint, the script requeues the job, and the rerun resumes and matches the reference."""
    state, run = tmp_path, tmp_path / "run"
    env = slurm_env(state, FAKE_SLURM_RUN="1", RECIPE=TINY_PT)
    p = sbatch(state, env, "--nodes=2", "launch/long_pt.slurm", *tiny(run, cache), wait=False)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip()):
        assert p.poll() is None and time.time() < deadline, f"job ended before its first step:\n{p.stdout.read()}"
        time.sleep(0.1)
    os.kill(int(job_file(state, 1000, "node0.pid").read_text()), signal.SIGUSR1)
    p.wait(timeout=300)
    log = assert_job_ok(state, "megaindex-long-pt")

    assert "requeue 1000" in (state / "slurm" / "scontrol.log").read_text().splitlines()
    assert job_file(state, 1000, "runs").read_text().strip() == "2"
    stop = [line for line in log.splitlines() if line.startswith("megaindex launch: trainer: 75 SIGUSR1 step=")]
    assert len(stop) == 1, log[-6000:]
    k = int(stop[0].split("step=")[1].split()[0])
    assert 1 <= k < STEPS
    assert "exitcode  : 75" in log  # what the workers exited with, in torchrun's failure report
    assert f"resumed from {run}/checkpoints/step_{k:08d} at step {k}" in log
    assert "(restart 1)" in log and "4 ranks" in log
    got, want = metrics(run), metrics(stage1["run"])
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))  # no step lost or repeated
    for key in ("loss", "grad_norm", "lr"):
        assert [m[key] for m in got] == [m[key] for m in want], key  # bitwise: same layout, same order


def test_long_sft_starts_from_stage1_checkpoint(stage1, tmp_path, cache):
    state, run = tmp_path, tmp_path / "run"
    pretrained = stage1["run"] / "checkpoints"
    env = slurm_env(state, FAKE_SLURM_RUN="1", RECIPE=TINY_SFT, PRETRAINED=str(pretrained))
    r = sbatch(state, env, "launch/long_sft.slurm", *tiny(run, cache, steps=2))  # 1 node (#SBATCH) x 2
    assert r.returncode == 0, r.stderr
    log = assert_job_ok(state, "megaindex-long-sft")
    assert f"starting from pretrained weights {pretrained}" in log
    assert "2 ranks (TP 1 x PP 1 x CP 1 x DP 2)" in log
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    a = argv(job_file(state, 1000, "srun.argv"))
    assert a.index(f"checkpoint.pretrained={pretrained}") < a.index(f"train.run_dir={run}")  # user overrides win


def test_pipeline_submits_three_jobs_chained_by_afterok(tmp_path):
    env = slurm_env(tmp_path, PT_OVERRIDES="train.train_iters=10 optim.lr=2e-5", SFT_OVERRIDES="optim.lr=4e-6",
                    PT_RUN_DIR="runs/p1", SFT_RUN_DIR="runs/p2", HF_OUT="out/hf", SBATCH_ARGS="--account=acct")
    r = subprocess.run(["bash", "launch/pipeline.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "job 1000" in r.stdout and "job 1001" in r.stdout and "job 1002" in r.stdout
    jobs = {j: argv(job_file(tmp_path, j, "argv")) for j in (1000, 1001, 1002)}
    logs = f"--output={tmp_path / 'logs'}/%x-%j.out"
    assert jobs[1000] == ["--parsable", "--account=acct", logs, "launch/long_pt.slurm", "train.run_dir=runs/p1",
                          "train.train_iters=10", "optim.lr=2e-5"]
    assert jobs[1001] == ["--parsable", "--account=acct", logs, "--dependency=afterok:1000", "launch/long_sft.slurm",
                          "train.run_dir=runs/p2", "optim.lr=4e-6"]
    assert jobs[1002] == ["--parsable", "--account=acct", logs, "--dependency=afterok:1001", "launch/export_hf.slurm",
                          "runs/p2/checkpoints", "out/hf", "--format", "llama"]
    sft_env = dict(kv.split("=", 1) for kv in job_file(tmp_path, 1001, "env").read_bytes().decode().split("\0") if "=" in kv)
    assert sft_env["PRETRAINED"] == "runs/p1/checkpoints"  # stage 2 starts where stage 1 writes
    assert sft_env["RECIPE"] == "examples/index_1.9b_long_sft_32k.yaml"


def _srun_line(tmp_path: Path, script: str, *args: str, **env_extra: str) -> tuple[subprocess.CompletedProcess, str]:
    env = slurm_env(tmp_path, **{"FAKE_SLURM_RUN": "1", "FAKE_SRUN_EXEC": "0", "RECIPE": TINY_PT, **env_extra})
    r = sbatch(tmp_path, env, script, *args)
    assert r.returncode == 0, r.stderr
    return r, job_file(tmp_path, 1000, "rc").read_text().strip()


@pytest.mark.parametrize("mode", ["pyxis", "apptainer"])
def test_container_modes_wrap_the_same_torchrun_line(tmp_path, mode):
    _, rc = _srun_line(tmp_path, "launch/long_pt.slurm", "optim.lr=1e-5", MEGAINDEX_CONTAINER=mode, MEGAINDEX_IMAGE="img.sqsh", PYTHON="",
                       CONTAINER_MOUNTS="/data:/data")
    assert rc == "0"
    a = argv(job_file(tmp_path, 1000, "srun.argv"))
    repo = str(REPO)
    if mode == "pyxis":
        assert {"--container-image=img.sqsh", f"--container-mounts={repo}:{repo},/data:/data",
                f"--container-workdir={repo}"} <= set(a)
        head = a[a.index(f"--container-workdir={repo}") + 1:]
    else:
        i = a.index("apptainer")
        assert a[i:i + 8] == ["apptainer", "exec", "--nv", "--bind", f"{repo}:{repo},/data:/data", "--pwd", repo, "img.sqsh"]
        head = a[i + 8:]
    assert head[:3] == ["python", "-m", "torch.distributed.run"]  # the container's python, not the host's
    assert head[-4:] == ["megaindex", "train", TINY_PT, "optim.lr=1e-5"]


@pytest.mark.parametrize("env_extra, message", [
    ({"MEGAINDEX_CONTAINER": "pyxis"}, "MEGAINDEX_CONTAINER=pyxis needs MEGAINDEX_IMAGE"),
    ({"MEGAINDEX_CONTAINER": "docker"}, "MEGAINDEX_CONTAINER=docker: use none, pyxis or apptainer"),
    ({"RECIPE": "examples/nope.yaml"}, "recipe examples/nope.yaml not found"),
])
def test_bad_launch_settings_fail_with_a_message(tmp_path, env_extra, message):
    _, rc = _srun_line(tmp_path, "launch/long_pt.slurm", **env_extra)
    assert rc == "2"
    assert message in job_log(tmp_path, "megaindex-long-pt")
    assert not job_file(tmp_path, 1000, "srun.argv").exists()  # nothing was started


def test_export_job_reads_latest_when_it_runs(tmp_path):
    save = tmp_path / "ckpts"
    (save / "step_00000042").mkdir(parents=True)
    (save / "latest").write_text("step_00000042\n")
    _, rc = _srun_line(tmp_path, "launch/export_hf.slurm", str(save), "out/hf", "--format", "index")
    assert rc == "0"
    a = argv(job_file(tmp_path, 1000, "srun.argv"))
    assert a[-6:] == [sys.executable, "tools/convert_to_hf.py", str(save / "step_00000042"), "out/hf", "--format", "index"]
