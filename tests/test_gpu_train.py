"""The trainer on one GPU (marked `gpu`): bf16 + Transformer Engine, background (async)
checkpoint writes that complete under their final name, and a resume that continues the run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from test_train import STAGE1, launch, metrics, small

pytestmark = pytest.mark.gpu
BF16_REL = 2e-2  # bf16 training steps; cuDNN attention backward is not bitwise deterministic


def test_async_checkpoints_and_resume_on_gpu(tmp_path):
    cache = tmp_path / "cache"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["checkpoint.save_interval=2", "checkpoint.async_save=true", "checkpoint.keep_last=2"]
    launch(STAGE1, small(straight, cache, *common))
    ck = straight / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_00000008"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_00000006", "step_00000008"]  # keep_last=2
    assert not list(ck.glob(".step_*.tmp"))  # every background write was finalised
    for p in ck.glob("step_*"):
        assert json.loads((p / "megaindex.json").read_text())["kind"] == "train"

    launch(STAGE1, small(resumed, cache, *common, "train.exit_at_step=4"))
    out = launch(STAGE1, small(resumed, cache, *common))
    assert "resumed from" in out.stdout
    a, b = metrics(straight), metrics(resumed)
    assert [m["step"] for m in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= BF16_REL * abs(x["loss"]), (x, y)
    assert a[-1]["tflops_per_gpu"] > 0 and a[-1]["mem_gib"] > 0


def test_doctor_sees_transformer_engine():
    r = subprocess.run([sys.executable, "-m", "megaindex", "doctor", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["gpus"] and report["versions"]["transformer_engine"]
    assert report["features"]["transformer_impl"] == "transformer_engine"
    assert report["features"]["collectives"] == "nccl"
