"""A converted checkpoint in real parallel layouts (2 gloo processes): TP2, PP2, PP2 x VPP2.

In each layout, every rank's module state dict after `load_model` must equal the mapping's
prediction for that rank (TP shards of fused QKV / SwiGLU fc1, PP layer ranges, vocab padding of
THAT layout, which differs from the conversion's: TP2 pads to 512, TP1 to 384); the TP2 model's
logits must match transformers'; and re-saving from the layout and exporting back to HF must give
the original tensors bit for bit. This file is both the pytest test and the torchrun worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LAYOUTS = {"tp2": (2, 1, None), "pp2": (1, 2, None), "pp2_vpp2": (1, 2, 2)}


def test_converted_checkpoint_in_tp2_pp2_vpp_layouts(tmp_path):
    from conftest import read_json, torchrun
    from test_convert_fixtures import make_llama

    from megaindex.convert.from_hf import convert_from_hf

    hf = make_llama(tmp_path / "hf")
    ckpt = convert_from_hf(hf, tmp_path / "ckpt", tp=2, log=lambda *_: None)
    torchrun(Path(__file__), 2, str(hf), str(ckpt), str(tmp_path), timeout=400)
    result = read_json(tmp_path / "result.json")
    assert set(result) == set(LAYOUTS)
    per_layer = 6
    for name, r in result.items():
        assert r["mismatches"] == [], name
        # every tensor of the model was checked exactly once (TP: on each rank)
        tp = LAYOUTS[name][0]
        assert r["tensors_compared"] == tp * (4 * per_layer + 3), name
        assert r["round_trip_exact"] is True and r["round_trip_tensors"] == 4 * 9 + 3, name
    assert result["tp2"]["max_logit_diff"] <= 1e-4
    assert result["pp2"]["padded_vocab"] == 384 and result["tp2"]["padded_vocab"] == 512


def worker(hf_dir: str, ckpt: str, work: str) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megaindex import checkpoint, distributed
    from megaindex.config import load_config
    from megaindex.convert import weight_map as L
    from megaindex.convert.hf_config import arch_of
    from megaindex.convert.hf_io import HFWeights
    from megaindex.convert.parity import build_hf, hf_logits, random_tokens
    from megaindex.convert.to_hf import convert_to_hf
    from megaindex.model.build import build_model_chunks

    w = HFWeights(hf_dir)
    hf = {n: w.get(n) for n in w.names()}
    results = {}
    for name, (tp, pp, vpp) in LAYOUTS.items():
        cfg = load_config(Path(ckpt) / "config.yaml", [
            f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
            f"parallel.virtual_pipeline_model_parallel_size={'null' if vpp is None else vpp}",
            "parallel.sequence_parallel=false", "train.precision=fp32", "data.global_batch_tokens=512",
        ])
        distributed.init_distributed(cfg)
        chunks = build_model_chunks(cfg)
        checkpoint.load_model(chunks, ckpt, cfg)
        arch = arch_of(cfg.model)
        tp_rank = ps.get_tensor_model_parallel_rank()
        mismatches, compared = [], 0
        for chunk in chunks:
            numbers = [layer.layer_number - 1 for layer in chunk.decoder.layers]  # global, 0-based
            expected = L.hf_to_module_state_dict(
                hf, arch, layout="local", padded_vocab_size=cfg.padded_vocab_size, tp_size=tp, tp_rank=tp_rank,
                layers=range(numbers[0], numbers[-1] + 1), pre_process=chunk.pre_process, post_process=chunk.post_process,
            )
            got = {k: v for k, v in chunk.state_dict().items() if not k.endswith("_extra_state")}
            if set(got) != set(expected):
                mismatches.append(f"rank {dist.get_rank()} keys differ: {sorted(set(got) ^ set(expected))}")
            for k in set(got) & set(expected):
                compared += 1
                if not torch.equal(got[k], expected[k]):
                    mismatches.append(f"rank {dist.get_rank()} {k} (layers {numbers})")
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (mismatches, compared))
        r = {"mismatches": sum((g[0] for g in gathered), []), "tensors_compared": sum(g[1] for g in gathered),
             "padded_vocab": cfg.padded_vocab_size}

        if pp == 1:  # TP2 forward: vocab-parallel logits gathered over TP vs transformers
            tokens = random_tokens(arch.vocab_size, 2, 16, seed=3)
            with torch.no_grad():
                pos = torch.arange(16).expand_as(tokens)
                local = chunks[0].eval()(tokens, pos, None)
                full = gather_from_tensor_model_parallel_region(local)[..., : arch.vocab_size]
            r["max_logit_diff"] = (full - hf_logits(build_hf(hf_dir), tokens)).abs().max().item()

        resaved = Path(work) / f"resaved_{name}"
        checkpoint.save_model(chunks, resaved, cfg)
        if dist.get_rank() == 0:
            out = convert_to_hf(resaved, Path(work) / f"hf_{name}", log=lambda *_: None)
            w2 = HFWeights(out)
            back = {n: w2.get(n) for n in w2.names()}
            r["round_trip_tensors"] = len(back)
            r["round_trip_exact"] = set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)
        results[name] = r
        dist.barrier()
    if dist.get_rank() == 0:
        (Path(work) / "result.json").write_text(json.dumps(results, indent=2))
    distributed.destroy_distributed()


if __name__ == "__main__":
    worker(*sys.argv[1:4])
