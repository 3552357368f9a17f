"""Long-PT packing on the real fixture: coverage per epoch, THD layout under CP, determinism, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megaindex.config import load_config
from megaindex.data.builder import build_datasets
from megaindex.data.sampler import build_dataloader

FIX = Path(__file__).parent / "fixtures"
S = 2048


def make_cfg(tmp, *extra):
    return load_config(None, [
        f"data.data_path=['{FIX / 'corpus/pretrain.jsonl'}']", f"data.cache_dir={tmp}", f"data.seq_length={S}",
        f"data.global_batch_tokens={4 * S}", "data.split=100,0,0", "parallel.context_parallel_size=2", *extra,
    ])


@pytest.fixture(scope="module")
def built(tmp_path_factory, tok):
    tmp = tmp_path_factory.mktemp("pt")
    train, _ = build_datasets(make_cfg(tmp, "data.num_epochs=2"), tok)
    return tmp, train


def epoch_bounds(ds):
    """Sample ranges of each epoch (epochs never share a sample)."""
    per = len(ds) // 2
    return [(0, per), (per, len(ds))]


def test_every_token_once_per_epoch_with_eod(built):
    _, ds = built
    docs = [ds.dataset[i].astype(np.int64) for i in range(len(ds.dataset))]
    assert all(d[-1] == 2 for d in docs)
    assert len(ds) % 2 == 0
    for lo, hi in epoch_bounds(ds):
        seen = [np.zeros(len(d), dtype=np.int64) for d in docs]
        for idx in range(lo, hi):
            s = ds[idx]
            cu, cup = s["cu_seqlens"].tolist(), s["cu_seqlens_padded"].tolist()
            for (doc, a, b), i in zip(ds.pieces(idx), range(len(cu) - 1)):
                n = cu[i + 1] - cu[i]
                assert n == b - a
                off = cup[i]
                assert s["tokens"][off:off + n].tolist() == docs[doc][a:b].tolist()
                lab, mask = s["labels"][off:off + n], s["loss_mask"][off:off + n]
                if b == len(docs[doc]):  # the piece ends its document: EOD there, its label masked
                    assert s["tokens"][off + n - 1] == 2 and mask[-1] == 0 and mask[:-1].eq(1).all()
                    assert lab[:-1].tolist() == docs[doc][a + 1:b].tolist()
                else:  # a document continued in another row: the last label is its next token
                    assert mask.eq(1).all() and lab.tolist() == docs[doc][a + 1:b + 1].tolist()
                seen[doc][a:b] += 1
        assert all((c == 1).all() for c in seen), "a token is missing or repeated within an epoch"


def test_thd_layout_padding_positions_and_masks(built):
    _, ds = built
    for idx in range(0, len(ds), 7):
        s = ds[idx]
        cu, cup = s["cu_seqlens"], s["cu_seqlens_padded"]
        assert cu.dtype == cup.dtype == torch.int32 and cu[0] == cup[0] == 0 and cup[-1] == S
        assert s["tokens"].dtype == s["labels"].dtype == s["position_ids"].dtype == torch.int64
        assert s["loss_mask"].dtype == torch.float32 and s["tokens"].shape == (S,)
        padded = (cup[1:] - cup[:-1]).tolist()
        real = (cu[1:] - cu[:-1]).tolist()
        assert all(p % 4 == 0 and p >= r for p, r in zip(padded, real))  # 2*CP = 4
        assert int(s["num_sequences"]) == len(real)
        for i, (p, r) in enumerate(zip(padded, real)):
            o = int(cup[i])
            assert s["position_ids"][o:o + p].tolist() == list(range(p))
            assert s["loss_mask"][o + r:o + p].eq(0).all()  # pads never train
    # padding is per piece, not per row: rows of an epoch hold exactly the padded epoch
    lens = ds.dataset.sequence_lengths
    assert len(ds) // 2 == -(-sum(-(-int(n) // 4) * 4 for n in lens) // S)


def test_concat_packing_is_one_causal_segment(tmp_path, tok):
    ds, _ = build_datasets(make_cfg(tmp_path, "data.packing=concat", "data.num_epochs=1"), tok)
    with_eod = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["cu_seqlens"].tolist() == [0, S] and s["position_ids"].tolist() == list(range(S))
        eod = (s["tokens"] == 2).nonzero().flatten()
        eod = eod[eod < int(s["loss_mask"].nonzero().max()) + 1] if s["loss_mask"].any() else eod[:0]
        with_eod += len(eod)
        assert s["loss_mask"][eod].eq(0).all()  # no label across a document boundary
    assert with_eod >= 20  # every document boundary inside the rows was seen


def test_same_seed_same_samples_other_seed_differs(built, tmp_path, tok):
    _, ds = built
    again, _ = build_datasets(make_cfg(tmp_path / "a", "data.num_epochs=2"), tok)  # fresh cache: rebuilt
    other, _ = build_datasets(make_cfg(tmp_path / "b", "data.num_epochs=2", "data.seed=7"), tok)
    assert len(again) == len(ds)
    for i in (0, 5, len(ds) - 1):
        assert torch.equal(again[i]["tokens"], ds[i]["tokens"])
    assert not all(torch.equal(other[i]["tokens"], ds[i]["tokens"]) for i in range(4))
    # the second epoch is a different order of the same documents
    assert not torch.equal(ds[0]["tokens"], ds[len(ds) // 2]["tokens"])


def test_resume_at_sample_k_continues_identically(built):
    _, ds = built
    mbs, dp = 1, 2
    full = [[b["tokens"] for b in build_dataloader(ds, micro_batch_size=mbs, data_parallel_rank=r, data_parallel_size=dp)]
            for r in range(dp)]
    k = 6  # 3 global micro-batch steps consumed
    for r in range(dp):
        resumed = [b["tokens"] for b in build_dataloader(ds, micro_batch_size=mbs, consumed_samples=k,
                                                          data_parallel_rank=r, data_parallel_size=dp)]
        assert len(resumed) == len(full[r]) - k // dp
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[r][k // dp:]))
    # the DP ranks read disjoint samples
    assert not torch.equal(full[0][0], full[1][0])
