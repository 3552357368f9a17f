"""The transformers evaluation engine: greedy generation with a KV cache, and the same scores.

Owns running a stock `LlamaForCausalLM` (SDPA attention) for evaluation: loaded from an HF directory
(megaindex.convert.parity.build_hf: stock Llama, or Index's norm_head layout without remote code),
or exported in memory from a megaindex checkpoint with the converter's own code
(megaindex.convert.to_hf: open_for_export + hf_tensors, the Norm-Head baked into lm_head as in a
`--format llama` export) — one model implementation, no second one. RoPE variants go through
transformers' own `rope_parameters` (megaindex.model.rope_variants.hf_rope_parameters) and a fresh rotary
module; HF's dynamic NTK keeps the longest length it has seen, so scoring calls start from a
fresh module (s = this sequence's length, like the megatron engine) and generation grows it as
transformers does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from megaindex.data.tokenizer import EOS, IndexTokenizer
from megaindex.eval import EvalError
from megaindex.eval.engine import Forced, LengthLimit, forced_from_argmax, open_tokenizer
from megaindex.model.rope_variants import RopeVariant, hf_rope_parameters, variant_from_hf_config

LOGIT_BLOCK = 2048


def _device_and_dtype(dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device()), dtype or torch.bfloat16
    return torch.device("cpu"), dtype or torch.float32


class _Stream:
    """transformers' streamer protocol: put() gets the prompt first, then each new token."""

    def __init__(self, on_token: Callable[[int], None], stop_ids: tuple[int, ...]):
        self.on_token, self.stop_ids, self.prompt_seen, self.stopped = on_token, set(stop_ids), False, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            if self.stopped or t in self.stop_ids:
                self.stopped = True
                return
            self.on_token(int(t))

    def end(self) -> None:
        pass


class HFEngine(LengthLimit):
    name = "hf"

    def __init__(self, model, tokenizer: IndexTokenizer, *, base: float, train_length: int, rope: RopeVariant,
                 max_length: int | None = None):
        self.model, self.tokenizer, self.base, self.train_length = model.eval(), tokenizer, float(base), train_length
        self._max_length_override = max_length
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.set_rope(rope)

    @classmethod
    def from_hf_dir(cls, path: Path, *, rope: RopeVariant | None = None, train_length: int | None = None,
                    tokenizer_model=None, max_length: int | None = None, dtype: torch.dtype | None = None) -> "HFEngine":
        from megaindex.convert.hf_config import ConversionError, read_hf_config
        from megaindex.convert.parity import build_hf

        device, dtype = _device_and_dtype(dtype)
        try:
            raw = read_hf_config(path)
            own, own_length = variant_from_hf_config(raw)
            model = build_hf(path, dtype).to(device)
        except (ConversionError, OSError, ValueError) as e:
            raise EvalError(f"{path}: cannot load the HF model: {e}") from None
        tokenizer = open_tokenizer([tokenizer_model, Path(path) / "tokenizer.model"], str(path))
        base = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta", 10000.0))
        return cls(model, tokenizer, base=base, train_length=train_length or own_length, rope=rope or own, max_length=max_length)

    @classmethod
    def from_checkpoint(cls, ckpt: Path, *, rope: RopeVariant | None = None, train_length: int | None = None,
                        tokenizer_model=None, tokenizer: IndexTokenizer | None = None, max_length: int | None = None,
                        dtype: torch.dtype | None = None) -> "HFEngine":
        """Export megaindex checkpoint `ckpt` into a transformers model in memory (no files)."""
        from transformers import LlamaConfig, LlamaForCausalLM

        from megaindex.convert.hf_config import ConversionError, hf_config_dict
        from megaindex.convert.to_hf import hf_tensors, open_for_export

        device, dtype = _device_and_dtype(dtype)
        try:
            cfg, reader, arch, tied = open_for_export(Path(ckpt))
            config = LlamaConfig(**hf_config_dict(cfg.model, "llama", str(dtype).removeprefix("torch.")))
            with torch.device("meta"):
                model = LlamaForCausalLM(config)
            state = dict(hf_tensors(reader, arch, tied=tied, bake=cfg.model.norm_head, out_dtype=dtype))
        except ConversionError as e:
            raise EvalError(str(e)) from None
        model.load_state_dict(state, strict=True, assign=True)
        model.model.rotary_emb = type(model.model.rotary_emb)(config)  # built on meta; set_rope rebuilds it anyway
        model.to(device)
        if tokenizer is None:
            m = cfg.data.tokenizer_model
            tokenizer = open_tokenizer([tokenizer_model, m, Path(ckpt) / m if m else None,
                                        Path(ckpt) / "tokenizer" / "tokenizer.model"], str(ckpt))
        return cls(model, tokenizer, base=cfg.model.rotary_base, train_length=train_length or cfg.data.seq_length,
                   rope=rope or RopeVariant(), max_length=max_length)

    # ---- RoPE --------------------------------------------------------------------------------
    def set_rope(self, variant: RopeVariant) -> None:
        self.rope = variant
        config = self.model.config
        config.rope_parameters = hf_rope_parameters(variant, self.base, self.train_length) or {
            "rope_type": "default", "rope_theta": self.base}
        config.max_position_embeddings = self.train_length  # HF's dynamic formula reads L here
        self._fresh_rotary()

    def _fresh_rotary(self) -> None:
        rotary = self.model.model.rotary_emb
        self.model.model.rotary_emb = type(rotary)(self.model.config).to(self.device)

    # ---- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, seq: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        self._fresh_rotary()
        ids = torch.tensor([seq], dtype=torch.long, device=self.device)
        hidden = self.model.model(input_ids=ids).last_hidden_state[0]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        tgt = ids[0, pos + 1]
        am, lp = [], []
        for start in range(0, len(positions), LOGIT_BLOCK):
            p = pos[start:start + LOGIT_BLOCK]
            logits = self.model.lm_head(hidden[p])[:, :self.vocab_size].float()
            am.append(logits.argmax(-1))
            lp.append(torch.log_softmax(logits, -1).gather(-1, tgt[start:start + LOGIT_BLOCK, None])[:, 0])
        return torch.cat(am).cpu(), torch.cat(lp).double().cpu()

    def forced(self, items: list[tuple[list[int], list[int]]]) -> list[Forced]:
        self.check_items(items)
        out = []
        for prompt, answer in items:
            seq = list(prompt) + list(answer)
            am, lp = self._score(seq, list(range(len(prompt) - 1, len(seq) - 1)))
            out.append(forced_from_argmax(answer, am, lp))
        return out

    def nll(self, ids: list[int]) -> torch.Tensor:
        _, lp = self._score(list(ids), self.nll_positions(ids))
        return (-lp).float()

    # ---- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, *, repetition_penalty: float = 1.0,
                 stop_ids: tuple[int, ...] = (EOS,), on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy continuation (KV cache), without the stop token; `on_token` sees each new token."""
        if not prompt_ids:
            raise EvalError("generate needs a non-empty prompt.")
        self.check_length(len(prompt_ids) + max_new_tokens, f"the prompt ({len(prompt_ids)} tokens) + max_new_tokens {max_new_tokens}")
        self.check_ids(list(prompt_ids), "generate")
        self._fresh_rotary()
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            repetition_penalty=repetition_penalty, eos_token_id=list(stop_ids) or None, pad_token_id=EOS,
            streamer=_Stream(on_token, stop_ids) if on_token else None, use_cache=True,
        )
        new = [int(t) for t in out[0, len(prompt_ids):].tolist()]
        for i, t in enumerate(new):
            if t in stop_ids:
                return new[:i]
        return new
