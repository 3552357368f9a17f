"""`megaindex eval` end to end on a tiny stage-1 checkpoint the test trains (real corpus, CPU):
results.jsonl, summary.json and the PNGs in under 2 minutes, a progress bar with ETA, one-line
errors for bad input (missing checkpoint, unknown task/variant, bad --depths, a length above what
the model holds); the in-training probe (config `eval:`) that the same training run enables, and
that the probe leaves the model exactly as it found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port

STAGE1 = REPO / "examples" / "tiny_long_pt.yaml"
TRAIN_LENGTH = 256


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """Two optimizer steps of the tiny stage-1 recipe at 256 tokens (a real trainer checkpoint), with
    the long-context probe after each step."""
    run = tmp_path_factory.mktemp("stage1")
    cmd = [sys.executable, "-m", "megaindex", "train", str(STAGE1), f"train.run_dir={run}",
           f"data.cache_dir={run / 'cache'}", f"data.seq_length={TRAIN_LENGTH}", "data.global_batch_tokens=512",
           "train.train_iters=2", "train.eval_interval=0", "checkpoint.save_interval=2", "log.tensorboard=true",
           "log.plot=false", "eval.interval=1", "eval.tasks=[passkey,needle]", "eval.lengths=[192,256]",
           "eval.depths=[0,100]"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MASTER_PORT": str(free_port())}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "long-context probe at step 2: needle " in r.stdout and ", passkey_256 " in r.stdout
    return run / "checkpoints"


def test_probe_scores_land_in_metrics_and_tensorboard(stage1):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = stage1.parent
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert {"loss", "probe_passkey", "probe_passkey_192", "probe_passkey_256", "probe_needle",
                "probe_needle_192", "probe_needle_256"} <= set(r)
        assert 0 <= r["probe_needle"] <= 100 and r["probe_passkey"] in (0, 25, 50, 75, 100)  # 4 keys per step
        assert r["probe_needle"] == pytest.approx((r["probe_needle_192"] + r["probe_needle_256"]) / 2, abs=1e-3)
        for task in ("passkey", "needle"):  # the forced token accuracy (%) beside each score
            per_length = [r[f"probe_{task}_tokacc_{L}"] for L in (192, 256)]
            assert all(0 <= x <= 100 for x in per_length)
            assert r[f"probe_{task}_tokacc"] == pytest.approx(sum(per_length) / 2, abs=1e-3)
        assert r["probe_passkey_tokacc"] >= r["probe_passkey"]  # an exact key has every token right
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/probe_needle")] == [1, 2]
    assert [e.step for e in acc.Scalars("train/probe_passkey_tokacc")] == [1, 2]


def test_eval_writes_results_summary_and_plots(stage1, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "megaindex", "eval", str(stage1), "--tasks", "needle,passkey,ppl",
           "--lengths", "256,512", "--depths", "0:100:3", "--rope", "naive,dynamic:2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MASTER_PORT": str(free_port())}
    t0, cpu0 = time.time(), _children_cpu()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall, cpu = time.time() - t0, _children_cpu() - cpu0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    # The goal is under 2 minutes on 2 cores. CPU seconds measure the work whatever else the machine
    # runs (wall time on a shared box does not): with one free core it takes at most that long.
    assert cpu < 120, f"megaindex eval used {cpu:.0f} CPU seconds ({wall:.0f}s wall) on the tiny checkpoint"
    assert "44/44" in r.stderr and "<00:00" in r.stderr  # the tqdm bar: done/total and elapsed<remaining

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # per variant: needle 2 lengths x 3 depths x 2 languages, passkey 2 x 3, ppl 2 lengths x 2 languages
    assert len(rows) == 2 * (12 + 6 + 4)
    scored = [x for x in rows if x["task"] != "ppl"]
    for x in scored:
        assert {"task", "variant", "length", "depth", "actual_depth", "prediction", "gold", "score", "logprob"} <= set(x)
        assert x["length"] in (256, 512) and x["input_length"] < x["length"] and not x["truncated"]
        assert x["actual_depth"] <= x["depth"] and x["logprob"] < 0 and 0 <= x["score"] <= 100
        assert x["score"] == 100 * x["exact"] if x["task"] == "passkey" else x["score"] <= 20 or x["score"] == 100
        assert 0 <= x["token_accuracy"] <= 1 and (x["token_accuracy"] == 1) == x["exact"]  # forced: 1 iff exact
    assert {x["lang"] for x in rows if x["task"] == "needle"} == {"en", "zh"}
    ppl = [x for x in rows if x["task"] == "ppl"]
    assert all(x["ppl"] > 1 and sum(b[3] for b in x["buckets"]) == x["length"] - 1 for x in ppl)
    # Up to the training length dynamic NTK is the plain model: the same numbers at 256 tokens.
    same = {(x["task"], x["lang"], x["depth"], x["repeat"]): x["logprob"] for x in scored if x["length"] == 256 and x["variant"] == "naive"}
    for x in scored:
        if x["length"] == 256 and x["variant"] == "dynamic:2":
            assert x["logprob"] == pytest.approx(same[(x["task"], x["lang"], x["depth"], x["repeat"])], abs=1e-4)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["train_length"] == TRAIN_LENGTH and summary["meta"]["variants"] == ["naive", "dynamic:2"]
    for v in ("naive", "dynamic:2"):
        n = summary["needle"][v]
        assert set(n["grid"]) == {"256", "512"} and set(n["grid"]["256"]) == {"0", "50", "100"}
        assert n["overall"] == pytest.approx(sum(n["by_length"].values()) / 2, abs=1e-3)
        assert set(summary["passkey"][v]["accuracy_by_length"]) == {"256", "512"}
        assert set(summary["ppl"][v]["by_length"]) == {"256", "512"} and summary["ppl"][v]["nll_by_position"]
        for task in ("needle", "passkey"):
            for L, acc in summary[task][v]["token_accuracy_by_length"].items():
                mine = [x["token_accuracy"] for x in scored if (x["task"], x["variant"], str(x["length"])) == (task, v, L)]
                assert acc == pytest.approx(sum(mine) / len(mine), abs=1e-4)
    for png in ("needle_heatmap_naive.png", "needle_heatmap_dynamic2.png", "score_vs_length.png", "ppl.png"):
        assert (out / png).stat().st_size > 10_000, png
    assert "wrote" in r.stdout and "needle  naive" in r.stdout and "token accuracy 256:" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["MISSING"], "does not exist"),
    (["CKPT", "--tasks", "needle,haystack"], "unknown task 'haystack'"),
    (["CKPT", "--rope", "naive,cubic:2"], "RoPE variant 'cubic'"),
    (["CKPT", "--depths", "0-100-11"], "--depths '0-100-11': use start:stop:count"),
    (["CKPT", "--lengths", "256,1k", "--rope", "naive"], "length 1024 .* above what the model holds: trained at 256"),
])
def test_eval_bad_input_is_one_line(stage1, tmp_path, capsys, args, message):
    import re

    from megaindex.eval.cli import main

    args = [str(tmp_path / "missing") if a == "MISSING" else str(stage1) if a == "CKPT" else a for a in args]
    cwd = os.getcwd()
    os.chdir(REPO)  # the recipe's data and tokenizer paths are relative to the repository
    try:
        assert main([*args, "--out", str(tmp_path / "out")]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert err.startswith("megaindex eval: ") and "\n" not in err and re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing loaded, nothing written


@pytest.fixture(scope="module")
def tiny(single_process_megatron):
    """A tiny model in this process (training length 128) and its tokenizer."""
    from megaindex import distributed
    from megaindex.config_load import load_config
    from megaindex.data.tokenizer import IndexTokenizer
    from megaindex.model.build import build_model

    cfg = load_config(STAGE1, ["data.seq_length=128", "data.global_batch_tokens=128", "eval.interval=1",
                               "eval.tasks=[passkey,needle]", "eval.lengths=[192,250]", "eval.depths=[50]"])
    distributed.seed_everything(3)
    return cfg, build_model(cfg), IndexTokenizer(REPO / cfg.data.tokenizer_model)


def test_probe_restores_the_model(tiny):
    """Logits after a probe equal those before (same rotary module, RoPE fusion, train mode)."""
    import torch

    from megaindex.eval.probe import Probe

    cfg, model, tok = tiny
    model.train()
    ids = torch.tensor([tok.encode("The pass key is hidden somewhere in this text. Find it.")])
    pos = torch.arange(ids.shape[1])[None]
    before = model(ids, pos, attention_mask=None).detach()
    rotary = model.rotary_pos_emb
    cwd = os.getcwd()
    os.chdir(REPO)  # the recipe's relative data paths (the needle's held-out documents)
    try:
        scores = Probe(cfg, tok).run(model)
    finally:
        os.chdir(cwd)
    assert set(scores) == {f"probe_{t}{x}" for t in ("passkey", "needle")
                           for x in ("", "_192", "_250", "_tokacc", "_tokacc_192", "_tokacc_250")}
    assert model.training and model.rotary_pos_emb is rotary
    assert torch.equal(model(ids, pos, attention_mask=None).detach(), before)


def test_middle_truncation_through_the_engine(tiny):
    """--truncate middle: prompts longer than the model holds (128 tokens, naive) are cut to the
    budget max_len - answer tokens; shorter ones are scored whole."""
    from megaindex.eval.grid import EvalSpec
    from megaindex.eval.haystack import Haystack
    from megaindex.eval.megatron_engine import MegatronEngine
    from megaindex.model.rope_variants import parse_rope
    from megaindex.eval.run import build_samples, check_lengths, run_grid

    cfg, model, tok = tiny
    naive = parse_rope("naive")
    engine = MegatronEngine(model, cfg, tok, train_length=128, rope=naive)
    assert engine.max_length == 128
    hay = Haystack.from_files([REPO / "tests/fixtures/corpus/heldout.jsonl"], tok)
    spec = EvalSpec(tasks=["passkey", "needle"], lengths=[128, 400], depths=[50], variants=[naive], truncate="middle",
                    langs=["en"])
    samples = build_samples(spec, tok, hay)
    check_lengths(spec, samples, 128)  # no error: truncation is on
    rows = list(run_grid(engine, spec, samples))
    assert [(r["task"], r["length"]) for r in rows] == [(s.task, s.length) for s in samples]
    for r, s in zip(rows, samples):
        budget = 128 - len(s.answer_ids)
        if s.length == 128:
            assert not r["truncated"] and r["input_length"] == budget
        else:
            assert r["truncated"] and r["input_length"] == 2 * (budget // 2)
