"""The typed configuration of a megaindex run.

Owns: the dataclass sections (model, parallel, data, optim, train, checkpoint, log), loading them
from YAML plus dotted command-line overrides (`optim.lr=1e-5`), dumping the resolved config back to
YAML, and `validate(world_size)`, which checks that a layout can run and explains why not in words.

Field names follow Megatron's (`tensor_model_parallel_size`, `seq_length`, ...) so that grep works
across both code bases. Every field carries a one-line doc in its metadata (`megaindex info` shows it).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from megaindex import presets


class ConfigError(ValueError):
    """A config that cannot run; the message says which field and what to do."""


def _f(default: Any, doc: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


@dataclass
class ModelConfig:
    preset: str | None = _f(None, "named architecture filled in first (index-1.9b, index-1.9b-32k, llama, tiny, tiny-llama)")
    num_layers: int = _f(0, "transformer layers")
    hidden_size: int = _f(0, "model width")
    num_attention_heads: int = _f(0, "query heads")
    num_query_groups: int | None = _f(None, "key/value heads (GQA); None = num_attention_heads (MHA)")
    ffn_hidden_size: int = _f(0, "SwiGLU intermediate size")
    vocab_size: int = _f(0, "tokenizer vocabulary before padding")
    make_vocab_size_divisible_by: int = _f(128, "pad the vocabulary to a multiple of this x TP (Megatron's rule)")
    norm_epsilon: float = _f(1e-6, "RMSNorm epsilon")
    norm_head: bool = _f(False, "Norm-Head: L2-normalise each output-embedding row on the fly (Index, Baichuan 2)")
    untie_embeddings_and_output_weights: bool = _f(True, "separate input embedding and LM head")
    rotary_base: int = _f(10000, "RoPE base (theta); 320000 for Index-1.9B-32K")
    max_position_embeddings: int = _f(4096, "longest sequence the RoPE cache is built for")
    init_method_std: float = _f(0.02, "std of the normal init for fresh weights")
    transformer_impl: Literal["auto", "transformer_engine", "local"] = _f(
        "auto", "auto = Transformer Engine when TE and CUDA are present, else megatron local modules + reference attention"
    )
    attention_backend: Literal["auto", "flash", "fused", "unfused"] = _f(
        "auto", "TE attention kernel choice (auto lets TE pick; fused = cuDNN)"
    )

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = _f(1, "TP: split each layer's matrices over this many GPUs")
    pipeline_model_parallel_size: int = _f(1, "PP: split the layers into this many stages")
    virtual_pipeline_model_parallel_size: int | None = _f(None, "virtual stages per PP rank (interleaved 1F1B); None = plain 1F1B")
    context_parallel_size: int = _f(1, "CP: split each sequence over this many GPUs (ring attention)")
    cp_comm_type: Literal["p2p", "a2a", "a2a+p2p"] = _f("p2p", "CP communication: TE ring (p2p), all-to-all, or hierarchical")
    hierarchical_context_parallel_sizes: list[int] | None = _f(None, "inner/outer CP group sizes for cp_comm_type a2a+p2p")
    sequence_parallel: bool = _f(True, "shard norms/dropout activations over TP (only meaningful with TP > 1)")
    use_distributed_optimizer: bool = _f(True, "shard optimizer state over data-parallel ranks (ZeRO-1)")
    overlap_grad_reduce: bool = _f(False, "overlap DP gradient reduce-scatter with backward")
    overlap_param_gather: bool = _f(False, "overlap DP parameter all-gather with the next forward")
    batch_p2p_comm: bool | None = _f(None, "batch PP send/recv; None = auto (off for interleaved PP=2, an upstream bug)")


@dataclass
class DataConfig:
    kind: Literal["pretrain", "sft"] = _f("pretrain", "pretrain = packed documents (stage 1); sft = chat with response-only loss (stage 2)")
    data_path: list[str] = _f([], "dataset prefixes (.bin/.idx) or JSONL files; 'W PATH' entries give blend weights")
    valid_data_path: list[str] = _f([], "held-out data; empty = split off the training data by `split`")
    split: str = _f("99,1,0", "train,valid,test ratio when valid_data_path is empty")
    tokenizer_model: str | None = _f(None, "SentencePiece tokenizer.model (Index layout: <unk>0 <s>1 </s>2 reserved_0 3 reserved_1 4)")
    seq_length: int = _f(4096, "tokens per packed sample")
    micro_batch_size: int = _f(1, "samples per GPU per forward/backward")
    global_batch_tokens: int = _f(4194304, "tokens per optimizer step over all DP ranks (4M stage 1, 1M stage 2)")
    packing: Literal["reset", "concat"] = _f("reset", "reset = per-document attention and positions (report recipe); concat = plain causal concatenation")
    loss_weighting: Literal["token", "longalign"] = _f("token", "token = mean over target tokens; longalign = 1/(M*N_i) per token (SFT)")
    sorted_batching: bool = _f(False, "LongAlign sorted batching: group similar lengths, shuffle batch order")
    sft_overlength: Literal["drop", "truncate"] = _f("drop", "conversation longer than seq_length: drop (counted) or truncate earliest turns")
    num_epochs: int | None = _f(None, "passes over the data; None = as many as train_iters needs")
    context_length_warmup: list[list[int]] = _f([], "opt-in [[until_step, seq_length], ...] schedule (report: loss rebounds; off)")
    num_workers: int = _f(2, "DataLoader worker processes per rank")
    cache_dir: str | None = _f(None, "where packed-sample indices are cached; None = next to the data")
    seed: int = _f(1234, "shuffle seed (same seed, same samples)")
    pad_to_multiple_of: int | None = _f(None, "pad every packed piece to a multiple of this; None = 2*CP (set e.g. 4 at CP=1 to get CP=2's samples)")

    @property
    def global_batch_size(self) -> int:
        """Global batch in sequences (Megatron's `global_batch_size`)."""
        return self.global_batch_tokens // self.seq_length


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "peak learning rate")
    min_lr: float = _f(0.0, "learning rate at the end of the decay")
    lr_decay_style: Literal["cosine", "linear", "constant"] = _f("cosine", "decay after warmup")
    lr_warmup_iters: int = _f(0, "linear warmup steps")
    lr_decay_iters: int | None = _f(None, "decay length in steps; None = train_iters")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (not on norms)")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.95, "Adam beta2")
    adam_eps: float = _f(1e-8, "Adam epsilon")
    clip_grad: float = _f(1.0, "global gradient-norm clip")


