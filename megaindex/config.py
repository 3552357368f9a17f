"""The typed configuration of a megaindex run.

Owns: the dataclass sections (model, parallel, data, optim, train, checkpoint, log, eval), each of which
checks its own fields (`check()`: every number's range, declared beside its doc, and the rules
inside the section), `Config.validate(world_size)`, which runs them and then the one cross-section
check of whether the layout can run (its rules are config_layout.py's; the FP8 ones config_fp8.py's)
and explains why not in words, and dumping the resolved config back to YAML. Reading YAML recipes and dotted overrides is config_load.py's (`load_config`,
`from_dict` and `parse_override` stay importable from here).

Field names follow Megatron's (`tensor_model_parallel_size`, `seq_length`, ...) so that grep works
across both code bases. Every field carries a one-line doc in its metadata (`megaindex info` shows it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from megaindex.config_fp8 import fp8_errors
from megaindex.config_layout import cuda_graph_errors, data_layout_errors, model_layout_errors


class ConfigError(ValueError):
    """A config that cannot run; the message says which field and what to do."""


def _f(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None, lt: float | None = None) -> Any:
    """A field with its one-line doc and, for numbers, its range (None values are always allowed)."""
    meta = {"doc": doc, **{k: v for k, v in (("ge", ge), ("gt", gt), ("lt", lt)) if v is not None}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _range_rule(meta: dict) -> str:
    rules = [f"at least {meta['ge']}" if "ge" in meta else "", f"greater than {meta['gt']}" if "gt" in meta else "",
             f"less than {meta['lt']}" if "lt" in meta else ""]
    return " and ".join(r for r in rules if r)


def range_errors(section: str, obj: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """One message per numeric field of `obj` outside its declared range (or not finite)."""
    errors = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or not any(k in f.metadata for k in ("ge", "gt", "lt")) or value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            ok = math.isfinite(v) and not (
                ("ge" in f.metadata and v < f.metadata["ge"]) or ("gt" in f.metadata and v <= f.metadata["gt"])
                or ("lt" in f.metadata and v >= f.metadata["lt"]))
            if not ok:
                errors.append(f"{section}.{f.name} is {value!r}; it must be {_range_rule(f.metadata)}.")
                break
    return errors


@dataclass
class ModelConfig:
    preset: str | None = _f(None, "named architecture filled in first (index-1.9b, index-1.9b-32k, llama, mini-index, mini-index-m, tiny, tiny-llama)")
    num_layers: int = _f(0, "transformer layers", ge=1)
    hidden_size: int = _f(0, "model width", ge=1)
    num_attention_heads: int = _f(0, "query heads", ge=1)
    num_query_groups: int | None = _f(None, "key/value heads (GQA); None = num_attention_heads (MHA)", ge=1)
    ffn_hidden_size: int = _f(0, "SwiGLU intermediate size", ge=1)
    vocab_size: int = _f(0, "tokenizer vocabulary before padding", ge=1)
    make_vocab_size_divisible_by: int = _f(128, "pad the vocabulary to a multiple of this x TP (Megatron's rule)", ge=1)
    norm_epsilon: float = _f(1e-6, "RMSNorm epsilon", gt=0)
    norm_head: bool = _f(False, "Norm-Head: L2-normalise each output-embedding row on the fly (Index, Baichuan 2)")
    untie_embeddings_and_output_weights: bool = _f(True, "separate input embedding and LM head")
    rotary_base: int = _f(10000, "RoPE base (theta); 320000 for Index-1.9B-32K", ge=1)
    max_position_embeddings: int = _f(4096, "longest sequence the RoPE cache is built for", ge=1)
    init_method_std: float = _f(0.02, "std of the normal init for fresh weights", gt=0)
    transformer_impl: Literal["auto", "transformer_engine", "local"] = _f(
        "auto", "auto = Transformer Engine when TE and CUDA are present, else megatron local modules + reference attention"
    )
    attention_backend: Literal["auto", "flash", "fused", "unfused"] = _f(
        "auto", "TE attention kernel choice (auto lets TE pick; fused = cuDNN)"
    )
    cross_entropy_fusion: Literal["auto", "none", "native", "te"] = _f(
        "auto", "LM loss kernel: auto = te where the model runs on the Transformer Engine path and TE has the kernel, "
        "else none; none = megatron's vocab-parallel cross-entropy (keeps an fp32 softmax: 6 bytes/logit), "
        "native = megatron's torch.compile'd version (same memory; rounds the logit gradient to bf16), "
        "te = Transformer Engine's Triton kernel, gradient written over the bf16 logits (2 bytes/logit; TE + GPU)"
    )

    def cross_entropy_kernel(self, use_te: bool) -> str:
        """The kernel `cross_entropy_fusion` asks for on a model built with (use_te) or without
        Transformer Engine's modules: `auto` is te on the TE path, none elsewhere (model/lm_loss.py
        falls back further where TE lacks the kernel)."""
        if self.cross_entropy_fusion == "auto":
            return "te" if use_te else "none"
        return self.cross_entropy_fusion

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def check(self) -> list[str]:
        required = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size")
        errors = []
        if self.num_layers <= 0 or self.hidden_size <= 0 or self.num_attention_heads <= 0:
            errors.append("model: num_layers, hidden_size and num_attention_heads must be set (or a model.preset).")
        else:
            if self.hidden_size % self.num_attention_heads:
                errors.append(f"model.hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}.")
            if self.kv_heads > 0 and self.num_attention_heads % self.kv_heads:
                errors.append(f"model.num_attention_heads {self.num_attention_heads} is not divisible by num_query_groups {self.kv_heads}.")
        if self.vocab_size <= 0:
            errors.append("model.vocab_size must be set (or a model.preset).")
        return errors + range_errors("model", self, skip=required)


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = _f(1, "TP: split each layer's matrices over this many GPUs", ge=1)
    pipeline_model_parallel_size: int = _f(1, "PP: split the layers into this many stages", ge=1)
    virtual_pipeline_model_parallel_size: int | None = _f(None, "virtual stages per PP rank (interleaved 1F1B); None = plain 1F1B", ge=1)
    context_parallel_size: int = _f(1, "CP: split each sequence over this many GPUs (ring attention)", ge=1)
    cp_comm_type: Literal["p2p", "a2a", "a2a+p2p"] = _f("p2p", "CP communication: TE ring (p2p), all-to-all, or hierarchical")
    hierarchical_context_parallel_sizes: list[int] | None = _f(None, "inner/outer CP group sizes for cp_comm_type a2a+p2p", ge=1)
    sequence_parallel: bool = _f(True, "shard norms/dropout activations over TP (only meaningful with TP > 1)")
    use_distributed_optimizer: bool = _f(True, "shard optimizer state over data-parallel ranks (ZeRO-1)")
    overlap_grad_reduce: bool = _f(False, "overlap DP gradient reduce-scatter with backward")
    overlap_param_gather: bool = _f(False, "overlap DP parameter all-gather with the next forward")
    batch_p2p_comm: bool | None = _f(None, "batch PP send/recv; None = auto (off for interleaved PP=2, an upstream bug)")

    def check(self) -> list[str]:
        errors = range_errors("parallel", self)
        pp, vpp, cp = self.pipeline_model_parallel_size, self.virtual_pipeline_model_parallel_size, self.context_parallel_size
        if vpp and pp == 1:
            errors.append("parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1.")
        if vpp and pp == 2 and self.batch_p2p_comm:
            errors.append(
                "parallel.batch_p2p_comm=true with interleaved PP=2 gives silently wrong gradients in megatron-core "
                "(Megatron-LM #750); leave it unset (auto) or set it to false."
            )
        sizes = self.hierarchical_context_parallel_sizes
        if cp > 1 and self.cp_comm_type == "a2a+p2p" and (not sizes or math.prod(sizes) != cp):
            errors.append(
                f"parallel.cp_comm_type a2a+p2p needs hierarchical_context_parallel_sizes whose product is CP={cp}."
            )
        return errors

    @property
    def a2a_size(self) -> int:
        """Size of the all-to-all group CP splits heads over (0 = none)."""
        cp = self.context_parallel_size
        if cp > 1 and self.cp_comm_type == "a2a+p2p" and self.hierarchical_context_parallel_sizes:
            return self.hierarchical_context_parallel_sizes[0]
        return cp if cp > 1 and self.cp_comm_type == "a2a" else 0


def split_ratios(split: str) -> list[float]:
    """'99,1,0' (or '99/1/0') -> [99.0, 1.0, 0.0], megatron's train,valid,test rule; ConfigError if not that."""
    try:
        ratios = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        ratios = []
    if not 1 <= len(ratios) <= 3 or any(not math.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError(f"data.split {split!r} must be up to three non-negative train,valid,test weights, e.g. '99,1,0'.")
    return (ratios + [0.0, 0.0])[:3]


@dataclass
class DataConfig:
    kind: Literal["pretrain", "sft"] = _f("pretrain", "pretrain = packed documents (stage 1); sft = chat with response-only loss (stage 2)")
    data_path: list[str] = _f([], "dataset prefixes (.bin/.idx) or JSONL files; 'W PATH' entries give blend weights; '@FILE' reads a blend file")
    valid_data_path: list[str] = _f([], "held-out data (same syntax); empty = split off each training prefix by `split`")
    split: str = _f("99,1,0", "train,valid,test ratio when valid_data_path is empty")
    tokenizer_model: str | None = _f(None, "SentencePiece tokenizer.model (Index layout: <unk>0 <s>1 </s>2 reserved_0 3 reserved_1 4)")
    seq_length: int = _f(4096, "tokens per packed sample", ge=1)
    micro_batch_size: int = _f(1, "samples per GPU per forward/backward", ge=1)
    global_batch_tokens: int = _f(4194304, "tokens per optimizer step over all DP ranks (4M stage 1, 1M stage 2)", ge=1)
    packing: Literal["reset", "concat"] = _f("reset", "reset = per-document attention and positions (report recipe); concat = plain causal concatenation")
    whole_documents: int = _f(0, "pretrain: documents of at most this many tokens are never split across rows (first fit over a 16-document look-ahead); 0 = split any", ge=0)
    loss_weighting: Literal["token", "longalign"] = _f("token", "token = mean over target tokens; longalign = 1/(M*N_i) per token (SFT)")
    sorted_batching: bool = _f(False, "LongAlign sorted batching: rows sorted by their longest conversation form the global batches, batch order shuffled")
    sft_overlength: Literal["drop", "truncate"] = _f("drop", "conversation longer than seq_length: drop (counted) or truncate earliest turns")
    num_epochs: int | None = _f(None, "passes over the data; None = as many as train_iters needs", ge=1)
    context_length_warmup: list[list[int]] = _f([], "opt-in [[until_step, seq_length], ...] schedule (report: loss rebounds; off)")
    num_workers: int = _f(2, "DataLoader worker processes per rank", ge=0)
    cache_dir: str | None = _f(None, "where packed-sample indices are cached; None = next to the data")
    seed: int = _f(1234, "shuffle seed (same seed, same samples)", ge=0)
    pad_to_multiple_of: int | None = _f(None, "pad every packed piece to a multiple of this; None = 2*CP (set e.g. 4 at CP=1 to get CP=2's samples)", ge=1)
    static_thd_shapes: bool = _f(False, "TE path: run-constant cu_seqlens/max_seqlen shapes; saves TE's per-shape backend selection (host) but costs GPU time in THD RoPE")
    row_layout: Literal["auto", "thd", "sbhd"] = _f(
        "auto", "how rows reach attention: thd = one packed row + cu_seqlens; sbhd = [rows, tokens], one causal sequence "
        "per row (packing concat only); auto = sbhd with train.fp8_dot_product_attention (no FP8 THD kernel), else thd")

    @property
    def global_batch_size(self) -> int:
        """Global batch in sequences (Megatron's `global_batch_size`)."""
        return self.global_batch_tokens // self.seq_length

    def check(self) -> list[str]:
        errors = range_errors("data", self)
        if not errors and self.global_batch_tokens % self.seq_length:
            errors.append(
                f"data.global_batch_tokens {self.global_batch_tokens} is not a multiple of data.seq_length {self.seq_length}: "
                f"a global batch is a whole number of sequences."
            )
        try:
            split_ratios(self.split)
        except ConfigError as e:
            errors.append(str(e))
        if self.loss_weighting == "longalign" and self.kind != "sft":
            errors.append("data.loss_weighting longalign applies to SFT data (data.kind: sft).")
        if self.row_layout == "sbhd" and (self.kind != "pretrain" or self.packing != "concat"):
            errors.append("data.row_layout sbhd feeds one causal sequence per row: it needs data.kind pretrain and "
                          "data.packing concat (packed documents or conversations need thd).")
        return errors


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "peak learning rate", gt=0)
    min_lr: float = _f(0.0, "learning rate at the end of the decay", ge=0)
    lr_decay_style: Literal["cosine", "linear", "constant", "wsd"] = _f(
        "cosine", "decay after warmup; wsd = warmup-stable-decay: lr stays at its peak, then the last lr_wsd_decay_iters steps anneal to min_lr"
    )
    lr_warmup_iters: int = _f(0, "linear warmup steps", ge=0)
    lr_decay_iters: int | None = _f(None, "decay length in steps (warmup included, Megatron's rule); None = train_iters", ge=1)
    lr_wsd_decay_iters: int | None = _f(None, "wsd: steps of the final anneal; None = 10% of the decay length", ge=1)
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = _f(
        "minus_sqrt", "wsd: shape of the final anneal (minus_sqrt = 1-sqrt, Haegele et al. 2024)"
    )
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (not on norms)", ge=0)
    adam_beta1: float = _f(0.9, "Adam beta1", ge=0, lt=1)
    adam_beta2: float = _f(0.95, "Adam beta2", ge=0, lt=1)
    adam_eps: float = _f(1e-8, "Adam epsilon", gt=0)
    clip_grad: float = _f(1.0, "global gradient-norm clip (0 = no clipping)", ge=0)

    def check(self) -> list[str]:
        errors = range_errors("optim", self)
        if not errors and self.min_lr > self.lr:
            errors.append(f"optim.min_lr {self.min_lr} is larger than optim.lr {self.lr}; the schedule decays from lr to min_lr.")
        return errors


