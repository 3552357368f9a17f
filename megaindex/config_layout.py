"""The cross-section check of a config: does the model, and do the data settings, fit the parallel
layout on N GPUs (Config.validate runs it once every section has checked itself).

Owns the divisibility rules megatron-core's TP/PP/VPP/CP/DP layout imposes: heads and FFN width by
TP, layers by PP x VPP, heads by the all-to-all CP group, sequence length by 2 x CP (and by TP under
sequence parallelism), the global batch by micro-batch x DP, micro-batches by PP when interleaved,
and the context-length warmup phases; and what a full-iteration CUDA graph needs from the rest of
the config (`cuda_graph_errors`). Each message names the fields and what to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megaindex.config import Config, ModelConfig, ParallelConfig


def model_layout_errors(m: ModelConfig, p: ParallelConfig) -> list[str]:
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    errors = []
    if m.num_attention_heads % tp:
        errors.append(
            f"model.num_attention_heads {m.num_attention_heads} is not divisible by "
            f"parallel.tensor_model_parallel_size {tp}: each TP rank must hold whole heads."
        )
    if m.kv_heads % tp:
        errors.append(f"model.num_query_groups {m.kv_heads} is not divisible by parallel.tensor_model_parallel_size {tp}.")
    stages = pp * (vpp or 1)
    if m.num_layers % stages:
        what = f"PP x VPP = {pp} x {vpp}" if vpp else f"PP = {pp}"
        errors.append(
            f"model.num_layers {m.num_layers} is not divisible by {what} = {stages}: "
            f"every pipeline stage needs the same number of layers."
        )
    if m.ffn_hidden_size % tp:
        errors.append(f"model.ffn_hidden_size {m.ffn_hidden_size} is not divisible by TP {tp}.")
    a2a = p.a2a_size
    if a2a > 1:
        for what, heads in (("num_attention_heads", m.num_attention_heads), ("num_query_groups", m.kv_heads)):
            if heads % tp == 0 and (heads // tp) % a2a:
                errors.append(
                    f"parallel.cp_comm_type {p.cp_comm_type}: model.{what} {heads} / TP {tp} is not divisible by the "
                    f"all-to-all group size {a2a} (a2a splits each rank's heads over it); use cp_comm_type p2p."
                )
    return errors


def data_layout_errors(cfg: Config, world_size: int) -> list[str]:
    m, p, d = cfg.model, cfg.parallel, cfg.data
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    errors = []
    mp = tp * pp * cp
    if world_size % mp:
        errors.append(
            f"world size {world_size} is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {mp}: "
            f"TP x PP x CP x DP must equal the number of GPUs; use a multiple of {mp} GPUs or change the layout."
        )
    dp = max(world_size // mp, 1)
    if cp > 1 and d.seq_length % (2 * cp):
        errors.append(
            f"data.seq_length {d.seq_length} is not divisible by 2 x context_parallel_size = {2 * cp}: "
            f"CP cuts every sequence into 2 x CP chunks for load balance."
        )
    if p.sequence_parallel and tp > 1 and (d.seq_length // cp) % tp:
        errors.append(
            f"data.seq_length {d.seq_length} / CP {cp} is not divisible by TP {tp}: sequence parallel "
            f"splits each CP rank's tokens over the TP ranks."
        )
    if d.seq_length > m.max_position_embeddings:
        errors.append(f"data.seq_length {d.seq_length} exceeds model.max_position_embeddings {m.max_position_embeddings}.")
    gbs = d.global_batch_size
    if gbs % (d.micro_batch_size * dp):
        errors.append(
            f"global batch of {gbs} sequences (data.global_batch_tokens {d.global_batch_tokens} / seq_length "
            f"{d.seq_length}) is not divisible by micro_batch_size x DP = {d.micro_batch_size} x {dp} = "
            f"{d.micro_batch_size * dp}; change global_batch_tokens, micro_batch_size or the GPU count."
        )
    if p.virtual_pipeline_model_parallel_size and not errors:
        nmb = gbs // (d.micro_batch_size * dp)
        if nmb % pp:
            errors.append(f"interleaved pipeline needs the number of micro-batches ({nmb}) to be a multiple of PP {pp}.")
    prev_until = 0
    for entry in d.context_length_warmup:
        if not (isinstance(entry, list) and len(entry) == 2):
            errors.append(f"data.context_length_warmup entry {entry!r} must be [until_step, seq_length].")
            continue
        until, length = entry
        if until <= prev_until:
            errors.append(f"data.context_length_warmup: until_step {until} must be larger than the previous ({prev_until}).")
        if length <= 0 or d.seq_length % length or length % (2 * cp):
            errors.append(
                f"data.context_length_warmup: seq_length {length} must divide data.seq_length {d.seq_length} "
                f"(micro-batches keep their token count) and be a multiple of 2 x CP = {2 * cp}."
            )
        prev_until = until
    if d.static_thd_shapes and not cfg.rows_as_thd and cfg.train.cuda_graph_impl == "none":  # graphs: cuda_graph_errors says it
        errors.append("data.static_thd_shapes pads THD metadata (cu_seqlens, max_seqlen), but these rows go in as sbhd "
                      "(data.row_layout, train.fp8_dot_product_attention), which has none: set data.static_thd_shapes=false.")
    return errors


def cuda_graph_errors(cfg: Config) -> list[str]:
    """Why `train.cuda_graph_impl=full_iteration` cannot capture this config (training/cuda_graph.py)."""
    if cfg.train.cuda_graph_impl == "none":
        return []
    m, p, d, t = cfg.model, cfg.parallel, cfg.data, cfg.train
    what = "train.cuda_graph_impl=full_iteration"
    errors = []
    if not d.static_thd_shapes:
        errors.append(f"{what} replays one set of tensor shapes: set data.static_thd_shapes=true "
                      f"(run-constant cu_seqlens length and max_seqlen).")
    if m.transformer_impl == "local":
        errors.append(f"{what} needs Transformer Engine's THD attention: set model.transformer_impl=auto or transformer_engine.")
    layout = {"tensor_model_parallel_size": p.tensor_model_parallel_size,
              "pipeline_model_parallel_size": p.pipeline_model_parallel_size,
              "context_parallel_size": p.context_parallel_size}
    split = [f"parallel.{k}={v}" for k, v in layout.items() if v > 1]
    if split:
        errors.append(f"{what} captures one whole model replica per GPU (data parallelism only), not "
                      f"{', '.join(split)}; use train.cuda_graph_impl=none for this layout.")
    if p.overlap_grad_reduce or p.overlap_param_gather:
        errors.append(f"{what} captures the gradient all-reduce at the end of the step: set "
                      f"parallel.overlap_grad_reduce=false and parallel.overlap_param_gather=false.")
    if not cfg.rows_as_thd:
        errors.append(f"{what} replays THD rows (static shapes); data.row_layout=sbhd is not captured: leave it auto.")
    if d.context_length_warmup:
        errors.append(f"{what} replays one row length: data.context_length_warmup changes it between phases; "
                      f"leave it empty or use train.cuda_graph_impl=none.")
    if t.fp8:
        errors.append(f"{what} with train.fp8: TE updates its FP8 scaling state in Python around each step, "
                      f"which a replay skips; use train.cuda_graph_impl=none for FP8.")
    if t.recompute_granularity:
        errors.append(f"{what} with train.recompute_granularity={t.recompute_granularity}: megatron's recompute is not "
                      f"capturable here (it saves and restores the CUDA RNG state, and the attention recompute reads a "
                      f"tensor on the host: megatron/core/transformer/attention.py, AttnMaskType(attn_mask_type.item())); "
                      f"graphs are for models small enough to need no recompute.")
    return errors
