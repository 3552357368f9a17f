"""The data schedule's context-length warmup phases, and the statistics the loss logs carry."""

from __future__ import annotations

import torch

from megaindex.config import load_config


def test_warmup_phases_by_step():
    from megaindex.data.schedule import Phase, phase_at

    cfg = load_config(None, ["model.preset=tiny", "data.seq_length=256", "data.global_batch_tokens=2048",
                             "data.context_length_warmup=[[10, 64], [20, 128]]"])
    assert [phase_at(cfg, s) for s in (0, 9, 10, 19, 20, 500)] == [
        Phase(64, 0, 10), Phase(64, 0, 10), Phase(128, 10, 20), Phase(128, 10, 20), Phase(256, 20, None), Phase(256, 20, None)]
    cfg.data.context_length_warmup = []
    assert phase_at(cfg, 0) == Phase(256, 0, None)


def test_document_statistics_travel_in_the_loss_logs():
    from megaindex.training.loss import DOC_SQ_KEY, LOSS_KEY, REAL_TOKENS_KEY, document_stats, loss_func

    batch = {"cu_seqlens_padded": torch.tensor([0, 4, 10, 16], dtype=torch.int32),
             "cu_seqlens": torch.tensor([0, 3, 9, 14], dtype=torch.int32)}
    stats = document_stats(batch, cp_rank=0)
    # attention runs over the real lengths (3, 6, 5), not the padded spans (4, 6, 6)
    assert int(stats[DOC_SQ_KEY]) == 9 + 36 + 25 and int(stats[REAL_TOKENS_KEY]) == 14
    # an SFT row: a 10-token conversation, the rest of the 64-token row folded into its padding
    sft_row = {"cu_seqlens_padded": torch.tensor([0, 64], dtype=torch.int32), "cu_seqlens": torch.tensor([0, 10], dtype=torch.int32)}
    assert int(document_stats(sft_row, cp_rank=0)[DOC_SQ_KEY]) == 100
    # the other CP ranks hold slices of the same documents
    assert [int(v) for v in document_stats(batch, cp_rank=1).values()] == [0, 0]
    per_token = torch.tensor([1.0, 2.0, float("nan"), 4.0])
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0])
    loss, count, logs = loss_func(weight, torch.tensor(3), stats, per_token)
    assert float(loss) == 7.0 and logs[LOSS_KEY].tolist() == [7.0, 3.0] and int(logs[DOC_SQ_KEY]) == 70
