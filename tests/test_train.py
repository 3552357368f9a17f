"""The trainer end to end on the real CI corpus (CPU, fp32): learning, exact resume, gradient
accumulation invariance, DP=2 and PP=2 equal one process, stage 2 from stage 1's weights, and a
kill -9 during a checkpoint write."""

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

STAGE1 = REPO / "examples" / "tiny_long_pt.yaml"
STAGE2 = REPO / "examples" / "tiny_long_sft.yaml"
FP32_REL = 1e-5  # different reduction orders (DP all-reduce, PP, micro-batch sums) in fp32


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


def small(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"train.run_dir={run_dir}", f"data.cache_dir={cache}", "data.seq_length=256", "data.global_batch_tokens=1024",
        "data.micro_batch_size=1", "train.train_iters=8", "train.eval_interval=4", "train.eval_iters=1",
        "checkpoint.save_interval=4", "optim.lr_warmup_iters=2", "log.log_interval=1", "log.tensorboard=false", *extra,
    ]


def launch(recipe: Path, overrides: list[str], nproc: int = 1, wait: bool = True, timeout: int = 600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    if nproc == 1:
        cmd = [sys.executable, "-m", "megaindex", "train", str(recipe), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
               f"--master-port={env['MASTER_PORT']}", "-m", "megaindex", "train", str(recipe), *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def metrics(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in metrics(run_dir)]


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory) -> Path:
    """One set of initial weights for every layout (random init differs per PP stage, as in
    Megatron-LM, so layouts are compared from the same starting point)."""
    out = tmp_path_factory.mktemp("init") / "weights"
    code = (
        "from megaindex.config import load_config; from megaindex import checkpoint, distributed; "
        "from megaindex.model.build import build_model; "
        f"cfg = load_config({str(STAGE1)!r}); distributed.init_distributed(cfg); "
        f"checkpoint.save_model([build_model(cfg)], {str(out)!r}, cfg); distributed.destroy_distributed()"
    )
    env = {**os.environ, "MASTER_PORT": str(free_port())}
    r = subprocess.run([sys.executable, "-c", f"if __name__ == '__main__':\n    {code}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache, init_weights) -> Path:
    """The reference: 8 uninterrupted steps at DP=1, micro-batch 1 x 4 accumulation."""
    run = tmp_path_factory.mktemp("straight")
    launch(STAGE1, small(run, cache, f"checkpoint.pretrained={init_weights}"))
    return run


def test_loss_decreases_on_real_text_and_artifacts_exist(tmp_path, cache):
    run = tmp_path / "learn"
    r = launch(STAGE1, small(run, cache, "train.train_iters=30", "train.eval_interval=10", "checkpoint.save_interval=30",
                             "log.tensorboard=true"))
    ls = losses(run)
    first, last = sum(ls[:3]) / 3, sum(ls[-3:]) / 3
    assert first > 8.0  # ~ln(8000) at random init
    assert last < first - 2.0, f"loss did not drop clearly: {first:.3f} -> {last:.3f}"
    val = [m["val_loss"] for m in metrics(run, "validation.jsonl")]
    # The held-out split is the corpus' last documents (classical Chinese poems: far from the
    # training text), so it falls more slowly than the training loss, but it must fall steadily.
    assert len(val) == 3 and val[0] > val[1] > val[2] and val[-1] < val[0] - 0.4, val
    assert (run / "loss.png").stat().st_size > 10_000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    assert "checkpoints: " in r.stdout and "loss plot:" in r.stdout


def test_resume_is_bitwise_identical(straight, tmp_path, cache, init_weights):
    run = tmp_path / "resumed"
    launch(STAGE1, small(run, cache, "train.exit_at_step=4", f"checkpoint.pretrained={init_weights}"))
    assert len(metrics(run)) == 4
    out = launch(STAGE1, small(run, cache, f"checkpoint.pretrained={init_weights}"))
    assert "resumed from" in out.stdout
    got, want = metrics(run), metrics(straight)
    assert [m["step"] for m in got] == list(range(1, 9))
    # bitwise: the JSON floats are the exact float64 values
    assert [m["loss"] for m in got] == [m["loss"] for m in want]
    assert [m["grad_norm"] for m in got] == [m["grad_norm"] for m in want]
    assert [m["lr"] for m in got] == [m["lr"] for m in want]


@pytest.mark.parametrize("mbs", [2, 4])
def test_gradient_accumulation_invariance(straight, tmp_path, cache, init_weights, mbs):
    run = tmp_path / f"mbs{mbs}"
    launch(STAGE1, small(run, cache, f"data.micro_batch_size={mbs}", "train.exit_at_step=3",
                         f"checkpoint.pretrained={init_weights}"))
    got, want = metrics(run), metrics(straight)[:3]
    for g, w in zip(got, want):
        assert abs(g["loss"] - w["loss"]) <= 1e-6 * abs(w["loss"]), (g, w)
        assert abs(g["grad_norm"] - w["grad_norm"]) <= 1e-6 * abs(w["grad_norm"]), (g, w)


LAYOUTS = {
    "dp2": [],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
    # interleaved 1F1B, 1 layer per virtual stage; PP=2 with VPP turns batched p2p off (megatron bug)
    "pp2_vpp2": ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_two_processes_equal_one(straight, tmp_path, cache, init_weights, layout):
    run = tmp_path / layout
    extra = LAYOUTS[layout]
    launch(STAGE1, small(run, cache, "train.exit_at_step=4", f"checkpoint.pretrained={init_weights}", *extra), nproc=2)
    got, want = metrics(run), metrics(straight)[:4]
    assert len(got) == 4
    for g, w in zip(got, want):
        assert abs(g["loss"] - w["loss"]) <= FP32_REL * abs(w["loss"]), (layout, g, w)
        assert abs(g["grad_norm"] - w["grad_norm"]) <= FP32_REL * abs(w["grad_norm"]), (layout, g, w)
        # the same documents, counted once per micro-batch (virtual stages each run forward_step)
        assert g["model_tflop"] == w["model_tflop"], (layout, g, w)


def test_context_parallel_trainer_equals_one_process(tmp_path, cache, init_weights):
    """CP=2 through the trainer (batch slicing, loss and gradient reduction over CP, the optimizer
    sharded over DP x CP) equals one process on the same samples (both padded for CP=2). It runs
    the hierarchical a2a+p2p configuration, so megatron's hierarchical CP groups are built too;
    on CPU the reference attention gathers K/V whatever the communication type."""
    pad4 = ["data.pad_to_multiple_of=4", "train.exit_at_step=2", f"checkpoint.pretrained={init_weights}"]
    one, cp2 = tmp_path / "one", tmp_path / "cp2"
    launch(STAGE1, small(one, cache, *pad4))
    launch(STAGE1, small(cp2, cache, *pad4, "parallel.context_parallel_size=2", "parallel.cp_comm_type=a2a+p2p",
                         "parallel.hierarchical_context_parallel_sizes=[2,1]"), nproc=2)
    got, want = metrics(cp2), metrics(one)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert abs(g["loss"] - w["loss"]) <= FP32_REL * abs(w["loss"]), (g, w)
        assert abs(g["grad_norm"] - w["grad_norm"]) <= FP32_REL * abs(w["grad_norm"]), (g, w)
        assert g["model_tflop"] == w["model_tflop"], (g, w)  # CP rank 0 counts the whole documents


def test_stage2_starts_from_stage1_weights_with_fresh_optimizer(straight, tmp_path, cache):
    common = [f"data.cache_dir={cache}", "data.seq_length=256", "data.global_batch_tokens=1024", "train.train_iters=3",
              "train.eval_interval=0", "checkpoint.save_interval=3", "log.tensorboard=false", "optim.lr_warmup_iters=2"]
    warm = tmp_path / "sft_from_stage1"
    out = launch(STAGE2, [*common, f"train.run_dir={warm}", f"checkpoint.pretrained={straight / 'checkpoints'}"])
    assert "starting from pretrained weights" in out.stdout
    cold = tmp_path / "sft_from_scratch"
    launch(STAGE2, [*common, f"train.run_dir={cold}", "checkpoint.pretrained=null"])
    w, c = metrics(warm), metrics(cold)
    assert [m["step"] for m in w] == [1, 2, 3]  # fresh progress
    assert w[0]["lr"] == c[0]["lr"] and w[0]["lr"] < 1.5e-3  # fresh schedule: warmup from 0 to the SFT peak
    assert w[0]["loss"] < c[0]["loss"] - 1.0  # stage 1's weights, not random ones


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, cache):
    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    proc = launch(STAGE1, small(run, cache, "train.train_iters=40", "checkpoint.save_interval=1", "checkpoint.keep_last=0"), wait=False)
    killed_during = None
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            tmps = list(ckpts.glob(".step_*.tmp")) if ckpts.exists() else []
            done = (ckpts / "latest").read_text().strip() if (ckpts / "latest").exists() else ""
            if tmps and done:  # a write in progress with a complete checkpoint before it
                proc.send_signal(signal.SIGKILL)
                killed_during = tmps[0].name
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_during, "never saw a checkpoint write in progress"
    latest = (ckpts / "latest").read_text().strip()
    assert latest < killed_during.strip(".").removesuffix(".tmp")  # still the previous complete checkpoint
    assert (ckpts / latest / "megaindex.json").exists()
    out = launch(STAGE1, small(run, cache, "train.train_iters=40", f"train.exit_at_step={int(latest[5:]) + 1}"))
    assert f"resumed from {ckpts / latest}" in out.stdout
    assert not list(ckpts.glob(".step_*.tmp"))  # the half-written directory was cleaned up


def test_trainer_checkpoint_exports_to_transformers(straight, tmp_path):
    """A checkpoint the trainer wrote (optimizer state and all) exports to a stock Llama checkpoint
    whose logits match megaindex's (--check), and transformers generates from it greedily."""
    import torch
    import transformers

    latest = straight / "checkpoints" / (straight / "checkpoints" / "latest").read_text().strip()
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "tools/convert_to_hf.py", str(latest), str(out), "--format", "llama", "--check"],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MASTER_PORT": str(free_port())})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (out / "tokenizer.model").exists()
    from megaindex.data.tokenizer import IndexTokenizer

    tok = IndexTokenizer(out / "tokenizer.model")
    prompt = torch.tensor([tok.encode("The process of locking")])
    gen = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert gen.shape[1] == prompt.shape[1] + 12
    assert int(gen.max()) < tok.vocab_size  # never a padded-vocabulary id
    assert "max |diff|" in r.stdout + r.stderr  # --check ran (it fails the command on a mismatch)


def test_context_length_warmup_phases_and_resume(tmp_path, cache, init_weights):
    """Opt-in warmup [[2, 128]]: steps 1-2 train on 128-token rows (same tokens per step), then 256;
    a run stopped inside the warmup resumes bitwise like an uninterrupted one."""
    extra = ["data.context_length_warmup=[[2, 128]]", "train.train_iters=4", "train.eval_interval=0",
             f"checkpoint.pretrained={init_weights}"]
    straight, resumed = tmp_path / "warm", tmp_path / "warm_resumed"
    launch(STAGE1, small(straight, cache, *extra))
    got = metrics(straight)
    assert [m["seq_length"] for m in got] == [128, 128, 256, 256]
    assert all(m["consumed_tokens"] == 1024 * m["step"] for m in got)
    launch(STAGE1, small(resumed, cache, *extra, "train.exit_at_step=1"))
    launch(STAGE1, small(resumed, cache, *extra))
    assert [m["loss"] for m in metrics(resumed)] == [m["loss"] for m in got]
