"""The upstream workarounds in megaindex/upstream.py are written for the pinned versions."""

from __future__ import annotations

import importlib.metadata

from megaindex.upstream import PINNED


def test_installed_versions_are_the_pinned_ones():
    # A new megatron-core must be checked against every entry of megaindex/upstream.py first.
    for package, version in PINNED.items():
        assert importlib.metadata.version(package) == version, f"{package}: re-check megaindex/upstream.py, then move PINNED"


def test_setup_py_pins_the_same_versions():
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    for package, version in PINNED.items():
        assert f'"{package}=={version}"' in setup


def test_a_synchronous_save_starts_no_manager_process(tmp_path, monkeypatch, single_process_megatron):
    """upstream.py 7: megatron's sync save would spawn a Manager server (~2 s per process, torch
    imported to unpickle the write results); megaindex's goes through an in-process queue, and
    megatron's own queue (None here: no save yet) is left as it was for the async saves."""
    import multiprocessing.context

    import torch
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megaindex.checkpoint import load_model, save_model
    from megaindex.config_load import load_config
    from megaindex.model.build import build_model_chunks

    def no_manager(self, *a, **k):
        raise AssertionError("a synchronous save started a multiprocessing Manager")

    monkeypatch.setattr(filesystem_async, "_results_queue", None)  # as in a fresh process
    monkeypatch.setattr(multiprocessing.context.BaseContext, "Manager", no_manager)
    cfg = load_config(None, ["model.preset=tiny", "model.num_layers=1", "model.hidden_size=64", "model.ffn_hidden_size=128",
                             "model.num_attention_heads=2", "model.num_query_groups=2", "train.precision=fp32",
                             "data.seq_length=32", "data.global_batch_tokens=32",
                             "data.tokenizer_model=tests/fixtures/tokenizer.model"])
    torch.manual_seed(0)
    chunks = build_model_chunks(cfg)
    path = save_model(chunks, tmp_path / "ckpt", cfg)
    assert filesystem_async._results_queue is None
    want = {k: v.clone() for k, v in chunks[0].state_dict().items() if isinstance(v, torch.Tensor)}
    torch.manual_seed(1)
    loaded = build_model_chunks(cfg)
    load_model(loaded, path, cfg)
    got = loaded[0].state_dict()
    assert all(torch.equal(v, got[k]) for k, v in want.items())  # the write results were all collected


def test_the_partition_merge_collects_with_the_old_objects_frozen(tmp_path, monkeypatch):
    """upstream.py 8: megatron's add_index runs gc.collect() per partition (~0.2 s each with torch
    loaded, 16 partitions by default); the merge freezes what existed before it, then unfreezes."""
    import gc
    from pathlib import Path

    from megatron.core.datasets import indexed_dataset

    from megaindex.data.preprocess import preprocess

    fixtures = Path(__file__).parent / "fixtures"
    frozen: list[int] = []
    collect = gc.collect
    monkeypatch.setattr(indexed_dataset.gc, "collect", lambda *a: frozen.append(gc.get_freeze_count()) or collect(*a))
    before = gc.get_freeze_count()
    st = preprocess([fixtures / "corpus/pretrain.jsonl"], tmp_path / "merged", fixtures / "tokenizer.model", workers=1,
                    partitions=3, progress=False)
    assert st.partitions == 3 and len(frozen) == 3 and all(n > before for n in frozen), frozen
    assert gc.get_freeze_count() < min(frozen)  # unfrozen after the merge
