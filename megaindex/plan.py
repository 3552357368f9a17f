"""The analytic model of a layout: parameter counts, model FLOPs and the per-GPU memory estimate.

Pure arithmetic on a Config: no torch, no process groups, no backend, so it runs anywhere, also
inside a TP/PP training process (the trainer's TFLOP/s, the benchmarks, `megaindex info`,
`megaindex plan`). tests/test_plan.py checks the counts against the real GPTModel built on the
meta device for several presets and layouts.

Parameters, as megatron builds them: per layer the QKV (h x (h + 2 kv)), output (h x h), fc1
(2F x h, SwiGLU) and fc2 (h x F) matrices and two RMSNorm weights; a final norm; the embedding
and, untied, the LM head, each padded vocabulary x h (the vocabulary padded to 128 x TP). Per GPU:
matrices split over TP (norms replicated), layers over PP, embedding on the first stage and the head
on the last (tied embeddings: the last stage holds a copy of the embedding when PP > 1).

Model FLOPs per training step, counted the way papers do: per token 6 x (layer matrices + LM head
over the real vocabulary) for forward and backward; attention per layer and document of n tokens
6 * n^2 * h_attn (QK^T and AV, causal half, x3 for training), with documents from the batch's
cu_seqlens so packing with per-document attention is not credited with attention it never computes
(`step_flops`: Megatron-LM's causal convention, ours). NeMo's and torchtitan's published tables
count the full s x s score matrix of every row instead, 12 * s * h_attn per token and layer
(`step_flops_full_attention`): the same dense term, twice the attention of one causal document per
row. Recompute is not counted in either (model FLOPs, not hardware FLOPs).

Memory: the peak of torch's allocated memory on the most loaded pipeline stage, plus a runtime
allowance. Bytes per GPU, bf16 mixed precision as on the GPU node (fp32 if precision says so):
* static: weights 2/param, fp32 grad buffer 4/param (megatron accumulates grads in fp32), Adam
  state fp32 main weights + m + v = 12/param divided by DP x CP with the distributed optimizer
  (CP ranks hold the same weights, so megatron shards the optimizer over DP *with* CP);
* activations per layer and token, what the TE layers save for backward with fused attention (no
  s^2 term; Korthikanti et al. 2022 adapted to SwiGLU and GQA): both norm inputs and outputs 4h
  (split over TP with sequence parallel), q, k, v after RoPE and the attention output
  (h + 2*kv + h), fc1 output 2F and SwiGLU output F (split over TP), fp32 softmax statistics;
* pipeline: rank r of a 1F1B schedule holds min(PP - r, micro-batches) micro-batches of its
  layers; interleaved, megatron's warm-up count ((PP - r - 1) * 2 + (VPP - 1) * PP + 1 model chunks);
* full recompute keeps each layer's input; its peak is the larger of the head at the end of the
  forward and one layer rebuilt during backward (uniform: a group of `recompute_num_layers`);
  `recompute_method=block` recomputes the first `recompute_num_layers` layers of a stage and keeps
  every activation of the others;
* head (last stage, one micro-batch): bf16 logits and the fp32 copy megatron's vocab-parallel
  cross-entropy keeps as its softmax (6 bytes per logit; fp32 runs 8), or with
  `model.cross_entropy_fusion=te` (and `auto`, the default, unless `model.transformer_impl=local`:
  the plan is for a GPU node with TE) the logits alone, which TE's kernel overwrites with the gradient
  (2 bytes per logit, fp32 runs 4; model/lm_loss.py), the Norm-Head's normalised weight copies, the
  final norm's input and output;
* runtime: CUDA context, NCCL and cuDNN/cuBLAS workspaces outside torch's allocator, and the
  allocator's cache over the allocated peak (`expandable_segments`, the trainer's default).
Measured against this on the GPU node: benchmarks/memory_vs_estimate.py, benchmarks/RESULTS_train.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megaindex.config import Config, ModelConfig

GiB = 1024**3


# ---- parameters ---------------------------------------------------------------------------------
@dataclass
class ParamCounts:
    total: int
    non_embedding: int  # transformer-layer matrices: the "1.9B" of Index-1.9B
    norms: int
    embedding: int
    output: int
    per_gpu: int  # the largest pipeline stage's share on one GPU (TP-sharded)
    per_stage: list[int]  # each pipeline stage's share on one GPU


def layer_matrix_params(m: ModelConfig) -> int:
    """One transformer layer's matrices: QKV, attention output, SwiGLU fc1 (2F) and fc2 (F)."""
    h, f, kv = m.hidden_size, m.ffn_hidden_size, m.kv_heads * m.head_dim
    return h * (h + 2 * kv) + h * h + 3 * h * f