@dataclass
class TrainConfig:
    train_iters: int | None = _f(1000, "optimizer steps; null = every full global batch of data.num_epochs (the epochs set the run length)", ge=1)
    train_tokens: int | None = _f(None, "run length in tokens: train_iters = ceil(train_tokens / data.global_batch_tokens); the schedule follows", ge=1)
    precision: Literal["auto", "bf16", "fp32"] = _f("auto", "auto = bf16 on GPU, fp32 on CPU")
    fp8: Literal[None, "e4m3", "hybrid"] = _f(None, "TE FP8 format; None = off")
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = _f(
        "delayed", "TE FP8 scaling recipe (H100: delayed, tensorwise, blockwise; mxfp8 needs Blackwell, sm100)")
    fp8_dot_product_attention: bool = _f(
        False, "FP8 attention (cuDNN FP8 fused attention; megatron's fp8_dot_product_attention): needs train.fp8 and "
        "data.packing=concat (no FP8 kernel for packed THD rows); on H100 with the delayed recipe (config_fp8.py)")
    num_layers_at_start_in_bf16: int = _f(0, "FP8 runs: keep this many first transformer layers in bf16 (megatron's; not with delayed)", ge=0)
    num_layers_at_end_in_bf16: int = _f(0, "FP8 runs: keep this many last transformer layers in bf16 (megatron's; not with delayed)", ge=0)
    recompute_granularity: Literal[None, "selective", "full"] = _f(None, "activation recompute: selective (attention core) or full layers")
    recompute_method: Literal["uniform", "block"] = _f("uniform", "full recompute: how layers are grouped")
    recompute_num_layers: int = _f(1, "full recompute: layers per group (uniform) or layers recomputed (block)", ge=1)
    nan_policy: Literal["skip", "stop"] = _f("skip", "NaN/Inf loss or grad norm: skip the update (counted) or stop; a stop saves nothing and points `latest` at the last good checkpoint")
    max_consecutive_skips: int = _f(10, "nan_policy=skip stops (as stop does) after this many non-finite steps in a row", ge=1)
    overwrite: bool = _f(False, "start over in a run directory that holds a run (removes its checkpoints and metrics); off = resume or refuse")
    eval_interval: int = _f(100, "validate every N steps (0 = never)", ge=0)
    eval_iters: int = _f(10, "validation batches each time", ge=0)
    seed: int = _f(1234, "init and dropout seed", ge=0)
    run_dir: str = _f("runs/default", "where logs, metrics, plots and (by default) checkpoints go")
    exit_at_step: int | None = _f(None, "stop after this step with a checkpoint; a resumed run continues the same schedule", ge=1)
    profile_steps: list[int] = _f([], "[first, last]: record these steps with the torch profiler into RUN_DIR/profile/ (empty = off)", ge=1)
    cuda_graph_impl: Literal["none", "full_iteration"] = _f(
        "none", "full_iteration = capture each step's forward-backward over all micro-batches as one CUDA graph, replayed (small models; one GPU or DP)")

    def check(self) -> list[str]:
        errors = range_errors("train", self)
        if self.fp8 and self.precision == "fp32":
            errors.append("train.fp8 needs train.precision bf16 (or auto on GPU).")
        if self.profile_steps and (len(self.profile_steps) != 2 or self.profile_steps[0] > self.profile_steps[1]):
            errors.append(f"train.profile_steps {self.profile_steps} must be [first, last] with first <= last.")
        return errors


