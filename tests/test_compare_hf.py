"""benchmarks/compare_hf.py: one invocation runs HF transformers and megaindex on the same work.

The whole path on CPU with the tiny model (the GPU run is the same command on the 32K recipe): the
fixture benchmark data built by the documented command, the rows written once by their own process,
both engines in their own processes, the same-work check, both FLOP conventions from
megaindex/plan.py, the ratio, the backend facts of each process, and the files it writes. The HF
process is a plain HF script: no megatron, no Transformer Engine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

import pytest
from conftest import REPO

from megaindex import plan
from megaindex.config import load_config

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_hf  # noqa: E402
import same_work  # noqa: E402

TINY = str(REPO / "examples" / "tiny_long_pt.yaml")
CORPUS = str(REPO / "tests" / "fixtures" / "corpus" / "pretrain.jsonl")
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def run_compare(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare_hf.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=ENV)


@pytest.mark.slow
def test_one_invocation_compares_hf_and_megaindex_on_the_same_work(tmp_path):
    """3 measured steps of 2 x 256-token rows each side (~30 s on 2 cores, most of it imports)."""
    out, data = tmp_path / "out", tmp_path / "fixture_pretrain"
    r = run_compare("--out", str(out), "--recipe", TINY, "--data", str(data), "--steps", "4", "--warmup", "1",
                    "--sequences-per-step", "2", "data.seq_length=256")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "building the benchmark data from the repo's fixture corpus" in r.stdout  # the documented command ran
    assert data.with_suffix(".bin").is_file() and data.with_suffix(".idx").is_file()
    hf, mi, c = [json.loads(line) for line in (out / "compare_hf.jsonl").read_text().splitlines()]
    assert (hf["engine"], mi["engine"], c["name"]) == ("hf", "megaindex", "compare_hf")
    rows = out / "runs" / "rows" / "rows.npz"
    assert "[rows] wrote 8 rows of 256 tokens" in r.stdout and hf["rows_file"] == str(rows)
    assert hf["engine_modules_loaded"] == [] and "megatron" in mi["engine_modules_loaded"]
    for rec in (hf, mi, c["hf"], c["megaindex"]):  # the facts that decide torch's kernels, both sides
        assert set(rec["sdpa_enabled"]) == {"flash", "mem_efficient", "math", "cudnn"}
        assert all(isinstance(v, bool) for v in rec["sdpa_enabled"].values()) and "cudnn_version" in rec
    assert "HF: cuDNN" in r.stdout and "engines imported: none" in r.stdout

    cfg = load_config(TINY, ["data.seq_length=256"])
    tokens, s = 512, 256
    causal = plan.step_flops(cfg, tokens, 2 * s * s)  # two rows, each one causal 256-token sequence
    full = plan.step_flops_full_attention(cfg, tokens, s)
    for rec in (hf, mi):
        assert (rec["packing"], rec["seq_length"], rec["global_batch_tokens"]) == ("concat", s, tokens)
        assert rec["dense_params"] == plan.dense_params(cfg)
        assert rec["model_tflop_per_step"] * 1e12 == pytest.approx(causal, rel=1e-12)
        assert rec["steps_measured"] == 3 and len(rec["step_times_s"]) == 4
        # medians of 3 measured steps: the rates are those of the median step time, in both conventions
        assert rec["tflops_per_gpu"] * rec["step_time_s"] * 1e12 == pytest.approx(causal, rel=1e-9)
        assert rec["tflops_per_gpu_full_s2"] * rec["step_time_s"] * 1e12 == pytest.approx(full, rel=1e-9)
        assert rec["tokens_per_s_per_gpu"] == pytest.approx(tokens / rec["step_time_s"], rel=1e-9)
    assert c["megaindex_over_hf"] == pytest.approx(mi["tokens_per_s_per_gpu"] / hf["tokens_per_s_per_gpu"], rel=1e-12)
    assert c["megaindex_layout"] == "CPU, full recompute"
    md = (out / "compare_hf.md").read_text().splitlines()
    assert md[0].startswith("| date | device | work |") and len(md) == 3
    assert md[2].endswith(f"**{c['megaindex_over_hf']:.2f}x** |")
    assert (out / "compare_hf.png").stat().st_size > 10_000
    assert f"megaindex / HF: {c['megaindex_over_hf']:.2f}x" in r.stdout


def test_refuses_work_that_is_not_the_same(tmp_path):
    """Per-document attention (packing reset) is work HF does not do: refused before anything runs,
    and two records of different work are named field by field."""
    r = run_compare("--out", str(tmp_path / "out"), "--data", str(REPO / "tests/fixtures/corpus/pretrain.jsonl"),
                    "data.packing=reset", timeout=60)
    assert r.returncode == 2 and "runs data.packing=concat" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()
    same = {"seq_length": 256, "global_batch_tokens": 512, "dense_params": 10, "model_tflop_per_step": 1.0}
    assert compare_hf.same_work_errors(same, dict(same)) == []
    errors = compare_hf.same_work_errors(same, {**same, "global_batch_tokens": 1024, "model_tflop_per_step": 0.9})
    assert len(errors) == 2 and errors[0] == "global_batch_tokens: HF 512 vs megaindex 1024"
    assert "not one causal sequence each" in errors[1]


def test_hf_baseline_reads_the_rows_file_and_imports_no_megatron_nor_transformer_engine(tmp_path):
    """The rows file holds the trainer's rows and targets; hf_baseline trains on it with neither
    megatron nor TE in its process (checked after its model, rows and steps), and refuses to measure
    when one got in (TE faked: on CPU megatron.core does not import it). ~10 s: one process of
    torch + transformers."""
    work = argparse.Namespace(recipe=TINY, data=CORPUS, tokenizer=str(same_work.TOKENIZER), steps=1, warmup=0,
                              sequences_per_step=2, overrides=["data.packing=concat", "data.seq_length=256"])
    rows = tmp_path / "rows" / "rows.npz"
    meta = same_work.write_rows(work, rows)  # in this process: pytest has megatron already
    assert (meta["rows"], meta["data.seq_length"], meta["data.packing"]) == (2, 256, "concat")

    from megaindex.data.builder import build_datasets
    from megaindex.data.tokenizer import IndexTokenizer

    cfg, _ = same_work.work_config(work, rows.parent)
    ds, _ = build_datasets(cfg, IndexTokenizer(cfg.data.tokenizer_model))
    tokens, targets = same_work.read_rows(cfg, 2, rows)
    for i in range(2):  # what the trainer reads for micro-batch i of step 0, targets as HF's ignore_index
        assert np.array_equal(tokens[i], ds[i]["tokens"].numpy())
        assert np.array_equal(targets[i], np.where(ds[i]["loss_mask"].numpy() > 0, ds[i]["labels"].numpy(), -100))
    for field, changed, n in (("rows", [], 4), ("data.seq_length", ["data.seq_length=512"], 2),
                              ("train.train_iters", ["train.train_iters=3"], 2)):
        other, _ = same_work.work_config(argparse.Namespace(**{**vars(work), "overrides": work.overrides + changed}),
                                         tmp_path)
        with pytest.raises(SystemExit, match=f"^{rows}: written for {field} .*delete the file"):
            same_work.read_rows(other, n, rows)

    argv = ["--rows", str(rows), "--recipe", TINY, "--data", CORPUS, "--steps", "1", "--warmup", "0",
            "--sequences-per-step", "2", "data.seq_length=256"]
    code = f"""
