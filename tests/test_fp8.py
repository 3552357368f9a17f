"""FP8 settings (issue #13 item 4), on CPU: which combinations validation refuses and why
(megaindex/config_fp8.py), what an H100 adds, the fields megatron's TransformerConfig receives,
FP8 refused where TE is absent (it would silently train without FP8), the sbhd forward path FP8
attention uses for concat rows against the THD path, every benchmark variant's dry run, and the
evaluation layout of an FP8 run's checkpoint."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from megaindex.config import Config, ConfigError, load_config
from megaindex.config_fp8 import fp8_device_errors

sys.path.insert(0, str(REPO / "benchmarks"))

ATTN = ("train.fp8=hybrid", "train.fp8_dot_product_attention=true", "data.packing=concat")


def cfg_with(*overrides: str) -> Config:
    base = ["model.preset=tiny", "data.seq_length=256", "data.global_batch_tokens=2048"]
    return load_config(None, [*base, *overrides])


def errors_of(cfg: Config, world: int = 2) -> str:
    with pytest.raises(ConfigError) as e:
        cfg.validate(world)
    return str(e.value)


def test_validation_accepts_what_runs_and_names_the_field_of_what_cannot():
    cfg_with(*ATTN, "parallel.context_parallel_size=2").validate(2)  # delayed (default) FP8 attention, concat rows
    cfg_with("train.fp8=hybrid", "train.fp8_recipe=tensorwise", "train.num_layers_at_start_in_bf16=1",
             "train.num_layers_at_end_in_bf16=1").validate(1)
    cases = {  # tiny: 4 layers
        ("train.fp8_dot_product_attention=true",): "train.fp8_dot_product_attention=true needs train.fp8",
        ("train.num_layers_at_end_in_bf16=1",): "apply to FP8 runs only",
        ("train.fp8=hybrid", "train.num_layers_at_start_in_bf16=1"): "with train.fp8_recipe=delayed: megatron-core refuses",
        ("train.fp8=hybrid", "train.fp8_recipe=tensorwise", "train.num_layers_at_start_in_bf16=3",
         "parallel.pipeline_model_parallel_size=2"): "num_layers_at_start_in_bf16 3 is more than the 2 layers of a pipeline stage",
        ("train.fp8=hybrid", "train.fp8_recipe=tensorwise", "train.num_layers_at_start_in_bf16=2",
         "train.num_layers_at_end_in_bf16=2"): "leaves none of the 4 layers in FP8",
        ("train.fp8=hybrid", "model.transformer_impl=local"): "runs in Transformer Engine's modules only",
        ("train.fp8=hybrid", "train.fp8_dot_product_attention=true"): "data.packing=reset rows are packed documents",
        ("train.fp8=hybrid", "train.fp8_dot_product_attention=true", "data.kind=sft"): "SFT rows are packed conversations",
        (*ATTN, "train.fp8_recipe=blockwise"): "does not pass fp8_dpa to Float8BlockScaling",
        (*ATTN, "data.row_layout=thd"): "with data.row_layout=thd: cuDNN's FP8 attention has no THD kernel",
        (*ATTN, "eval.interval=2"): "eval.interval=2: the in-training probe scores packed THD rows",
        ("data.row_layout=sbhd",): "data.row_layout sbhd feeds one causal sequence per row",
        ("data.row_layout=sbhd", "data.packing=concat", "train.cuda_graph_impl=full_iteration",
         "data.static_thd_shapes=true"): "data.row_layout=sbhd is not captured",
        ("data.row_layout=sbhd", "data.packing=concat", "data.static_thd_shapes=true"): "set data.static_thd_shapes=false",
        (*ATTN, "data.static_thd_shapes=true"): "these rows go in as sbhd",
    }
    for overrides, message in cases.items():
        world = 2 if "parallel.pipeline_model_parallel_size=2" in overrides else 1
        msg = errors_of(cfg_with(*overrides), world)
        assert message in msg and msg.count("\n  - ") == 1, (overrides, msg)
    assert "no THD kernel" in errors_of(cfg_with("train.fp8=hybrid", "train.fp8_dot_product_attention=true"), 1)
    # which layout the trainer feeds: THD unless FP8 attention (auto) or data.row_layout=sbhd says otherwise
    assert cfg_with().rows_as_thd and cfg_with("data.packing=concat").rows_as_thd
    assert not cfg_with(*ATTN).rows_as_thd and not cfg_with("data.packing=concat", "data.row_layout=sbhd").rows_as_thd


def test_evaluating_a_checkpoint_of_an_fp8_run_drops_every_fp8_field():
    """`megaindex eval` turns the checkpoint's config into a bf16 evaluation layout; with CP it is
    validated, and FP8 attention or bf16 end layers without train.fp8 would be refused."""
    from megaindex.eval.megatron_engine import eval_config

    cfg = cfg_with(*ATTN, "train.fp8_recipe=tensorwise", "train.num_layers_at_start_in_bf16=1", "parallel.context_parallel_size=2")
    cfg.validate(2)
    eval_config(cfg, 2)
    cfg.validate(2)
    t = cfg.train
    assert (t.fp8, t.fp8_dot_product_attention, t.num_layers_at_start_in_bf16, t.num_layers_at_end_in_bf16) == (None, False, 0, 0)


def test_device_rules_for_hopper_and_blackwell():
    h100, b200, a100 = (9, 0), (10, 0), (8, 0)
    attn = cfg_with(*ATTN, "model.hidden_size=512")  # 4 heads of 128, Index's head dim
    tensorwise_attn = cfg_with(*ATTN, "model.hidden_size=512", "train.fp8_recipe=tensorwise")
    assert fp8_device_errors(attn, h100, {}, "13.0") == []
    assert fp8_device_errors(cfg_with(), a100, {}) == []  # no FP8: nothing to check
    [msg] = fp8_device_errors(tensorwise_attn, h100, {})
    assert "no FP8 current-scaling attention below sm100 (this GPU is sm90)" in msg and "NVTE_DPA_FP8_RECIPE=DelayedScaling" in msg
    assert fp8_device_errors(tensorwise_attn, h100, {"NVTE_DPA_FP8_RECIPE": "DelayedScaling"}) == []
    assert fp8_device_errors(tensorwise_attn, b200, {}) == []
    assert "turns FP8 attention off" in fp8_device_errors(attn, h100, {"NVTE_DPA_FP8_RECIPE": "F16"})[0]
    [msg] = fp8_device_errors(attn, h100, {"NVTE_DPA_FP8_RECIPE": "Float8CurrentScaling"})
    assert "delayed scaling only below sm100" in msg and "NVTE_DPA_FP8_RECIPE=DelayedScaling" in msg
    assert fp8_device_errors(attn, b200, {"NVTE_DPA_FP8_RECIPE": "Float8CurrentScaling"}) == []
    assert "NVTE_FUSED_ATTN=0" in fp8_device_errors(attn, h100, {"NVTE_FUSED_ATTN": "0"})[0]
    mx = cfg_with("train.fp8=e4m3", "train.fp8_recipe=mxfp8")
    assert "mxfp8 needs Blackwell" in fp8_device_errors(mx, h100, {})[0]
    assert fp8_device_errors(mx, b200, {}) == []
    block = cfg_with("train.fp8=e4m3", "train.fp8_recipe=blockwise")
    assert fp8_device_errors(block, h100, {}, "12.9") == []
    assert "CUDA 12.9+" in fp8_device_errors(block, h100, {}, "12.8")[0]
    assert "compute capability 8.9 or higher" in fp8_device_errors(cfg_with("train.fp8=hybrid"), a100, {})[0]
    narrow = cfg_with(*ATTN)  # tiny: head dim 32
    assert "head dimension of 128 on sm90 (TE fused_attn.cpp); model head dim is 32" in fp8_device_errors(narrow, h100, {})[0]
    assert fp8_device_errors(narrow, b200, {}) == []  # sm100: at most 128


def test_transformer_config_carries_the_fp8_fields():
    from megatron.core.fp8_utils import is_first_last_bf16_layer

    from megaindex.model.build import to_transformer_config

    tc = to_transformer_config(cfg_with("train.fp8=hybrid", "train.fp8_recipe=tensorwise", "train.num_layers_at_start_in_bf16=1",
                                        "train.num_layers_at_end_in_bf16=2"), use_te=False)
    assert (tc.fp8, tc.fp8_recipe, tc.fp8_dot_product_attention) == ("hybrid", "tensorwise", False)
    assert tc.first_last_layers_bf16 and (tc.num_layers_at_start_in_bf16, tc.num_layers_at_end_in_bf16) == (1, 2)
    # megatron's meaning: global layer indices 0 and the last two stay outside the FP8 context
    assert [is_first_last_bf16_layer(tc, i) for i in range(4)] == [True, False, True, True]
    tc = to_transformer_config(cfg_with(*ATTN), use_te=False)
    assert (tc.fp8, tc.fp8_recipe, tc.fp8_dot_product_attention, tc.first_last_layers_bf16) == ("hybrid", "delayed", True, False)
    assert to_transformer_config(cfg_with(), use_te=False).fp8 is None


def test_fp8_without_transformer_engine_is_refused(single_process_megatron):
    # megatron's fp8 context is a no-op without TE: before this check the run trained without FP8, silently
    from megaindex.model.build import build_model

    with pytest.raises(ConfigError, match="train.fp8 needs Transformer Engine on a GPU"):
        build_model(cfg_with("train.fp8=hybrid", "train.precision=bf16"), use_te=False)


def concat_micro_batch(rows: int, seq: int, vocab: int) -> dict[str, torch.Tensor]:
    from megaindex.data.batch import collate
    from megaindex.data.packing import Piece, pack_pieces

    rng = np.random.default_rng(3)
    samples = []
    for _ in range(rows):
        text = rng.integers(5, vocab, seq + 1)
        piece = Piece(text[:seq], text[1:], np.ones(seq, dtype=np.float32))
        samples.append(pack_pieces([piece], seq, 4, concat=True))
    return collate(samples)


def test_unpack_rows_keeps_each_rows_cp_chunks():
    from megaindex.cp_layout import cp_chunk_positions
    from megaindex.data.batch import slice_batch_for_cp_rank, unpack_rows

    batch = concat_micro_batch(3, 16, 8000)
    for rank in (0, 1):
        rows = unpack_rows(slice_batch_for_cp_rank(batch, 2, rank))["tokens"]
        expect = batch["tokens"].reshape(3, 16)[:, cp_chunk_positions(16, 2, rank)]
        assert torch.equal(rows, expect)
    reset = dict(batch, cu_seqlens_padded=torch.tensor([0, 12, 48], dtype=torch.int32))
    with pytest.raises(ValueError, match="equal one-piece rows"):
        unpack_rows(reset)


def test_sbhd_forward_step_equals_the_thd_one_on_concat_rows(single_process_megatron):
    from megaindex import distributed
    from megaindex.distributed import current_layout
    from megaindex.model.build import build_model
    from megaindex.training.loss import make_forward_step

    cfg = cfg_with("data.seq_length=64", "data.packing=concat")
    distributed.seed_everything(5)
    model = build_model(cfg)
    batch = concat_micro_batch(2, 64, cfg.model.vocab_size)
    results = {}
    for packed in (True, False):
        step = make_forward_step(packed=packed, longalign=False, device=torch.device("cpu"), layout=current_layout())
        with torch.no_grad():
            output, loss_fn = step(iter([batch]), model)
            loss_sum, count, _ = loss_fn(output)
        results[packed] = (output, loss_sum.item(), count.item())
    assert results[False][0].shape == (2, 64) and results[True][0].shape == (1, 128)
    assert results[True][2] == results[False][2] == 128
    assert torch.allclose(results[True][0].reshape(2, 64), results[False][0], atol=1e-5)  # fp32, 4 layers: ~1e-6
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-6)


def test_every_benchmark_variant_builds_on_cpu_as_an_h100_sees_it():
    import fp8_variants

    built = fp8_variants.dry_run()
    assert set(built) == set(fp8_variants.VARIANTS)
    attn = built["fp8_delayed_attn_concat_sbhd"]
    assert attn["fp8_dot_product_attention"] and (attn["packing"], attn["row_layout"]) == ("concat", "sbhd")
    assert built["fp8_tensorwise_ends_bf16_reset"]["first_last_layers_bf16"]
    assert all(b["context_parallel_size"] == 2 for b in built.values())
    # every variant's bf16 baseline (same rows, same layout) is a variant too
    assert all(fp8_variants.baseline_of(b) in built for b in built.values())


def test_benchmark_summary_compares_each_variant_with_the_bf16_run_of_its_packing(tmp_path):
    import fp8_variants

    fused = {"use_fused_attention": True, "use_flash_attention": False}
    records = [
        {"name": "bf16_reset", "packing": "reset", "fp8": None, "tokens_per_s_per_gpu": 20000.0, "tflops_per_gpu": 450.0,
         "te_attention_backend": {**fused, "fused_attention_backend": "NVTE_Fused_Attn_Backend.NVTE_F16_arbitrary_seqlen"}},
        {"name": "bf16_concat_sbhd", "packing": "concat", "row_layout": "sbhd", "fp8": None, "tokens_per_s_per_gpu": 16000.0,
         "tflops_per_gpu": 430.0},
        {"name": "bf16_concat", "packing": "concat", "row_layout": "thd", "fp8": None, "tokens_per_s_per_gpu": 12000.0,
         "tflops_per_gpu": 330.0},
        {"name": "fp8_tensorwise_attn_ds_concat_sbhd", "packing": "concat", "row_layout": "sbhd", "fp8": "hybrid",
         "fp8_recipe": "tensorwise",
         "env": {"NVTE_DPA_FP8_RECIPE": "DelayedScaling"}, "tokens_per_s_per_gpu": 17600.0, "tflops_per_gpu": 473.0,
         "te_attention_backend": {**fused, "fused_attention_backend": "NVTE_Fused_Attn_Backend.NVTE_FP8"}},
        {"name": "fp8_delayed_reset", "packing": "reset", "fp8": "hybrid", "fp8_recipe": "delayed",
         "tokens_per_s_per_gpu": 19000.0, "tflops_per_gpu": 427.5},
    ]
    rows = {r["name"]: r for r in fp8_variants.summary_rows(records)}
    assert rows["fp8_tensorwise_attn_ds_concat_sbhd"]["gain_pct"] == pytest.approx(10.0)  # against bf16_concat_sbhd
    assert rows["fp8_delayed_reset"]["gain_pct"] == pytest.approx(-5.0)  # against bf16_reset
    assert rows["fp8_tensorwise_attn_ds_concat_sbhd"]["attention"] == "cuDNN FP8" and rows["bf16_reset"]["attention"] == "cuDNN bf16"
    assert rows["fp8_tensorwise_attn_ds_concat_sbhd"]["recipe"] == "tensorwise (attention: DelayedScaling)"
    assert not rows["fp8_blockwise_reset"]["ran"]
    text = fp8_variants.summary_markdown(list(rows.values()), "H100")
    assert "| fp8_delayed_reset | reset (thd) | delayed | ? |" in text and "-5.0%" in text and "| fp8_blockwise_reset | not run" in text


STUB_PYTHON = """#!/usr/bin/env bash
# python for benchmarks/fp8_h100x2.sh: the variants table and summary run for real; the data build is
# skipped and each torchrun is a record of what it was asked (name, packing, FP8 attention's env).
if [ "$1" = benchmarks/fp8_variants.py ]; then exec {python} "$@"; fi
if [ "$1" = -c ]; then exit 0; fi
shift 4  # -m torch.distributed.run --nproc-per-node 2
{python} - "$@" <<'PY'
import json, os, sys
args = sys.argv[1:]
name, out = args[args.index("--name") + 1], args[args.index("--out") + 1]
if name == "fp8_blockwise_reset":
    sys.exit(3)  # one variant fails: the others still run and the summary says so