@dataclass
class CheckpointConfig:
    save: str | None = _f(None, "checkpoint directory; None = RUN_DIR/checkpoints")
    save_interval: int = _f(500, "save every N steps and at the end (0 = never save, e.g. for benchmarks)", ge=0)
    keep_last: int = _f(3, "keep this many newest checkpoints (0 = all)", ge=0)
    keep_every: int = _f(0, "milestones: checkpoints whose step is a multiple of this are never pruned by keep_last (0 = none)", ge=0)
    load: str | None = _f(None, "resume from here; None = auto-resume from the save directory's `latest`")
    pretrained: str | None = _f(None, "start from these weights only (fresh optimizer and schedule), e.g. stage 1 -> stage 2")
    async_save: bool = _f(True, "write checkpoints in the background (GPU only)")
    fully_reshardable: bool = _f(True, "optimizer state in a layout loadable under any TP/PP/CP/DP")

    def check(self) -> list[str]:
        return range_errors("checkpoint", self)


@dataclass
class LogConfig:
    log_interval: int = _f(1, "console/metrics line every N steps", ge=1)
    tensorboard: bool = _f(True, "write TensorBoard scalars under RUN_DIR/tensorboard")
    plot: bool = _f(True, "write a loss-curve PNG at the end of a run")
    peak_tflops: float = _f(989.0, "per-GPU dense bf16 peak for MFU (H100/H200 SXM: 989)", gt=0)
    tracker: Literal[None, "wandb", "mlflow"] = _f(None, "also log metrics to Weights & Biases or MLflow (off by default; needs that package)")
    tracker_project: str | None = _f(None, "W&B project / MLflow experiment name; None = megaindex")

    def check(self) -> list[str]:
        return range_errors("log", self)


