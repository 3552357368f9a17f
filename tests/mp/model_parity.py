"""Two gloo processes: TP=2 (sequence parallel) and CP=2 (reference attention, THD-packed and
unpacked) against the TP=1/CP=1 run, in loss and in every gradient; and at TP=2 the fused
cross-entropy kernels (model.cross_entropy_fusion: native, and te on GPU) against the unfused one on
the same weights. Run by tests/test_parallel.py.

Weights move between layouts through megaindex checkpoints (megatron dist_checkpointing), and the
TP=2 gradients come back to full shape the same way, so the comparison also exercises resharding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.packed_seq_params import PackedSeqParams

from megaindex import checkpoint, distributed
from megaindex.config import load_config
from megaindex.cp_layout import cp_chunk_positions, thd_partition_indices
from megaindex.model.build import build_model

SEQ = 128
DOCS = [37, 59, 28]  # real lengths; padded to multiples of 2*CP = 4 -> 40, 60, 28


def device() -> torch.device:  # after init_distributed has picked this rank's GPU
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def config(tp: int = 1, cp: int = 1, fusion: str = "none"):
    return load_config(None, [
        "model.preset=tiny", f"data.seq_length={SEQ}", f"data.global_batch_tokens={2 * SEQ}",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.context_parallel_size={cp}",
        "parallel.sequence_parallel=true", "train.seed=1234", f"model.cross_entropy_fusion={fusion}",
    ])


def make_batch():
    gen = torch.Generator().manual_seed(11)
    tokens, labels, mask, cu, cu_pad = [], [], [], [0], [0]
    for n in DOCS:
        padded = -(-n // 4) * 4
        doc = torch.randint(5, 8000, (n,), generator=gen)
        tokens.append(torch.cat([doc, torch.full((padded - n,), 2)]))
        labels.append(torch.cat([doc[1:], torch.full((padded - n + 1,), 2)]))
        mask.append(torch.cat([torch.ones(n - 1), torch.zeros(padded - n + 1)]))
        cu.append(cu[-1] + n)
        cu_pad.append(cu_pad[-1] + padded)
    return tuple(t.to(device()) for t in (torch.cat(tokens), torch.cat(labels), torch.cat(mask),
                                      torch.tensor(cu, dtype=torch.int32), torch.tensor(cu_pad, dtype=torch.int32)))


def loss_and_backward(model, packed: bool, cp: int):
    """Summed token loss / global token count on this rank's slice, backward; returns global loss."""
    tokens, labels, mask, cu, cu_pad = make_batch()
    rank = ps.get_context_parallel_rank()
    if packed:
        idx = thd_partition_indices(cu_pad, cp, rank)
        psp = PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu_pad,
            cu_seqlens_kv_padded=cu_pad, max_seqlen_q=int((cu_pad[1:] - cu_pad[:-1]).max()),
            max_seqlen_kv=int((cu_pad[1:] - cu_pad[:-1]).max()),
        )
        pos = None
    else:  # one causal sequence over the whole row
        labels = torch.cat([tokens[1:], tokens[:1]])
        mask = torch.ones(SEQ, device=device())
        mask[-1] = 0
        idx = cp_chunk_positions(SEQ, cp, rank)
        psp, pos = None, idx[None].to(device())
    idx = idx.to(device())
    per_token = model(tokens[idx][None], pos, attention_mask=None, labels=labels[idx][None], packed_seq_params=psp)
    loss = (per_token[0].float() * mask[idx]).sum() / mask.sum()
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total, group=ps.get_context_parallel_group())
    return total.item()


def reduce_grads(model):
    """What finalize_model_grads does for these layouts: sum over CP, sum SP-norm grads over TP."""
    for p in model.parameters():
        if ps.get_context_parallel_world_size() > 1:
            dist.all_reduce(p.grad, group=ps.get_context_parallel_group())
        if getattr(p, "sequence_parallel", False) and ps.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(p.grad, group=ps.get_tensor_model_parallel_group())


def grads_as_weights(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)


def build(cfg, load_from: Path | None = None):
    distributed.init_distributed(cfg)
    model = build_model(cfg)
    if load_from is not None:
        checkpoint.load_model([model], load_from, cfg)
    return model


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def max_rel_diff_all_ranks(a: dict, b: dict) -> float:
    """Largest |a - b| relative to each tensor's largest |a|, over every rank's shards."""
    rel = max(((a[k].float() - b[k].float()).abs().max() / a[k].float().abs().max()).item()
              for k in a if a[k].abs().max() > 0)
    t = torch.tensor([rel], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def fused_cross_entropy_cases(work: Path, tp_loss: float, tp_grads: dict) -> dict:
    """TP=2: each fused kernel against the unfused run on the same weights and packed batch."""
    out = {}
    for fusion in ("native", "te") if torch.cuda.is_available() else ("native",):
        model = build(config(tp=2, fusion=fusion), work / "ref")
        loss = loss_and_backward(model, True, 1)
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        out[f"tp2_fused_{fusion}"] = {"loss": loss, "ref_loss": tp_loss, "grad_max_rel_diff": max_rel_diff_all_ranks(tp_grads, grads)}
    return out


def main(out_path: str, work: str) -> None:
    work = Path(work)
    results = {}

    # Reference: TP=1, CP=1 (both ranks are DP replicas computing the same thing).
    cfg = config()
    ref_model = build(cfg)
    checkpoint.save_model([ref_model], work / "ref", cfg)
    ref = {}
    for packed in (True, False):
        ref_model.zero_grad()
        loss = loss_and_backward(ref_model, packed, 1)
        ref[packed] = (loss, {k: p.grad.clone() for k, p in ref_model.named_parameters()})

    # TP=2 with sequence parallel, packed THD.
    cfg = config(tp=2)
    model = build(cfg, work / "ref")
    tp_loss = loss_and_backward(model, True, 1)
    results.update(fused_cross_entropy_cases(work, tp_loss, {k: p.grad.clone() for k, p in model.named_parameters()}))
    reduce_grads(model)
    grads_as_weights(model)
    checkpoint.save_model([model], work / "tp2_grads", cfg)
    cfg = config()
    full = build(cfg, work / "tp2_grads")
    tp_grads = {k: p.detach().clone() for k, p in full.named_parameters()}
    results["tp2_sp_thd"] = {"loss": tp_loss, "ref_loss": ref[True][0], "grad_max_diff": max_diff(tp_grads, ref[True][1])}

    # CP=2 through the reference attention: packed THD and unpacked.
    cfg = config(cp=2)
    model = build(cfg, work / "ref")
    for packed in (True, False):
        model.zero_grad()
        loss = loss_and_backward(model, packed, 2)
        reduce_grads(model)
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        results[f"cp2_{'thd' if packed else 'sbhd'}"] = {
            "loss": loss, "ref_loss": ref[packed][0], "grad_max_diff": max_diff(grads, ref[packed][1]),
        }
    results["grad_scale"] = max(g.abs().max().item() for g in ref[True][1].values())

    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(results, indent=2))
    distributed.destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
