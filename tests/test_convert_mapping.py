"""Pure mapping tests (no model, no process group): fused QKV/SwiGLU layouts, the TE and local module
state dicts per TP rank, HF config in/out, sharded safetensors, atomic output directories."""

from __future__ import annotations

import json

import pytest
import torch

from megaindex.config import ModelConfig
from megaindex.convert import weight_map as L
from megaindex.convert.hf_config import ConversionError, hf_config_dict, model_fields_from_hf
from megaindex.convert.hf_io import HFWeights, ShardedSafetensorsWriter
from megaindex.convert.outdir import atomic_out_dir

ARCH = L.Arch(num_layers=2, hidden_size=8, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=6, vocab_size=10)


def random_hf(arch: L.Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {L.HF_EMBEDDING: torch.randn(arch.vocab_size, arch.hidden_size, generator=g),
          L.HF_FINAL_NORM: torch.randn(arch.hidden_size, generator=g),
          L.HF_OUTPUT: torch.randn(arch.vocab_size, arch.hidden_size, generator=g)}
    for layer in range(arch.num_layers):
        for suffix, shape in arch.hf_shapes().items():
            sd[L.hf_layer_name(layer, suffix)] = torch.randn(shape, generator=g)
    return sd


def test_fused_qkv_is_grouped_per_query_group():
    d, h = ARCH.head_dim, ARCH.hidden_size  # head_dim 2; 2 query heads per group
    q = torch.arange(4 * d).float().unsqueeze(1).expand(-1, h) + 100
    k = torch.arange(2 * d).float().unsqueeze(1).expand(-1, h) + 200
    v = torch.arange(2 * d).float().unsqueeze(1).expand(-1, h) + 300
    fused = L.fuse_qkv(q, k, v, ARCH)
    rows = fused[:, 0].tolist()
    # group 0: q rows 0-3 (heads 0, 1), k rows 0-1, v rows 0-1; group 1: q rows 4-7, k 2-3, v 2-3
    assert rows == [100, 101, 102, 103, 200, 201, 300, 301, 104, 105, 106, 107, 202, 203, 302, 303]
    q2, k2, v2 = L.split_qkv(fused, ARCH)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


TE_LAYER_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight", "self_attention.linear_qkv.weight",
    "self_attention.linear_proj.weight", "mlp.linear_fc1.layer_norm_weight",
    "mlp.linear_fc1.weight", "mlp.linear_fc2.weight",
}
LOCAL_LAYER_NAMES = {
    "input_layernorm.weight", "self_attention.linear_qkv.weight", "self_attention.linear_proj.weight",
    "pre_mlp_layernorm.weight", "mlp.linear_fc1.weight", "mlp.linear_fc2.weight",
}


