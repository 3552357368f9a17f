"""Parameter counts and a per-GPU memory estimate for a recipe, without a GPU.

Parameter counts come from the real GPTModel built on the meta device (nothing allocated), so they
are exactly what megatron will build. Per-GPU counts and memory follow megatron's sharding:
matrices split over TP (norms replicated), layers over PP, embedding on the first stage and the head
on the last, optimizer state over DP with the distributed optimizer.

Memory model (bytes, per GPU, bf16 mixed precision as on the GPU node; fp32 if precision says so):
* weights 2/param, fp32 grad buffer 4/param (Megatron accumulates bf16 grads in fp32), Adam state
  fp32 main weights + m + v = 12/param, divided by DP with the distributed optimizer;
* activations per layer and token (flash/fused attention, so no s^2 term; Korthikanti et al. 2022
  adapted to SwiGLU and GQA): norm inputs/outputs 4h (split over TP with sequence parallel),
  QKV (h + 2*kv*d), attention output h, fc1 output 2F, SwiGLU output F (all split over TP), softmax
  statistics; full recompute keeps only each layer's input plus one group of layers in flight;
* the first pipeline stage holds min(PP, micro-batches) micro-batches under 1F1B, times
  (1 + (PP-1)/(PP*VPP)) with interleaving;
* logits: bf16 logits + fp32 softmax kept by the vocab-parallel cross-entropy + one fp32 temporary;
* a fixed allowance for the CUDA context, NCCL and TE workspaces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from megaindex.config import Config

GiB = 1024**3
RUNTIME_OVERHEAD_BYTES = int(2.5 * GiB)  # CUDA context, cuBLAS/cuDNN/TE workspaces, NCCL buffers


@dataclass
class ParamCounts:
    total: int
    non_embedding: int  # transformer-layer matrices: the "1.9B" of Index-1.9B
    norms: int
    embedding: int
    output: int
    per_gpu: int  # the largest pipeline stage's share on one GPU (TP-sharded)


@dataclass
class MemoryEstimate:
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    per_layer_activation: int
    micro_batches_in_flight: int
    note: str

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.overhead

    def as_gib(self) -> dict[str, float]:
        d = {k: round(v / GiB, 2) for k, v in dataclasses.asdict(self).items() if isinstance(v, int) and k not in ("micro_batches_in_flight",)}
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


def per_gpu_parameters(cfg: Config, counts: dict[str, int]) -> int:
    """Parameters on the most loaded GPU: its stage's layers / TP (+ embedding or head / TP)."""
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    layers = counts["non_embedding"] // tp + (counts["norms"] - cfg.model.hidden_size)  # replicated norms
    per_stage_layers = layers // pp
    first = per_stage_layers + counts["embedding"] // tp
    last = per_stage_layers + counts["output"] // tp + cfg.model.hidden_size
    if pp == 1:
        return per_stage_layers + counts["embedding"] // tp + counts["output"] // tp + cfg.model.hidden_size
    return max(first, last)


def parameter_counts(cfg: Config) -> ParamCounts:
    c = count_parameters_meta(cfg)
    return ParamCounts(
        total=c["total"],
        non_embedding=c["non_embedding"],
        norms=c["norms"],
        embedding=c["embedding"],
        output=c["output"],
        per_gpu=per_gpu_parameters(cfg, c),
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


def memory_estimate(cfg: Config, counts: ParamCounts, world_size: int) -> MemoryEstimate:
    m, p, d, t = cfg.model, cfg.parallel, cfg.data, cfg.train
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    vpp = p.virtual_pipeline_model_parallel_size
    dp = max(cfg.data_parallel_size(world_size), 1)
    fp32 = t.precision == "fp32"
    act_bytes = 4 if fp32 else 2
    P = counts.per_gpu

    weights = P * (4 if fp32 else 2)
    grads = P * 4
    opt_state = P * (8 if fp32 else 12)
    optimizer = opt_state // dp if p.use_distributed_optimizer else opt_state

    tokens = d.micro_batch_size * d.seq_length // cp
    per_layer = activation_bytes_per_layer(cfg, tokens, act_bytes)
    layers_here = m.num_layers // pp
    nmb = max(cfg.num_microbatches(world_size), 1)
    in_flight = min(pp, nmb) if pp > 1 else 1
    interleave = 1 + (pp - 1) / (pp * vpp) if vpp else 1.0
    sp = p.sequence_parallel and tp > 1
    if t.recompute_granularity == "full":
        layer_input = tokens * act_bytes * m.hidden_size // (tp if sp else 1)
        groups = t.recompute_num_layers if t.recompute_method == "uniform" else 1
        kept = layers_here * layer_input * in_flight * interleave
        live = per_layer * min(groups, layers_here)
        activations = int(kept + live)
        note = f"full recompute: layer inputs kept, {min(groups, layers_here)} layer(s) rebuilt at a time"
    else:
        activations = int(per_layer * layers_here * in_flight * interleave)
        note = "no recompute" if t.recompute_granularity is None else "selective recompute (core attention): ~no saving with flash/fused attention"
    activations += tokens * act_bytes * m.hidden_size  # embedding output / pipeline receive buffer

    logits = tokens * (cfg.padded_vocab_size // tp) * (2 + 4 + 4) if not fp32 else tokens * (cfg.padded_vocab_size // tp) * 12
    return MemoryEstimate(
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        logits=logits,
        overhead=RUNTIME_OVERHEAD_BYTES,
        per_layer_activation=per_layer,
        micro_batches_in_flight=in_flight,
        note=note,
    )
