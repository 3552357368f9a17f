"""The in-training long-context probe: a small passkey / needle grid on the model in memory.

Owns `Probe`, built by the trainer when the config's `eval.interval` is set: the samples of a small
grid (eval.tasks x eval.lengths x eval.depths x eval.repeats; naive RoPE, lengths default to the
training length) are built once, and every `eval.interval` steps `run(model)` scores them with
forced scoring through the evaluation engine (megaindex.eval.megatron_engine) on the live GPTModel
chunk, then puts the model back exactly as it was: its rotary module, RoPE fusion flag, YaRN
factors and train/eval mode. The returned scalars go into that step's metrics.jsonl line and
TensorBoard (train/probe_*): probe_passkey / probe_needle (0-100, mean over lengths) and
probe_passkey_<L> / probe_needle_<L> per length; beside each, the forced token accuracy in %
(probe_<task>_tokacc, probe_<task>_tokacc_<L>: the share of answer tokens the model gets right
under teacher forcing), which shows partial retrieval (a key copied but for its first digit)
growing before exact match moves.

Every rank runs the probe (CP ranks split each sequence as in training; DP ranks score the same
samples); it needs the whole model on each rank of a CP group, i.e. TP = PP = 1.
"""

from __future__ import annotations

import torch

from megaindex.eval import EvalError
from megaindex.eval.grid import EvalSpec
from megaindex.eval.haystack import Haystack, resolve_haystack
from megaindex.model.rope_variants import parse_rope
from megaindex.eval.run import build_samples, run_grid
from megaindex.eval.summary import summarize


class Probe:
    def __init__(self, cfg, tokenizer):
        p, e = cfg.parallel, cfg.eval
        if p.tensor_model_parallel_size > 1 or p.pipeline_model_parallel_size > 1:
            raise EvalError(
                f"eval.interval: the in-training probe scores the model held on each rank and needs TP = PP = 1 "
                f"(this run: TP {p.tensor_model_parallel_size}, PP {p.pipeline_model_parallel_size}); set eval.interval=0 "
                f"and run `megaindex eval` on the checkpoints instead."
            )
        self.cfg, self.tokenizer = cfg, tokenizer
        self.train_length = cfg.data.seq_length
        self.spec = EvalSpec(tasks=list(e.tasks), lengths=sorted(set(e.lengths or [self.train_length])),
                             depths=sorted({float(d) for d in e.depths}), repeats=e.repeats,
                             variants=[parse_rope("naive")], batch_size=64)
        hay = Haystack.from_files(resolve_haystack(e.haystack, cfg), tokenizer) if "needle" in e.tasks else None
        self.samples = build_samples(self.spec, tokenizer, hay)

    def due(self, step: int) -> bool:
        return step % self.cfg.eval.interval == 0 or step == self.cfg.train.train_iters

    @torch.no_grad()
    def run(self, model) -> dict[str, float]:
        """Score the probe on `model` (a GPTModel holding every layer) and restore it; {name: value}."""
        from megaindex.eval.megatron_engine import MegatronEngine

        rotary, fusion, training = model.rotary_pos_emb, model.config.apply_rope_fusion, model.training
        yarn = {m: m._yarn_concentration_factor for m in model.modules() if hasattr(m, "_yarn_concentration_factor")}
        try:
            engine = MegatronEngine(model, self.cfg, self.tokenizer, train_length=self.train_length,
                                    rope=self.spec.variants[0], max_length=max(self.spec.lengths))
            results = list(run_grid(engine, self.spec, self.samples))
        finally:
            model.rotary_pos_emb = rotary
            model.config.apply_rope_fusion = fusion
            for m, v in yarn.items():
                m._yarn_concentration_factor = v
            model.train(training)
        out: dict[str, float] = {}
        summary = summarize(results)
        for task, s in summary.items():
            if task == "meta":
                continue
            (s,) = s.values()  # one variant
            out[f"probe_{task}"] = s["overall"] * (100 if task == "passkey" else 1)
            per_length = s["accuracy_by_length"] if task == "passkey" else s["by_length"]
            for length, v in per_length.items():
                out[f"probe_{task}_{length}"] = v * (100 if task == "passkey" else 1)
            if "token_accuracy" in s:
                out[f"probe_{task}_tokacc"] = 100 * s["token_accuracy"]
                for length, v in s["token_accuracy_by_length"].items():
                    out[f"probe_{task}_tokacc_{length}"] = 100 * v
        return out
