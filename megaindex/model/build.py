"""Build the Index model as a megatron-core GPTModel.

Owns: the choice between Transformer Engine modules (TE present and CUDA available) and megatron's
local modules plus the reference attention (everything else), the TransformerConfig derived from a
megaindex Config (FP8 fields included; whether this GPU can run them is checked before building), and the construction of one model chunk per virtual pipeline stage. GPTModel is
constructed only here (megatron 0.19 deprecates it in favour of a newer class: one place to swap).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_submodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayer

from megaindex.config import Config, ConfigError
from megaindex.config_fp8 import fp8_device_errors
from megaindex.distributed import ParallelLayout, current_layout
from megaindex.model.lm_loss import configure_lm_loss, megatron_fusion_fields
from megaindex.model.output_layer import configure_output_layer
from megaindex.model.reference_attention import ReferenceAttention

log = logging.getLogger(__name__)


def te_available() -> bool:
    """Transformer Engine's torch extension is importable and a GPU is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def _have_apex_wgrad_fusion() -> bool:
    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


def use_transformer_engine(cfg: Config) -> bool:
    impl = cfg.model.transformer_impl
    if impl == "transformer_engine":
        if not te_available():
            raise ConfigError(
                "model.transformer_impl=transformer_engine but Transformer Engine or CUDA is missing; "
                "install the `gpu` extra on a GPU node or set model.transformer_impl=auto."
            )
        return True
    return impl == "auto" and te_available()


def params_dtype(cfg: Config) -> torch.dtype:
    prec = cfg.train.precision
    if prec == "auto":
        prec = "bf16" if torch.cuda.is_available() else "fp32"
    return torch.bfloat16 if prec == "bf16" else torch.float32


class TorchRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm usable under sequence parallelism (megatron's WrappedTorchNorm refuses SP).

    Under SP each TP rank normalises its own slice of tokens, so the weight gradient is partial
    and must be summed over TP: tagging the weight `sequence_parallel` makes megatron's
    finalize_model_grads do exactly that.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel


def block_spec(tf_config: TransformerConfig, use_te: bool, vp_stage: int | None = None) -> ModuleSpec:
    """The decoder spec: TE fused modules, or local modules + reference attention + TorchRMSNorm."""
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()  # block norm: TENorm
    sub = get_gpt_layer_local_submodules(normalization="RMSNorm")
    sub.input_layernorm = TorchRMSNorm
    sub.pre_mlp_layernorm = TorchRMSNorm
    sub.self_attention.submodules.core_attention = ReferenceAttention
    layer = ModuleSpec(module=TransformerLayer, submodules=sub)
    n = get_num_layers_to_build(tf_config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock, submodules=TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=TorchRMSNorm))


def to_transformer_config(cfg: Config, *, use_te: bool | None = None, world_size: int | None = None) -> TransformerConfig:
    """megatron TransformerConfig for this recipe (layout fields from cfg.parallel)."""
    use_te = use_transformer_engine(cfg) if use_te is None else use_te
    m, p, t = cfg.model, cfg.parallel, cfg.train
    dtype = params_dtype(cfg)
    on_gpu = torch.cuda.is_available()
    sp = p.sequence_parallel and p.tensor_model_parallel_size > 1
    kw = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.kv_heads,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size,
        cp_comm_type=p.cp_comm_type,
        hierarchical_context_parallel_sizes=p.hierarchical_context_parallel_sizes,
        sequence_parallel=sp,
        batch_p2p_comm=cfg.batch_p2p_comm,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        # fused kernels exist on GPU only
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=use_te,
        persist_layer_norm=False,
        # wgrads straight into the fp32 main_grad buffers; megatron's own linears need apex for it
        gradient_accumulation_fusion=use_te and _have_apex_wgrad_fusion(),
        use_cpu_initialization=not on_gpu,
        recompute_granularity=t.recompute_granularity,
        recompute_method=t.recompute_method if t.recompute_granularity == "full" else None,
        recompute_num_layers=t.recompute_num_layers if t.recompute_granularity == "full" else None,
        deallocate_pipeline_outputs=True,
        **megatron_fusion_fields(cfg),
    )
    if use_te and m.attention_backend != "auto":
        from megatron.core.transformer.enums import AttnBackend

        kw["attention_backend"] = AttnBackend[m.attention_backend]
    if t.fp8:
        start, end = t.num_layers_at_start_in_bf16, t.num_layers_at_end_in_bf16
        kw.update(fp8=t.fp8, fp8_recipe=t.fp8_recipe, fp8_dot_product_attention=t.fp8_dot_product_attention,
                  first_last_layers_bf16=bool(start or end), num_layers_at_start_in_bf16=start, num_layers_at_end_in_bf16=end)
    return TransformerConfig(**kw)


