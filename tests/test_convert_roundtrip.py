"""HF -> megaindex -> HF in one process: logits parity with transformers (with and without Norm-Head,
GQA), bit-exact round trips, the local module layout, exports of save_model checkpoints with greedy
generation, and bad input (clear errors, nothing partial in OUT)."""

from __future__ import annotations

import json

import pytest
import torch
from test_convert_fixtures import make_index, make_llama, read_hf_state

from megaindex.convert import weight_map as L
from megaindex.convert.cli import main
from megaindex.convert.from_hf import convert_from_hf
from megaindex.convert.hf_config import ConversionError
from megaindex.convert.parity import build_megaindex, check_parity, hf_logits, megaindex_logits, random_tokens
from megaindex.convert.to_hf import convert_to_hf

quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    make_llama(d / "llama")
    make_index(d / "index")
    return d


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_llama_gqa_parity_and_bit_exact_round_trip(work, single_process_megatron):
    assert main(["from-hf", str(work / "llama"), str(work / "llama_mg"), "--check"]) == 0
    ckpt = work / "llama_mg"
    meta = json.loads((ckpt / "megaindex.json").read_text())
    assert meta["architecture"]["num_query_groups"] == 2 and meta["converted_for"]["padded_vocab_size"] == 384
    diff = check_parity(ckpt, work / "llama", log=quiet)
    assert diff <= 1e-4

    # the local module layout holds exactly the mapped tensors (norms under input/pre_mlp_layernorm)
    model, cfg = build_megaindex(ckpt)
    hf = read_hf_state(work / "llama")
    arch = L.Arch(4, 64, 4, 2, 96, 300)
    expected = L.hf_to_module_state_dict(hf, arch, layout="local", padded_vocab_size=cfg.padded_vocab_size)
    got = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    assert_same_tensors(got, expected)

    out = convert_to_hf(ckpt, work / "llama_back", log=quiet)
    assert_same_tensors(read_hf_state(out), hf)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_key_value_heads"], config["vocab_size"], config["rms_norm_eps"]) == (2, 300, 1e-5)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)


def test_index_norm_head_parity_and_both_export_formats(work, single_process_megatron):
    from transformers import AutoModelForCausalLM

    from megaindex.model.output_layer import normalize_rows

    ckpt = convert_from_hf(work / "index", work / "index_mg", log=quiet)
    assert (ckpt / "tokenizer" / "tokenizer.model").is_file()
    assert check_parity(ckpt, work / "index", log=quiet) <= 1e-4

    model, cfg = build_megaindex(ckpt)
    assert cfg.model.norm_head and cfg.model.rotary_base == 320000 and cfg.model.num_query_groups == 4
    tokens = random_tokens(300, 2, 24, seed=5)
    ours = megaindex_logits(model, tokens, 300)
    hf = read_hf_state(work / "index")

    # llama format: stock transformers, no remote code, Norm-Head baked into lm_head
    llama = convert_to_hf(ckpt, work / "index_as_llama", fmt="llama", log=quiet)
    exported = read_hf_state(llama)
    assert torch.equal(exported["lm_head.weight"], normalize_rows(hf["lm_head.weight"]))
    assert not torch.allclose(exported["lm_head.weight"], hf["lm_head.weight"])
    assert_same_tensors({k: v for k, v in exported.items() if k != "lm_head.weight"},
                        {k: v for k, v in hf.items() if k != "lm_head.weight"})
    stock = AutoModelForCausalLM.from_pretrained(str(llama), dtype=torch.float32)
    assert type(stock).__name__ == "LlamaForCausalLM"
    theirs = hf_logits(stock, tokens)
    assert (ours - theirs).abs().max().item() <= 1e-4
    # without Norm-Head the logits would be far off: the comparison has teeth
    assert (ours - megaindex_logits_without_norm_head(model, tokens)).abs().max().item() > 1.0
    assert (llama / "tokenizer.model").is_file()

    # index format: norm_head kept, raw lm_head, modeling + tokenizer files from the template
    index = convert_to_hf(ckpt, work / "index_back", fmt="index", template_dir=work / "index", log=quiet)
    assert_same_tensors(read_hf_state(index), hf)
    config = json.loads((index / "config.json").read_text())
    assert config["norm_head"] is True and config["architectures"] == ["IndexForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_index.IndexForCausalLM"
    assert (config["rope_theta"], config["max_position_embeddings"], config["vocab_size"]) == (320000.0, 256, 300)
    for name in ("modeling_index.py", "configuration_index.py", "tokenizer.model", "tokenizer_config.json"):
        assert (index / name).is_file(), name
    assert check_parity(ckpt, index, log=quiet) <= 1e-4


@torch.no_grad()
def megaindex_logits_without_norm_head(model, tokens):
    model.output_layer.norm_head = False
    try:
        return megaindex_logits(model, tokens, 300)
    finally:
        model.output_layer.norm_head = True


def test_bin_input_and_bf16_storage(work, single_process_megatron):
    src = make_index(work / "index_bin", bin_format=True, seed=3)
    ckpt = convert_from_hf(src, work / "index_bin_mg", dtype="bf16", tp=2, log=quiet)
    meta = json.loads((ckpt / "megaindex.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["converted_for"]["padded_vocab_size"] == 512
    out = convert_to_hf(ckpt, work / "index_bin_back", fmt="index", log=quiet)
    back = read_hf_state(out)
    assert_same_tensors(back, {k: v.to(torch.bfloat16) for k, v in read_hf_state(src).items()})
    # a bf16 checkpoint padded for TP2 loads into a TP1 fp32 model and matches the bf16 HF weights
    assert check_parity(ckpt, out, log=quiet) <= 1e-4


def test_save_model_checkpoint_exports_and_generates(tmp_path, single_process_megatron):
    """A checkpoint written by megaindex.checkpoint.save_model (random tiny Index model) exports to a
    stock Llama whose greedy generation equals megaindex's own greedy decoding."""
    from transformers import AutoModelForCausalLM

    from megaindex.checkpoint import save_model
    from megaindex.config import load_config
    from megaindex.model.build import build_model_chunks

    cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2", "train.precision=fp32",
                             "data.seq_length=64", "data.global_batch_tokens=64", "train.seed=7"])
    torch.manual_seed(7)
    chunks = build_model_chunks(cfg)
    save_model(chunks, tmp_path / "ckpt", cfg)
    out = tmp_path / "hf"
    assert main(["to-hf", str(tmp_path / "ckpt"), str(out), "--check"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "generation_config.json", "model.safetensors.index.json"}

    model = chunks[0].eval()
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    prompt = random_tokens(cfg.model.vocab_size, 1, 8, seed=11)
    ours = prompt
    for _ in range(12):  # megaindex greedy decoding, full recompute each step
        nxt = megaindex_logits(model, ours, cfg.model.vocab_size)[:, -1].argmax(-1, keepdim=True)
        ours = torch.cat([ours, nxt], dim=1)
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert theirs.shape == (1, 20)
    assert torch.equal(theirs, ours)


# ---- bad input --------------------------------------------------------------------------------------
def test_bad_hf_input_names_the_problem(work, tmp_path, capsys):
    with pytest.raises(ConversionError, match="config.json is missing"):
        convert_from_hf(tmp_path / "nowhere", tmp_path / "o", log=quiet)

    bad = make_llama(tmp_path / "other", num_hidden_layers=2)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ConversionError, match=r"missing, first 'model\.layers\.2\."):
        convert_from_hf(bad, tmp_path / "o", log=quiet)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(ConversionError, match=r"unexpected tensor 'model\.layers\.1\..*another model"):
        convert_from_hf(bad, tmp_path / "o", log=quiet)
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 80}))
    with pytest.raises(ConversionError, match=r"'model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' has shape"):
        convert_from_hf(bad, tmp_path / "o", log=quiet)
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    assert main(["from-hf", str(bad), str(tmp_path / "o")]) == 1
    assert "GPT2LMHeadModel" in capsys.readouterr().err
    (bad / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 4, "num_key_value_heads": 2}))
    with pytest.raises(ConversionError, match="tensor_model_parallel_size 4"):
        convert_from_hf(bad, tmp_path / "o", tp=4, log=quiet)
    (bad / "model.safetensors.index.json").unlink()
    for shard in bad.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(ConversionError, match="holds no HF weights"):
        convert_from_hf(bad, tmp_path / "o", log=quiet)
    assert not (tmp_path / "o").exists()


