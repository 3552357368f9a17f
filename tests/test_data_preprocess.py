"""Tokenizer layout, JSONL -> IndexedDataset preprocessing, bad inputs, nothing partial on disk."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from megaindex.data.preprocess import PreprocessError, preprocess
from megaindex.data.tokenizer import IndexTokenizer, TokenizerError

FIX = Path(__file__).parent / "fixtures"
TOK = FIX / "tokenizer.model"


def test_tokenizer_has_index_layout(tok):
    assert tok.vocab_size == 8000 and tok.eod == 2
    assert [tok.sp.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "reserved_0", "reserved_1"]
    text = "函数 reserved_0 returns  two\n  spaces"
    ids = tok.encode(text)
    assert 3 not in ids and 4 not in ids  # text can never forge a chat turn marker
    assert tok.decode(ids) == text


def test_tokenizer_rejects_wrong_layout(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        IndexTokenizer(tmp_path / "missing.model")


def test_pretrain_tokens_and_eod_match_the_source(tmp_path, tok):
    src = FIX / "corpus/pretrain.jsonl"
    gz = tmp_path / "pretrain.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    st = preprocess([gz], tmp_path / "pt", TOK, workers=2, progress=False)  # 2 worker processes, gzip input
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "pt"))
    texts = [json.loads(line)["text"] for line in src.open(encoding="utf-8")]
    assert st.documents == len(ds) == len(texts) == 21
    for i, text in enumerate(texts):
        ids = ds[i]
        assert ids[-1] == 2 and 2 not in ids[:-1]
        assert ids[:-1].tolist() == tok.encode(text)
    assert st.tokens == int(ds.sequence_lengths.sum())


BAD = {
    "invalid JSON": b'{"text": "ok"}\n{"text": "unterminated}\n',
    "missing field": b'{"text": "ok"}\n{"body": "no text field"}\n',
    "not valid UTF-8": b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
    "empty document": b'{"text": "ok"}\n{"text": "   "}\n',
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_bad_line_names_file_and_line_and_leaves_nothing(tmp_path, problem):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"text": "first document"}\n' + BAD[problem])
    out = tmp_path / "out" / "ds"
    with pytest.raises(PreprocessError) as e:
        preprocess([f], out, TOK, workers=0, progress=False)
    assert f"{f}:3: {problem}" in str(e.value) and "--skip-bad" in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []  # no .bin/.idx, no temporary files

    st = preprocess([f], out, TOK, workers=0, skip_bad=True, progress=False)
    assert st.documents == 2 and sum(st.skipped.values()) == 1 and next(iter(st.skipped)).startswith(problem)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ds.bin", "ds.idx"]


def test_bad_chat_record_and_sft_layout(tmp_path, tok):
    f = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "问题"},
                         {"role": "assistant", "content": "答案"}, {"role": "user", "content": "Q2"},
                         {"role": "assistant", "content": "A2"}]}
    bad = {"messages": [{"role": "assistant", "content": "no user"}, {"role": "user", "content": "x"}]}
    f.write_text(json.dumps(good, ensure_ascii=False) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(PreprocessError, match=r"chat.jsonl:2: messages must alternate user, assistant"):
        preprocess([f], tmp_path / "c", TOK, kind="sft", workers=0, progress=False)
    st = preprocess([f], tmp_path / "c", TOK, kind="sft", workers=0, skip_bad=True, progress=False)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "c"))
    assert st.documents == 1 and ds.document_indices.tolist() == [0, 5]
    seqs = [ds[i].tolist() for i in range(5)]
    assert seqs[0] == [0] + tok.encode("S")
    assert seqs[1] == [3] + tok.encode("问题") + [4] and seqs[2] == tok.encode("答案") + [2]
    assert seqs[3] == [3] + tok.encode("Q2") + [4] and seqs[4] == tok.encode("A2") + [2]
    assert np.concatenate([ds[i] for i in range(5)]).size == st.tokens