def stage_parameters(cfg: Config, pipeline_rank: int) -> int:
    """Parameters one GPU of pipeline stage `pipeline_rank` holds (TP-sharded; norms replicated)."""
    m, p = cfg.model, cfg.parallel
    tp, pp, h = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, m.hidden_size
    vocab_rows = cfg.padded_vocab_size // tp
    n = m.num_layers // pp * (layer_matrix_params(m) // tp + 2 * h)
    if pipeline_rank == 0:
        n += vocab_rows * h
    if pipeline_rank == pp - 1:
        n += h  # final norm
        if m.untie_embeddings_and_output_weights or pp > 1:
            n += vocab_rows * h  # the head (tied and PP > 1: the last stage's copy of the embedding)
    return n


def parameter_counts(cfg: Config) -> ParamCounts:
    """The model's parameters by kind (each counted once) and each pipeline stage's share per GPU."""
    m, h = cfg.model, cfg.model.hidden_size
    embedding = cfg.padded_vocab_size * h
    counts = dict(
        non_embedding=m.num_layers * layer_matrix_params(m),
        norms=(2 * m.num_layers + 1) * h,
        embedding=embedding,
        output=embedding if m.untie_embeddings_and_output_weights else 0,
    )
    per_stage = [stage_parameters(cfg, r) for r in range(cfg.parallel.pipeline_model_parallel_size)]
    return ParamCounts(total=sum(counts.values()), **counts, per_gpu=max(per_stage), per_stage=per_stage)


# ---- FLOPs --------------------------------------------------------------------------------------
def dense_params(cfg: Config) -> int:
    """Matmul parameters every token goes through: layer matrices + the LM head (real vocabulary)."""
    m = cfg.model
    return m.num_layers * layer_matrix_params(m) + m.hidden_size * m.vocab_size


def attention_flops(cfg: Config, doc_lengths_sq_sum: int) -> float:
    """Causal attention (QK^T and AV) forward + backward over documents with sum(n_i^2) given."""
    m = cfg.model
    return 6.0 * m.num_layers * m.num_attention_heads * m.head_dim * doc_lengths_sq_sum


def step_flops(cfg: Config, tokens: int, doc_lengths_sq_sum: int) -> float:
    """Training FLOPs for `tokens` tokens whose documents have sum(n_i^2) = doc_lengths_sq_sum."""
    return 6.0 * dense_params(cfg) * tokens + attention_flops(cfg, doc_lengths_sq_sum)


def step_flops_full_attention(cfg: Config, tokens: int, seq_length: int) -> float:
    """Training FLOPs as NeMo's and torchtitan's tables count them: the dense term plus the full
    (not causal) s x s attention of every row of `seq_length`, whatever the documents:
    6 x dense + 12 x layers x h_attn x seq_length per token."""
    m = cfg.model
    attention = 12.0 * m.num_layers * m.num_attention_heads * m.head_dim * seq_length * tokens
    return 6.0 * dense_params(cfg) * tokens + attention