@dataclass
class TrainConfig:
    train_iters: int = _f(1000, "optimizer steps")
    precision: Literal["auto", "bf16", "fp32"] = _f("auto", "auto = bf16 on GPU, fp32 on CPU")
    fp8: Literal[None, "e4m3", "hybrid"] = _f(None, "TE FP8 format; None = off")
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = _f("delayed", "TE FP8 scaling recipe")
    recompute_granularity: Literal[None, "selective", "full"] = _f(None, "activation recompute: selective (attention core) or full layers")
    recompute_method: Literal["uniform", "block"] = _f("uniform", "full recompute: how layers are grouped")
    recompute_num_layers: int = _f(1, "full recompute: layers per group (uniform) or layers recomputed (block)")
    nan_policy: Literal["skip", "stop"] = _f("skip", "NaN/Inf loss or grad norm: skip the update (counted) or checkpoint and stop")
    eval_interval: int = _f(100, "validate every N steps (0 = never)")
    eval_iters: int = _f(10, "validation batches each time")
    seed: int = _f(1234, "init and dropout seed")
    run_dir: str = _f("runs/default", "where logs, metrics, plots and (by default) checkpoints go")
    exit_at_step: int | None = _f(None, "stop after this step with a checkpoint; a resumed run continues the same schedule")


@dataclass
class CheckpointConfig:
    save: str | None = _f(None, "checkpoint directory; None = RUN_DIR/checkpoints")
    save_interval: int = _f(500, "save every N steps and at the end (0 = never save, e.g. for benchmarks)")
    keep_last: int = _f(3, "keep this many newest checkpoints (0 = all)")
    load: str | None = _f(None, "resume from here; None = auto-resume from the save directory's `latest`")
    pretrained: str | None = _f(None, "start from these weights only (fresh optimizer and schedule), e.g. stage 1 -> stage 2")
    async_save: bool = _f(True, "write checkpoints in the background (GPU only)")
    fully_reshardable: bool = _f(True, "optimizer state in a layout loadable under any TP/PP/CP/DP")


