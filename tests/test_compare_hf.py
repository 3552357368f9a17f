"""benchmarks/compare_hf.py: one invocation runs HF transformers and megaindex on the same work.

The whole path on CPU with the tiny model (the GPU run is the same command on the 32K recipe): the
fixture benchmark data built by the documented command, both engines in their own processes, the
same-work check, both FLOP conventions from megaindex/plan.py, the ratio, and the files it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from megaindex import plan
from megaindex.config import load_config

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_hf  # noqa: E402

TINY = str(REPO / "examples" / "tiny_long_pt.yaml")


def run_compare(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare_hf.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                                    "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_one_invocation_compares_hf_and_megaindex_on_the_same_work(tmp_path):
    """3 measured steps of 2 x 256-token rows each side (~25 s on 2 cores, most of it imports)."""
    out, data = tmp_path / "out", tmp_path / "fixture_pretrain"
    r = run_compare("--out", str(out), "--recipe", TINY, "--data", str(data), "--steps", "4", "--warmup", "1",
                    "--sequences-per-step", "2", "data.seq_length=256")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "building the benchmark data from the repo's fixture corpus" in r.stdout  # the documented command ran
    assert data.with_suffix(".bin").is_file() and data.with_suffix(".idx").is_file()
    hf, mi, c = [json.loads(line) for line in (out / "compare_hf.jsonl").read_text().splitlines()]
    assert (hf["engine"], mi["engine"], c["name"]) == ("hf", "megaindex", "compare_hf")

    cfg = load_config(TINY, ["data.seq_length=256"])
    tokens, s = 512, 256
    causal = plan.step_flops(cfg, tokens, 2 * s * s)  # two rows, each one causal 256-token sequence
    full = plan.step_flops_full_attention(cfg, tokens, s)
    for rec in (hf, mi):
        assert (rec["packing"], rec["seq_length"], rec["global_batch_tokens"]) == ("concat", s, tokens)
        assert rec["dense_params"] == plan.dense_params(cfg)
        assert rec["model_tflop_per_step"] * 1e12 == pytest.approx(causal, rel=1e-12)
        assert rec["steps_measured"] == 3 and len(rec["step_times_s"]) == 4
        # medians of 3 measured steps: the rates are those of the median step time, in both conventions
        assert rec["tflops_per_gpu"] * rec["step_time_s"] * 1e12 == pytest.approx(causal, rel=1e-9)
        assert rec["tflops_per_gpu_full_s2"] * rec["step_time_s"] * 1e12 == pytest.approx(full, rel=1e-9)
        assert rec["tokens_per_s_per_gpu"] == pytest.approx(tokens / rec["step_time_s"], rel=1e-9)
    assert c["megaindex_over_hf"] == pytest.approx(mi["tokens_per_s_per_gpu"] / hf["tokens_per_s_per_gpu"], rel=1e-12)
    assert c["megaindex_layout"] == "CPU, full recompute"
    md = (out / "compare_hf.md").read_text().splitlines()
    assert md[0].startswith("| date | device | work |") and len(md) == 3
    assert md[2].endswith(f"**{c['megaindex_over_hf']:.2f}x** |")
    assert (out / "compare_hf.png").stat().st_size > 10_000
    assert f"megaindex / HF: {c['megaindex_over_hf']:.2f}x" in r.stdout


def test_refuses_work_that_is_not_the_same(tmp_path):
    """Per-document attention (packing reset) is work HF does not do: refused before anything runs,
    and two records of different work are named field by field."""
    r = run_compare("--out", str(tmp_path / "out"), "--data", str(REPO / "tests/fixtures/corpus/pretrain.jsonl"),
                    "data.packing=reset", timeout=60)
    assert r.returncode == 2 and "runs data.packing=concat" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()
    same = {"seq_length": 256, "global_batch_tokens": 512, "dense_params": 10, "model_tflop_per_step": 1.0}
    assert compare_hf.same_work_errors(same, dict(same)) == []
    errors = compare_hf.same_work_errors(same, {**same, "global_batch_tokens": 1024, "model_tflop_per_step": 0.9})
    assert len(errors) == 2 and errors[0] == "global_batch_tokens: HF 512 vs megaindex 1024"
    assert "not one causal sequence each" in errors[1]
