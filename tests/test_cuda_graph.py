"""Full-iteration CUDA graphs, the host side (CPU): what a step stages into the static buffers, and
the refusal without a GPU. The capture itself and its parity with eager steps are GPU tests
(tests/test_gpu_train.py::test_cuda_graph_steps_match_eager_steps)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from megaindex.config import ConfigError, load_config
from megaindex.data.batch import collate
from megaindex.data.packing import Piece, pack_pieces
from megaindex.training import cuda_graph
from megaindex.training.cuda_graph import BUFFER_KEYS, FullIterationGraph, check_runtime, stage_microbatch, step_slots
from megaindex.training.loss import DOC_SQ_KEY, LOSS_KEY, REAL_TOKENS_KEY, batch_count, document_stats
from test_data_batch import S, batch  # noqa: F401 (fixture: two real packed SFT rows, collated)


def test_staged_microbatches_share_the_step_slot_count_and_keep_host_statistics(batch):  # noqa: F811
    _, b = batch
    # a row of 2 pieces next to the fixture's row of 33-64 conversations: the step pads both to 64
    few = dict(b, cu_seqlens=torch.tensor([0, S - 24, 2 * S - 40], dtype=torch.int32),
               cu_seqlens_padded=torch.tensor([0, S, 2 * S], dtype=torch.int32), num_sequences=torch.tensor(2))
    slots = step_slots([few, b])
    assert slots == 64 and step_slots([few]) == 32
    staged = []
    for x in (few, b):
        for longalign in (False, True):
            tensors, stats = stage_microbatch(x, slots, S, longalign)
            assert tuple(tensors) == BUFFER_KEYS
            assert len(tensors["cu_seqlens"]) == len(tensors["cu_seqlens_padded"]) == slots + 1
            n = len(x["cu_seqlens"])
            assert torch.equal(tensors["cu_seqlens"][:n], x["cu_seqlens"])
            assert (tensors["cu_seqlens_padded"][n:] == 2 * S).all()  # zero-length slots after the row
            for k in ("tokens", "labels", "loss_mask"):
                assert torch.equal(tensors[k], x[k])
            # the loss count and document statistics of the row itself, not of its padded metadata
            assert int(tensors["count"]) == int(batch_count(x, longalign, 0))
            assert int(tensors["count"]) == (int(x["num_sequences"]) if longalign else int(x["loss_mask"].count_nonzero()))
            assert {k: int(v) for k, v in stats.items()} == {k: int(v) for k, v in document_stats(x, 0).items()}
            staged.append(tensors)
    # what the static buffers hold: one tensor per kind, stacked over the step's micro-batches
    stacked = {k: torch.stack([s[k] for s in staged]) for k in BUFFER_KEYS}
    assert stacked["tokens"].shape == (4, 1, 2 * S) and stacked["cu_seqlens"].shape == (4, slots + 1)
    assert stacked["cu_seqlens"].dtype == torch.int32 and stacked["count"].shape == (4,)


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

    def row(lengths):
        pieces = [Piece(t, np.roll(t, -1), np.ones(n, dtype=np.float32)) for n in lengths for t in [rng.integers(5, 8000, n)]]
        return collate([pack_pieces(pieces, S, pad_multiple=8)])

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
    g = FullIterationGraph(run, stream=None, max_seqlen=S, longalign=False, log=messages.append, device=torch.device("cpu"))
    monkeypatch.setattr(cuda_graph, "EAGER_STEPS", 1)
    steps = [[row([100, 200]), row([300])], [row([64] * 5), row([500])], [row([8] * 30), row([250, 250])],
             [row([8] * 40), row([100])]]  # the last step needs 64 THD slots
    for i, step in enumerate(steps):
        logs = g([iter(step)], len(step))
        for rec, b in zip(logs, step):
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
