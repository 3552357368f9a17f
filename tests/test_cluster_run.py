"""A cluster user's run, end to end on CPU: a 3-way weighted blend file, run length from a token
budget, the WSD schedule, milestone checkpoints, per-phase timers, packing efficiency, a profiler
window, per-launch configs; SFT by epochs that ends cleanly when its data runs out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, free_port
from test_train import STAGE1, STAGE2, launch, metrics

FIX = REPO / "tests" / "fixtures"


def _blend_file(tmp: Path) -> Path:
    from megaindex.data.preprocess import preprocess

    lines = (FIX / "corpus/pretrain.jsonl").read_text().splitlines()
    for i, name in enumerate("abc"):
        (tmp / f"{name}.jsonl").write_text("\n".join(lines[i::3]) + "\n")
        preprocess([tmp / f"{name}.jsonl"], tmp / name, FIX / "tokenizer.model", progress=False)
    blend = tmp / "mix.txt"
    blend.write_text("# weight prefix (relative to this file)\n0.5 a\n0.3 b\n0.2 c\n")
    return blend


def wsd_lr(n: int, peak: float, low: float, warmup: int, total: int, anneal: int) -> float:
    """megatron's WSD with the 1-sqrt anneal, after n scheduler steps."""
    if n <= warmup:
        return peak * n / warmup
    if n <= total - anneal:
        return peak
    return low + (1 - math.sqrt((n - (total - anneal)) / anneal)) * (peak - low)


def test_blend_tokens_wsd_milestones_timers_profile(tmp_path):
    blend = _blend_file(tmp_path)
    run = tmp_path / "run"
    common = [
        f"train.run_dir={run}", f"data.cache_dir={tmp_path / 'cache'}", f"data.data_path=['@{blend}']",
        "data.split=80,20,0", "data.seq_length=256", "data.global_batch_tokens=1024", "train.train_iters=null",
        f"train.train_tokens={10 * 1024 - 100}", "optim.lr_decay_style=wsd", "optim.lr_wsd_decay_iters=4",
        "optim.lr_warmup_iters=2", "train.eval_interval=5", "train.eval_iters=1", "checkpoint.save_interval=2",
        "checkpoint.keep_last=1", "checkpoint.keep_every=4", "train.profile_steps=[2,3]", "log.tensorboard=false",
    ]
    out = launch(STAGE1, common)
    assert "profiler trace of steps 2-3" in out.stdout
    got = metrics(run)
    assert [m["step"] for m in got] == list(range(1, 11))  # ceil(train_tokens / 1024) = 10 steps
    for m in got:  # the schedule follows the derived length: warmup 2, stable, 1-sqrt anneal over the last 4
        assert abs(m["lr"] - wsd_lr(m["step"], 3e-3, 3e-4, 2, 10, 4)) <= 1e-12, m
        for k in ("data_wait_s", "forward_backward_s", "optimizer_s", "eval_s", "checkpoint_s"):
            assert m[k] >= 0
        assert m["forward_backward_s"] > 0 and m["optimizer_s"] > 0
        assert (m["checkpoint_s"] > 0) == (m["step"] % 2 == 0), m
        assert (m["eval_s"] > 0) == (m["step"] in (5, 10)), m
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000004", "step_00000008", "step_00000010"]  # milestones survive keep_last=1
    configs = sorted(run.glob("config.*.yaml"))  # the launch's resolved config, kept
    assert len(configs) == 1 and "train_iters: 10" in configs[0].read_text()
    assert configs[0].read_text() == (run / "config.yaml").read_text()
    trace = json.loads((run / "profile" / "trace_steps2-3_rank0.json").read_text())
    assert len(trace["traceEvents"]) > 100
    names = {e.get("name") for e in trace["traceEvents"]}  # the ranges benchmarks/step_profile.py reads
    assert {"megaindex.step#2", "megaindex.step#3", "megaindex.forward_backward", "megaindex.optimizer",
            "megaindex.reduce_loss", "megaindex.norm_head", "megaindex.data_wait", "megaindex.checkpoint"} <= names
    assert "megaindex.step#4" not in names
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_profile.py"), str(run / "profile" / "trace_steps2-3_rank0.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr  # a CPU trace: one line, no traceback
    assert "step ranges: megaindex.step#2, megaindex.step#3, but no GPU kernels" in r.stderr

    # packing efficiency and realised blend shares, recomputed from the data the run read
    from megaindex.config import load_config
    from megaindex.data.builder import build_datasets
    from megaindex.data.tokenizer import IndexTokenizer

    cfg = load_config(run / "config.yaml")
    train, _ = build_datasets(cfg, IndexTokenizer(cfg.data.tokenizer_model))
    for m in got:
        rows = range(4 * (m["step"] - 1), 4 * m["step"])
        real = sum(int(train[i]["cu_seqlens"][-1]) for i in rows)
        assert m["packing_efficiency"] == real / 1024
    src = train.dataset_index[:40]
    assert list(np.bincount(src, minlength=3)) == [20, 12, 8]


