"""Config loading, overrides, YAML round trip and every validate() rule's message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from megaindex.config import Config, ConfigError, field_docs, from_dict, load_config
from megaindex import config as config_mod

REPO = Path(__file__).resolve().parents[1]


def cfg_with(*overrides: str) -> Config:
    base = ["model.preset=tiny", "data.seq_length=256", "data.global_batch_tokens=2048", "data.micro_batch_size=1"]
    return load_config(None, [*base, *overrides])


def errors_of(cfg: Config, world: int) -> str:
    with pytest.raises(ConfigError) as e:
        cfg.validate(world)
    return str(e.value)


def test_every_field_has_a_doc():
    sections = [config_mod.ModelConfig, config_mod.ParallelConfig, config_mod.DataConfig, config_mod.OptimConfig,
                config_mod.TrainConfig, config_mod.CheckpointConfig, config_mod.LogConfig, Config]
    for cls in sections:
        for name, doc in field_docs(cls).items():
            assert doc, f"{cls.__name__}.{name} has no doc"


def test_preset_then_explicit_fields_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  preset: index-1.9b-32k\n  num_layers: 2\noptim:\n  lr: 1e-5\n")
    cfg = load_config(p, ["optim.lr=3e-6", "parallel.context_parallel_size=4"])
    assert cfg.model.hidden_size == 2048 and cfg.model.rotary_base == 320000
    assert cfg.model.num_layers == 2  # explicit field beats the preset
    assert cfg.optim.lr == pytest.approx(3e-6)  # override beats the file; '1e-5' style parses as a number
    assert cfg.parallel.context_parallel_size == 4


def test_yaml_round_trip_is_identity():
    cfg = load_config(REPO / "examples" / "index_1.9b_long_pt_32k.yaml")
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("parallel:\n  tensor_parallel_size: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key '.*parallel\.tensor_parallel_size'.*Did you mean 'tensor_model_parallel_size'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"Did you mean 'optim'"):
        load_config(None, ["optimm.lr=1"])
    with pytest.raises(ConfigError, match=r"unknown model preset 'index-1.9b-23k'.*Did you mean 'index-1.9b-32k'"):
        load_config(None, ["model.preset=index-1.9b-23k"])


def test_wrong_types_name_the_field():
    with pytest.raises(ConfigError, match=r"parallel\.tensor_model_parallel_size = 'two' must be an integer"):
        load_config(None, ["parallel.tensor_model_parallel_size=two"])
    with pytest.raises(ConfigError, match=r"data\.packing = 'zigzag' is not one of 'reset', 'concat'"):
        load_config(None, ["data.packing=zigzag"])


def test_world_size_must_be_tp_pp_cp_dp():
    msg = errors_of(cfg_with("parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"), 6)
    assert "world size 6 is not divisible by TP x PP x CP = 2 x 2 x 1 = 4" in msg
    cfg_with("parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2").validate(8)


def test_seq_length_divisible_by_two_cp():
    msg = errors_of(cfg_with("parallel.context_parallel_size=4", "data.seq_length=260", "data.global_batch_tokens=2080"), 4)
    assert "data.seq_length 260 is not divisible by 2 x context_parallel_size = 8" in msg


def test_seq_length_divisible_by_tp_with_sequence_parallel():
    bad = cfg_with(
        "parallel.tensor_model_parallel_size=4", "parallel.context_parallel_size=2",
        "data.seq_length=260", "data.global_batch_tokens=2080",
    )
    msg = errors_of(bad, 8)
    assert "data.seq_length 260 / CP 2 is not divisible by TP 4" in msg
    # The same length is fine without sequence parallel (only the 2*CP rule applies: 260 % 4 == 0).
    bad.parallel.sequence_parallel = False
    bad.validate(8)


def test_global_batch_divisible_by_micro_batch_times_dp():
    msg = errors_of(cfg_with("data.global_batch_tokens=2560", "data.micro_batch_size=2"), 2)
    assert "global batch of 10 sequences" in msg and "micro_batch_size x DP = 2 x 2 = 4" in msg
    msg = errors_of(cfg_with("data.global_batch_tokens=1000"), 1)
    assert "data.global_batch_tokens 1000 is not a multiple of data.seq_length 256" in msg


def test_heads_divisible_by_tp():
    msg = errors_of(cfg_with("parallel.tensor_model_parallel_size=8"), 8)
    assert "model.num_attention_heads 4 is not divisible by parallel.tensor_model_parallel_size 8" in msg


def test_layers_divisible_by_pp_times_vpp():
    msg = errors_of(cfg_with("parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=4"), 2)
    assert "model.num_layers 4 is not divisible by PP x VPP = 2 x 4 = 8" in msg
    msg = errors_of(cfg_with("model.num_layers=3", "parallel.pipeline_model_parallel_size=2"), 2)
    assert "model.num_layers 3 is not divisible by PP = 2 = 2" in msg


def test_interleaved_pp2_turns_batched_p2p_off():
    cfg = cfg_with("parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2")
    notes = cfg.validate(2)
    assert cfg.batch_p2p_comm is False
    assert any("batched p2p is off" in n for n in notes)
    forced = cfg_with(
        "parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2", "parallel.batch_p2p_comm=true"
    )
    assert "gives silently wrong gradients" in errors_of(forced, 2)
    # Plain 1F1B and interleaving with PP=4 keep the megatron default.
    assert cfg_with("parallel.pipeline_model_parallel_size=2").batch_p2p_comm is True
    assert cfg_with("parallel.pipeline_model_parallel_size=4", "parallel.virtual_pipeline_model_parallel_size=1").batch_p2p_comm is True


def test_vocab_padded_to_multiple_of_128_tp():
    idx = load_config(None, ["model.preset=index-1.9b"])
    assert idx.padded_vocab_size == 65152  # 509 * 128
    idx.parallel.tensor_model_parallel_size = 2
    assert idx.padded_vocab_size == 65280  # 255 * 256
    idx.parallel.tensor_model_parallel_size = 8
    assert idx.padded_vocab_size % (128 * 8) == 0 and idx.padded_vocab_size - 65029 < 128 * 8
    notes = cfg_with().validate(1)
    assert "vocabulary padded 8000 -> 8064 (multiple of 128 x TP 1)." in notes


def test_all_errors_reported_at_once():
    msg = errors_of(cfg_with("parallel.tensor_model_parallel_size=8", "parallel.context_parallel_size=3"), 24)
    assert msg.count("\n  - ") >= 2


def test_shipped_recipes_validate():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        cfg = load_config(path)
        cfg.validate(cfg.model_parallel_size)  # DP=1 always divides the global batch


def test_context_length_warmup_entries_are_checked():
    ok = cfg_with("data.context_length_warmup=[[10, 64], [20, 128]]")
    ok.validate(1)
    msg = errors_of(cfg_with("data.context_length_warmup=[[10, 100]]"), 1)
    assert "seq_length 100 must divide data.seq_length 256" in msg
    msg = errors_of(cfg_with("data.context_length_warmup=[[10, 64], [5, 128]]"), 1)
    assert "until_step 5 must be larger than the previous (10)" in msg


def test_all_to_all_cp_needs_heads_divisible_by_its_group():
    # tiny: 4 heads. a2a over CP=8 cannot split 4 heads; a2a+p2p splits them over the inner group only.
    msg = errors_of(cfg_with("parallel.context_parallel_size=8", "parallel.cp_comm_type=a2a"), 8)
    assert "model.num_attention_heads 4 / TP 1 is not divisible by the all-to-all group size 8" in msg
    cfg_with("parallel.context_parallel_size=8", "parallel.cp_comm_type=a2a+p2p",
             "parallel.hierarchical_context_parallel_sizes=[2,4]").validate(8)
    msg = errors_of(cfg_with("parallel.context_parallel_size=4", "parallel.cp_comm_type=a2a+p2p",
                             "parallel.hierarchical_context_parallel_sizes=[3,2]"), 4)
    assert "hierarchical_context_parallel_sizes whose product is CP=4" in msg