@pytest.mark.parametrize("layout,names", [("te", TE_LAYER_NAMES), ("local", LOCAL_LAYER_NAMES)])
def test_module_state_dicts_per_tp_rank(layout, names):
    hf = random_hf(ARCH)
    tp, padded = 2, 16
    ranks = [L.hf_to_module_state_dict(hf, ARCH, layout=layout, padded_vocab_size=padded, tp_size=tp, tp_rank=r)
             for r in range(tp)]
    expected = {f"decoder.layers.{i}.{n}" for i in range(ARCH.num_layers) for n in names}
    expected |= {L.EMBEDDING, L.FINAL_NORM, L.OUTPUT}
    assert set(ranks[0]) == expected
    f, d = ARCH.ffn_hidden_size, ARCH.head_dim
    for r, sd in enumerate(ranks):
        gate, up = hf["model.layers.1.mlp.gate_proj.weight"], hf["model.layers.1.mlp.up_proj.weight"]
        # column-parallel SwiGLU: rank r holds [gate_r; up_r]
        assert torch.equal(sd["decoder.layers.1.mlp.linear_fc1.weight"],
                           torch.cat([gate[r * f // 2:(r + 1) * f // 2], up[r * f // 2:(r + 1) * f // 2]]))
        # one query group per rank: [q heads 2r, 2r+1; k_r; v_r]
        q, k, v = (hf[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
        assert torch.equal(sd["decoder.layers.0.self_attention.linear_qkv.weight"],
                           torch.cat([q[2 * r * d:(2 * r + 2) * d], k[r * d:(r + 1) * d], v[r * d:(r + 1) * d]]))
        assert torch.equal(sd["decoder.layers.0.self_attention.linear_proj.weight"],
                           hf["model.layers.0.self_attn.o_proj.weight"][:, r * 4:(r + 1) * 4])
        assert torch.equal(sd["decoder.layers.1.mlp.linear_fc2.weight"], hf["model.layers.1.mlp.down_proj.weight"][:, r * 3:(r + 1) * 3])
        emb = sd[L.EMBEDDING]
        assert emb.shape == (8, ARCH.hidden_size)
        if r == 1:  # vocab rows 8..15 on rank 1: 8, 9 real, 10..15 zero padding
            assert torch.equal(emb[:2], hf[L.HF_EMBEDDING][8:]) and not emb[2:].any()
    back = L.module_state_dicts_to_hf(ranks, ARCH, layout=layout)
    assert set(back) == set(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_pipeline_chunk_renumbers_layers():
    hf = random_hf(ARCH)
    sd = L.hf_to_module_state_dict(hf, ARCH, layout="te", padded_vocab_size=16, layers=range(1, 2),
                                   pre_process=False, post_process=True)
    assert L.EMBEDDING not in sd and L.OUTPUT in sd
    assert torch.equal(sd["decoder.layers.0.mlp.linear_fc2.weight"], hf["model.layers.1.mlp.down_proj.weight"])
    assert not any(k.startswith("decoder.layers.1.") for k in sd)


def test_swiglu_on_disk_matches_megatron_sharded_factory():
    """What megatron's swiglu factory writes for each TP rank, assembled, is layout.fuse_fc1(gate, up)."""
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

    hf = random_hf(ARCH)
    gate, up = hf["model.layers.0.mlp.gate_proj.weight"], hf["model.layers.0.mlp.up_proj.weight"]
    tp, layers = 2, ARCH.num_layers
    on_disk = torch.zeros(layers, 2 * ARCH.ffn_hidden_size, ARCH.hidden_size)
    for r in range(tp):
        local = L.shard_for_rank(L.FC1, L.fuse_fc1(gate, up), tp, r)
        sh = ShardedTensor.from_rank_offsets(L.FC1, local, (0, 0, layers), (1, r, tp), replica_id=0, prepend_axis_num=1)
        factory = apply_swiglu_sharded_factory(sh, ((0, 0, layers),))
        for piece in factory.build():
            assert piece.key == L.FC1 and piece.global_shape == tuple(on_disk.shape)
            sl = tuple(slice(o, o + s) for o, s in zip(piece.global_offset, (1, *piece.local_shape)))
            on_disk[sl] = piece.data
    assert torch.equal(on_disk[0], L.fuse_fc1(gate, up))


def test_hf_config_refusals_name_the_field():
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 6, "vocab_size": 10}
    assert model_fields_from_hf(base)["num_query_groups"] == 4
    cases = [({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"), ({"attention_bias": True}, "attention_bias"),
             ({"rope_scaling": {"type": "dynamic", "factor": 8}}, "rope_scaling"), ({"hidden_act": "gelu"}, "hidden_act"),
             ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_type")]
    for extra, field in cases:
        with pytest.raises(ConversionError, match=field):
            model_fields_from_hf({**base, **extra})
    missing = dict(base)
    del missing["intermediate_size"]
    with pytest.raises(ConversionError, match="intermediate_size"):
        model_fields_from_hf(missing)


def test_hf_config_out_and_back():
    m = ModelConfig(num_layers=3, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                    vocab_size=300, norm_epsilon=1e-6, norm_head=True, rotary_base=320000, max_position_embeddings=32768)
    llama = hf_config_dict(m, "llama", "bfloat16")
    assert llama["architectures"] == ["LlamaForCausalLM"] and "norm_head" not in llama
    assert (llama["vocab_size"], llama["rope_theta"], llama["tie_word_embeddings"]) == (300, 320000.0, False)
    template = {"architectures": ["IndexForCausalLM"], "auto_map": {"AutoModelForCausalLM": "modeling_index.X"}, "model_type": "index"}
    index = hf_config_dict(m, "index", "bfloat16", template)
    assert index["norm_head"] is True and index["auto_map"] == template["auto_map"]
    for cfg in (llama, index):
        f = model_fields_from_hf(cfg)
        assert {k: f[k] for k in ("num_layers", "num_query_groups", "rotary_base", "norm_epsilon", "max_position_embeddings")} == \
               {"num_layers": 3, "num_query_groups": 2, "rotary_base": 320000, "norm_epsilon": 1e-6, "max_position_embeddings": 32768}
    assert model_fields_from_hf(index)["norm_head"] and not model_fields_from_hf(llama)["norm_head"]


@pytest.mark.parametrize("header_reserve", [256 * 1024, 64])  # 64: the header outgrows its reserve
def test_sharded_safetensors_writer_and_reader(tmp_path, monkeypatch, header_reserve):
    from megaindex.convert.safetensors_stream import SafetensorsShard

    monkeypatch.setattr(SafetensorsShard, "HEADER_RESERVE", header_reserve)
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(100, 10, generator=g) for i in range(5)}  # 4000 bytes each
    tensors["t3"] = tensors["t3"].to(torch.bfloat16).float()  # exactly representable in bf16 ...
    tensors["t3"] = tensors["t3"].to(torch.bfloat16)  # ... and stored as 2000 bytes of bf16
    tensors["t4"] = torch.arange(1000, dtype=torch.int64).reshape(100, 10)[:, :5]  # non-contiguous
    w = ShardedSafetensorsWriter(tmp_path, max_shard_bytes=9000)
    for k, t in tensors.items():
        w.add(k, t)
    weight_map = w.finish()
    assert sorted(set(weight_map.values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 3 * 4000 + 2000 + 4000 and index["weight_map"] == weight_map
    r = HFWeights(tmp_path)
    assert all(torch.equal(r.get(k), t) and r.get(k).dtype == t.dtype for k, t in tensors.items())
    # the files are standard safetensors: the reference library reads them
    from safetensors.torch import load_file

    ref = {}
    for shard in sorted(set(weight_map.values())):
        ref.update(load_file(str(tmp_path / shard)))
    assert set(ref) == set(tensors) and all(torch.equal(ref[k], t) for k, t in tensors.items())
    with pytest.raises(ConversionError, match="'t9' is missing"):
        r.get("t9")
    with pytest.raises(ConversionError, match=r"shape \(100, 10\).*\(10, 100\)"):
        r.get("t0", expected_shape=(10, 100))


def test_atomic_out_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_out_dir(out, force=False) as tmp:
            (tmp / "half-written").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_out_dir(out, force=False) as tmp:
        (tmp / "done").write_text("x")
    assert (out / "done").is_file()
    with pytest.raises(ConversionError, match="not empty; pass --force"):
        with atomic_out_dir(out, force=False):
            pass
    with atomic_out_dir(out, force=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