import json, sys, types
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import hf_baseline
rc = hf_baseline.main({argv!r})
engines = sorted(m for m in sys.modules if m.split(".")[0] in ("megatron", "transformer_engine"))
sys.modules["transformer_engine"] = types.ModuleType("transformer_engine")
try:
    hf_baseline.main({argv!r})
    refused = None
except SystemExit as e:
    refused = str(e)
print("CHECK " + json.dumps({{"rc": rc, "engines": engines, "refused": refused}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    check = json.loads(next(line for line in lines if line.startswith("CHECK "))[len("CHECK "):])
    assert check["rc"] == 0 and check["engines"] == []
    assert check["refused"].startswith("hf_baseline: transformer_engine imported into the HF process (after building")
    rec = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT "):])
    assert rec["engine_modules_loaded"] == [] and rec["rows_file"] == str(rows) and rec["global_batch_tokens"] == 512
    assert "writing the rows" not in r.stdout  # it read the file, it did not build the dataset


def test_backend_facts_survive_torch_refusing_the_cudnn_version(monkeypatch):
    """2026-11-28, H200: TE's staged cuDNN 9.14 was mapped before torch's 9.19, and
    `torch.backends.cudnn.version()` raised after every trainer run had trained all its steps, so no
    record was written. The facts now keep the error text and still name the mapped cuDNN libraries;
    compare_hf prints the error in place of the version."""
    import torch

    msg = ("cuDNN version incompatibility: PyTorch was compiled  against (9, 19, 0) but found runtime version "
           "(9, 14, 0). PyTorch already comes bundled with cuDNN.")

    def refuse():
        raise RuntimeError(msg)

    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", refuse)
    monkeypatch.setattr(same_work, "loaded_libraries", lambda fragment: [f"/tmp/site/{fragment}.so.9"])
    facts = same_work.backend_facts()
    assert facts["cudnn_version"] is None and facts["fact_errors"] == {"cudnn_version": f"RuntimeError: {msg}"}
    assert facts["cudnn_libraries"] == ["/tmp/site/libcudnn.so.9"] and set(facts["sdpa_enabled"]) >= {"flash", "cudnn"}
    line = compare_hf.facts_text(facts)
    assert line.startswith(f"cuDNN ? (RuntimeError: {msg}) (/tmp/site/libcudnn.so.9), SDPA enabled: ")
    monkeypatch.undo()
    assert same_work.backend_facts()["fact_errors"] == {}
