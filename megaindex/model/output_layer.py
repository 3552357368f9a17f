"""The LM head: Norm-Head (Index-1.9B, from Baichuan 2) and masking of padded vocabulary columns.

Norm-Head: logits = h . normalize(W, dim=-1)^T. Each vocabulary row is L2-normalised on the fly in
every forward, so gradients flow through the normalisation (d/dW of W/|W|). The output layer is
split along the vocabulary under TP, so every row lives whole on one rank and the norm needs no
communication.

Padded vocabulary (Megatron pads to a multiple of 128*TP): padded rows are multiplied by zero before
use, so their gradient is exactly zero and they stay zero forever (also with Adam and weight decay);
their logits are set to -inf (in place, see _FillPaddedColumns), so softmax, cross-entropy and argmax
see exactly the unpadded model and the loss equals the HF model's. Without this the padded columns (logit 0) would enter the partition
function.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear

from megaindex.trace_ranges import annotate

NORM_EPS = 1e-6  # clamps |W_row|; a zero row normalises to zero (padding stays zero)


def normalize_rows(weight: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """W / max(|W_row|, eps), with the norm computed in fp32 whatever the weight dtype. Profiler traces
    show it as a `megaindex.norm_head` range (its backward kernels are found through it too)."""
    with annotate("norm_head"):
        norm = torch.linalg.vector_norm(weight, dim=-1, keepdim=True, dtype=torch.float32)
        return weight * (1.0 / norm.clamp_min(eps)).to(weight.dtype)


class IndexOutputLayer(ColumnParallelLinear):
    """Vocab-parallel LM head with optional Norm-Head and padded-column masking.

    Built by megatron's GPTModel as a ColumnParallelLinear and given this class afterwards by
    `configure_output_layer` (GPTModel constructs its head inline; this keeps its parameters,
    sharding metadata and checkpoint keys exactly megatron's).
    """

    norm_head: bool
    vocab_size: int  # unpadded

    def _local_vocab_range(self, width: int) -> tuple[int, int]:
        if width == self.output_size_per_partition and self.tp_group.size() > 1:
            start = self.tp_group.rank() * self.output_size_per_partition
        else:
            start = 0
        return start, start + width

    def _row_mask(self, weight: torch.Tensor) -> torch.Tensor | None:
        start, end = self._local_vocab_range(weight.shape[0])
        if end <= self.vocab_size:
            return None
        keep = torch.arange(start, end, device=weight.device) < self.vocab_size
        return keep.to(weight.dtype).unsqueeze(-1)

    def forward(self, input_: torch.Tensor, weight: torch.Tensor | None = None, runtime_gather_output: bool | None = None):
        w = self.weight if weight is None else weight
        if self.norm_head:
            w = normalize_rows(w)
        keep = self._row_mask(w)
        if keep is not None:
            w = w * keep
        logits, bias = super().forward(input_, weight=w, runtime_gather_output=runtime_gather_output)
        start, end = self._local_vocab_range(logits.shape[-1])
        if end > self.vocab_size:
            pad = torch.arange(start, end, device=logits.device) >= self.vocab_size
            logits = _FillPaddedColumns.apply(logits, pad)
        return logits, bias


class _FillPaddedColumns(torch.autograd.Function):
    """logits[..., pad] = -inf in place, gradient passed through unchanged: no second logits-sized
    tensor in forward or backward (with model.cross_entropy_fusion=te the logits are the head's only
    large tensor, lm_loss.py). Exact: the padded columns come from zeroed weight rows (`w * keep`), so
    any gradient reaching them is multiplied by zero on its way to the hidden states and to the weight
    (a softmax-based loss gives them exactly 0 anyway: exp(-inf) = 0). The matmul that produced the
    logits does not keep its output for backward, so writing over it is safe."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(logits)
        return logits.masked_fill_(pad, float("-inf"))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def configure_output_layer(layer: ColumnParallelLinear, *, norm_head: bool, vocab_size: int) -> IndexOutputLayer:
    """Give megatron's output ColumnParallelLinear the Index head behaviour (in place)."""
    layer.__class__ = IndexOutputLayer
    layer.norm_head = norm_head
    layer.vocab_size = vocab_size
    # A normalised weight is a non-leaf tensor: fused wgrad accumulation into `weight.main_grad`
    # must not be used for it; autograd routes the gradient through the normalisation instead.
    layer.gradient_accumulation_fusion = False
    return layer
