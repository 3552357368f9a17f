"""Data mixtures on the real fixture split into three prefixes: weighted and unweighted blends for as
many samples as the run asks (several epochs), realised shares, blend files, validation per prefix,
SFT blends, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megaindex.config import ConfigError, load_config
from megaindex.data.blend import BlendedSamples, parse_blend
from megaindex.data.builder import build_datasets
from megaindex.data.preprocess import preprocess

FIX = Path(__file__).parent / "fixtures"
TOK = FIX / "tokenizer.model"


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory) -> list[str]:
    """Three pretraining prefixes: every third document of the fixture corpus each (7 documents)."""
    tmp = tmp_path_factory.mktemp("blend")
    lines = (FIX / "corpus/pretrain.jsonl").read_text().splitlines()
    out = []
    for i, name in enumerate("abc"):
        src = tmp / f"{name}.jsonl"
        src.write_text("\n".join(lines[i::3]) + "\n")
        preprocess([src], tmp / name, TOK, progress=False)
        out.append(str(tmp / name))
    return out


def cfg(tmp, data_path, *extra):
    return load_config(None, [
        f"data.data_path={list(data_path)}", f"data.cache_dir={tmp}", "data.seq_length=512",
        "data.global_batch_tokens=8192", "data.split=80,20,0", *extra,
    ])


def test_weighted_three_way_blend_many_epochs_realised_shares(tmp_path, tok, prefixes):
    """Was: megatron's builder asserted (`size_is_none => weights_are_none` for the test split)."""
    w = [0.5, 0.3, 0.2]
    train, valid = build_datasets(cfg(tmp_path, [f"{x} {p}" for x, p in zip(w, prefixes)]), tok, num_samples=(3000, 40))
    assert isinstance(train, BlendedSamples) and len(train) == 3000
    for d, x in zip(train.datasets, w):  # each prefix built as many epochs as its share needs
        assert len(d) >= x * 3000 and len(d.document_index) >= 2 * len(d.indices)
    for k in (10, 100, 3000):  # greedy blend: within one sample of w_i * k at every k
        counts = np.bincount(train.dataset_index[:k], minlength=3)
        assert np.all(np.abs(counts - np.array(w) * k) <= 1), (k, counts)
    assert train[2999]["tokens"].shape == (512,)
    # validation is drawn per prefix (each prefix's last 20% of documents), blended by the same weights
    assert isinstance(valid, BlendedSamples) and len(valid) == 40
    tr_docs = {(j, int(d)) for j, ds in enumerate(train.datasets) for d in ds.indices}
    va_docs = {(j, int(d)) for j, ds in enumerate(valid.datasets) for d in ds.indices}
    assert va_docs and not tr_docs & va_docs
    again, _ = build_datasets(cfg(tmp_path, [f"{x} {p}" for x, p in zip(w, prefixes)]), tok, num_samples=(3000, 40))
    assert np.array_equal(again.dataset_index, train.dataset_index)
    assert all(np.array_equal(again[i]["tokens"], train[i]["tokens"]) for i in (0, 1234, 2999))


def test_unweighted_blend_gives_every_sample_asked_for(tmp_path, tok, prefixes):
    """Was: one epoch of each prefix and no more (912 of 10,000 samples on this corpus)."""
    train, _ = build_datasets(cfg(tmp_path, prefixes), tok, num_samples=(10_000, 0))
    assert len(train) == 10_000
    tokens = [float(d.dataset.sequence_lengths[d.indices].sum()) for d in train.datasets]
    share = np.bincount(train.dataset_index, minlength=3) / 10_000
    assert np.allclose(share, np.array(tokens) / sum(tokens), atol=1e-3)  # by tokens: like one corpus
    # data.num_epochs: exactly that many epochs of every prefix, each sample once
    ep, _ = build_datasets(cfg(tmp_path, prefixes, "data.num_epochs=2"), tok, num_samples=(1, 0))
    assert len(ep) == sum(len(d) for d in ep.datasets)
    pairs = {ep.source(i) for i in range(len(ep))}
    assert len(pairs) == len(ep)


def test_blend_file_and_errors(tmp_path, tok, prefixes):
    blend = tmp_path / "mix.txt"
    blend.write_text("# three shards\n" + "".join(f"{w} {p}\n" for w, p in zip((5, 3, 2), prefixes)))
    paths, weights = parse_blend([f"@{blend}"], "data.data_path")
    assert paths == prefixes and weights == [5, 3, 2]
    rel = Path(prefixes[0]).parent / "rel.txt"
    rel.write_text("a\nb  # comment\n\nc\n")
    assert parse_blend([f"@{rel}"], "x") == (prefixes, None)
    train, _ = build_datasets(cfg(tmp_path, [f"@{blend}"]), tok, num_samples=(100, 0))
    assert list(np.bincount(train.dataset_index)) == [50, 30, 20]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"0.5 {prefixes[0]}\n{prefixes[1]}\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: give a weight on every line"):
        parse_blend([f"@{bad}"], "data.data_path")
    bad.write_text(f"-1 {prefixes[0]}\n")
    with pytest.raises(ConfigError, match=r"bad.txt:1: weight '-1' must be a positive number"):
        parse_blend([f"@{bad}"], "data.data_path")
    with pytest.raises(ConfigError, match="blend file .*missing.txt does not exist"):
        parse_blend([f"@{tmp_path / 'missing.txt'}"], "data.data_path")


def test_sft_weighted_blend_runs_past_one_epoch(tmp_path, tok):
    src = [FIX / "corpus/sft_general.jsonl", FIX / "corpus/sft_long.jsonl"]
    paths = [f"0.8 {src[0]}", f"0.2 {src[1]}"]
    c = load_config(None, [f"data.data_path={paths}", f"data.cache_dir={tmp_path}", "data.kind=sft",
                           "data.seq_length=2048", "data.global_batch_tokens=8192", "data.split=90,10,0",
                           f"data.tokenizer_model={TOK}"])
    train, valid = build_datasets(c, tok, num_samples=(400, 4))
    assert len(train) >= 400 and train.num_epochs > 1
    convs = train.members[: train.pack_offsets[400]]
    share = np.bincount(convs[:, 0], minlength=2) / len(convs)
    assert abs(share[0] - 0.8) < 0.02, share
    assert valid is not None and {j for j, _ in valid.members} == {0, 1}  # both prefixes give validation rows
