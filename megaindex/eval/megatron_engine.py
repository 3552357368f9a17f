"""The megatron evaluation engine: the training model, packed forwards, scores at chosen positions.

Owns building the model for evaluation from a megaindex checkpoint of any layout (TP=PP=1, CP =
the torchrun world size; megaindex.model.build, so TE on GPU and the reference attention on CPU;
megaindex.checkpoint.load_model reshards), and forced scoring / per-token NLL:

* several sequences go into ONE packed THD forward (per-document attention and positions, as in
  training), up to `pack_tokens` tokens: by default the engine's max_length with Transformer Engine
  (its THD kernels skip cross-document pairs), 6 x hidden_size on the reference attention (it masks
  a full T x T score matrix, which costs as much as the linear layers at T = 6 x hidden);
* under CP every document is padded to a multiple of 2*CP and each rank computes its chunks
  (megaindex.cp_layout); the logits are computed only at the positions that are scored, in
  blocks (a 32K x 65K fp32 logits tensor would be 8.5 GB), through GPTModel's output_processor
  hook; per-position results are summed over the CP group so every rank returns the same;
* argmax is taken over the real (unpadded) vocabulary: padded rows are -inf (output_layer).

Generation goes through transformers with a KV cache (megaindex.eval.hf_engine) on an in-memory
export of the same checkpoint, built on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from megaindex.config_fp8 import without_fp8
from megaindex.data.tokenizer import EOS, IndexTokenizer
from megaindex.eval import EvalError
from megaindex.eval.engine import Forced, LengthLimit, forced_from_argmax, open_tokenizer
from megaindex.model.rope_variants import RopeVariant, apply_rope_variant

LOGIT_BLOCK = 2048  # positions per output-layer block (2048 x 65K fp32 logits = 0.5 GB)


def eval_config(cfg, cp: int):
    """The checkpoint's config turned into a one-replica evaluation layout: TP=PP=1, CP=`cp`, no
    recompute/FP8; fields only training reads are set so that validate() accepts the layout."""
    p = cfg.parallel
    p.tensor_model_parallel_size = p.pipeline_model_parallel_size = 1
    p.virtual_pipeline_model_parallel_size = None
    p.context_parallel_size = cp
    p.sequence_parallel = False
    p.hierarchical_context_parallel_sizes = None
    if p.cp_comm_type == "a2a+p2p":
        p.cp_comm_type = "p2p"
    cfg.train.recompute_granularity = None
    cfg.train = without_fp8(cfg.train)
    cfg.data.seq_length = 2 * cp
    cfg.data.micro_batch_size = 1
    cfg.data.global_batch_tokens = 2 * cp
    cfg.data.context_length_warmup = []
    cfg.data.loss_weighting = "token"
    return cfg


class MegatronEngine(LengthLimit):
    name = "megatron"

    def __init__(self, model, cfg, tokenizer: IndexTokenizer, *, train_length: int, rope: RopeVariant,
                 max_length: int | None = None, checkpoint: Path | None = None, pack_tokens: int | None = None):
        """`model`: a GPTModel chunk holding the whole model (PP=1) on this rank; any CP."""
        from megaindex.distributed import current_layout

        layout = current_layout()
        if not (model.pre_process and model.post_process):
            raise EvalError("the megatron engine needs the whole model on each rank (PP = 1): this chunk is one pipeline stage.")
        if layout.tp > 1:  # logits would be vocabulary shards
            raise EvalError("the megatron engine scores with TP = 1 (CP splits long sequences instead); "
                            f"this model is split over TP = {layout.tp} ranks.")
        self.model, self.cfg, self.tokenizer, self.train_length = model.eval(), cfg, tokenizer, train_length
        self.checkpoint = checkpoint
        self._max_length_override = max_length
        self.cp_group, self.cp, self.cp_rank = layout.cp_group, layout.cp, layout.cp_rank
        self.device = next(model.parameters()).device
        self.vocab_size = cfg.model.vocab_size
        self.pack_tokens = pack_tokens
        self._hf = None
        self.set_rope(rope)

    @classmethod
    def from_checkpoint(cls, ckpt: Path, *, rope: RopeVariant, train_length: int | None = None,
                        tokenizer_model=None, max_length: int | None = None, precision: str = "auto") -> "MegatronEngine":
        from megaindex.checkpoint import CONFIG_FILE, CheckpointError, load_model
        from megaindex.config import ConfigError
        from megaindex.config_load import load_config
        from megaindex.distributed import init_distributed, init_single_process
        from megaindex.model.build import build_model

        try:
            cfg = load_config(Path(ckpt) / CONFIG_FILE)
        except ConfigError as e:
            raise EvalError(f"{ckpt}: {e}") from None
        train_length = train_length or cfg.data.seq_length
        tokenizer = open_tokenizer([tokenizer_model, cfg.data.tokenizer_model,
                                    Path(ckpt) / cfg.data.tokenizer_model if cfg.data.tokenizer_model else None,
                                    Path(ckpt) / "tokenizer" / "tokenizer.model"], str(ckpt))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        eval_config(cfg, world)
        cfg.train.precision = precision
        if world > 1:
            init_distributed(cfg)
        else:
            init_single_process()
        model = build_model(cfg, pre_process=True, post_process=True)
        try:
            load_model([model], ckpt, cfg)
        except CheckpointError as e:
            raise EvalError(str(e)) from None
        return cls(model, cfg, tokenizer, train_length=train_length, rope=rope, max_length=max_length, checkpoint=Path(ckpt))

    # ---- RoPE --------------------------------------------------------------------------------
    def set_rope(self, variant: RopeVariant) -> None:
        self.rope = variant
        self._rotary = apply_rope_variant(self.model, variant, train_length=self.train_length)
        if self._hf is not None:
            self._hf.set_rope(variant)

    # ---- scoring -----------------------------------------------------------------------------
    def forced(self, items: list[tuple[list[int], list[int]]]) -> list[Forced]:
        """One forward over prompt + gold answer per item (several items per packed forward)."""
        self.check_items(items)
        if not items:
            return []
        seqs = [list(p) + list(a) for p, a in items]
        wanted = [list(range(len(p) - 1, len(s) - 1)) for (p, _), s in zip(items, seqs)]
        out: list[Forced] = []
        for group in self._groups([len(s) for s in seqs]):
            results = self._score([seqs[i] for i in group], [wanted[i] for i in group])
            out.extend(forced_from_argmax(items[i][1], am, lp) for i, (am, lp) in zip(group, results))
        return out

    def nll(self, ids: list[int]) -> torch.Tensor:
        """fp32 [len(ids)-1]: -log p(ids[t+1] | ids[:t+1]) from one forward."""
        (_, lp), = self._score([list(ids)], [self.nll_positions(ids)])
        return (-lp).float()

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Consecutive items packed up to pack_tokens tokens per forward (default: module docstring)."""
        from megaindex.model.build import use_transformer_engine

        default = self.max_length if use_transformer_engine(self.cfg) else 6 * self.cfg.model.hidden_size
        budget = max(self.pack_tokens or default, max(lengths))
        groups, cur, used = [], [], 0
        for i, n in enumerate(lengths):
            if cur and used + n > budget:
                groups.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += n
        return groups + [cur] if cur else groups

    @torch.no_grad()
    def _score(self, seqs: list[list[int]], wanted: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each sequence: (argmax, log p(next token)) at its `wanted` positions (next = seq[pos+1])."""
        from megaindex.cp_layout import thd_partition_indices
        from megaindex.data.packing import round_up
        from megaindex.data.batch import packed_seq_params

        pad = 2 * self.cp if self.cp > 1 else 1
        padded = [round_up(len(s), pad) for s in seqs]
        total = sum(padded)
        tokens = torch.full((total,), EOS, dtype=torch.long)
        targets = torch.full((total,), -1, dtype=torch.long)
        cu, cu_pad, off = [0], [0], 0
        for s, n, want in zip(seqs, padded, wanted):
            t = torch.tensor(s, dtype=torch.long)
            tokens[off:off + len(s)] = t
            w = torch.tensor(want, dtype=torch.long)
            targets[off + w] = t[w + 1]
            cu.append(cu[-1] + len(s))
            cu_pad.append(off + n)
            off += n
        cu_t, cu_pad_t = torch.tensor(cu, dtype=torch.int32), torch.tensor(cu_pad, dtype=torch.int32)
        idx = thd_partition_indices(cu_pad_t, self.cp, self.cp_rank) if self.cp > 1 else torch.arange(total)
        local_tokens, local_targets = tokens[idx], targets[idx]
        batch = {"cu_seqlens": cu_t, "cu_seqlens_padded": cu_pad_t if pad > 1 else cu_t,
                 "max_seqlen": torch.tensor(max(padded), dtype=torch.int32)}
        psp = packed_seq_params({k: v.to(self.device) for k, v in batch.items()})
        self._rotary.documents = list(zip(padded, (len(s) for s in seqs)))
        sel = (local_targets >= 0).nonzero().squeeze(1)

        def score_positions(hidden_states, output_layer, output_weight, **_):
            h = hidden_states.index_select(0, sel.to(hidden_states.device))  # [k, 1, hidden]
            tgt = local_targets[sel].to(hidden_states.device)
            # a CP rank may hold none of the scored positions (all its chunks are prompt)
            am, lp = [tgt.new_empty(0)], [torch.empty(0, device=h.device)]
            for start in range(0, h.shape[0], LOGIT_BLOCK):
                logits, _ = output_layer(h[start:start + LOGIT_BLOCK], weight=output_weight)
                logits = logits[:, 0, :self.vocab_size].float()
                am.append(logits.argmax(-1))
                lp.append(torch.log_softmax(logits, -1).gather(-1, tgt[start:start + LOGIT_BLOCK, None])[:, 0])
            return torch.cat(am), torch.cat(lp)

        try:
            am, lp = self.model(local_tokens[None].to(self.device), None, None, packed_seq_params=psp,
                                output_processor=score_positions)
        finally:
            self._rotary.documents = None
        argmax = torch.zeros(total, dtype=torch.long, device=self.device)
        logprob = torch.zeros(total, dtype=torch.float64, device=self.device)
        pos = idx[sel].to(self.device)
        argmax[pos], logprob[pos] = am, lp.double()
        if self.cp > 1:  # each position was computed by exactly one CP rank
            torch.distributed.all_reduce(argmax, group=self.cp_group)
            torch.distributed.all_reduce(logprob, group=self.cp_group)
        argmax, logprob = argmax.cpu(), logprob.cpu()
        out, off = [], 0
        for n, want in zip(padded, wanted):
            w = torch.tensor(want, dtype=torch.long) + off
            out.append((argmax[w], logprob[w]))
            off += n
        return out

    # ---- generation --------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], max_new_tokens: int, *, repetition_penalty: float = 1.0,
                 stop_ids: tuple[int, ...] = (EOS,), on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy decoding with a KV cache through transformers on an in-memory HF export of the
        same checkpoint (built on first use)."""
        if self._hf is None:
            if self.checkpoint is None:
                raise EvalError("generation needs the engine's checkpoint (engines built from an in-memory model cannot export).")
            from megaindex.eval.hf_engine import HFEngine

            self._hf = HFEngine.from_checkpoint(self.checkpoint, rope=self.rope, train_length=self.train_length,
                                                tokenizer=self.tokenizer, max_length=self._max_length_override)
        return self._hf.generate(prompt_ids, max_new_tokens, repetition_penalty=repetition_penalty,
                                 stop_ids=stop_ids, on_token=on_token)
