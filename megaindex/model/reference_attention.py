"""Reference core attention: packed THD sequences and context parallelism without Transformer Engine.

megatron's local `DotProductAttention` refuses both packed sequences and CP (they are TE-only), so on
a machine without TE every path that matters for the long-context recipe would be untestable. This
module is the drop-in `core_attention` for the local spec. It is an oracle, not a fast path:

* K and V are all-gathered over the CP group (megatron's autograd gather: reduce-scatter in
  backward), so every rank sees whole sequences;
* each local query and each gathered key gets (document id, position in document) from the
  (padded) cu_seqlens and the CP load-balancing layout — chunk r and 2*CP-1-r of every document
  live on CP rank r, the layout of Transformer Engine's `thd_get_partitioned_indices`;
* a boolean mask allows query q to see key k iff same document, pos_k <= pos_q, and k is not a
  padding token of its document; one torch SDPA call does the rest (GQA by repeating K/V heads).

The same module covers the unpacked [s, b, h, d] layout (one document per row).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megaindex.cp_layout import cp_chunk_positions


def _token_layout(cu_padded: list[int], cu_real: list[int], cp_size: int, cp_rank: int):
    """(doc, pos) of this rank's tokens in local order, and (doc, pos, is_real) of all tokens in
    gathered order (rank 0's local tokens, then rank 1's, ...: all_gather along dim 0)."""
    per_rank = []
    for r in range(cp_size):
        doc, pos, real = [], [], []
        for i in range(len(cu_padded) - 1):
            p = cp_chunk_positions(cu_padded[i + 1] - cu_padded[i], cp_size, r)
            doc.append(torch.full_like(p, i))
            pos.append(p)
            real.append(p < cu_real[i + 1] - cu_real[i])
        per_rank.append((torch.cat(doc), torch.cat(pos), torch.cat(real)))
    all_doc, all_pos, all_real = (torch.cat(t) for t in zip(*per_rank))
    return per_rank[cp_rank][0], per_rank[cp_rank][1], all_doc, all_pos, all_real


class ReferenceAttention(MegatronModule):
    """Core attention with megatron's interface; supports THD packing and CP on any device."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"ReferenceAttention implements causal self-attention only, got {attn_mask_type}")
        from megatron.core.process_groups_config import ProcessGroupCollection

        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        self.cp_group = pg_collection.cp
        tp = pg_collection.tp.size()
        self.heads = config.num_attention_heads // tp
        self.kv_heads = config.num_query_groups // tp
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _gather_kv(self, t: torch.Tensor) -> torch.Tensor:
        if self.cp_group.size() == 1:
            return t
        return gather_from_sequence_parallel_region(t, tensor_parallel_output_grad=True, group=self.cp_group)

    def _attend(self, q, k, v, mask):
        """q [n, tq, d], k/v [g, tk, d], mask [tq, tk] (True = attend) -> [tq, n*d]."""
        if self.heads != self.kv_heads:
            rep = self.heads // self.kv_heads
            k = k.repeat_interleave(rep, dim=0)
            v = v.repeat_interleave(rep, dim=0)
        p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.softmax_scale)
        return out.transpose(0, 1).reshape(q.shape[1], -1)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("ReferenceAttention does not take an attention bias")
        cp_size, cp_rank = self.cp_group.size(), self.cp_group.rank()
        key, value = self._gather_kv(key), self._gather_kv(value)

        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            # [t, heads, d]: one packed row.
            cu_real = packed_seq_params.cu_seqlens_q
            cu_pad = packed_seq_params.cu_seqlens_q_padded
            cu_pad = cu_real if cu_pad is None else cu_pad
            ld, lp, ad, ap, areal = _token_layout(cu_pad.tolist(), cu_real.tolist(), cp_size, cp_rank)
            mask = (ld[:, None] == ad[None, :]) & (lp[:, None] >= ap[None, :]) & areal[None, :]
            mask = mask.to(query.device)
            return self._attend(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), mask)

        # [s, b, heads, d]: every batch row is one causal sequence, CP-chunked like the packed case.
        s_local, b = query.shape[0], query.shape[1]
        s = s_local * cp_size
        lp = cp_chunk_positions(s, cp_size, cp_rank)
        ap = torch.cat([cp_chunk_positions(s, cp_size, r) for r in range(cp_size)])
        mask = (lp[:, None] >= ap[None, :]).to(query.device)
        outs = [
            self._attend(query[:, i].transpose(0, 1), key[:, i].transpose(0, 1), value[:, i].transpose(0, 1), mask)
            for i in range(b)
        ]
        return torch.stack(outs, dim=1)  # [s, b, heads*d]
