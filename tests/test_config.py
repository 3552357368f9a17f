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


def test_cuda_graphs_refuse_what_a_capture_cannot_replay():
    graphs = ("train.cuda_graph_impl=full_iteration", "data.static_thd_shapes=true")
    cfg_with(*graphs).validate(1)
    cfg_with(*graphs).validate(4)  # data parallelism: one replica per GPU, the all-reduce is captured
    cfg_with("data.context_length_warmup=[[10, 64]]", "train.recompute_granularity=full").validate(1)  # graphs off: no rule
    assert "set data.static_thd_shapes=true" in errors_of(cfg_with("train.cuda_graph_impl=full_iteration"), 1)
    cases = {
        "model.transformer_impl=local": "set model.transformer_impl=auto or transformer_engine",
        "parallel.tensor_model_parallel_size=2": "not parallel.tensor_model_parallel_size=2",
        "parallel.pipeline_model_parallel_size=2": "not parallel.pipeline_model_parallel_size=2",
        "parallel.context_parallel_size=2": "not parallel.context_parallel_size=2",
        "parallel.overlap_grad_reduce=true": "set parallel.overlap_grad_reduce=false",
        "data.context_length_warmup=[[10, 64]]": "data.context_length_warmup changes it between phases",
        "train.fp8=hybrid": "use train.cuda_graph_impl=none for FP8",
        "train.recompute_granularity=selective": "train.recompute_granularity=selective: megatron's recompute is not capturable",
    }
    for override, message in cases.items():
        msg = errors_of(cfg_with(*graphs, override), 2)
        assert message in msg and msg.count("\n  - ") == 1, (override, msg)
    assert "model replica per GPU" in errors_of(cfg_with(*graphs, "parallel.context_parallel_size=2",
                                                         "parallel.tensor_model_parallel_size=2"), 4)
    with pytest.raises(ConfigError, match="full_iteration"):
        cfg_with("train.cuda_graph_impl=local")


def test_all_to_all_cp_needs_heads_divisible_by_its_group():
    # tiny: 4 heads. a2a over CP=8 cannot split 4 heads; a2a+p2p splits them over the inner group only.
    msg = errors_of(cfg_with("parallel.context_parallel_size=8", "parallel.cp_comm_type=a2a"), 8)
    assert "model.num_attention_heads 4 / TP 1 is not divisible by the all-to-all group size 8" in msg
    cfg_with("parallel.context_parallel_size=8", "parallel.cp_comm_type=a2a+p2p",
             "parallel.hierarchical_context_parallel_sizes=[2,4]").validate(8)
    msg = errors_of(cfg_with("parallel.context_parallel_size=4", "parallel.cp_comm_type=a2a+p2p",
                             "parallel.hierarchical_context_parallel_sizes=[3,2]"), 4)
    assert "hierarchical_context_parallel_sizes whose product is CP=4" in msg


# ---- deep validation: every number's range, duplicate keys, overrides (issue #15 item 7) -------

def test_every_numeric_field_declares_its_range():
    from typing import get_type_hints

    for section in Config().sections().values():  # every section, also those added later
        cls = type(section)
        hints = get_type_hints(cls)
        for f in config_mod.dataclasses.fields(cls):
            # context_length_warmup's [until_step, seq_length] pairs have their own rule (validate)
            if any(t in str(hints[f.name]) for t in ("int", "float")) and "list[list" not in str(hints[f.name]):
                assert {"ge", "gt", "lt"} & set(f.metadata), f"{cls.__name__}.{f.name} has no range"


@pytest.mark.parametrize("override, message", [
    ("data.seq_length=-256", "data.seq_length is -256; it must be at least 1."),
    ("data.seq_length=0", "data.seq_length is 0; it must be at least 1."),
    ("data.micro_batch_size=0", "data.micro_batch_size is 0; it must be at least 1."),
    ("data.global_batch_tokens=-2048", "data.global_batch_tokens is -2048; it must be at least 1."),
    ("optim.lr=-1e-4", "optim.lr is -0.0001; it must be greater than 0."),
    ("optim.lr=0", "optim.lr is 0.0; it must be greater than 0."),
    ("optim.lr=.nan", "optim.lr is nan; it must be greater than 0."),
    ("optim.min_lr=-1", "optim.min_lr is -1.0; it must be at least 0."),
    ("optim.adam_beta1=1.0", "optim.adam_beta1 is 1.0; it must be at least 0 and less than 1."),
    ("optim.adam_beta2=-0.5", "optim.adam_beta2 is -0.5; it must be at least 0 and less than 1."),
    ("optim.adam_eps=0", "optim.adam_eps is 0.0; it must be greater than 0."),
    ("optim.clip_grad=-1", "optim.clip_grad is -1.0; it must be at least 0."),
    ("optim.clip_grad=.inf", "optim.clip_grad is inf; it must be at least 0."),
    ("optim.min_lr=1e-3", "optim.min_lr 0.001 is larger than optim.lr 1e-05"),
    ("train.train_iters=-1", "train.train_iters is -1; it must be at least 1."),
    ("log.log_interval=0", "log.log_interval is 0; it must be at least 1."),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last is -1; it must be at least 0."),
    ("model.norm_epsilon=0", "model.norm_epsilon is 0.0; it must be greater than 0."),
    ("model.ffn_hidden_size=-352", "model.ffn_hidden_size is -352; it must be at least 1."),
    ("parallel.virtual_pipeline_model_parallel_size=0", "parallel.virtual_pipeline_model_parallel_size is 0; it must be at least 1."),
    ("parallel.tensor_model_parallel_size=0", "parallel.tensor_model_parallel_size is 0; it must be at least 1."),
    ("data.split=abc", "data.split 'abc' must be up to three non-negative train,valid,test weights"),
    ("data.split=1,-1,0", "data.split '1,-1,0' must be up to three non-negative"),
])
def test_out_of_range_numbers_name_the_field(override, message):
    assert message in errors_of(cfg_with(override), 1)