def check_fp8_can_run(cfg: Config, use_te: bool) -> None:
    """ConfigError unless this process can run cfg's FP8 settings (config_fp8.py has the rules): without
    TE megatron's fp8 context is a no-op, so an FP8 run would silently train in bf16/fp32."""
    if not cfg.train.fp8:
        return
    if not use_te:
        raise ConfigError("train.fp8 needs Transformer Engine on a GPU (this process builds megatron's local modules, "
                          "where FP8 is silently ignored); run on a GPU node with TE or set train.fp8=null.")
    errors = fp8_device_errors(cfg, torch.cuda.get_device_capability(), os.environ, torch.version.cuda)
    if errors:
        raise ConfigError("config cannot run on this GPU:\n  - " + "\n  - ".join(errors))


def build_model(
    cfg: Config,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    use_te: bool | None = None,
    tf_config: TransformerConfig | None = None,
    layout: ParallelLayout | None = None,
) -> GPTModel:
    """One GPTModel chunk for this rank (the parallel groups must exist; `layout` defaults to theirs)."""
    use_te = use_transformer_engine(cfg) if use_te is None else use_te
    check_fp8_can_run(cfg, use_te)
    tf_config = tf_config or to_transformer_config(cfg, use_te=use_te)
    layout = layout or current_layout()
    if pre_process is None:
        pre_process = layout.holds_first_layer(vp_stage)
    if post_process is None:
        post_process = layout.holds_last_layer(vp_stage)
    model = GPTModel(
        config=tf_config,
        transformer_layer_spec=block_spec(tf_config, use_te, vp_stage),
        vocab_size=cfg.padded_vocab_size,
        max_sequence_length=cfg.model.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=cfg.model.rotary_base,
        vp_stage=vp_stage,
    )
    if post_process:
        if cfg.model.norm_head and not cfg.model.untie_embeddings_and_output_weights:
            raise ValueError("model.norm_head needs untied embeddings (the head is normalised, the embedding is not).")
        configure_output_layer(model.output_layer, norm_head=cfg.model.norm_head, vocab_size=cfg.model.vocab_size)
        configure_lm_loss(model, cfg, use_te=use_te)
    _zero_padded_vocab_rows(model, cfg.model.vocab_size, layout.tp_rank)
    return model


def build_model_chunks(cfg: Config, *, use_te: bool | None = None, layout: ParallelLayout | None = None) -> list[GPTModel]:
    """All model chunks of this rank: one, or one per virtual pipeline stage."""
    use_te = use_transformer_engine(cfg) if use_te is None else use_te
    tf_config = to_transformer_config(cfg, use_te=use_te)
    layout = layout or current_layout()
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    if not vpp:
        return [build_model(cfg, use_te=use_te, tf_config=tf_config, layout=layout)]
    return [build_model(cfg, vp_stage=i, use_te=use_te, tf_config=tf_config, layout=layout) for i in range(vpp)]


@torch.no_grad()
def _zero_padded_vocab_rows(model: GPTModel, vocab_size: int, tp_rank: int) -> None:
    """Padded vocabulary rows start (and, see output_layer, stay) at zero."""
    weights = []
    if model.pre_process:
        weights.append(model.embedding.word_embeddings.weight)
    if model.post_process and model.output_layer.weight is not None:
        weights.append(model.output_layer.weight)
    for w in weights:
        if w.device.type == "meta":
            continue
        rows = w.shape[0]
        start = tp_rank * rows
        if start + rows > vocab_size:
            w[max(vocab_size - start, 0):].zero_()
