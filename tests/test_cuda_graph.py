"""Full-iteration CUDA graphs, the host side (CPU): the step batch the loader hands over
(data/step_batch.py) and what it stages into the static buffers, equal to the per-micro-batch
staging it replaced; the step loader's sample order; the eager -> capture -> replay sequence; and
the refusal without a GPU. The capture itself and its parity with eager steps are GPU tests
(tests/test_gpu_train.py::test_cuda_graph_steps_match_eager_steps)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from megaindex.config import ConfigError, load_config
from megaindex.data.batch import collate, pad_thd_slots, static_thd_shapes, thd_slots
from megaindex.data.packing import Piece, pack_pieces
from megaindex.data.sampler import build_dataloader
from megaindex.data.step_batch import collate_step
from megaindex.training import cuda_graph
from megaindex.training.cuda_graph import BUFFER_KEYS, FullIterationGraph, check_runtime
from megaindex.training.loss import DOC_SQ_KEY, LOSS_KEY, REAL_TOKENS_KEY, batch_count, document_stats
from test_data_batch import S, batch  # noqa: F401 (fixture: two real packed SFT rows, collated)


def old_stage_microbatch(batch: dict, slots: int, max_seqlen: int, longalign: bool) -> tuple[dict, dict]:
    """The per-micro-batch staging the step batch replaced (training/cuda_graph.py before it), built
    from the eager path's own functions: the reference the stacked step must equal."""
    stats = document_stats(batch, cp_rank=0)
    count = batch_count(batch, longalign, cp_rank=0)
    padded = static_thd_shapes(batch, max_seqlen, min_slots=slots)
    tensors = {k: padded[k] for k in BUFFER_KEYS if k != "count"}
    tensors["count"] = count
    return tensors, stats


@pytest.mark.parametrize("mbs", [1, 2])
def test_step_batch_and_buffers_equal_the_per_microbatch_staging_on_real_rows(batch, mbs):  # noqa: F811
    """collate_step (in the loader's workers) and one copy per kind into the static buffers give
    exactly what staging each micro-batch did: same tensors, dtypes, shapes and host statistics."""
    samples, _ = batch  # two real packed SFT rows, together 33-64 conversations
    # a real row cut to 1 piece: at micro-batch 2, [few, few] alone needs 32 slots and the step pads it to 64
    few = dict(samples[0], cu_seqlens=torch.tensor([0, S - 24], dtype=torch.int32),
               cu_seqlens_padded=torch.tensor([0, S], dtype=torch.int32), num_sequences=torch.tensor(1))
    rows = [few, few, samples[0], samples[1]] if mbs == 2 else [few, samples[1], samples[0]]
    mb_batches = [collate(rows[i:i + mbs]) for i in range(0, len(rows), mbs)]
    slots = max(thd_slots(len(b["cu_seqlens"]) - 1) for b in mb_batches)
    assert slots == (64 if mbs == 2 else 32) and thd_slots(len(mb_batches[0]["cu_seqlens"]) - 1) == 32
    for longalign in (False, True):
        step = collate_step(rows, micro_batch_size=mbs, max_seqlen=S, longalign=longalign)
        ref = [old_stage_microbatch(b, slots, S, longalign) for b in mb_batches]
        n = len(mb_batches)
        for k in BUFFER_KEYS:
            want = torch.stack([t[k].reshape(-1) for t, _ in ref])
            assert step[k].dtype == want.dtype and torch.equal(step[k].reshape(n, -1), want), k
        for k, key in (("doc_sq_sum", DOC_SQ_KEY), ("real_tokens", REAL_TOKENS_KEY)):
            assert step[k].tolist() == [int(st[key]) for _, st in ref], k
        # the static buffers after one load: each micro-batch's view holds its reference tensor
        shape = cuda_graph._Shape(step, torch.device("cpu"))
        for mb, (t, _) in zip(shape.microbatches, ref):
            for k in BUFFER_KEYS:
                assert mb[k].shape == t[k].shape and mb[k].dtype == t[k].dtype and torch.equal(mb[k], t[k]), k
        shape.load(collate_step(rows[::-1], micro_batch_size=mbs, max_seqlen=S, longalign=longalign))
        assert torch.equal(shape.microbatches[0]["tokens"], torch.cat([r["tokens"] for r in rows[::-1][:mbs]])[None])