def test_world_size_below_one_is_refused():
    for world in (0, -2):
        assert f"world size {world}; it must be at least 1 GPU" in errors_of(cfg_with(), world)


def test_info_world_size_zero_is_an_error_not_the_default():
    from megaindex.cli import main

    assert main(["info", str(REPO / "examples" / "tiny_pt.yaml"), "--world-size", "0"]) == 2


def test_duplicate_yaml_keys_name_file_and_lines(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  preset: tiny\noptim:\n  lr: 1e-4\nmodel:\n  num_layers: 2\n")
    with pytest.raises(ConfigError, match=rf"{p}:5: duplicate key 'model' \(first at line 1\)"):
        load_config(p)
    p.write_text("optim:\n  lr: 1e-4\n  min_lr: 0\n  lr: 2e-4\n")
    with pytest.raises(ConfigError, match=rf"{p}:4: duplicate key 'lr' \(first at line 2\)"):
        load_config(p)


def test_invalid_yaml_is_one_line_with_the_line_number(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:") and "\n" not in str(e.value)


def test_quoted_overrides_are_strings_or_a_one_line_error():
    assert load_config(None, ['name="my run"']).name == "my run"
    assert load_config(None, ["name='my run'"]).name == "my run"
    assert load_config(None, ["name=my run"]).name == "my run"
    assert load_config(None, ['name="123"']).name == "123"  # quoted: stays a string
    assert load_config(None, ["name=@home"]).name == "@home"  # not YAML: the plain string
    for bad in ['name="my run', "data.data_path=[a.jsonl"]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [bad])
        assert str(e.value).startswith(f"override '{bad}': cannot read the value") and "\n" not in str(e.value)


def test_yaml_floats_read_as_numbers_in_files_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr: 3e-4\n  adam_eps: 1E-8\n  min_lr: 1.5e-6\n")
    cfg = load_config(p, ["optim.weight_decay=1e-2"])
    assert (cfg.optim.lr, cfg.optim.adam_eps, cfg.optim.min_lr, cfg.optim.weight_decay) == (3e-4, 1e-8, 1.5e-6, 1e-2)


def test_converter_target_config_invents_no_batch_settings():
    from megaindex.config import DataConfig
    from megaindex.convert.from_hf import target_config

    fields = dict(num_layers=4, hidden_size=128, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=352,
                  vocab_size=300, max_position_embeddings=256)
    # only the length the model was built for is recorded; batch settings are the recipe's
    assert target_config(fields, tp=2, pp=2, vpp=None).data == DataConfig(seq_length=256)
    with pytest.raises(Exception, match="num_layers 4 is not divisible by PP x VPP = 2 x 4 = 8"):
        target_config(fields, tp=1, pp=2, vpp=4)


def test_parity_config_is_a_copy():
    from megaindex.convert.parity import single_process_config

    loaded = cfg_with("parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
                      "train.recompute_granularity=full", "model.transformer_impl=transformer_engine")
    before = config_mod.dataclasses.replace(loaded)
    before_dict = loaded.to_dict()
    one = single_process_config(loaded, impl="local", precision="fp32")
    assert loaded.to_dict() == before_dict and before == loaded
    assert one.model_parallel_size == 1 and one.model.transformer_impl == "local" and one.train.recompute_granularity is None


def test_overrides_may_follow_options_in_every_command():
    import argparse

    from megaindex.config_load import parse_args_with_overrides

    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--json", action="store_true")
    args = parse_args_with_overrides(p, ["r.yaml", "optim.lr=1e-5", "--json", "data.seq_length=128"])
    assert args.overrides == ["optim.lr=1e-5", "data.seq_length=128"] and args.json
    with pytest.raises(SystemExit):
        parse_args_with_overrides(p, ["r.yaml", "--jsno"])


def test_train_refuses_a_bad_config_before_importing_megatron(tmp_path):
    """`megaindex train` checks the config before the ~10 s megatron import: with a `megatron`
    package that fails on import first on the path, a bad value still gives the one-line error."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "megatron"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('megatron imported before the config was checked')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "megaindex", "train", str(REPO / "examples" / "tiny_long_pt.yaml"),
                        "optim.lr=-1", f"train.run_dir={tmp_path / 'run'}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "optim.lr is -1.0; it must be greater than 0." in r.stderr and "Traceback" not in r.stderr