def test_failure_mid_write_leaves_nothing(work, tmp_path, monkeypatch):
    from megaindex.convert import hf_io

    calls = {"n": 0}
    real_get = hf_io.HFWeights.get

    def flaky(self, name, expected_shape=None):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError(f"disk error while reading {name}")
        return real_get(self, name, expected_shape)

    monkeypatch.setattr(hf_io.HFWeights, "get", flaky)
    with pytest.raises(OSError, match="disk error"):
        convert_from_hf(work / "llama", tmp_path / "out", log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_bad_megaindex_input(work, tmp_path, single_process_megatron):
    ckpt = work / "llama_mg" if (work / "llama_mg").exists() else convert_from_hf(work / "llama", work / "llama_mg", log=quiet)
    with pytest.raises(ConversionError, match="not empty; pass --force"):
        convert_to_hf(ckpt, work / "llama", log=quiet)  # an existing HF dir is never overwritten silently
    with pytest.raises(Exception, match="megaindex.json missing|config.yaml is missing"):
        convert_to_hf(work / "llama", tmp_path / "o", log=quiet)
    with pytest.raises(ConversionError, match="--format 'gguf'"):
        convert_to_hf(ckpt, tmp_path / "o", fmt="gguf", log=quiet)

    # a checkpoint whose config.yaml describes another model: refused, naming field or tensor
    import shutil

    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    text = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(text.replace("ffn_hidden_size: 96", "ffn_hidden_size: 128"))
    with pytest.raises(ConversionError, match="ffn_hidden_size: checkpoint 96 vs config 128"):
        convert_to_hf(other, tmp_path / "o", log=quiet)
    meta = json.loads((other / "megaindex.json").read_text())
    meta["architecture"]["ffn_hidden_size"] = 128
    (other / "megaindex.json").write_text(json.dumps(meta))
    with pytest.raises(ConversionError, match=r"'decoder\.layers\.mlp\.linear_fc1\.weight' has shape \(4, 192, 64\).*\(4, 256, 64\)"):
        convert_to_hf(other, tmp_path / "o", log=quiet)
    assert not (tmp_path / "o").exists()
