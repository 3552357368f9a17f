"""`megaindex info` on the shipped 32K recipe: parameter counts (megaindex.plan), layout, memory."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def run_info(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "megaindex", "info", *args, "--json"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_info_on_the_32k_recipe():
    recipe = str(REPO / "examples" / "index_1.9b_long_pt_32k.yaml")
    r = run_info(recipe)
    h, f, layers, vocab = 2048, 5888, 36, 65029
    par = r["parameters"]
    # The "1.9B": transformer-layer matrices, 36 * (4 h^2 + 3 h F).
    assert par["non_embedding"] == layers * (4 * h * h + 3 * h * f) == 1_906_311_168
    assert par["embedding"] == par["output"] == 65152 * h  # padded to 128
    assert par["norms"] == (2 * layers + 1) * h
    assert par["total"] == par["non_embedding"] + par["embedding"] + par["output"] + par["norms"]
    assert r["model"]["rotary_base"] == 320000 and r["model"]["seq_length"] == 32768
    assert r["layout"]["context_parallel_size"] == 2 and r["layout"]["data_parallel_size"] == 1
    mem = r["memory_per_gpu_gib"]
    parts = ("weights", "grads", "optimizer", "activations", "logits")
    assert abs(mem["peak_allocated"] - sum(mem[k] for k in parts)) < 0.05
    assert abs(mem["total"] - mem["peak_allocated"] - mem["overhead"]) < 0.05
    # bf16 weights of all 2.17B parameters on each CP rank; Adam state sharded over DP x CP = 2
    assert abs(mem["weights"] - par["total"] * 2 / 2**30) < 0.01
    assert abs(mem["optimizer"] - par["total"] * 12 / 2 / 2**30) < 0.01

    # TP=2 on 16 GPUs: half the matrices per GPU, optimizer state spread over DP=4, vocab padded to 256.
    r2 = run_info(recipe, "parallel.tensor_model_parallel_size=2", "--world-size", "16")
    assert r2["layout"]["data_parallel_size"] == 4 and r2["layout"]["padded_vocab_size"] == 65280
    assert r2["parameters"]["per_gpu"] < 0.55 * par["per_gpu"]
    assert r2["memory_per_gpu_gib"]["optimizer"] < r["memory_per_gpu_gib"]["optimizer"] / 6


def test_info_explains_an_invalid_layout():
    r = subprocess.run(
        [sys.executable, "-m", "megaindex", "info", str(REPO / "examples" / "index_1.9b_long_pt_32k.yaml"), "--world-size", "3"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert r.returncode == 2
    assert "world size 3 is not divisible by TP x PP x CP = 1 x 1 x 2 = 2" in r.stderr


def test_estimate_within_15_percent_of_measured_gpu_peaks():
    """`megaindex info` against what the trainer measured at 32K on H200s, layout by layout
    (benchmarks/memory_vs_estimate.py over benchmarks/results_train_*.jsonl): the allocated peak
    (torch.cuda.max_memory_allocated on the most loaded rank) and the whole GPU footprint (peak
    reserved + CUDA context/NCCL outside torch's allocator)."""
    r = subprocess.run([sys.executable, "benchmarks/memory_vs_estimate.py", "--json"], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    assert len({c["name"] for c in rows}) >= 6 and {c["gpus"] for c in rows} >= {1, 2, 4}
    for c in rows:
        assert abs(c["allocated_error"]) <= 0.15, c
        assert abs(c["footprint_error"]) <= 0.15, c


def test_memory_vs_estimate_rebuilds_a_record_with_the_kernel_it_ran():
    """A record's `cross_entropy_kernel_used` (what the built model ran, after any fallback) wins over the
    kernel its command asked for by name: a `te` run that fell back to the unfused loss is estimated as
    unfused (the command's override used to come last and win). A record without the field (before
    `auto`) ran what its command named, or megatron's unfused loss."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import memory_vs_estimate

    def fusion(command, **used):
        record = {"command": command, "global_batch_tokens": 65536, **used}
        return memory_vs_estimate.run_config(record).model.cross_entropy_fusion

    te = "benchmarks/train_throughput.py --steps 4 parallel.context_parallel_size=1 model.cross_entropy_fusion=te"
    plain = "benchmarks/train_throughput.py --steps 4 parallel.context_parallel_size=1"
    assert fusion(te, cross_entropy_kernel_used="none") == "none"
    assert fusion(plain, cross_entropy_kernel_used="te") == "te"
    assert (fusion(te), fusion(plain)) == ("te", "none")


def test_python_m_megaindex_freezes_the_heap_before_exit(monkeypatch):
    """`python -m megaindex` runs main() then gc.freeze(), returned or raised: the interpreter's
    teardown then skips torch's and megatron's objects (~1.2 s per process, __main__.py)."""
    import gc
    import runpy

    import pytest

    import megaindex.cli

    events: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: events.append("freeze"))
    for outcome in (3, RuntimeError("boom")):
        def main(outcome=outcome):
            events.append("main")
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        monkeypatch.setattr(megaindex.cli, "main", main)
        with pytest.raises((SystemExit, RuntimeError)) as e:
            runpy.run_module("megaindex", run_name="__main__")
        assert (e.value.code == 3) if isinstance(e.value, SystemExit) else str(e.value) == "boom"
    assert events == ["main", "freeze"] * 2