def test_phase_timers_ranges_feed_one_phase_and_nested_data_wait_counts_once(monkeypatch):
    """PhaseTimers.time, the trainer's one timing mechanism: the data wait inside the forward-backward
    counts as data wait only; two profiler ranges (reduce_loss, optimizer) feed optimizer_s side by
    side, not nested; a block that raises still counts. A fake clock makes the seconds exact."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from megaindex.training import tracking

    now, ranges = [0.0], []
    monkeypatch.setattr(tracking, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    @contextmanager
    def annotate(name):
        ranges.append("+" + name)
        try:
            yield
        finally:
            ranges.append("-" + name)

    monkeypatch.setattr(tracking, "annotate", annotate)

    def wait(seconds):
        now[0] += seconds
        yield "batch"

    timers = tracking.PhaseTimers()
    with timers.time("forward_backward_s", exclude="data_wait_s"):
        now[0] += 2.0
        assert next(tracking.TimedIterator(wait(5.0), timers)) == "batch"
        now[0] += 1.0
    with timers.time("optimizer_s", trace_range="reduce_loss"):
        now[0] += 0.25
    try:
        with timers.time("optimizer_s"):
            now[0] += 0.5
            raise ValueError
    except ValueError:
        pass
    assert timers.pop() == {"data_wait_s": 5.0, "forward_backward_s": 3.0, "optimizer_s": 0.75, "eval_s": 0.0,
                            "checkpoint_s": 0.0}
    assert ranges == ["+forward_backward", "+data_wait", "-data_wait", "-forward_backward",
                      "+reduce_loss", "-reduce_loss", "+optimizer", "-optimizer"]
    assert timers.pop()["optimizer_s"] == 0.0  # pop clears


def test_every_launch_keeps_its_config(tmp_path):
    from megaindex.config import load_config
    from megaindex.training.tracking import save_launch_config

    first = save_launch_config(tmp_path, load_config(STAGE1))
    second = save_launch_config(tmp_path, load_config(STAGE1, ["optim.lr=1e-4"]))
    assert first != second and "lr: 0.003" in first.read_text() and "lr: 0.0001" in second.read_text()
    assert (tmp_path / "config.yaml").read_text() == second.read_text()


def test_sft_epochs_end_cleanly_when_the_data_runs_out(tmp_path):
    """Was: data.num_epochs=1 with more train_iters than the data holds died with a raw StopIteration.
    Then the run directory exports to a chat-ready HF model whose apply_chat_template gives exactly
    the ids SFT trained on (multi-turn, system prompts, English and Chinese)."""
    run = tmp_path / "sft"
    out = launch(STAGE2, [
        f"train.run_dir={run}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_epochs=1", "train.train_iters=1000",
        "data.seq_length=512", "data.global_batch_tokens=4096", "train.eval_interval=0", "checkpoint.pretrained=null",
        "checkpoint.save_interval=1000", "log.tensorboard=false", "log.plot=false",
    ])
    steps = [m["step"] for m in metrics(run)]
    assert steps == list(range(1, len(steps) + 1)) and 3 <= len(steps) < 1000
    assert f"the training data ran out after step {steps[-1]} of 1000" in out.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{steps[-1]:08d}"
    assert "StopIteration" not in out.stdout + out.stderr

    # chat-ready export from the run directory (follows checkpoints/latest)
    hf = tmp_path / "hf"
    r = subprocess.run([sys.executable, "tools/convert_to_hf.py", str(run), str(hf)], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "MASTER_PORT": str(free_port())})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"following {run / 'checkpoints' / 'latest'}" in r.stdout
    import transformers

    from megaindex.data import chat
    from megaindex.data.tokenizer import IndexTokenizer

    hf_tok = transformers.AutoTokenizer.from_pretrained(hf)
    tok = IndexTokenizer(FIX / "tokenizer.model")
    convs = [json.loads(line) for f in ("sft_general.jsonl", "sft_long.jsonl")
             for line in (FIX / "corpus" / f).read_text().splitlines()]
    multi = [c for c in convs if len(c["messages"]) > 3]
    zh = [c for c in convs if any("\u4e00" <= ch <= "\u9fff" for m in c["messages"] for ch in m["content"])]
    assert len(multi) >= 20 and len(zh) >= 50  # multi-turn (with system prompts) and Chinese conversations
    for c in convs:  # token for token what SFT trains on
        want = np.concatenate(chat.encode_conversation(*chat.validate_messages(c), tok.encode)).tolist()
        got = hf_tok.apply_chat_template(c["messages"], tokenize=True)
        assert list(got["input_ids"] if hasattr(got, "keys") else got) == want, c["messages"][:2]
    prompt = hf_tok.apply_chat_template(multi[0]["messages"][:-1], tokenize=True)  # ends with the user turn
    assert list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)[-1] == 4  # reserved_1: the model answers next
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_epochs_or_tokens_set_the_run_length(tmp_path):
    from megaindex.config import ConfigError, load_config
    from megaindex.data.builder import build_datasets
    from megaindex.data.tokenizer import IndexTokenizer
    from megaindex.training.run_length import resolve_after_data, resolve_before_data

    cfg = resolve_before_data(load_config(STAGE2, [f"data.cache_dir={tmp_path}", "data.num_epochs=2", "train.train_iters=null"]))
    train, _ = build_datasets(cfg, IndexTokenizer(cfg.data.tokenizer_model))
    done, note = resolve_after_data(cfg, train)
    assert train.num_epochs == 2 and done.train.train_iters == len(train) // 8 > 0
    assert f"{len(train)} samples = {done.train.train_iters} steps of 8" in note
    assert resolve_before_data(load_config(STAGE1, ["train.train_tokens=8193"])).train.train_iters == 2  # 8192 per step
    try:
        resolve_before_data(load_config(STAGE1, ["train.train_iters=null"]))
    except ConfigError as e:
        assert "train.train_iters is null but neither train.train_tokens nor data.num_epochs is set" in str(e)
    else:
        raise AssertionError("a run without a length was accepted")


def test_tracker_is_optional_and_says_how_to_install(tmp_path):
    import sys

    from megaindex.config import ConfigError, load_config
    from megaindex.training.tracking import build_tracker

    assert build_tracker(load_config(STAGE1), tmp_path) is None and "wandb" not in sys.modules
    for name in ("wandb", "mlflow"):
        if name in sys.modules or __import__("importlib").util.find_spec(name):
            continue  # installed here: the error path cannot be shown
        try:
            build_tracker(load_config(STAGE1, [f"log.tracker={name}"]), tmp_path)
        except ConfigError as e:
            assert f"the {name} package is not installed; `pip install {name}` or drop log.tracker" in str(e)
        else:
            raise AssertionError(f"log.tracker={name} without the package was accepted")
