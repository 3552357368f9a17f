"""megaindex.plan against megatron, and `megaindex plan` (the layout planner)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

from megaindex import plan
from megaindex.config import load_config

RECIPE = str(REPO / "examples" / "index_1.9b_long_pt_32k.yaml")

# Presets and layouts the analytic count must match rank by rank: TP, PP, VPP, GQA, tied and untied
# embeddings, vocabularies padded to 128 x TP (65029 -> 65152, 65280, 65536; 8000 -> 8192).
META_LAYOUTS = [
    [RECIPE],
    [RECIPE, "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
     "parallel.virtual_pipeline_model_parallel_size=2"],
    [RECIPE, "parallel.tensor_model_parallel_size=4", "parallel.pipeline_model_parallel_size=3"],
    ["none", "model.preset=tiny-llama", "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"],
    ["none", "model.preset=tiny", "model.untie_embeddings_and_output_weights=false", "model.norm_head=false",
     "parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2"],
    ["none", "model.preset=llama", "model.num_query_groups=8", "parallel.tensor_model_parallel_size=8"],
]


def test_analytic_counts_equal_the_meta_device_model():
    """The real GPTModel built on the meta device, one pipeline stage at a time, under a fake process
    group of TP x PP ranks (tests/mp/meta_param_counts.py), holds exactly plan's per-stage counts;
    its kinds, summed over stages and TP ranks, are plan's totals."""
    args = []
    for layout in META_LAYOUTS:
        args += [*layout, "--"]
    r = subprocess.run([sys.executable, str(REPO / "tests" / "mp" / "meta_param_counts.py"), *args[:-1]],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == len(META_LAYOUTS)
    for layout, got in zip(META_LAYOUTS, results):
        cfg = load_config(None if layout[0] == "none" else layout[0], layout[1:])
        counts = plan.parameter_counts(cfg)
        tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
        assert [s["total"] for s in got["stages"]] == counts.per_stage, layout
        assert sum(s["matrices"] for s in got["stages"]) * tp == counts.non_embedding, layout
        assert sum(s["norms"] for s in got["stages"]) == counts.norms, layout
        assert got["stages"][0]["embedding"] * tp == counts.embedding, layout
        head = got["stages"][-1]["output"] * tp
        if cfg.model.untie_embeddings_and_output_weights:
            assert head == counts.output, layout
        else:  # tied: no head of its own; with PP > 1 the last stage holds a copy of the embedding
            assert counts.output == 0 and head == (counts.embedding if pp > 1 else 0), layout
        assert counts.per_gpu == max(counts.per_stage)


def test_model_flops_of_the_32k_recipe():
    """6 x (1,906,311,168 layer matrices + 2048 x 65029 head) per token, plus causal attention
    6 x layers x h x sum(n^2): two 16K documents cost half the attention of one 32K document."""
    cfg = load_config(RECIPE)
    dense = 6 * (1_906_311_168 + 2048 * 65029)
    one_doc = plan.step_flops(cfg, 32768, 32768**2)
    assert one_doc == dense * 32768 + 6 * 36 * 2048 * 32768**2
    assert plan.step_flops(cfg, 32768, 2 * 16384**2) - dense * 32768 == (one_doc - dense * 32768) / 2
