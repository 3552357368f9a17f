"""Long-SFT on the real fixture: assistant-only mask (by decoding), LongAlign exactness, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megaindex.config import load_config
from megaindex.data.batch import collate
from megaindex.data.builder import build_datasets
from megaindex.data.sampler import MicroBatchSampler

FIX = Path(__file__).parent / "fixtures/corpus"
SOURCES = [FIX / "sft_long.jsonl", FIX / "sft_general.jsonl"]
S = 2048


def make_cfg(tmp, *extra, paths=None):
    paths = paths or [str(p) for p in SOURCES]
    return load_config(None, [
        "data.kind=sft", f"data.data_path={paths!r}", f"data.cache_dir={tmp}", f"data.seq_length={S}",
        f"data.global_batch_tokens={4 * S}", "data.split=100,0,0", "data.num_epochs=1", *extra,
    ])


@pytest.fixture(scope="module")
def records():
    return [[json.loads(line)["messages"] for line in p.open(encoding="utf-8")] for p in SOURCES]


def test_mask_covers_exactly_the_assistant_turns(tmp_path, tok, records):
    ds, _ = build_datasets(make_cfg(tmp_path, "data.sft_overlength=drop"), tok)
    seen, langs, multi = 0, set(), 0
    for idx in range(len(ds)):
        s = ds[idx]
        cu, cup = s["cu_seqlens"].tolist(), s["cu_seqlens_padded"].tolist()
        assert int(s["num_sequences"]) == len(cu) - 1 == len(ds.conversations(idx))
        for i, (j, c) in enumerate(ds.conversations(idx)):
            msgs = records[j][c]
            o, n = cup[i], cu[i + 1] - cu[i]
            m = s["loss_mask"][o:o + n] > 0
            trained = tok.decode(s["labels"][o:o + n][m])
            assert trained == "".join(x["content"] + "</s>" for x in msgs if x["role"] == "assistant")
            system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
            prompt = "<unk>" + system + "".join(
                f"reserved_0{u['content']}reserved_1{a['content']}</s>" for u, a in
                zip([x for x in msgs if x["role"] == "user"], [x for x in msgs if x["role"] == "assistant"]))
            assert tok.decode(s["tokens"][o:o + n]) == prompt
            assert s["loss_mask"][o + n:cup[i + 1]].eq(0).all() and cup[i + 1] % 2 == 0
            seen += 1
            multi += sum(x["role"] == "assistant" for x in msgs) > 1
            langs.add("zh" if any("\u4e00" <= ch <= "\u9fff" for x in msgs for ch in x["content"]) else "en")
    total = sum(map(len, records))
    assert seen + ds.stats["dropped_overlength"] == total and seen > 150
    assert langs == {"en", "zh"} and multi >= 5


def test_overlength_drop_is_counted_and_truncate_keeps_answers(tmp_path, tok, records):
    short = 512
    drop, _ = build_datasets(make_cfg(tmp_path, f"data.seq_length={short}", "data.global_batch_tokens=2048"), tok)
    lengths = np.concatenate([drop._lengths[0], drop._lengths[1]])
    assert drop.stats["dropped_overlength"] == int((lengths > short).sum()) > 0
    trunc, _ = build_datasets(make_cfg(tmp_path, f"data.seq_length={short}", "data.global_batch_tokens=2048",
                                       "data.sft_overlength=truncate"), tok)
    assert trunc.stats["truncated"] + trunc.stats["dropped_overlength"] == drop.stats["dropped_overlength"]
    assert trunc.stats["truncated"] > 0
    checked = 0
    for idx in range(len(trunc)):
        for j, c in trunc.conversations(idx):
            if trunc._lengths[j][c] <= short:
                continue
            p = trunc.piece(j, c)
            assert len(p.tokens) <= short
            last_answer = [x for x in records[j][c] if x["role"] == "assistant"][-1]["content"]
            assert tok.decode(p.labels[p.weights > 0]).endswith(last_answer + "</s>")  # answers never cut
            checked += 1
    assert checked == trunc.stats["truncated"]


def test_longalign_global_loss_over_2_dp_ranks_x_2_microbatches(tmp_path, tok):
    ds, _ = build_datasets(make_cfg(tmp_path, "data.loss_weighting=longalign", "data.sft_overlength=truncate"), tok)
    gen = torch.Generator().manual_seed(0)
    per_token = {}  # a fixed random "loss" for every position of every conversation, as if computed alone

    def losses(j, c, n):
        if (j, c) not in per_token:
            per_token[(j, c)] = torch.rand(n, generator=gen, dtype=torch.float64) * 5
        return per_token[(j, c)]

    dp, mbs = 2, 2
    total_weighted, M, reference = 0.0, 0, []
    for rank in range(dp):
        for batch_idx in MicroBatchSampler(dp * mbs * 2, 0, mbs, rank, dp):  # 2 micro-batches per rank
            b = collate([ds[i] for i in batch_idx])
            row = torch.full((b["tokens"].shape[1],), float("nan"), dtype=torch.float64)
            cup, cu = b["cu_seqlens_padded"].tolist(), b["cu_seqlens"].tolist()
            convs = [jc for i in batch_idx for jc in ds.conversations(i)]
            assert len(convs) == len(cu) - 1 == int(b["num_sequences"])
            for k, (j, c) in enumerate(convs):
                n = cu[k + 1] - cu[k]
                row[cup[k]:cup[k] + n] = losses(j, c, n)
                alone = ds.piece(j, c)  # the same conversation alone, plain mean over its trained tokens
                w = torch.from_numpy(alone.weights) > 0
                reference.append(float(losses(j, c, n)[w].mean()))
            mask = b["loss_mask"][0].double()
            total_weighted += float(torch.where(mask > 0, row, 0.0).mul(mask).sum())  # pads hold NaN: zeroed
            M += int(b["num_sequences"])
    assert M == len(reference) > 2 * dp * mbs
    # float32 weights 1/N_i: agreement to ~1e-7 relative
    assert total_weighted / M == pytest.approx(float(np.mean(reference)), rel=1e-6)
    # plain token averaging over the same batch is biased toward long conversations: not equal
    tok_mean = float(torch.cat([v[torch.from_numpy(ds.piece(j, c).weights) > 0] for (j, c), v in per_token.items()]).mean())
    assert abs(tok_mean - float(np.mean(reference))) > 1e-4


def test_mixture_weights_set_the_share_of_an_epoch(tmp_path, tok, records):
    paths = [f"3 {SOURCES[0]}", f"1 {SOURCES[1]}"]
    ds, _ = build_datasets(make_cfg(tmp_path, f"data.seq_length={8192}", "data.global_batch_tokens=16384",
                                    "data.sft_overlength=truncate", paths=paths), tok)
    from collections import Counter

    counts = Counter(j for i in range(len(ds)) for j, _ in ds.conversations(i))
    total = sum(map(len, records))
    assert counts[0] + ds.stats["dropped_overlength"] == round(0.75 * total)  # general chats are all short
    assert counts[1] == round(0.25 * total)


def test_sorted_batching_groups_rows_of_similar_longest_conversations(tmp_path, tok):
    """Each global batch the trainer reads (rows [k*g, (k+1)*g)) holds rows of similar longest
    conversations (a row's attention cost), in shuffled batch order, over two epochs. Was: the
    epoch's partial batch was shuffled in with the others, so every batch after it straddled two
    sorted groups (and every batch of the next epoch when an epoch's rows were not a multiple of g)."""
    ds, _ = build_datasets(make_cfg(tmp_path, "data.sorted_batching=true", "data.sft_overlength=truncate",
                                    "data.num_epochs=2"), tok)
    g = 4
    per_epoch = len(build_datasets(make_cfg(tmp_path, "data.sorted_batching=true", "data.sft_overlength=truncate"), tok)[0])
    assert per_epoch % g, "the fixture should leave a partial batch per epoch"
    epochs = [[], []]
    for start in range(0, len(ds) - g + 1, g):
        rows = range(start, start + g)
        if start < per_epoch < start + g:
            continue  # the batch across the epoch boundary
        longest = [max(min(ds._lengths[j][c], S) for j, c in ds.conversations(i)) for i in rows]
        epochs[start >= per_epoch].append((min(longest), max(longest)))
    for ranges in epochs:
        assert len(ranges) >= 2
        assert all(a[1] <= b[0] for a, b in zip(sorted(ranges), sorted(ranges)[1:]))
    assert epochs[0] != sorted(epochs[0], reverse=True) or epochs[1] != sorted(epochs[1], reverse=True)  # shuffled


@pytest.mark.parametrize("sorted_batching", ["true", "false"])
def test_rows_are_packed_full(tmp_path, tok, sorted_batching):
    """Was: next-fit packing (a row closed when the next conversation did not fit) left 22% (sorted)
    and 16% (shuffled) of the fixture's 2K rows as padding; best fit leaves under 5%."""
    ds, _ = build_datasets(make_cfg(tmp_path, f"data.sorted_batching={sorted_batching}", "data.sft_overlength=truncate"), tok)
    real = sum(int(ds[i]["cu_seqlens"][-1]) for i in range(len(ds)))
    assert real / (len(ds) * S) > 0.95
    assert sorted(jc for i in range(len(ds)) for jc in ds.conversations(i)) == sorted(
        (j, c) for j in range(len(ds.datasets)) for c in range(len(ds._lengths[j])) if ds._lengths[j][c] <= S
        or chat_fits(ds, j, c))  # every conversation once


def chat_fits(ds, j, c):
    from megaindex.data import chat

    d = ds.datasets[j]
    return chat.fitted_length(d.sequence_lengths[d.document_indices[c]:d.document_indices[c + 1]], S) is not None


def test_best_fit_packs_every_item_once_in_order_within_capacity():
    from megaindex.data.sft import best_fit

    rng = np.random.default_rng(1)
    needs = [int(x) for x in rng.integers(1, 100, 500)]
    rows = best_fit(needs, 100)
    assert sorted(i for r in rows for i in r) == list(range(500))
    assert all(sum(needs[i] for i in r) <= 100 and r == sorted(r) for r in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # rows in the order they were started
    # best fit: the item goes where the least room is left (not the first row with room)
    assert best_fit([60, 70, 25], 100) == [[0], [1, 2]]  # first fit: [[0, 2], [1]]
    with pytest.raises(ValueError, match="does not fit"):
        best_fit([101], 100)


def test_fitted_length_is_the_length_fit_conversation_gives():
    from megaindex.data import chat

    rng = np.random.default_rng(0)
    for _ in range(400):
        turns = int(rng.integers(1, 5))
        lengths = [int(rng.integers(1, 40))] + [int(x) for x in rng.integers(3, 300, 2 * turns)]
        seqs = [np.zeros(n, dtype=np.int64) for n in lengths]
        max_len = int(rng.integers(20, 700))
        fitted = chat.fit_conversation(seqs, max_len)
        assert chat.fitted_length(lengths, max_len) == (None if fitted is None else sum(map(len, fitted)))


def test_planning_reads_no_tokens(tmp_path, tok, monkeypatch):
    """Over-length conversations are planned from the index; their tokens are read when a row is
    built (30K long instructions truncated at 32K would otherwise be held in every rank's memory)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    short = 512
    cfg = make_cfg(tmp_path, f"data.seq_length={short}", "data.global_batch_tokens=2048", "data.sft_overlength=truncate")
    build_datasets(cfg, tok)  # preprocess the JSONL into the cache first (that reads tokens, once)
    real_get = IndexedDataset.get

    def no_reads(*a, **k):
        raise AssertionError("PackedSFTDataset read tokens while planning its rows")

    monkeypatch.setattr(IndexedDataset, "get", no_reads)
    ds, _ = build_datasets(cfg, tok)
    assert ds.stats["truncated"] > 0
    monkeypatch.setattr(IndexedDataset, "get", real_get)
    truncated = [(i, jc) for i in range(len(ds)) for jc in ds.conversations(i) if ds._lengths[jc[0]][jc[1]] > short]
    from megaindex.data import chat

    for _, (j, c) in truncated:
        d = ds.datasets[j]
        planned = chat.fitted_length(d.sequence_lengths[d.document_indices[c]:d.document_indices[c + 1]], short)
        assert len(ds.piece(j, c).tokens) == planned <= short
    assert truncated
