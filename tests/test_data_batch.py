"""Batch -> rank: THD collate, CP slices that reassemble the batch (and match TE), TP broadcast."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from megaindex.config import load_config
from megaindex.data.batch import broadcast_batch_to_tp, collate, host_to_device, packed_seq_params, slice_batch_for_cp_rank
from megaindex.data.builder import build_datasets
from megaindex.data.tokenizer import IndexTokenizer

FIX = Path(__file__).parent / "fixtures"
S = 1024


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tok = IndexTokenizer(FIX / "tokenizer.model")
    cfg = load_config(None, [
        "data.kind=sft", f"data.data_path=['{FIX / 'corpus/sft_general.jsonl'}']", f"data.seq_length={S}",
        f"data.cache_dir={tmp_path_factory.mktemp('b')}", f"data.global_batch_tokens={2 * S}", "data.split=100,0,0",
        "data.num_epochs=1", "parallel.context_parallel_size=4",
    ])
    ds, _ = build_datasets(cfg, tok)
    return [ds[0], ds[1]], collate([ds[0], ds[1]])


def test_collate_is_one_packed_row(batch):
    samples, b = batch
    assert b["tokens"].shape == (1, 2 * S) and b["loss_mask"].shape == (1, 2 * S)
    assert torch.equal(b["tokens"][0, S:], samples[1]["tokens"])
    n0 = len(samples[0]["cu_seqlens"]) - 1
    assert len(b["cu_seqlens"]) == n0 + len(samples[1]["cu_seqlens"])
    assert b["cu_seqlens_padded"][n0] == S and b["cu_seqlens_padded"][-1] == 2 * S
    assert b["cu_seqlens"][-1] == samples[0]["cu_seqlens"][-1] + samples[1]["cu_seqlens"][-1]
    assert int(b["num_sequences"]) == int(samples[0]["num_sequences"]) + int(samples[1]["num_sequences"])
    lens = b["cu_seqlens_padded"][1:] - b["cu_seqlens_padded"][:-1]
    assert int(b["max_seqlen"]) == int(lens.max()) < 2 * S


@pytest.mark.parametrize("cp", [2, 4])
def test_cp_slices_reassemble_the_batch(batch, cp):
    _, b = batch
    cup = b["cu_seqlens_padded"].tolist()
    owner = torch.full((2 * S,), -1)
    parts = [slice_batch_for_cp_rank(b, cp, r) for r in range(cp)]
    from megaindex.cp_layout import thd_partition_indices

    for r, part in enumerate(parts):
        idx = thd_partition_indices(b["cu_seqlens_padded"], cp, r)
        assert part["tokens"].shape[1] == 2 * S // cp  # load balance: every rank the same count
        assert owner[idx].eq(-1).all()
        owner[idx] = r
        for k in ("tokens", "labels", "loss_mask", "position_ids"):
            assert torch.equal(part[k][0], b[k][0, idx])
        assert part["cu_seqlens"] is b["cu_seqlens"]  # TE's CP attention takes the global boundaries
    assert owner.ge(0).all()
    rebuilt = torch.empty_like(b["tokens"])
    for r, part in enumerate(parts):
        rebuilt[0, thd_partition_indices(b["cu_seqlens_padded"], cp, r)] = part["tokens"][0]
    assert torch.equal(rebuilt, b["tokens"])
    # per piece, rank r holds chunks r and 2cp-1-r
    a, e = cup[0], cup[1]
    chunk = (e - a) // (2 * cp)
    first = slice_batch_for_cp_rank(b, cp, 1)["position_ids"][0, :2 * chunk]
    assert first.tolist() == list(range(chunk, 2 * chunk)) + list(range((2 * cp - 2) * chunk, (2 * cp - 1) * chunk))


@pytest.mark.gpu
def test_cp_slices_match_transformer_engine(batch):
    tex = pytest.importorskip("transformer_engine_torch")
    from megaindex.cp_layout import thd_partition_indices

    _, b = batch
    cu = b["cu_seqlens_padded"].cuda()
    for cp in (2, 4):
        for r in range(cp):
            te_idx = tex.thd_get_partitioned_indices(cu, 2 * S, cp, r)
            assert torch.equal(te_idx.cpu().long(), thd_partition_indices(b["cu_seqlens_padded"], cp, r))


def test_host_to_device_keeps_values_and_dtypes_on_the_host(batch):
    """Off the GPU host_to_device is a plain move: every tensor of a CP slice arrives equal, same dtype."""
    _, b = batch
    part = slice_batch_for_cp_rank(b, 2, 1)
    for k, v in part.items():
        got = host_to_device(v, "cpu")
        assert got.dtype == v.dtype and torch.equal(got, v), k


def test_host_to_device_pins_then_copies_without_blocking_when_bound_for_cuda(monkeypatch):
    """Without a GPU, the CUDA branch with torch's pin and copy recorded: a pageable host tensor is pinned (a copy),
    an already pinned one is not, and the copy to the GPU is non_blocking; a CPU target is a plain move."""
    calls = []
    real_to = torch.Tensor.to

    def pin_memory(self, *a, **k):
        calls.append("pin")
        return self.clone()

    def to(self, *a, **k):
        if torch.device(a[0]).type != "cuda":
            return real_to(self, *a, **k)
        calls.append(("to", torch.device(a[0]).type, k.get("non_blocking", False)))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    t = torch.arange(4)
    host_to_device(t, "cuda")
    assert calls == ["pin", ("to", "cuda", True)]
    calls.clear()
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: True)
    host_to_device(t, torch.device("cuda", 0))
    assert calls == [("to", "cuda", True)]
    calls.clear()
    assert host_to_device(t, "cpu") is t and calls == []


def _moved_while_the_gpu_is_busy(fn, spin_cycles: int = 1_000_000_000):
    """(fn's result, host seconds fn took, seconds until the GPU was done) with ~0.5 s of GPU work queued first."""
    torch.cuda._sleep(spin_cycles)
    t0 = time.perf_counter()
    out = fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return out, host, time.perf_counter() - t0


@pytest.mark.gpu
def test_micro_batch_reaches_the_gpu_without_waiting_for_its_queue(batch):
    """What the forward step moves per micro-batch (training/loss.py: the CP slice's tokens, positions,
    labels and loss mask, the THD cu_seqlens, the count) is queued behind the GPU's work, the host not
    waiting for it: the 2 x H200 CP2 profile found the host drained the queue twice per micro-batch on
    pageable copies (benchmarks/RESULTS_train.md). The control shows such a copy does wait here. The
    fixture's slice is ~8 KB per tensor, and the driver may stage a small pageable copy without waiting
    for the stream, so one tensor the size of the profiled slice's (8 x 32K rows at CP2: 131,072 int64
    tokens per rank, 1 MiB) moves too, and the control copies that one."""
    from megaindex.training.loss import to_device

    _, b = batch
    part = slice_batch_for_cp_rank(b, 2, 0)
    part["profiled_tokens"] = torch.randint(0, 8000, (1, 131072))  # pageable, as the profiled slice's tokens
    dev = torch.device("cuda")
    count = torch.tensor(7, dtype=torch.int)
    keys = ("tokens", "position_ids", "labels", "loss_mask", "profiled_tokens")

    def move():
        return to_device({k: part[k] for k in keys}, dev), packed_seq_params(part, dev), host_to_device(count, dev)

    move()
    torch.cuda.synchronize()  # the first use allocates the pinned blocks
    (moved, psp, c), host, total = _moved_while_the_gpu_is_busy(move)
    assert total > 0.2, f"the GPU spin lasted {total:.3f} s, too short to tell a wait"
    assert host < 0.25 * total, f"the host waited {host:.3f} s of the GPU's {total:.3f} s"
    for k in keys:
        assert torch.equal(moved[k].cpu(), part[k]), k
    assert torch.equal(psp.cu_seqlens_q.cpu(), part["cu_seqlens"]) and int(c) == 7
    _, host_pageable, total_pageable = _moved_while_the_gpu_is_busy(
        lambda: part["profiled_tokens"].to(dev, non_blocking=True))
    assert host_pageable > 0.5 * total_pageable, (
        f"a pageable copy took {host_pageable:.3f} s of {total_pageable:.3f} s: it no longer waits for the queue on "
        "this driver, so host_to_device's pinning buys nothing here")


def test_tp_broadcast_two_gloo_ranks():
    from conftest import torchrun

    r = torchrun(__file__, 2, timeout=300)
    assert r.stdout.count("tp broadcast ok") == 2


if __name__ == "__main__":  # run by torchrun: TP=2, rank 0 loads a batch, rank 1 receives it
    import os

    from megaindex import distributed

    sys.path.insert(0, str(Path(__file__).parent))
    cfg = load_config(None, ["parallel.tensor_model_parallel_size=2", "model.preset=tiny", "data.seq_length=64",
                             "data.global_batch_tokens=64", "parallel.sequence_parallel=false"])
    distributed.init_distributed(cfg)
    rank = int(os.environ["RANK"])
    g = torch.Generator().manual_seed(5)
    expect = {"tokens": torch.randint(0, 8000, (1, 64), generator=g), "loss_mask": torch.rand(1, 64, generator=g),
              "cu_seqlens": torch.tensor([0, 20, 50], dtype=torch.int32), "num_sequences": torch.tensor(2)}
    got = broadcast_batch_to_tp(expect if rank == 0 else None)
    assert got.keys() == expect.keys() and all(torch.equal(got[k], expect[k]) for k in expect)
    print("tp broadcast ok", flush=True)
    distributed.destroy_distributed()


def test_static_thd_shapes_keep_the_layout_and_fix_the_shapes(batch):
    from megaindex.data.batch import MIN_THD_SLOTS, pad_thd_slots, static_thd_shapes

    _, b = batch
    few = dict(b, cu_seqlens=b["cu_seqlens"][:3].clone(), cu_seqlens_padded=torch.tensor([0, S, 2 * S], dtype=torch.int32))
    assert 32 < len(b["cu_seqlens"]) - 1 <= 64  # the SFT rows hold 33-64 conversations
    for x, slots in ((b, 64), (few, MIN_THD_SLOTS)):
        out = static_thd_shapes(x, 4 * S)
        n = len(x["cu_seqlens"])
        # the same boundaries, then zero-length sequences; a run-constant max_seqlen (the row)
        assert len(out["cu_seqlens"]) == len(out["cu_seqlens_padded"]) == slots + 1
        assert torch.equal(out["cu_seqlens"][:n], x["cu_seqlens"]) and torch.equal(out["cu_seqlens_padded"][:n], x["cu_seqlens_padded"])
        assert (out["cu_seqlens"][n - 1:] == x["cu_seqlens"][-1]).all()
        assert (out["cu_seqlens_padded"][n - 1:] == 2 * S).all()
        assert int(out["max_seqlen"]) == 4 * S and out["max_seqlen"].dtype == torch.int32
        assert out["tokens"] is x["tokens"] and len(x["cu_seqlens"]) == n  # the input batch is untouched
    many = torch.arange(0, 2 * S + 1, 16, dtype=torch.int32)  # 128 pieces -> 128 slots; 129 -> 256
    assert len(static_thd_shapes(dict(b, cu_seqlens=many, cu_seqlens_padded=many), S)["cu_seqlens"]) == 129
    more = torch.cat([many[:1], many + 8])
    more[-1] = 2 * S
    assert len(static_thd_shapes(dict(b, cu_seqlens=more, cu_seqlens_padded=more), S)["cu_seqlens"]) == 257
    with pytest.raises(ValueError, match="longer than the static max_seqlen"):
        static_thd_shapes(few, S - 1)
    with pytest.raises(ValueError, match=f"cu_seqlens already has {len(b['cu_seqlens']) - 1} THD slots, more than 32"):
        pad_thd_slots(b, 32)  # the one padder never drops sequences


def test_thd_partition_indices_equal_the_per_document_rule():
    """The vectorised index set equals chunks r and 2cp-1-r of every document (cp_chunk_positions),
    for rows of many documents of random lengths, and refuses a length that is not a multiple of 2cp."""
    from megaindex.cp_layout import cp_chunk_positions, thd_partition_indices

    gen = torch.Generator().manual_seed(0)
    for cp in (1, 2, 4):
        for docs in (1, 7, 300):
            lengths = torch.randint(0, 40, (docs,), generator=gen) * 2 * cp
            cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)
            for r in range(cp):
                want = [int(a) + cp_chunk_positions(int(b) - int(a), cp, r) for a, b in zip(cu[:-1], cu[1:])]
                got = thd_partition_indices(cu, cp, r)
                assert got.dtype == torch.long and torch.equal(got, torch.cat(want)), (cp, docs, r)
    assert thd_partition_indices([0], 2, 0).numel() == 0
    with pytest.raises(ValueError, match="not a multiple of 2\\*CP = 4"):
        thd_partition_indices([0, 8, 14], 2, 0)
