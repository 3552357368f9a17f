"""megaindex.data.length_split: a corpus split by document length is a partition, in order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megaindex.data.length_split import document_lengths, split_by_length
from megaindex.data.preprocess import preprocess

FIXTURE = Path(__file__).resolve().parent / "fixtures"


def test_split_by_length_partitions_the_documents_in_order(tmp_path):
    """Real text and tokenizer: 12 fixture documents cut to different lengths; every document lands in
    exactly one part, in its order, token for token; an empty part is not written and its old files go."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    lines = (FIXTURE / "corpus" / "pretrain.jsonl").read_text().splitlines()[:12]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": json.loads(x)["text"][: 200 * (k + 1)]}) + "\n" for k, x in enumerate(lines)))
    preprocess([src], tmp_path / "all", FIXTURE / "tokenizer.model", workers=1, progress=False)
    whole = IndexedDataset(str(tmp_path / "all"), multimodal=False)
    lengths = document_lengths(whole)
    assert lengths.sum() == whole.sequence_lengths.sum() and len(lengths) == 12
    threshold = int(np.median(lengths)) + 1
    got = split_by_length(tmp_path / "all", threshold, tmp_path / "short", tmp_path / "long")
    assert got["short"]["documents"] + got["long"]["documents"] == 12
    assert got["short"]["tokens"] + got["long"]["tokens"] == int(lengths.sum())
    for name, keep in (("short", lengths < threshold), ("long", lengths >= threshold)):
        part = IndexedDataset(str(tmp_path / name), multimodal=False)
        want = [whole.get(i) for i in np.flatnonzero(keep)]
        assert len(part) == len(want) == got[name]["documents"] > 0
        assert all(np.array_equal(part.get(i), w) for i, w in enumerate(want))  # same tokens, same order
        assert part.sequence_lengths.min() >= (threshold if name == "long" else 1)
    # only the long part (run.py's corpus_xl): the short one is counted and not written
    xl = split_by_length(tmp_path / "all", threshold, None, tmp_path / "xl")
    assert xl["short"] == {"prefix": None, "documents": got["short"]["documents"], "tokens": got["short"]["tokens"]}
    assert (tmp_path / "xl.bin").read_bytes() == (tmp_path / "long.bin").read_bytes() and not list(tmp_path.glob("None*"))
    got = split_by_length(tmp_path / "all", int(lengths.max()) + 1, tmp_path / "short", tmp_path / "long")
    assert got["long"] == {"prefix": str(tmp_path / "long"), "documents": 0, "tokens": 0}
    assert not (tmp_path / "long.bin").exists() and not (tmp_path / "long.idx").exists()  # no stale part is left
    with pytest.raises(ValueError, match="min_tokens must be at least 1"):
        split_by_length(tmp_path / "all", 0, tmp_path / "short", tmp_path / "long")