# ---- memory -------------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int  # the LM head's peak: logits, cross-entropy softmax, Norm-Head weight copies
    overhead: int  # outside torch's allocated peak: CUDA context, NCCL, workspaces, allocator cache
    per_layer_activation: int
    micro_batches_in_flight: float  # in units of this stage's layers
    pipeline_rank: int  # the stage whose peak this is (the most loaded one)
    note: str

    @property
    def peak_allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() should report on that stage."""
        return self.weights + self.grads + self.optimizer + self.activations + self.logits

    @property
    def total(self) -> int:
        return self.peak_allocated + self.overhead

    def as_gib(self) -> dict[str, float]:
        d = {k: round(v / GiB, 2) for k, v in dataclasses.asdict(self).items()
             if isinstance(v, int) and k not in ("micro_batches_in_flight", "pipeline_rank")}
        d["peak_allocated"] = round(self.peak_allocated / GiB, 2)
        d["total"] = round(self.total / GiB, 2)
        return d


def activation_bytes_per_layer(cfg: Config, tokens: int, bytes_per_value: int) -> int:
    """Activations one layer keeps for backward for `tokens` tokens on this CP rank."""
    m, p = cfg.model, cfg.parallel
    tp = p.tensor_model_parallel_size
    sp = p.sequence_parallel and tp > 1
    h, f, kv = m.hidden_size, m.ffn_hidden_size, m.kv_heads * m.head_dim
    replicated = 4 * h / (tp if sp else 1)
    sharded = (h + 2 * kv + h + 2 * f + f) / tp
    softmax_stats = 4 * (m.num_attention_heads / tp) / bytes_per_value  # fp32 LSE per head
    return int(tokens * bytes_per_value * (replicated + sharded + softmax_stats))


def micro_batches_in_flight(cfg: Config, world_size: int, pipeline_rank: int) -> float:
    """Micro-batches of this stage's layers whose activations are alive at once, in units of the
    stage's layers: megatron's 1F1B warm-up count + 1; interleaved, its warm-up count of model
    chunks + 1, each chunk 1/VPP of the stage."""
    p = cfg.parallel
    pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    nmb = max(cfg.num_microbatches(world_size), 1)
    if pp == 1:
        return 1.0
    if not vpp:
        return float(min(pp - pipeline_rank - 1, nmb - 1) + 1)
    chunks = min((pp - pipeline_rank - 1) * 2 + (vpp - 1) * pp, nmb * vpp - 1) + 1
    return chunks / vpp


# Calibrated on H200s at 32K (benchmarks/RESULTS_train.md, 8 layouts on 1-4 GPUs):
RUNTIME_FIXED_BYTES = int(3.5 * GiB)  # outside torch's allocator: CUDA context, NCCL, cuBLAS/cuDNN/TE workspaces (2.8-4.5 measured)
ALLOCATOR_CACHE_FRACTION = 0.10  # peak reserved over peak allocated with expandable segments (1-15% measured)


def memory_estimate(cfg: Config, counts: ParamCounts, world_size: int) -> MemoryEstimate:
    """The per-GPU peak on the most loaded pipeline stage (see the module docstring)."""
    stages = [_stage_estimate(cfg, counts, world_size, r) for r in range(cfg.parallel.pipeline_model_parallel_size)]
    return max(stages, key=lambda e: e.total)


def _stage_estimate(cfg: Config, counts: ParamCounts, world_size: int, rank: int) -> MemoryEstimate:
    m, p, d, t = cfg.model, cfg.parallel, cfg.data, cfg.train
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    dp = max(cfg.data_parallel_size(world_size), 1)
    fp32 = t.precision == "fp32"
    act_bytes = 4 if fp32 else 2
    sp = p.sequence_parallel and tp > 1
    last = rank == pp - 1
    P = counts.per_stage[rank]

    weights = P * (4 if fp32 else 2)
    grads = P * 4
    opt_state = P * (8 if fp32 else 12)
    optimizer = opt_state // (dp * cp) if p.use_distributed_optimizer else opt_state

    tokens = d.micro_batch_size * d.seq_length // cp
    per_layer = activation_bytes_per_layer(cfg, tokens, act_bytes)
    layers_here = m.num_layers // pp
    in_flight = micro_batches_in_flight(cfg, world_size, rank)

    head = 0
    if last:
        vocab_local = cfg.padded_vocab_size // tp
        te_loss = m.cross_entropy_kernel(use_te=m.transformer_impl != "local") == "te"  # the GPU node runs TE
        per_logit = (4 if fp32 else 2) if te_loss else (8 if fp32 else 6)
        head += tokens * vocab_local * per_logit  # logits (+ the fp32 softmax megatron's cross-entropy keeps)
        head += 2 * tokens * m.hidden_size * act_bytes // (tp if sp else 1)  # final norm input and output
        if m.norm_head:
            head += 2 * (counts.output // tp) * act_bytes  # normalised and padding-masked weight copies

    if t.recompute_granularity == "full":
        layer_input = tokens * act_bytes * m.hidden_size // (tp if sp else 1)
        if t.recompute_method == "uniform":
            groups, recomputed = min(t.recompute_num_layers, layers_here), layers_here
        else:  # block: the first recompute_num_layers layers, one at a time; the rest keep everything
            groups, recomputed = 1, min(t.recompute_num_layers, layers_here)
        kept = int((recomputed * layer_input + (layers_here - recomputed) * per_layer) * in_flight)
        rebuilt = per_layer * groups  # one group of layers rebuilt during backward (the head is gone by then)
        activations = kept + max(rebuilt - head, 0)
        note = (f"full recompute: layer inputs kept, {groups} layer(s) rebuilt at a time" if recomputed == layers_here
                else f"block recompute: {recomputed} of {layers_here} layers recomputed, the others keep their activations")
    else:
        activations = int(per_layer * layers_here * in_flight)
        note = ("no recompute" if t.recompute_granularity is None
                else "selective recompute (core attention): ~no saving with fused attention")
    if pp > 1:
        note += f"; pipeline stage {rank} of {pp} peaks"

    allocated = weights + grads + optimizer + activations + head
    return MemoryEstimate(
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        logits=head,
        overhead=RUNTIME_FIXED_BYTES + int(ALLOCATOR_CACHE_FRACTION * allocated),
        per_layer_activation=per_layer,
        micro_batches_in_flight=in_flight,
        pipeline_rank=rank,
        note=note,
    )