PROBE_TASKS = ("passkey", "needle")


@dataclass
class EvalConfig:
    interval: int = _f(0, "run the long-context probe (megaindex/eval/probe.py) every N steps and at the end; 0 = off", ge=0)
    tasks: list[str] = _f(["passkey"], "probe tasks: passkey and/or needle")
    lengths: list[int] = _f([], "probe lengths in model tokens (prompt + answer); empty = [data.seq_length]", ge=64)
    depths: list[float] = _f([0.0, 50.0, 100.0], "needle/key depths in % of the haystack", ge=0)
    repeats: int = _f(1, "samples per (length, depth)", ge=1)
    haystack: str | None = _f(None, "held-out JSONL for the needle probe; None = heldout.jsonl beside data.data_path")

    def check(self) -> list[str]:
        errors = range_errors("eval", self)
        errors += [f"eval.tasks: unknown probe task {t!r}; use {' or '.join(PROBE_TASKS)}." for t in self.tasks
                   if t not in PROBE_TASKS]
        errors += [f"eval.depths: {d!r} is not a depth in % (0 to 100)." for d in self.depths
                   if not isinstance(d, (int, float)) or not 0 <= d <= 100][:1]
        if self.interval and not self.tasks:
            errors.append("eval.tasks is empty but eval.interval is set; name passkey and/or needle.")
        return errors