@dataclass
class LogConfig:
    log_interval: int = _f(1, "console/metrics line every N steps")
    tensorboard: bool = _f(True, "write TensorBoard scalars under RUN_DIR/tensorboard")
    plot: bool = _f(True, "write a loss-curve PNG at the end of a run")
    peak_tflops: float = _f(989.0, "per-GPU dense bf16 peak for MFU (H100/H200 SXM: 989)")


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
    def batch_p2p_comm(self) -> bool:
        """Effective PP p2p batching: off for interleaved PP=2 (megatron-core gives wrong grads there)."""
        p = self.parallel
        if p.batch_p2p_comm is not None:
            return p.batch_p2p_comm
        return not (p.pipeline_model_parallel_size == 2 and p.virtual_pipeline_model_parallel_size)

    # ---- validation ---------------------------------------------------------------------
    def validate(self, world_size: int) -> list[str]:
        """Raise ConfigError listing every problem; return notes about derived settings."""
        errors, notes = [], []
        m, p, d = self.model, self.parallel, self.data
        tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
        vpp = p.virtual_pipeline_model_parallel_size
        for name, v in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp), ("context_parallel_size", cp)):
            if v < 1:
                errors.append(f"parallel.{name} is {v}; it must be at least 1.")
        if errors:
            raise ConfigError("\n".join(errors))

        mp = tp * pp * cp
        if world_size % mp:
            errors.append(
                f"world size {world_size} is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {mp}: "
                f"TP x PP x CP x DP must equal the number of GPUs; use a multiple of {mp} GPUs or change the layout."
            )
        dp = max(world_size // mp, 1)

        if m.num_layers <= 0 or m.hidden_size <= 0 or m.num_attention_heads <= 0:
            errors.append("model: num_layers, hidden_size and num_attention_heads must be set (or a model.preset).")
        else:
            if m.hidden_size % m.num_attention_heads:
                errors.append(f"model.hidden_size {m.hidden_size} is not divisible by num_attention_heads {m.num_attention_heads}.")
            if m.num_attention_heads % tp:
                errors.append(
                    f"model.num_attention_heads {m.num_attention_heads} is not divisible by "
                    f"parallel.tensor_model_parallel_size {tp}: each TP rank must hold whole heads."
                )
            if m.num_attention_heads % m.kv_heads:
                errors.append(f"model.num_attention_heads {m.num_attention_heads} is not divisible by num_query_groups {m.kv_heads}.")
            elif m.kv_heads % tp:
                errors.append(
                    f"model.num_query_groups {m.kv_heads} is not divisible by parallel.tensor_model_parallel_size {tp}."
                )
            stages = pp * (vpp or 1)
            if m.num_layers % stages:
                what = f"PP x VPP = {pp} x {vpp}" if vpp else f"PP = {pp}"
                errors.append(
                    f"model.num_layers {m.num_layers} is not divisible by {what} = {stages}: "
                    f"every pipeline stage needs the same number of layers."
                )
            if m.ffn_hidden_size % tp:
                errors.append(f"model.ffn_hidden_size {m.ffn_hidden_size} is not divisible by TP {tp}.")
        if m.vocab_size <= 0:
            errors.append("model.vocab_size must be set (or a model.preset).")

        if vpp and pp == 1:
            errors.append("parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1.")
        if vpp and pp == 2:
            if p.batch_p2p_comm:
                errors.append(
                    "parallel.batch_p2p_comm=true with interleaved PP=2 gives silently wrong gradients in megatron-core "
                    "(Megatron-LM #750); leave it unset (auto) or set it to false."
                )
            else:
                notes.append("interleaved pipeline with PP=2: batched p2p is off (megatron-core bug, Megatron-LM #750).")

        if cp > 1 and d.seq_length % (2 * cp):
            errors.append(
                f"data.seq_length {d.seq_length} is not divisible by 2 x context_parallel_size = {2 * cp}: "
                f"CP cuts every sequence into 2 x CP chunks for load balance."
            )
        if p.sequence_parallel and tp == 1:
            notes.append("sequence_parallel has no effect with TP=1; it is off.")
        elif p.sequence_parallel and (d.seq_length // cp) % tp:
            errors.append(
                f"data.seq_length {d.seq_length} / CP {cp} is not divisible by TP {tp}: sequence parallel "
                f"splits each CP rank's tokens over the TP ranks."
            )
        a2a_size = 0
        if cp > 1 and p.cp_comm_type == "a2a+p2p":
            sizes = p.hierarchical_context_parallel_sizes
            if not sizes or math.prod(sizes) != cp:
                errors.append(
                    f"parallel.cp_comm_type a2a+p2p needs hierarchical_context_parallel_sizes whose product is CP={cp}."
                )
            else:
                a2a_size = sizes[0]
        elif cp > 1 and p.cp_comm_type == "a2a":
            a2a_size = cp
        if a2a_size > 1:
            for what, heads in (("num_attention_heads", m.num_attention_heads), ("num_query_groups", m.kv_heads)):
                if heads % tp == 0 and (heads // tp) % a2a_size:
                    errors.append(
                        f"parallel.cp_comm_type {p.cp_comm_type}: model.{what} {heads} / TP {tp} is not divisible by the "
                        f"all-to-all group size {a2a_size} (a2a splits each rank's heads over it); use cp_comm_type p2p."
                    )
        if d.seq_length > m.max_position_embeddings > 0:
            errors.append(
                f"data.seq_length {d.seq_length} exceeds model.max_position_embeddings {m.max_position_embeddings}."
            )

        if d.global_batch_tokens % d.seq_length:
            errors.append(
                f"data.global_batch_tokens {d.global_batch_tokens} is not a multiple of data.seq_length {d.seq_length}: "
                f"a global batch is a whole number of sequences."
            )
        else:
            gbs = d.global_batch_size
            if gbs % (d.micro_batch_size * dp):
                errors.append(
                    f"global batch of {gbs} sequences (data.global_batch_tokens {d.global_batch_tokens} / seq_length "
                    f"{d.seq_length}) is not divisible by micro_batch_size x DP = {d.micro_batch_size} x {dp} = "
                    f"{d.micro_batch_size * dp}; change global_batch_tokens, micro_batch_size or the GPU count."
                )
        if vpp and not errors:
            nmb = d.global_batch_size // (d.micro_batch_size * dp)
            if nmb % pp:
                errors.append(
                    f"interleaved pipeline needs the number of micro-batches ({nmb}) to be a multiple of PP {pp}."
                )
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
        if self.train.fp8 and self.train.precision == "fp32":
            errors.append("train.fp8 needs train.precision bf16 (or auto on GPU).")
        if d.loss_weighting == "longalign" and d.kind != "sft":
            errors.append("data.loss_weighting longalign applies to SFT data (data.kind: sft).")

        if errors:
            raise ConfigError("config cannot run:\n  - " + "\n  - ".join(errors))
        if m.vocab_size != self.padded_vocab_size:
            notes.append(f"vocabulary padded {m.vocab_size} -> {self.padded_vocab_size} (multiple of {m.make_vocab_size_divisible_by} x TP {tp}).")
        return notes

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {k: v for k, v in hints.items() if dataclasses.is_dataclass(v)}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'.{hint} Known keys in this section: {', '.join(known)}")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert a YAML value to the field's annotated type, naming the field on failure."""
    origin = get_origin(typ)
    if origin is Literal:
        if value not in get_args(typ):
            choices = ", ".join(repr(a) for a in get_args(typ))
            raise ConfigError(f"{where} = {value!r} is not one of {choices}.")
        return value
    args = get_args(typ)
    if args and type(None) in args:  # Optional[X] / X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} = {value!r} must be true or false.")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} = {value!r} must be an integer.")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r} must be a number.")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r} must be a string.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} = {value!r} must be a list.")
        return value
    return value


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts; the model preset is applied before explicit fields."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections.")
    sections = _section_types()
    top_known = [f.name for f in dataclasses.fields(Config)]
    cfg = Config()
    for key, value in raw.items():
        if key not in top_known:
            raise _unknown(key, top_known, f"{source}: ")
        if key not in sections:
            setattr(cfg, key, _coerce(value, get_type_hints(Config)[key], f"{source}: {key}"))
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section '{key}' must be a mapping, got {value!r}.")
        cls = sections[key]
        hints = get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        values = dict(value)
        if key == "model" and values.get("preset"):
            try:
                values = {**presets.preset(values["preset"]), **values}
            except KeyError as e:
                raise ConfigError(f"{source}: model.preset: {e.args[0]}") from None
        kwargs = {}
        for k, v in values.items():
            if k not in known:
                raise _unknown(k, known, f"{source}: {key}.")
            kwargs[k] = _coerce(v, hints[k], f"{source}: {key}.{k}")
        setattr(cfg, key, cls(**kwargs))
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-5' -> (['optim', 'lr'], 1e-5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.field=value (e.g. optim.lr=1e-5).")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) not in (1, 2) or not all(parts):
        raise ConfigError(f"override '{text}': the key must be section.field (e.g. parallel.context_parallel_size).")
    # YAML reads 1e-5 as a string (it wants 1.0e-5); numbers users type should stay numbers.
    parsed = yaml.safe_load(value) if value.strip() else None
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
        except ValueError:
            pass
    return parts, parsed


def _fix_yaml_floats(node: Any) -> Any:
    """YAML 1.1 reads '1e-5' as a string; turn such strings back into numbers."""
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str):
        try:
            return float(node) if any(c in node for c in "eE") and node[0] in "0123456789.-+" else node
        except ValueError:
            return node
    return node


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a YAML recipe and apply dotted overrides; errors name the file and the key."""
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        raw = _fix_yaml_floats(raw)
        source = str(path)
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 1:
            raw[parts[0]] = value
        else:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"override '{text}': '{parts[0]}' is not a section.")
            section[parts[1]] = value
    return from_dict(raw, source)


def field_docs(cls: type) -> dict[str, str]:
    """{field name: one-line doc} for a config section."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