def test_step_batch_errors_and_padding_to_another_ranks_slots(batch):  # noqa: F811
    samples, _ = batch
    with pytest.raises(ValueError, match="a step needs a positive multiple of micro_batch_size 2 samples, got 3"):
        collate_step(samples + samples[:1], micro_batch_size=2, max_seqlen=S, longalign=False)
    longest = int((samples[0]["cu_seqlens_padded"][1:] - samples[0]["cu_seqlens_padded"][:-1]).max())
    with pytest.raises(ValueError, match=f"a packed piece of {longest} tokens is longer than the static max_seqlen 8"):
        collate_step(samples, micro_batch_size=1, max_seqlen=8, longalign=False)
    step = collate_step(samples, micro_batch_size=1, max_seqlen=S, longalign=False)
    assert step["cu_seqlens"].shape == (2, 33)  # each row <= 32 conversations
    wide = pad_thd_slots(step, 128)  # what a DP rank whose step needs 128 slots makes every rank replay
    assert wide["cu_seqlens"].shape == (2, 129) and torch.equal(wide["cu_seqlens"][:, :33], step["cu_seqlens"])
    assert (wide["cu_seqlens"][:, 33:] == step["cu_seqlens"][:, -1:]).all()
    assert (wide["cu_seqlens_padded"][:, 33:] == S).all() and wide["tokens"] is step["tokens"]
    with pytest.raises(ValueError, match="already has 128 THD slots, more than 64"):
        pad_thd_slots(wide, 64)


def test_step_loader_reads_the_micro_batch_loaders_samples_in_order(batch):  # noqa: F811
    """One item per step (StepSampler): the samples the per-micro-batch loader reads, in its order,
    for a DP rank and after a resume; an incomplete last step is not yielded."""
    samples, _ = batch

    class Rows(torch.utils.data.Dataset):  # 11 real rows, each tagged by its index in its first token
        def __len__(self):
            return 11

        def __getitem__(self, i):
            s = dict(samples[i % 2])
            s["tokens"] = s["tokens"].clone()
            s["tokens"][0] = i
            return s

    kw = {"micro_batch_size": 1, "data_parallel_rank": 1, "data_parallel_size": 2, "consumed_samples": 2}
    per_mb = [int(b["tokens"][0, 0]) for b in build_dataloader(Rows(), **kw)]
    assert per_mb == [3, 5, 7, 9]
    loader = build_dataloader(Rows(), **kw, microbatches_per_item=3,
                              collate_fn=partial(collate_step, micro_batch_size=1, max_seqlen=S, longalign=False))
    steps = [s["tokens"][:, 0].tolist() for s in loader]
    assert steps == [[3, 5, 7]] and len(loader) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_graphs_need_a_gpu():
    cfg = load_config(None, ["model.preset=tiny", "train.cuda_graph_impl=full_iteration", "data.static_thd_shapes=true"])
    with pytest.raises(ConfigError, match="needs a CUDA GPU and none is visible; set train.cuda_graph_impl=none"):
        check_runtime(cfg)


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on CPU with a replay's semantics: it recomputes what was
    captured from the buffers' current contents into the tensors the capture returned."""

    capturing = None

    def __init__(self):
        self.fn, self.outputs = None, None

    def replay(self):
        for old, new in zip(self.outputs, self.fn()):
            old[LOSS_KEY].copy_(new[LOSS_KEY])


