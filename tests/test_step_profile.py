"""benchmarks/step_profile.py: a hand-built Chrome trace with every category, overlapping communication
and compute, a host gap and a backward kernel found through its forward op gives the answers worked
out by hand below; bad files are one-line errors. The real CPU trace of a training run, with its step
and phase ranges, is checked in tests/test_cluster_run.py (the run that makes it): refused with a
one-line message, not a crash. benchmarks/gpu_x2_session.sh runs end to end on CPU (SMOKE=1)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import step_profile  # noqa: E402

MAIN, BWD, PID = 1, 2, 100

# (name, trace category, start µs, duration µs, stream, launching thread, launch time) for one step
# [0, 1000] µs. Compute on streams 7/8, NCCL on stream 20.
KERNELS = [
    ("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", 100, 20, 7, MAIN, 95),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0", "kernel", 120, 100, 7, MAIN, 115),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "kernel", 220, 80, 7, MAIN, 215),
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "kernel", 200, 200, 20, MAIN, 196),
    ("rmsnorm_fwd_tuned_kernel", "kernel", 300, 10, 7, MAIN, 295),
    ("void transformer_engine::fused_rope_thd_linear_grid_forward_kernel<__nv_bfloat16>(int)", "kernel", 310, 5, 7, MAIN, 303),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_mul>(int)", "kernel", 315, 10, 7, MAIN, 309),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>(float)", "kernel", 400, 20, 7, MAIN, 390),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::MulFunctor<float>>(int)", "kernel", 420, 10, 7, BWD, 415),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0", "kernel", 430, 200, 7, BWD, 428),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "kernel", 500, 100, 8, BWD, 430),
    ("void multi_tensor_apply_kernel<TensorListMetadata<4>, transformer_engine::multi_tensor_adam::AdamFunctor>(long)", "kernel", 830, 50, 7, MAIN, 810),
    ("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "kernel", 880, 20, 20, MAIN, 850),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "kernel", 900, 10, 20, MAIN, 860),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "kernel", 910, 5, 20, MAIN, 870),
    ("Memset (Device)", "gpu_memset", 915, 5, 7, MAIN, 904),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int)", "kernel", 920, 10, 7, MAIN, 905),
    ("my_mystery_kernel", "kernel", 930, 10, 7, MAIN, 906),
    ("nvjet_launched_before_the_step", "kernel", -40, 30, 7, MAIN, -50),  # not the step's
]
# (name, category, thread, start, duration, args)
HOST = [
    ("megaindex.step#5", "user_annotation", MAIN, 0, 1000, {}),
    ("megaindex.forward_backward", "user_annotation", MAIN, 0, 630, {}),
    ("megaindex.data_wait", "user_annotation", MAIN, 10, 80, {}),
    ("megaindex.norm_head", "user_annotation", MAIN, 180, 15, {}),
    ("aten::linalg_vector_norm", "cpu_op", MAIN, 182, 8, {"Sequence number": 77, "Fwd thread id": 0}),
    ("SwiGLUFunction", "cpu_op", MAIN, 306, 6, {"Sequence number": 80}),
    ("_VocabParallelCrossEntropy", "cpu_op", MAIN, 380, 18, {"Sequence number": 81}),
    ("autograd::engine::evaluate_function: LinalgVectorNormBackward0", "cpu_op", BWD, 410, 15, {"Sequence number": 77, "Fwd thread id": 1}),
    ("autograd::engine::evaluate_function: FusedAttnFuncBackward", "cpu_op", BWD, 426, 10, {"Sequence number": 78, "Fwd thread id": 1}),
    ("megaindex.reduce_loss", "user_annotation", MAIN, 640, 160, {}),
    ("aten::_local_scalar_dense", "cpu_op", MAIN, 650, 140, {}),
    ("megaindex.optimizer", "user_annotation", MAIN, 800, 100, {}),
    ("Optimizer.step#FusedAdam.step", "user_annotation", MAIN, 805, 80, {}),
]


def make_trace(path, with_steps=True):
    ev = [{"ph": "X", "cat": c, "name": n, "pid": PID, "tid": t, "ts": s, "dur": d, "args": a}
          for n, c, t, s, d, a in HOST if with_steps or not n.startswith("megaindex.step")]
    for corr, (name, cat, ts, dur, stream, tid, launch) in enumerate(KERNELS, start=1):
        api = "cudaMemcpyAsync" if cat == "gpu_memcpy" else "cudaMemsetAsync" if cat == "gpu_memset" else "cudaLaunchKernel"
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": api, "pid": PID, "tid": tid, "ts": launch, "dur": 1,
                   "args": {"correlation": corr}})
        ev.append({"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": stream, "ts": ts, "dur": dur,
                   "args": {"correlation": corr, "stream": stream, "device": 0}})
    ev.append({"ph": "s", "cat": "fwdbwd", "name": "fwdbwd", "id": 1, "pid": PID, "tid": MAIN, "ts": 5})  # not "X": ignored
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


# Worked out by hand (µs in the step [0, 1000]).
GPU_US = {"memcpy": 20, "attention": 300, "gemm": 180, "comm_p2p": 200, "norm": 10, "rope": 5, "swiglu": 10,
          "cross_entropy": 20, "norm_head": 10, "optimizer": 50, "comm_reduce_scatter": 20, "comm_all_gather": 10,
          "comm_all_reduce": 5, "memset": 5, "elementwise": 10, "other": 10}
# wall shares: [500, 600) has attention and a GEMM on two streams (50/50); the SendRecv is exposed
# from 325 to 400; idle = [0, 100) + [630, 830) + [940, 1000).
WALL_US = {**{c: v for c, v in GPU_US.items() if not c.startswith("comm_")}, "attention": 250, "gemm": 130,
           "comm_p2p": 75, "comm_reduce_scatter": 20, "comm_all_gather": 10, "comm_all_reduce": 5, "idle": 360}


def test_hand_built_trace_gives_the_hand_computed_profile(tmp_path):
    trace = make_trace(tmp_path / "trace_steps5-5_rank0.json")
    r = step_profile.analyse(trace)
    assert r["steps"] == ["step 5"] and r["rank"] == 0 and r["kernels"] == 18  # the earlier launch is not the step's
    for c, x in r["categories"].items():
        assert x["gpu_ms"] == pytest.approx(GPU_US.get(c, 0) / 1000), c
        assert x["wall_share_ms"] == pytest.approx(WALL_US.get(c, 0) / 1000), c
    assert sum(x["wall_share_ms"] for x in r["categories"].values()) == pytest.approx(r["wall_ms"])
    assert r["categories"]["attention"]["kernels"] == 2 and r["categories"]["gemm"]["kernels"] == 2
    assert r["wall_ms"] == 1.0 and r["gpu_busy_ms"] == pytest.approx(0.53)
    assert (r["comm_ms"], r["comm_hidden_ms"], r["comm_exposed_ms"], r["idle_ms"]) == pytest.approx((0.235, 0.125, 0.11, 0.36))
    assert r["categories"]["attention"]["pct_of_step"] == 30.0
    gaps = r["largest_gaps"]
    assert [(g["at_ms"], g["ms"]) for g in gaps] == [(0.63, 0.2), (0.0, 0.1), (0.94, 0.06)]
    assert gaps[0]["host"] == "megaindex.reduce_loss > aten::_local_scalar_dense"
    assert gaps[1]["host"] == "megaindex.forward_backward > megaindex.data_wait"
    assert gaps[2]["host"] == "(no host event on the step's thread)"
    assert r["idle_by_host"] == [
        {"host": "megaindex.reduce_loss > aten::_local_scalar_dense", "idle_ms": 0.2, "gaps": 1},
        {"host": "megaindex.data_wait", "idle_ms": 0.1, "gaps": 1},
        {"host": "(nothing on the step's thread)", "idle_ms": 0.06, "gaps": 1}]
    assert [k["name"] for k in r["top_kernels"]["other"]] == ["my_mystery_kernel"]
    assert r["rules"]["cuDNN fused attention forward (sdpa fprop)"]["gpu_ms"] == pytest.approx(0.1)
    assert r["rules"]["cuDNN fused attention backward (sdpa bprop, dO.O, dQ convert)"]["gpu_ms"] == pytest.approx(0.2)
    nh = r["top_kernels"]["norm_head"][0]  # backward kernel, claimed through its forward op's range
    assert "megaindex.norm_head" in nh["context"] and "LinalgVectorNormBackward0" in nh["context"]

    # the command: two ranks, the files, a slim trace that reads back to the same profile
    rank1 = make_trace(tmp_path / "trace_steps5-5_rank1.json")
    out = tmp_path / "out"
    assert step_profile.main([str(trace), str(rank1), "--out-dir", str(out), "--slim", str(out)]) == 0
    md = (out / "step_profile.md").read_text()
    assert "| attention | 0.3 | 30.0 | 2 | 0.2 | 0.3 | 30.0 | 2 | 0.2 |" in md  # 0.25 ms wall printed to 1 decimal
    assert "`my_mystery_kernel`" in md and "megaindex.reduce_loss > aten::_local_scalar_dense" in md
    saved = json.loads((out / "step_profile.json").read_text())
    assert [x["rank"] for x in saved["ranks"]] == [0, 1] and len(saved["rules"]) == len(step_profile.RULES)
    assert (out / "step_profile.png").read_bytes()[:4] == b"\x89PNG"
    slim = out / "trace_rank0.slim.json.gz"
    assert len(json.loads(gzip.open(slim, "rt").read())["traceEvents"]) < 2 * len(KERNELS) + len(HOST)
    again = step_profile.analyse(slim)
    assert again["categories"] == r["categories"] and again["largest_gaps"] == r["largest_gaps"]

    # without step ranges: one window from the first kernel to the last, steps from the file name
    bare = step_profile.analyse(make_trace(tmp_path / "trace_steps5-5_rank2.json", with_steps=False))
    assert bare["n_steps"] == 1 and bare["wall_ms"] == pytest.approx(0.98) and bare["kernels"] == 19


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    assert step_profile.main([str(bad)]) == 1
    assert step_profile.main([str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"step_profile: {bad}: not a Chrome trace") and err[1].endswith("missing.json: no such file")



# Kernel names as an H100 trace of this stack holds them (TE 2.20.2's libtransformer_engine.so symbols
# and runtime-compiled norm kernels, cuBLASLt nvjet / sm90_xmma, NCCL 2.2x device kernels, torch
# and torch.compile kernels) -> the category the rules give them with no launching context.
REAL_NAMES = {
    "void transformer_engine::normalization::rmsnorm_fwd_tuned_kernel<transformer_engine::normalization::Kernel_traits<>>": "norm",
    "rmsnorm_bwd_finalize_tuned_kernel": "norm",
    "void transformer_engine::fused_rope_thd_linear_grid_forward_kernel<__nv_bfloat16>(__nv_bfloat16 const*)": "rope",
    "void transformer_engine::context_parallel::thd_out_correction_kernel<__nv_bfloat16, 1, 0>(int)": "attention",
    "void transformer_engine::context_parallel::thd_lse_kernel<transformer_engine::context_parallel::LseCorrectionFunctor>(float*)": "attention",
    "void transformer_engine::flash_attention::prepare_kernel_fwd<__nv_bfloat16>(int)": "attention",
    "void multi_tensor_apply_kernel<TensorListMetadata<4, false>, transformer_engine::multi_tensor_adam::AdamFunctor<float, float, long>, float>": "optimizer",
    "void multi_tensor_apply_kernel<TensorListMetadata<1, false>, transformer_engine::multi_tensor_l2norm::L2NormFunctor<float>, float*>": "optimizer",
    "nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNN": "gemm",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel__5x_cublas": "gemm",
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>(int)": "gemm",
    "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)": "comm_p2p",
    "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "comm_reduce_scatter",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "comm_all_gather",
    "triton_poi_fused_mul_silu_0": "swiglu",
    "void transformer_engine::gated_act_kernel<8, true, float, transformer_engine::Empty, &transformer_engine::silu<float, float>>": "swiglu",
    "cross_entropy_kernel": "cross_entropy",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>>": "elementwise",
}


def test_rules_name_the_kernels_of_an_h100_trace():
    got = {n: step_profile.classify(n, "")[0] for n in REAL_NAMES}
    assert got == REAL_NAMES
    # an attention-side copy kernel is claimed through TE's CP attention op that launched it
    assert step_profile.classify("void at::native::elementwise_kernel<128, 2>", "AttnFuncWithCPAndKVP2P")[0] == "attention"


# (kernel name, launching context) as the 2026-11-28 CP2 H200 profile recorded them
# (benchmarks/logs_2026-11-28b_h200x2/) -> category: the head's padded-vocabulary fill and the
# embedding backward's sort kernels had fallen to `elementwise` / `other` there.
H200_CP2 = [
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::(anonymous namespace)::masked_fill_kernel>",
     "megaindex.step#6 > megaindex.forward_backward > _FillPaddedColumns > aten::masked_fill_", "cross_entropy"),
    ("void at_cuda_detail::cub::detail::radix_sort::DeviceRadixSortOnesweepKernel<at_cuda_detail::cub::detail::radix_sort::policy_hub<long, long, unsigned int>::Policy900>",
     "autograd::engine::evaluate_function: EmbeddingBackward0 > EmbeddingBackward0 > aten::embedding_backward > aten::embedding_dense_backward",
     "elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>, 4>",
     "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad > aten::add_", "elementwise"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::FillFunctor<c10::BFloat16>>>",
     "megaindex.forward_backward > AttnFuncWithCPAndKVP2P > aten::masked_fill_", "attention"),
]


def test_rules_on_the_h200_cp2_profile_and_the_heaviest_context_is_shown(tmp_path):
    assert [step_profile.classify(n, x)[0] for n, x, _ in H200_CP2] == [c for *_, c in H200_CP2]
    # one kernel name launched from two ops: the table names the op with most of its GPU time, not the first seen
    ev = [{"ph": "X", "cat": "user_annotation", "name": "megaindex.step#1", "pid": PID, "tid": MAIN, "ts": 0, "dur": 200}]
    for i, (op, ts, dur) in enumerate([("aten::outer", 10, 5), ("aten::mul_", 50, 60), ("aten::mul_", 120, 60)], start=1):
        ev += [{"ph": "X", "cat": "cpu_op", "name": op, "pid": PID, "tid": MAIN, "ts": ts - 2, "dur": 2},
               {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": PID, "tid": MAIN, "ts": ts - 1, "dur": 1,
                "args": {"correlation": i}},
               {"ph": "X", "cat": "kernel", "name": "void at::native::elementwise_kernel<128, 2>", "pid": 0, "tid": 7,
                "ts": ts, "dur": dur, "args": {"correlation": i, "stream": 7}}]
    (trace := tmp_path / "trace_steps1-1_rank0.json").write_text(json.dumps({"traceEvents": ev}))
    top = step_profile.analyse(trace)["top_kernels"]["elementwise"]
    assert [(k["gpu_ms"], k["kernels"], k["context"]) for k in top] == [(0.125, 3, "aten::mul_")]


def test_gpu_x2_session_runs_end_to_end_on_cpu(tmp_path):
    """SMOKE=1: the tiny model at CP2 over gloo through train_throughput.py with a profiled step, the
    profile (a CPU trace: refused in one line), the GPU tests (skipped), the summary and the logs. ~25 s."""
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "run"),
           "DATA": str(tmp_path / "data" / "fixture"), "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_x2_session.sh")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tgz", "summary.txt", "train.jsonl"]
    summary = (out / "summary.txt").read_text()
    assert "data: rc=0" in summary and "train: rc=0" in summary and "pytest_layout: rc=0" in summary, summary
    assert "cp2_profile cpu x 2 tokens/s/GPU" in summary, summary
    assert "step_profile: rc=1" in summary and "step ranges: megaindex.step#2, but no GPU kernels" in summary, summary
    assert "test_layout_matches_one_gpu[cp2_p2p_thd] SKIPPED" in summary, summary
    rec = json.loads((out / "train.jsonl").read_text())
    assert rec["layout"]["cp"] == 2 and rec["steps_measured"] == 2
    assert rec["cross_entropy_kernel_used"] == "none"  # gathered over both ranks (auto on CPU: the unfused loss)
    assert (tmp_path / "run" / "profile" / "trace_steps2-2_rank1.json").is_file()
