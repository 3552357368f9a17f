"""The layout planner behind `megaindex plan`: which TP x PP x VPP x CP x DP x recompute layout to run.

Owns: enumerating the layouts of a recipe on N GPUs (every combination the config's own
`validate` accepts), the throughput cost model that ranks them, and its fitted constants. Memory
comes from megaindex.plan (a layout fits when its estimated total is within the GPU's memory).

The cost model predicts the step time of the slowest GPU from first principles, with four
constants fitted on the recorded 32K runs (benchmarks/plan_vs_measured.py, which also states the
model's error on every record and its leave-one-out error; benchmarks/RESULTS_plan.md):
* compute: model FLOPs of the GPU's share (megaindex.plan's count: dense matmuls and causal
  attention over the documents) at the peak x an efficiency, one for matmuls (GEMM_EFFICIENCY) and
  one for attention (ATTENTION_EFFICIENCY); full recompute adds the layers' forward again, selective
  recompute the attention forward;
* communication, assumed exposed, at the link's bandwidth x COMM_EFFICIENCY: tensor parallel with
  sequence parallel moves 8 all-gathers/reduce-scatters of the layer's activations per layer and
  micro-batch (12 with full recompute) and 2 more at the embedding and the head; context parallel
  (p2p ring) passes K and V around the ring, CP - 1 hops, once forward and twice backward (K, V
  and their gradients; once more with full recompute), all-to-all moves q, k, v and the output;
  pipeline stages send activations forward and gradients back at every stage boundary; the
  distributed optimizer reduce-scatters fp32 gradients and all-gathers bf16 weights over DP x CP;
* pipeline: 1F1B over m micro-batches takes (m + (PP - 1) / VPP) times one micro-batch on the
  slowest stage (the last: it also runs the LM head), plus PIPELINE_SYNC_S for each of the
  2 x m x VPP blocking exchanges at a stage boundary (host work the GPU waits for there).
A group of GPUs inside one node talks over NVLink; one that spans nodes over the network (rank
order tp-cp-dp-pp, megatron's: TP innermost).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

from megaindex import plan
from megaindex.config import Config, ConfigError

NVLINK_GBPS = 450.0  # H100/H200 SXM NVLink 4: 900 GB/s both directions, 450 each way
NETWORK_GBPS = 50.0  # one 400 Gb/s InfiniBand/RoCE NIC per GPU (not measured here: no multi-node record)
BF16 = 2

# Fitted on the recorded runs by `python benchmarks/plan_vs_measured.py --fit` (16 runs, 1-4 GPUs,
# H100 and H200, 2026-11-22 and 2026-11-27); tests/test_plan.py checks they are that fit.
GEMM_EFFICIENCY = 0.574  # of the peak (log.peak_tflops), for matmuls
ATTENTION_EFFICIENCY = 0.4333  # of the peak, for cuDNN attention (THD, packed, CP chunks)
COMM_EFFICIENCY = 0.2805  # of the nominal link bandwidth, as if all communication were exposed
PIPELINE_SYNC_S = 0.01562  # seconds per blocking pipeline exchange

RECOMPUTE_CHOICES = (None, "selective", "full")


@dataclass(frozen=True)
class Constants:
    gemm_efficiency: float = GEMM_EFFICIENCY
    attention_efficiency: float = ATTENTION_EFFICIENCY
    comm_efficiency: float = COMM_EFFICIENCY
    pipeline_sync_s: float = PIPELINE_SYNC_S


@dataclass
class StepTime:
    """Seconds per optimizer step on the slowest GPU, by term (the constants divide them)."""

    gemm: float  # FLOP-seconds at peak: divide by GEMM_EFFICIENCY
    attention: float  # FLOP-seconds at peak: divide by ATTENTION_EFFICIENCY
    comm: float  # seconds at the nominal link bandwidth: divide by COMM_EFFICIENCY
    pipeline_syncs: int  # blocking pipeline exchanges per step: times PIPELINE_SYNC_S
    parts: dict[str, float] = field(default_factory=dict)  # the same, split by cause, at nominal rates

    def seconds(self, k: Constants) -> float:
        return (self.gemm / k.gemm_efficiency + self.attention / k.attention_efficiency + self.comm / k.comm_efficiency
                + self.pipeline_syncs * k.pipeline_sync_s)


@dataclass
class Prediction:
    step_time_s: float
    tokens_per_s_per_gpu: float
    tflops_per_gpu: float  # model TFLOP/s (megaindex.plan's count), what the trainer logs
    breakdown_s: dict[str, float]  # step time by cause, fitted constants applied


def _groups_cross_nodes(cfg: Config, world: int, gpus_per_node: int) -> dict[str, bool]:
    p = cfg.parallel
    tp, cp, pp = p.tensor_model_parallel_size, p.context_parallel_size, p.pipeline_model_parallel_size
    dp = world // (tp * cp * pp)
    return {"tp": tp > gpus_per_node, "cp": tp * cp > gpus_per_node, "dp": tp * cp * dp > gpus_per_node,
            "pp": pp > 1 and world > gpus_per_node}


def step_time_terms(cfg: Config, world: int, *, doc_length: float, gpus_per_node: int | None = None) -> StepTime:
    """The cost model's terms for this layout. `doc_length` = sum(n_i^2) / tokens: the attention
    span of a token (the document length when all documents are equally long; seq_length for
    concatenated rows)."""
    m, p, d, t = cfg.model, cfg.parallel, cfg.data, cfg.train
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    vpp = p.virtual_pipeline_model_parallel_size or 1
    sp = p.sequence_parallel and tp > 1
    dp = cfg.data_parallel_size(world)
    nmb = cfg.num_microbatches(world)
    peak = cfg.log.peak_tflops * 1e12
    h, kv, layers = m.hidden_size, m.kv_heads * m.head_dim, m.num_layers // pp
    full, selective = t.recompute_granularity == "full", t.recompute_granularity == "selective"
    cross = _groups_cross_nodes(cfg, world, gpus_per_node or world)
    bw = {g: (NETWORK_GBPS if crosses else NVLINK_GBPS) * 1e9 for g, crosses in cross.items()}

    # One micro-batch on one GPU of the last stage (it runs the head too): its share of the work.
    tokens = d.micro_batch_size * d.seq_length  # a micro-batch, all CP ranks together
    share = tp * cp
    layer_gemm = 6 * layers * plan.layer_matrix_params(m) * tokens / share
    head_gemm = 6 * h * m.vocab_size * tokens / share
    attn = plan.attention_flops(cfg, doc_length * tokens) / pp / share
    gemm = layer_gemm + head_gemm + (layer_gemm / 3 if full else 0)
    attention = attn + (attn / 3 if full or selective else 0)

    local = tokens // cp  # tokens on this CP rank
    comm = {"tp": 0.0, "cp": 0.0, "pp": 0.0}
    if tp > 1:
        collectives = layers * (12 if full else 8) + 2
        comm["tp"] = collectives * (tp - 1) / tp * local * h * BF16 / bw["tp"]
    if cp > 1:
        passes = 4 if full else 3
        if p.cp_comm_type == "p2p":
            comm["cp"] = layers * passes * (cp - 1) * local * 2 * kv / tp * BF16 / bw["cp"]
        else:  # all-to-all of q, k, v before attention and of its output after
            comm["cp"] = layers * passes * (cp - 1) / cp * local * (2 * h + 2 * kv) / tp * BF16 / bw["cp"]
    if pp > 1:
        comm["pp"] = 2 * vpp * local * h / (tp if sp else 1) * BF16 / bw["pp"]

    pipeline = nmb + (pp - 1) / vpp
    parts = {"gemm": gemm * pipeline / peak, "attention": attention * pipeline / peak,
             **{f"{g}_comm": c * pipeline for g, c in comm.items()}}
    # Distributed optimizer: fp32 gradients reduce-scattered, bf16 weights all-gathered over DP x CP.
    n = dp * cp
    if n > 1:
        stage_params = max(plan.parameter_counts(cfg).per_stage)
        ring = (n - 1) / n
        parts["dp_comm"] = (4 + 2) * stage_params * ring / (bw["dp"] if dp > 1 else bw["cp"])
    # Each micro-batch crosses every stage boundary forward and back, once per model chunk, and the
    # schedule waits for each exchange (send/recv pairs are blocking in 1F1B).
    syncs = 2 * nmb * vpp if pp > 1 else 0
    return StepTime(gemm=parts["gemm"], attention=parts["attention"],
                    comm=sum(v for k, v in parts.items() if k.endswith("_comm")), pipeline_syncs=syncs, parts=parts)


def predict(cfg: Config, world: int, *, doc_length: float, gpus_per_node: int | None = None,
            constants: Constants = Constants()) -> Prediction:
    terms = step_time_terms(cfg, world, doc_length=doc_length, gpus_per_node=gpus_per_node)
    step = terms.seconds(constants)
    tokens = cfg.data.global_batch_size * cfg.data.seq_length
    flops = plan.step_flops(cfg, tokens, int(doc_length * tokens))
    scale = {"gemm": constants.gemm_efficiency, "attention": constants.attention_efficiency}
    breakdown = {k: v / scale.get(k, constants.comm_efficiency) for k, v in terms.parts.items()}
    if terms.pipeline_syncs:
        breakdown["pipeline_syncs"] = terms.pipeline_syncs * constants.pipeline_sync_s
    return Prediction(step_time_s=step, tokens_per_s_per_gpu=tokens / step / world,
                      tflops_per_gpu=flops / step / world / 1e12, breakdown_s=breakdown)


# ---- enumeration --------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def with_layout(cfg: Config, tp: int, pp: int, vpp: int | None, cp: int, recompute: str | None) -> Config:
    """`cfg` with this layout (CP as a p2p ring when the recipe's hierarchical CP sizes do not apply)."""
    par = dataclasses.replace(cfg.parallel, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              virtual_pipeline_model_parallel_size=vpp, context_parallel_size=cp)
    if par.cp_comm_type == "a2a+p2p" and (cp == 1 or cp != cfg.parallel.context_parallel_size):
        par = dataclasses.replace(par, cp_comm_type="p2p", hierarchical_context_parallel_sizes=None)
    return dataclasses.replace(cfg, parallel=par, train=dataclasses.replace(cfg.train, recompute_granularity=recompute))


def layout_overrides(cfg: Config) -> list[str]:
    """The override line that selects cfg's layout on top of the recipe."""
    p, t = cfg.parallel, cfg.train
    out = [f"parallel.tensor_model_parallel_size={p.tensor_model_parallel_size}",
           f"parallel.pipeline_model_parallel_size={p.pipeline_model_parallel_size}",
           f"parallel.virtual_pipeline_model_parallel_size={p.virtual_pipeline_model_parallel_size or 'null'}",
           f"parallel.context_parallel_size={p.context_parallel_size}",
           f"train.recompute_granularity={t.recompute_granularity or 'null'}"]
    if p.context_parallel_size > 1 and p.cp_comm_type != "p2p":
        out.append(f"parallel.cp_comm_type={p.cp_comm_type}")
    return out


def layout_name(cfg: Config, world: int) -> str:
    p, t = cfg.parallel, cfg.train
    parts = [f"{k}{v}" for k, v in (("TP", p.tensor_model_parallel_size), ("PP", p.pipeline_model_parallel_size),
                                    ("VPP", p.virtual_pipeline_model_parallel_size or 1),
                                    ("CP", p.context_parallel_size), ("DP", cfg.data_parallel_size(world))) if v > 1]
    name = " x ".join(parts) or "1 GPU"
    if p.sequence_parallel and p.tensor_model_parallel_size > 1:
        name += " +SP"
    return name + ("" if t.recompute_granularity is None else f", {t.recompute_granularity} recompute")


@dataclass
class Candidate:
    name: str
    overrides: list[str]
    memory: plan.MemoryEstimate
    prediction: Prediction
    fits: bool


def enumerate_layouts(cfg: Config, gpus: int) -> tuple[list[Config], int]:
    """Every layout of `cfg` on `gpus` GPUs that the config's validation accepts, and how many it refused."""
    layers = cfg.model.num_layers
    valid, refused = [], 0
    for tp, pp, cp in itertools.product(_divisors(gpus), repeat=3):
        if gpus % (tp * pp * cp):
            continue
        vpps = [None] + [v for v in range(2, layers // pp + 1) if layers % (pp * v) == 0] if pp > 1 else [None]
        for vpp, recompute in itertools.product(vpps, RECOMPUTE_CHOICES):
            candidate = with_layout(cfg, tp, pp, vpp, cp, recompute)
            try:
                candidate.validate(gpus)
            except ConfigError:
                refused += 1
                continue
            valid.append(candidate)
    return valid, refused


def rank_layouts(cfg: Config, gpus: int, *, gpu_memory_gib: float, nodes: int = 1,
                 doc_length: float | None = None) -> tuple[list[Candidate], int]:
    """All valid layouts, those that fit first, each group fastest first; and the count refused."""
    if gpus < 1 or nodes < 1:
        raise ConfigError(f"--gpus {gpus} and --nodes {nodes} must be at least 1.")
    if gpus % nodes:
        raise ConfigError(f"--gpus {gpus} is not divisible by --nodes {nodes}: give the same number of GPUs per node.")
    doc_length = doc_length or cfg.data.seq_length
    layouts, refused = enumerate_layouts(cfg, gpus)
    out = []
    for c in layouts:
        mem = plan.memory_estimate(c, plan.parameter_counts(c), gpus)
        pred = predict(c, gpus, doc_length=doc_length, gpus_per_node=gpus // nodes)
        out.append(Candidate(layout_name(c, gpus), layout_overrides(c), mem, pred, mem.total <= gpu_memory_gib * plan.GiB))
    out.sort(key=lambda c: (not c.fits, -c.prediction.tokens_per_s_per_gpu))
    return out, refused


def as_dict(c: Candidate) -> dict:
    p = c.prediction
    return {"layout": c.name, "overrides": c.overrides, "fits": c.fits,
            "memory_gib": round(c.memory.total / plan.GiB, 2), "step_time_s": round(p.step_time_s, 3),
            "tokens_per_s_per_gpu": round(p.tokens_per_s_per_gpu), "tflops_per_gpu": round(p.tflops_per_gpu, 1),
            "breakdown_s": {k: round(v, 3) for k, v in p.breakdown_s.items()}}


def format_plan(cfg: Config, recipe: str, gpus: int, nodes: int, gpu_memory_gib: float, doc_length: float,
                candidates: list[Candidate], refused: int, top: int) -> str:
    fitting = [c for c in candidates if c.fits]
    lines = [f"# {cfg.name} on {gpus} GPUs ({nodes} node{'s' if nodes > 1 else ''}), {gpu_memory_gib:g} GiB each: "
             f"{len(candidates)} valid layouts ({refused} refused by the config's checks), {len(fitting)} fit",
             f"# ranked by predicted throughput (megaindex/planner.py; errors on the recorded runs: "
             f"benchmarks/RESULTS_plan.md); attention span {doc_length:,.0f} tokens (--doc-length)",
             f"{'':>3} {'layout':<34} {'memory GiB':>10} {'step s':>8} {'tokens/s/GPU':>13} {'TFLOP/s/GPU':>12}"]
    for i, c in enumerate(fitting[:top], 1):
        p = c.prediction
        lines.append(f"{i:>3} {c.name:<34} {c.memory.total / plan.GiB:>10.1f} {p.step_time_s:>8.3g} "
                     f"{p.tokens_per_s_per_gpu:>13,.0f} {p.tflops_per_gpu:>12.1f}")
    over = [c for c in candidates if not c.fits]
    if over:
        best = max(over, key=lambda c: c.prediction.tokens_per_s_per_gpu)
        lines.append(f"    (fastest that does not fit: {best.name}, {best.memory.total / plan.GiB:.1f} GiB, "
                     f"{best.prediction.tflops_per_gpu:.1f} TFLOP/s/GPU)")
    if not fitting:
        lines.append("no layout fits: add GPUs, raise --gpu-memory, or lower data.micro_batch_size / data.seq_length.")
        return "\n".join(lines)
    nnodes = f"--nnodes {nodes} " if nodes > 1 else ""  # under Slurm, launch/ runs this on every node
    launch = f"torchrun {nnodes}--nproc-per-node {gpus // nodes} -m megaindex train" if gpus > 1 else "megaindex train"
    lines.append(f"\nbest: {launch} {recipe} {' '.join(fitting[0].overrides)}")
    return "\n".join(lines)