def test_steps_run_eagerly_then_capture_then_replay_the_current_buffers(monkeypatch):
    """The host-side logic of FullIterationGraph on CPU (the graph faked): one eager step per shape,
    then one capture, then replays that read each step's new micro-batches; a step needing more
    THD slots is a new shape."""
    S, rng = 512, np.random.default_rng(0)

    def row(lengths):  # one packed sample
        pieces = [Piece(t, np.roll(t, -1), np.ones(n, dtype=np.float32)) for n in lengths for t in [rng.integers(5, 8000, n)]]
        return pack_pieces(pieces, S, pad_multiple=8)

    calls = {"eager": 0, "captured": 0}

    def run(it, n):
        mbs = [next(it) for _ in range(n)]

        def compute():
            return [{LOSS_KEY: torch.stack([mb["tokens"].sum().double(), mb["count"].double()])} for mb in mbs]

        if FakeGraph.capturing is not None:
            FakeGraph.capturing.fn = compute
            calls["captured"] += 1
        else:
            calls["eager"] += 1
        return compute()

    @contextlib.contextmanager
    def fake_graph(graph, **kw):
        assert kw["capture_error_mode"] == "thread_local"
        FakeGraph.capturing = graph
        try:
            yield
        finally:
            FakeGraph.capturing = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    real_capture = FullIterationGraph._capture

    def capture(self, shape, key):
        real_capture(self, shape, key)
        shape.graph.outputs = shape.logs

    monkeypatch.setattr(FullIterationGraph, "_capture", capture)
    messages = []
    g = FullIterationGraph(run, stream=None, log=messages.append, device=torch.device("cpu"))
    monkeypatch.setattr(cuda_graph, "EAGER_STEPS", 1)
    steps = [[row([100, 200]), row([300])], [row([64] * 5), row([500])], [row([8] * 30), row([250, 250])],
             [row([8] * 40), row([100])]]  # the last step needs 64 THD slots
    for i, step in enumerate(steps):
        logs = g([iter([collate_step(step, micro_batch_size=1, max_seqlen=S, longalign=False)])], len(step))
        for rec, b in zip(logs, map(collate, ([r] for r in step))):
            assert rec[LOSS_KEY][0].item() == b["tokens"].sum().item()  # this step's tokens, not the captured step's
            assert rec[LOSS_KEY][1].item() == b["loss_mask"].count_nonzero().item()
            assert rec[DOC_SQ_KEY] == document_stats(b, 0)[DOC_SQ_KEY] and rec[REAL_TOKENS_KEY] == b["cu_seqlens"][-1]
        assert calls == [{"eager": 1, "captured": 0}, {"eager": 1, "captured": 1}, {"eager": 1, "captured": 1},
                         {"eager": 2, "captured": 1}][i], (i, calls)
    assert sorted(g.shapes) == [(32, 2), (64, 2)] and g.captures == 1 == len(messages)
    for shape in g.shapes.values():  # every micro-batch's tensors start 256-byte aligned in their buffer
        for mb in shape.microbatches:
            assert all((t.data_ptr() - shape.buffers[k].data_ptr()) % 256 == 0 for k, t in mb.items())
    assert "captured: forward-backward of 2 micro-batches (32 THD slots)" in messages[0]


def test_trainer_with_the_graph_faked_gives_the_eager_runs_losses(tmp_path):
    """The whole CPU trainer (tests/mp/faked_graph_trainer.py, one process, ~25 s): the step loader
    through DataLoader workers, the static buffers, the static forward step and the statistics give
    the eager run's losses, gradient norms and packing/FLOP statistics exactly, on SFT rows with
    LongAlign weights; steps 1-2 eager, step 3 captured, 3-5 replays."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(repo / "tests" / "mp" / "faked_graph_trainer.py"), str(tmp_path), str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=600, cwd=repo, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["captures"] == 1 and out["shapes"] == [[32, 4]] and out["eager_steps"] == 2
    assert len(out["graph"]) == 5 and out["graph"] == out["eager"]
    assert len({s["model_tflop"] for s in out["eager"]}) > 1  # the statistics change from step to step