@dataclass
class Config:
    name: str = _f("run", "run name (log prefix)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "architecture"})
    parallel: ParallelConfig = field(default_factory=ParallelConfig, metadata={"doc": "parallel layout"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "data and batching"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"doc": "optimizer and LR schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "training loop"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"doc": "checkpointing"})
    log: LogConfig = field(default_factory=LogConfig, metadata={"doc": "logging"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "in-training long-context probe (off by default)"})

    # ---- derived quantities -------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary padded to a multiple of make_vocab_size_divisible_by x TP (Megatron's rule)."""
        m = self.model.make_vocab_size_divisible_by * self.parallel.tensor_model_parallel_size
        return int(math.ceil(self.model.vocab_size / m) * m)

    @property
    def model_parallel_size(self) -> int:
        p = self.parallel
        return p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // self.model_parallel_size

    def num_microbatches(self, world_size: int) -> int:
        return self.data.global_batch_size // (self.data.micro_batch_size * self.data_parallel_size(world_size))

    @property
    def rows_as_thd(self) -> bool:
        """data.row_layout resolved: True = THD (PackedSeqParams), False = sbhd [rows, tokens]."""
        layout = self.data.row_layout
        return layout == "thd" or (layout == "auto" and not self.train.fp8_dot_product_attention)

    @property
    def batch_p2p_comm(self) -> bool:
        """Effective PP p2p batching: off for interleaved PP=2 (megatron-core gives wrong grads there)."""
        p = self.parallel
        if p.batch_p2p_comm is not None:
            return p.batch_p2p_comm
        return not (p.pipeline_model_parallel_size == 2 and p.virtual_pipeline_model_parallel_size)

    # ---- validation ---------------------------------------------------------------------
    def sections(self) -> dict[str, Any]:
        """{name: section} for the dataclass sections (model, parallel, ...)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if dataclasses.is_dataclass(getattr(self, f.name))}

    def validate_model_layout(self) -> None:
        """Raise ConfigError unless the model and parallel sections are valid and the model splits
        over the TP/PP/VPP/CP layout (what a converter needs; no data or world size involved)."""
        errors = self.model.check() + self.parallel.check()
        if not errors:
            errors = model_layout_errors(self.model, self.parallel)
        if errors:
            raise ConfigError("config cannot run:\n  - " + "\n  - ".join(errors))

    def validate(self, world_size: int) -> list[str]:
        """Raise ConfigError listing every problem; return notes about derived settings.

        Each section first checks itself; when they are sound, the cross-section rules (the model
        and the data against the layout on `world_size` GPUs) follow.
        """
        errors = [e for s in self.sections().values() for e in s.check()]
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            errors.append(f"world size {world_size!r}; it must be at least 1 GPU (--world-size, or TP x PP x CP x DP).")
        if not errors:
            errors = model_layout_errors(self.model, self.parallel) + data_layout_errors(self, world_size) + cuda_graph_errors(self)
            errors += fp8_errors(self)
        if errors:
            raise ConfigError("config cannot run:\n  - " + "\n  - ".join(errors))
        m, p = self.model, self.parallel
        notes = []
        if p.virtual_pipeline_model_parallel_size and p.pipeline_model_parallel_size == 2 and not p.batch_p2p_comm:
            notes.append("interleaved pipeline with PP=2: batched p2p is off (megatron-core bug, Megatron-LM #750).")
        if p.sequence_parallel and p.tensor_model_parallel_size == 1:
            notes.append("sequence_parallel has no effect with TP=1; it is off.")
        if m.vocab_size != self.padded_vocab_size:
            notes.append(f"vocabulary padded {m.vocab_size} -> {self.padded_vocab_size} (multiple of "
                         f"{m.make_vocab_size_divisible_by} x TP {p.tensor_model_parallel_size}).")
        return notes

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def field_docs(cls: type) -> dict[str, str]:
    """{field name: one-line doc} for a config section."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def __getattr__(name: str) -> Any:
    # The loader lives in config_load.py (it builds these sections); its names stay importable
    # from here. Imported on first use, as config_load imports this module.
    if name in ("load_config", "from_dict", "parse_override"):
        from megaindex import config_load

        return getattr(config_load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