packing = "concat" if "data.packing=concat" in args else "reset"
record = {{"name": name, "packing": packing, "fp8": "hybrid" if any(a.startswith("train.fp8=") for a in args) else None,
          "fp8_recipe": "delayed", "tokens_per_s_per_gpu": 1000.0, "tflops_per_gpu": 400.0, "steps_measured": 6,
          "env": {{k: v for k, v in os.environ.items() if k.startswith("NVTE_")}},
          "profile": [a for a in args if a.startswith("train.profile_steps=")]}}
open(out, "a").write(json.dumps(record) + "\\n")
print("RESULT " + json.dumps(record))
PY
"""


def test_benchmark_script_runs_every_variant_and_writes_four_files(tmp_path):
    import json
    import subprocess

    import fp8_variants

    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON.format(python=sys.executable))
    stub.chmod(0o755)
    out = tmp_path / "out"
    r = subprocess.run(["bash", "benchmarks/fp8_h100x2.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(stub), "RUN_ROOT": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["fp8.jsonl", "fp8_runs.log", "fp8_summary.md", "fp8_summary.png"]
    records = [json.loads(line) for line in (out / "fp8.jsonl").read_text().splitlines()]
    assert [x["name"] for x in records] == [n for n in fp8_variants.VARIANTS if n != "fp8_blockwise_reset"]
    # each torchrun got its variant's overrides (an empty ENV column must not swallow them)
    for x in records:
        overrides = fp8_variants.VARIANTS[x["name"]][1]
        assert x["packing"] == ("concat" if "data.packing=concat" in overrides else "reset"), x
        assert x["fp8"] == ("hybrid" if any(o.startswith("train.fp8=") for o in overrides) else None), x
    env = {x["name"]: x["env"] for x in records}
    assert env["fp8_tensorwise_attn_ds_concat_sbhd"] == {"NVTE_DPA_FP8_RECIPE": "DelayedScaling"} and env["bf16_reset"] == {}
    assert "fp8_blockwise_reset failed (exit 3" in (out / "fp8_runs.log").read_text()
    assert "| fp8_blockwise_reset | not run" in (out / "fp8_summary.md").read_text()
    # a subset, and a budget that leaves no room: nothing starts, the summary still comes
    subset = subprocess.run(["bash", "benchmarks/fp8_h100x2.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "none"), "PYTHON": str(stub), "RUN_ROOT": str(tmp_path),
                                 "BUDGET_S": "10", "VARIANTS": "bf16_reset fp8_delayed_reset"})
    assert subset.returncode == 0 and subset.stdout.count("not started") == 2, subset.stdout
    # PROFILE: that variant's last step under the profiler (the stand-in writes no trace: said in the log)
    prof = subprocess.run(["bash", "benchmarks/fp8_h100x2.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "prof"), "PYTHON": str(stub), "RUN_ROOT": str(tmp_path),
                               "VARIANTS": "bf16_reset fp8_delayed_reset", "PROFILE": "fp8_delayed_reset"})
    assert prof.returncode == 0, prof.stderr[-2000:]
    got = {x["name"]: x["profile"] for x in map(json.loads, (tmp_path / "prof" / "fp8.jsonl").read_text().splitlines())}
    assert got == {"bf16_reset": [], "fp8_delayed_reset": ["train.profile_steps=[8,8]"]}
    assert f"fp8_delayed_reset: no profiler trace in {tmp_path}/megaindex-bench-fp8_delayed_reset/profile" in prof.stdout


def test_step_profile_names_the_fp8_cast_kernels():
    # kernel names from TE 2.20's sources (cast/, transpose/, recipe/), in the demangled form of the
    # bf16 trace's TE kernels; FP8 GEMMs stay GEMMs, a norm or SwiGLU writing FP8 stays what it is
    import step_profile

    fp8 = [
        "void transformer_engine::detail::(anonymous namespace)::cast_transpose_general_kernel<8, 8, __nv_bfloat16, __nv_fp8_e4m3>(int)",
        "void transformer_engine::(anonymous namespace)::amax_kernel<4, __nv_bfloat16>(__nv_bfloat16 const*, float*, unsigned long)",
        "void transformer_engine::compute_scale_from_amax_kernel(float const*, float*, float, bool, float)",
        "void transformer_engine::delayed_scaling_recipe::(anonymous namespace)::amax_and_scale_update_impl::kernel_bulk(float*)",
        "void transformer_engine::multi_cast_transpose_kernel<8, true, __nv_bfloat16, __nv_fp8_e5m2>(int)",
        "void transformer_engine::unary_kernel<4, transformer_engine::Empty, &transformer_engine::identity, __nv_bfloat16, __nv_fp8_e4m3>(int)",
    ]
    assert {step_profile.classify(n, "")[0] for n in fp8} == {"fp8_cast"}
    assert step_profile.classify("nvjet_qqtst_128x256_64x4_1x2_h_bz_coopA_TNT", "")[0] == "gemm"
    assert step_profile.classify("rmsnorm_fwd_tuned_kernel<__nv_bfloat16, __nv_fp8_e4m3>", "")[0] == "norm"
    assert step_profile.classify("void transformer_engine::dgated_act_cast_transpose_kernel<8, __nv_fp8_e5m2>", "")[0] == "swiglu"
