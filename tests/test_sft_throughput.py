"""benchmarks/sft_throughput.py end to end on CPU with the tiny preset (the GPU run's code path, small):
long conversations built from the fixture corpus, one trainer moved from stage-1 to stage-2 data,
the JSONL, markdown table and PNG it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_sft_benchmark_smoke(tmp_path):
    out, long_sft = tmp_path / "out", tmp_path / "long_sft.jsonl"
    cmd = [sys.executable, "benchmarks/sft_throughput.py", "--out-dir", str(out), "--long-sft", str(long_sft),
           "--long-count", "8", "--long-min-tokens", "200", "--long-max-tokens", "700", "--rows-per-step", "2",
           "--steps", "1", "--warmup", "1", "--phase-warmup", "0", "--profile", "sft_unsorted",
           "model.preset=tiny", "data.seq_length=512", "parallel.context_parallel_size=1", "train.precision=auto",
           "data.num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_RUN_DIR": str(tmp_path / "run")}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]

    from megaindex.data import chat

    convs = [json.loads(line) for line in long_sft.read_text().splitlines()]
    assert len(convs) == 8 and all(200 < c["tokens"] < 700 + 500 for c in convs)
    for c in convs:  # valid chat records whose answer is a paragraph of the prompt's text
        _, turns = chat.validate_messages(c)
        (user, answer), = turns
        assert answer.split()[0] in user

    phases = {p["phase"]: p for p in map(json.loads, (out / "sft_throughput.jsonl").read_text().splitlines())}
    assert list(phases) == ["stage1", "sft_sorted", "sft_unsorted"]
    s1, srt, uns = phases.values()
    assert (s1["data_kind"], s1["loss_weighting"]) == ("pretrain", "token")
    assert srt["loss_weighting"] == uns["loss_weighting"] == "longalign"
    assert (srt["sorted_batching"], uns["sorted_batching"]) == (True, False)
    for p in phases.values():
        assert p["steps_measured"] == 1 and p["rows_per_step"] == 2 and p["seq_length"] == 512
        step = p["steps"][0]
        assert step["tokens"] == 1024 and 0 < step["real_tokens"] <= 1024 and step["model_tflop"] > 0
        assert p["tokens_per_s_per_gpu"] > 0 and 0 < p["packing_efficiency"] <= 1
    assert srt["sequences_per_row"] > 1 and uns["sequences_per_row"] > 1  # conversations share rows
    assert "profile_gpu_ms_by_kernel_family" in uns and (out / "profile_sft_unsorted.txt").is_file()
    table = (out / "sft_throughput.md").read_text()
    assert all(f"| {name} |" in table for name in phases) and (out / "sft_throughput.png").stat().st_size > 10_000


def test_kernel_families_leave_out_the_gpu_spans_of_profiler_ranges():
    """The 2026-11-28 H200 profile put 8.1 s of "other" GPU time in a 7.2 s step: the GPU-side span
    of the `megaindex.forward_backward` range (a CUDA event, is_user_annotation) was counted as a
    kernel. Kernels only now, as the profiler table's footer counts them; CPU ops (which also carry
    their kernels' time) stay out as before."""
    import enum
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO / "benchmarks"))
    import sft_throughput

    Dev = enum.Enum("Dev", "CPU CUDA")
    ev = lambda key, ms, dev="CUDA", ann=False: SimpleNamespace(  # noqa: E731
        key=key, self_device_time_total=ms * 1e3, device_type=Dev[dev], is_user_annotation=ann)
    events = [ev("megaindex.forward_backward", 7345.0, ann=True), ev("megaindex.optimizer", 60.0, ann=True),
              ev("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma", 2116.0),
              ev("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NTN", 647.0),
              ev("void transformer_engine::fused_rope_thd_linear_grid_kernel", 83.0),
              ev("triton_poi_fused_mul_silu_split_0", 76.0), ev("FusedAttnFuncBackward", 2172.0, dev="CPU")]
    fams = sft_throughput.kernel_families(SimpleNamespace(key_averages=lambda: events))
    assert fams == {"attention": 2116.0, "rope": 83.0, "gemm": 647.0, "other": 76.0}
