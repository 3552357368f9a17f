"""The evaluation engine interface and `load_engine`.

Owns the contract every task uses (`Engine`: forced scoring, per-token NLL, greedy generation, RoPE
variants), the result of one forced score (`Forced`), and turning a path into an engine:

* a megaindex checkpoint directory (any TP/PP/CP layout, model or training kind), a save directory
  or run directory whose `latest` names one, or the `latest` file itself;
* an HF directory (config.json + safetensors, stock `LlamaForCausalLM` as tools/convert_to_hf.py
  writes).

Engines: "megatron" (megaindex.eval.megatron_engine: the training model, TE on GPU and the reference
attention on CPU, packed THD forwards, CP under torchrun) and "hf" (megaindex.eval.hf_engine:
transformers with SDPA and a KV cache; a megaindex checkpoint is exported to it in memory with the
converter's code). Lengths are always counted in the model's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from megaindex.data.tokenizer import EOS, IndexTokenizer, TokenizerError
from megaindex.eval import EvalError
from megaindex.model.rope_variants import RopeVariant, RopeVariantError, parse_rope

ENGINES = ("megatron", "hf")


@dataclass
class Forced:
    """One forced-scoring result."""

    exact: bool                 # argmax == gold at every answer position
    logprob: float              # sum of log p(gold answer tokens | prompt)
    argmax_ids: list[int] = field(default_factory=list)  # the model's argmax at the answer positions


class Engine(Protocol):
    name: str                   # "megatron" | "hf"
    train_length: int           # the length the model was trained at (checkpoint/config)
    max_length: int             # longest prompt+answer this engine/variant accepts
    tokenizer: IndexTokenizer
    rope: RopeVariant           # the variant in use

    def forced(self, items: list[tuple[list[int], list[int]]]) -> list[Forced]: ...

    def nll(self, ids: list[int]) -> torch.Tensor: ...

    def generate(self, prompt_ids: list[int], max_new_tokens: int, *, repetition_penalty: float = 1.0,
                 stop_ids: tuple[int, ...] = (EOS,), on_token: Callable[[int], None] | None = None) -> list[int]: ...

    def set_rope(self, variant: RopeVariant) -> None: ...


# ---- shared by both engines -----------------------------------------------------------------------
class LengthLimit:
    """train_length / max_length bookkeeping and the length checks both engines make."""

    train_length: int
    vocab_size: int
    rope: RopeVariant
    _max_length_override: int | None = None

    @property
    def max_length(self) -> int:
        if self._max_length_override:
            return self._max_length_override
        return self.rope.max_length(self.train_length)

    def check_items(self, items: list[tuple[list[int], list[int]]]) -> None:
        for i, (prompt, answer) in enumerate(items):
            if not prompt or not answer:
                raise EvalError(f"forced item {i}: prompt and answer must both be non-empty token lists.")
            self.check_length(len(prompt) + len(answer), f"forced item {i} (prompt {len(prompt)} + answer {len(answer)} tokens)")
            self.check_ids(list(prompt) + list(answer), f"forced item {i}")

    def check_ids(self, ids: list[int], what: str) -> None:
        """Token ids outside the vocabulary would index past the embedding (a device assert on GPU)."""
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise EvalError(f"{what}: token id {bad} is outside the model's vocabulary [0, {self.vocab_size}); "
                            f"was the text encoded with another tokenizer?")

    def nll_positions(self, ids: list[int]) -> list[int]:
        """Check a sequence for `nll` and return the positions whose next token it scores."""
        if len(ids) < 2:
            raise EvalError(f"nll needs at least 2 tokens, got {len(ids)}.")
        self.check_length(len(ids), "the sequence")
        self.check_ids(list(ids), "nll")
        return list(range(len(ids) - 1))

    def check_length(self, n: int, what: str) -> None:
        if n > self.max_length:
            hint = ("use a RoPE variant (e.g. dynamic:8), middle truncation, or pass max_length to allow naive "
                    "extrapolation" if self.rope.kind == "naive" else "use a larger factor or middle truncation")
            raise EvalError(
                f"{what} is {n} tokens, longer than {self.max_length}, what this model (trained at "
                f"{self.train_length} tokens) holds with RoPE {self.rope.name}; {hint}."
            )


def forced_from_argmax(answer: list[int], argmax: torch.Tensor, logprob: torch.Tensor) -> Forced:
    ids = [int(x) for x in argmax.tolist()]
    return Forced(exact=ids == list(answer), logprob=float(logprob.double().sum()), argmax_ids=ids)


def open_tokenizer(candidates: list[Path | str | None], source: str) -> IndexTokenizer:
    """The first existing tokenizer.model among candidates; a clear error when none exists."""
    tried = [Path(c) for c in candidates if c]
    for p in tried:
        if p.is_file():
            try:
                return IndexTokenizer(p)
            except TokenizerError as e:
                raise EvalError(str(e)) from None
    raise EvalError(
        f"no tokenizer.model for {source} (tried {', '.join(map(str, tried)) or 'nothing'}); pass tokenizer_model "
        f"(--tokenizer) with the SentencePiece model the checkpoint was trained with."
    )


# ---- paths ----------------------------------------------------------------------------------------
def resolve_path(path: str | Path) -> tuple[str, Path]:
    """("megaindex" | "hf", directory) for a checkpoint path; EvalError naming the path otherwise."""
    from megaindex.checkpoint import LATEST_FILE, META_FILE, CheckpointError, latest_checkpoint

    p = Path(path)
    if not p.exists():
        raise EvalError(f"checkpoint {p} does not exist; pass a megaindex checkpoint directory, a run's "
                        f"checkpoints/ directory (its `latest` is used) or an HF directory.")
    if p.is_file() and p.name == LATEST_FILE:
        p = p.parent
    try:
        for save_dir in (p, p / "checkpoints"):
            if (save_dir / LATEST_FILE).is_file():
                return "megaindex", latest_checkpoint(save_dir)
    except CheckpointError as e:
        raise EvalError(str(e)) from None
    if (p / META_FILE).is_file():
        return "megaindex", p
    if (p / "config.json").is_file():
        return "hf", p
    raise EvalError(f"{p} is neither a megaindex checkpoint ({META_FILE}), a directory with a `latest` "
                    f"pointer, nor an HF directory (config.json).")


def load_engine(path: str | Path, *, engine: str = "megatron", rope: RopeVariant | str | None = None,
                train_length: int | None = None, tokenizer_model: str | Path | None = None,
                max_length: int | None = None) -> Engine:
    """An engine for `path` (see the module docstring) with RoPE variant `rope` (default: naive, or
    the variant an HF directory's config carries).

    train_length: the length the model was trained at; default from the checkpoint (data.seq_length
    of a megaindex checkpoint, max_position_embeddings or YaRN's original length of an HF config).
    max_length: accept sequences up to this many tokens whatever the variant (e.g. naive
    extrapolation past the training length); default the variant's own limit (L, or factor x L).
    Under torchrun with several processes the megatron engine splits every sequence over them
    (context parallelism); every rank must make the same calls.
    """
    if engine not in ENGINES:
        raise EvalError(f"engine {engine!r} is not one of {', '.join(ENGINES)}.")
    try:
        variant = None if rope is None else parse_rope(rope)
    except RopeVariantError as e:
        raise EvalError(str(e)) from None
    kind, resolved = resolve_path(path)
    if engine == "megatron":
        if kind == "hf":
            raise EvalError(f"{resolved} is an HF directory; the megatron engine reads megaindex checkpoints "
                            f"(convert with tools/convert_from_hf.py) — or use the hf engine.")
        from megaindex.eval.megatron_engine import MegatronEngine

        return MegatronEngine.from_checkpoint(resolved, rope=variant or RopeVariant(), train_length=train_length,
                                              tokenizer_model=tokenizer_model, max_length=max_length)
    from megaindex.eval.hf_engine import HFEngine

    if kind == "hf":
        return HFEngine.from_hf_dir(resolved, rope=variant, train_length=train_length,
                                    tokenizer_model=tokenizer_model, max_length=max_length)
    return HFEngine.from_checkpoint(resolved, rope=variant, train_length=train_length,
                                    tokenizer_model=tokenizer_model, max_length=max_length)
