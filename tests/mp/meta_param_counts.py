"""Count the parameters megatron builds for a layout, rank by rank, on the meta device (nothing
allocated), without launching processes: torch's fake process group lets this one process stand in
for rank r of a TP x PP job, and megatron's own layers then shard as they would there.

    python tests/mp/meta_param_counts.py RECIPE_OR_NONE OVERRIDE... [-- RECIPE OVERRIDE...]

prints one JSON line per layout: for each pipeline stage (TP rank 0), the parameters one GPU holds
and their split into kinds (embedding, output, norms, matrices). Run by tests/test_plan.py.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch.testing._internal.distributed.fake_pg import FakeStore

from megaindex import cpu_backend
from megaindex.config import load_config
from megaindex.model.build import build_model, to_transformer_config


def kind(name: str) -> str:
    if name.startswith("embedding."):
        return "embedding"
    if name.startswith("output_layer."):
        return "output"
    if "norm" in name:  # input_layernorm, pre_mlp_layernorm, final_layernorm
        return "norms"
    return "matrices"


def count_rank(cfg, rank: int) -> dict:
    p = cfg.parallel
    world = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    if dist.is_initialized():
        ps.destroy_model_parallel()
        dist.destroy_process_group()
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    ps.initialize_model_parallel(
        p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size, create_gloo_process_groups=False,
    )
    tf = to_transformer_config(cfg, use_te=False)
    tf.use_cpu_initialization, tf.perform_initialization = True, False
    kinds = {"embedding": 0, "output": 0, "norms": 0, "matrices": 0}
    vpp = p.virtual_pipeline_model_parallel_size
    with torch.device("meta"):
        for vp_stage in range(vpp) if vpp else [None]:
            model = build_model(cfg, use_te=False, tf_config=tf, vp_stage=vp_stage)
            for name, param in model.named_parameters():
                assert param.device.type == "meta", f"{name} was allocated"
                kinds[kind(name)] += param.numel()
    return {"pp_rank": ps.get_pipeline_model_parallel_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(),
            "total": sum(kinds.values()), **kinds}


def main(argv: list[str]) -> int:
    cpu_backend.activate()
    groups, cur = [], []
    for a in argv + ["--"]:
        if a == "--":
            groups.append(cur)
            cur = []
        else:
            cur.append(a)
    for recipe, *overrides in groups:
        cfg = load_config(None if recipe == "none" else recipe, overrides)
        tp = cfg.parallel.tensor_model_parallel_size
        stages = [count_rank(cfg, pp_rank * tp) for pp_rank in range(cfg.parallel.pipeline_model_parallel_size)]
        print(json.dumps({"overrides": overrides, "stages": stages}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
