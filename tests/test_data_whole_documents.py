"""data.whole_documents: short documents are never split across packed rows (pretrain packing)."""

from __future__ import annotations

import numpy as np
import pytest

from megaindex.config import load_config
from megaindex.data.pretrain import whole_document_rows
from tests.test_retrieval_docs import CORPUS, TOKENIZER


def rows_of(padded: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """(document, start, end) per row, read the way PackedGPTDataset.pieces reads the sample index."""
    rows = []
    for (b_pos, b_off), (e_pos, e_off) in zip(bounds[:-1], bounds[1:]):
        row = []
        for pos in range(b_pos, e_pos + 1):
            doc = int(order[pos])
            start = b_off if pos == b_pos else 0
            end = min(e_off if pos == e_pos else padded[doc], padded[doc])
            if end > start:
                row.append((doc, int(start), int(end)))
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_rows_keep_short_documents_whole(seed):
    rng = np.random.default_rng(seed)
    seq, whole = 256, 200
    lengths = np.concatenate([rng.integers(1, 130, 300), rng.integers(200, 257, 20), rng.integers(257, 900, 15)])
    padded = ((lengths + 1) // 2 * 2).astype(np.int32)  # pad_multiple 2
    documents = rng.permutation(len(padded)).astype(np.int32)
    order, bounds = whole_document_rows(padded, documents, seq, whole)
    assert sorted(order.tolist()) == sorted(documents.tolist())  # every document exactly once
    rows = rows_of(padded, order, bounds)
    seen: dict[int, list[tuple[int, int]]] = {}
    for row in rows:
        assert 0 < sum(e - s for _, s, e in row) <= seq
        for doc, s, e in row:
            seen.setdefault(doc, []).append((s, e))
    for doc, spans in seen.items():
        if padded[doc] <= whole:
            assert spans == [(0, int(padded[doc]))], (doc, spans)  # whole, in one row
        else:  # longer ones are split, covering the document once, in order
            assert spans[0][0] == 0 and spans[-1][1] == padded[doc]
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # rows are well filled: the look-ahead finds documents that fit
    used = sum(int(padded[d]) for d in seen)
    assert used / (len(rows) * seq) > 0.9
    # order changes only locally (first fit within the look-ahead)
    where = {d: i for i, d in enumerate(documents.tolist())}
    assert max(abs(where[d] - i) for i, d in enumerate(order.tolist())) < 64


def test_blended_datasets_never_split_retrieval_documents(tmp_path):
    """A weighted blend (corpus + retrieval documents) with a train/valid split, as the mini recipes
    use: builds (megatron asserted on the test split's size before), and with whole_documents every
    retrieval document lies whole in one row, which plain packing does not give."""
    from megaindex.data.builder import build_datasets
    from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator
    from megaindex.data.retrieval_writer import write_documents
    from megaindex.data.tokenizer import IndexTokenizer

    tok = IndexTokenizer(TOKENIZER)
    retrieval = tmp_path / "retrieval.jsonl"
    write_documents(retrieval, RetrievalDocGenerator(tok, FillerText([CORPUS]), RetrievalDocConfig(max_tokens=256, min_tokens=48)),
                    count=120)

    def build(whole: int):
        cfg = load_config("examples/tiny_long_pt.yaml", [
            f"data.data_path=['0.6 {CORPUS}', '0.4 {retrieval}']", f"data.tokenizer_model={TOKENIZER}",
            "data.seq_length=512", "data.global_batch_tokens=4096", "data.split=90,10,0", f"data.whole_documents={whole}",
            f"data.cache_dir={tmp_path / 'cache'}", "train.train_iters=10", "train.eval_interval=5", "train.eval_iters=1"])
        train, valid = build_datasets(cfg, tok)
        assert valid is not None
        sub = [d for d in train.datasets if "retrieval" in d.dataset.path_prefix]
        assert len(sub) == 1
        return sub[0]

    def split_docs(ds) -> int:
        lengths = ds.dataset.sequence_lengths
        return sum(1 for i in range(len(ds)) for doc, s, e in ds.pieces(i) if (s, e) != (0, int(lengths[doc])))

    whole = build(256)
    assert split_docs(whole) == 0
    assert split_docs(build(0)) > 0  # megatron's packing cuts documents at row ends
    sample = whole[0]
    assert int(sample["cu_seqlens_padded"][-1]) == 512
