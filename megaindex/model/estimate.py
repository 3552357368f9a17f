"""Parameter counts and a per-GPU memory estimate for a recipe, without a GPU.

Parameter counts come from the real GPTModel built on the meta device (nothing allocated), so they
are exactly what megatron will build. Per-GPU counts and memory follow megatron's sharding:
matrices split over TP (norms replicated), layers over PP, embedding on the first stage and the head
on the last, optimizer state over DP x CP with the distributed optimizer (CP ranks hold the same
weights, so megatron shards the optimizer over the data-parallel group *with* context parallel).

The estimate is the peak of torch's allocated memory on the most loaded pipeline stage, plus a
runtime allowance. Bytes per GPU, bf16 mixed precision as on the GPU node (fp32 if precision says so):
* static: weights 2/param, fp32 grad buffer 4/param (megatron accumulates grads in fp32), Adam
  state fp32 main weights + m + v = 12/param divided by DP x CP with the distributed optimizer;
* activations per layer and token, what the TE layers save for backward with fused attention (no
  s^2 term; Korthikanti et al. 2022 adapted to SwiGLU and GQA): both norm inputs and outputs 4h
  (split over TP with sequence parallel), q, k, v after RoPE and the attention output
  (h + 2*kv + h), fc1 output 2F and SwiGLU output F (split over TP), fp32 softmax statistics;
* pipeline: rank r of a 1F1B schedule holds min(PP - r, micro-batches) micro-batches of its
  layers; interleaved, megatron's warm-up count ((PP - r - 1) * 2 + (VPP - 1) * PP + 1 model chunks);
* full recompute keeps each layer's input; its peak is the larger of the head at the end of the
  forward and one layer rebuilt during backward;
* head (last stage, one micro-batch): bf16 logits and the fp32 copy the vocab-parallel
  cross-entropy keeps as its softmax (6 bytes per logit; fp32 runs: logits plus one masked copy),
  the Norm-Head's normalised weight copies, the final norm's input and output;
* runtime: CUDA context, NCCL and cuDNN/cuBLAS workspaces outside torch's allocator, and the
  allocator's cache over the allocated peak (`expandable_segments`, the trainer's default).
Measured against this on the GPU node: benchmarks/RESULTS_train.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from megaindex.config import Config

GiB = 1024**3


@dataclass
class ParamCounts:
    total: int
    non_embedding: int  # transformer-layer matrices: the "1.9B" of Index-1.9B
    norms: int
    embedding: int
    output: int
    per_gpu: int  # the largest pipeline stage's share on one GPU (TP-sharded)
    per_stage: list[int]  # each pipeline stage's share on one GPU


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


def _classify(name: str) -> str:
    if name.startswith("embedding."):
        return "embedding"
    if name.startswith("output_layer."):
        return "output"
    if "norm" in name:  # input_layernorm, pre_mlp_layernorm, final_layernorm, TE's layer_norm_weight
        return "norms"
    return "non_embedding"


def count_parameters_meta(cfg: Config) -> dict[str, int]:
    """Build the whole model (TP=PP=1) on the meta device and count its parameters by kind."""
    from megaindex import cpu_backend, distributed
    from megaindex.model.build import build_model, to_transformer_config

    single = dataclasses.replace(
        cfg,
        parallel=dataclasses.replace(
            cfg.parallel,
            tensor_model_parallel_size=1,
            pipeline_model_parallel_size=1,
            virtual_pipeline_model_parallel_size=None,
            context_parallel_size=1,
        ),
    )
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size() > 1:
        raise RuntimeError(
            "parameter counts need a TP=PP=1 model, but this process already runs megatron with TP or PP > 1; "
            "count before initialising model parallelism, or in its own process (`megaindex info`)."
        )
    if not torch.cuda.is_available():
        cpu_backend.activate()
    distributed.init_single_process()
    tf = to_transformer_config(single, use_te=False)
    tf.use_cpu_initialization = True
    tf.perform_initialization = False
    with torch.device("meta"):
        model = build_model(single, use_te=False, tf_config=tf, pre_process=True, post_process=True)
    counts = {"embedding": 0, "output": 0, "norms": 0, "non_embedding": 0}
    for name, p in model.named_parameters():
        assert p.device.type == "meta", f"{name} was allocated"
        counts[_classify(name)] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def stage_parameters(cfg: Config, counts: dict[str, int], pipeline_rank: int) -> int:
    """Parameters one GPU of pipeline stage `pipeline_rank` holds (TP-sharded; norms replicated)."""
    p, h = cfg.parallel, cfg.model.hidden_size
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    layer_norms = counts["norms"] - h  # the final norm lives with the head
    n = (counts["non_embedding"] // tp + layer_norms) // pp
    if pipeline_rank == 0:
        n += counts["embedding"] // tp
    if pipeline_rank == pp - 1:
        n += counts["output"] // tp + h
    return n


def parameter_counts(cfg: Config) -> ParamCounts:
    c = count_parameters_meta(cfg)
    per_stage = [stage_parameters(cfg, c, r) for r in range(cfg.parallel.pipeline_model_parallel_size)]
    return ParamCounts(
        total=c["total"],
        non_embedding=c["non_embedding"],
        norms=c["norms"],
        embedding=c["embedding"],
        output=c["output"],
        per_gpu=max(per_stage),
        per_stage=per_stage,
    )


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
        head += tokens * vocab_local * (8 if fp32 else 6)  # logits + fp32 softmax kept by the cross-entropy
        head += 2 * tokens * m.hidden_size * act_bytes // (tp if sp else 1)  # final norm input and output
        if m.norm_head:
            head += 2 * (counts.output // tp) * act_bytes  # normalised and padding-masked weight copies

    if t.recompute_granularity == "full":
        layer_input = tokens * act_bytes * m.hidden_size // (tp if sp else 1)
        groups = min(t.recompute_num_layers if t.recompute_method == "uniform" else layers_here, layers_here)
        kept = int(layers_here * layer_input * in_flight)
        rebuilt = per_layer * groups  # one group of layers rebuilt during backward (the head is gone by then)
        activations = kept + max(rebuilt - head, 0)
        note = f"full recompute: layer inputs kept, {groups} layer(s) rebuilt at a time"
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
