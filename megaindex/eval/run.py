"""Running an evaluation grid on an engine: samples, length checks, scoring, one result per sample.

Owns `build_samples` (every needle / passkey / ppl sample of an EvalSpec, built once and shared by
all RoPE variants), `needed_length` and `check_lengths` (a length no variant can hold is an error
unless middle truncation is on), and `run_grid`, which sets each variant on the engine, scores the
samples in batches and yields one result dict per sample:

  needle/passkey: task, variant, lang, length (prompt + gold answer tokens), input_length (the
    prompt the model read, after any truncation), depth, actual_depth, repeat, prediction, gold, score, exact,
    token_accuracy, logprob, truncated
  ppl: task, variant, lang, length, repeat, nll_mean, ppl, buckets [[start, end, nll sum, count]],
    concatenated

Predictions are the model's argmax at the answer positions of one forward over prompt + gold answer
(forced scoring; equal to greedy decoding whenever the answer is right) or, with spec.generate, its
greedy continuation. Scores: NeedleBench's for the needle, 100 x exact match for the passkey.
token_accuracy (both tasks) is the share of gold answer tokens equal to the forced argmax at their
position; it always comes from the forced forward, which runs with --generate too (its logprob).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

from megaindex.eval import EvalError
from megaindex.eval.grid import EvalSpec
from megaindex.eval.haystack import Haystack
from megaindex.eval.needle import needle_sample
from megaindex.eval.passkey import PasskeyPrompts
from megaindex.eval.perplexity import bucket_edges, bucket_nll, perplexity, ppl_sample
from megaindex.eval.sample import Sample
from megaindex.eval.scoring import needlebench_score, token_accuracy
from megaindex.eval.truncate import middle_truncate

GENERATE_SLACK = 8  # extra new tokens over the gold answer's length when generating


def build_samples(spec: EvalSpec, tokenizer, haystack: Haystack | None) -> list[Sample]:
    langs = spec.langs or (haystack.langs if haystack else [])
    if ("needle" in spec.tasks or "ppl" in spec.tasks) and haystack is None:
        raise EvalError("needle and ppl need held-out documents: pass --haystack.")
    out: list[Sample] = []
    passkeys = PasskeyPrompts(tokenizer) if "passkey" in spec.tasks else None
    for length in spec.lengths:
        for r in range(spec.repeats):
            for d in spec.depths:
                if "needle" in spec.tasks:
                    out += [needle_sample(haystack, lang=lang, length=length, depth=d, repeat=r, prompt=spec.prompt)
                            for lang in langs]
                if passkeys:
                    out.append(passkeys.sample(length=length, depth=d, repeat=r))
            if "ppl" in spec.tasks:
                out += [ppl_sample(haystack, lang=lang, length=length, repeat=r, pick_length=max(spec.lengths))
                        for lang in langs]
    return out


def new_tokens(spec: EvalSpec, s: Sample) -> int:
    """Tokens the model produces after the prompt: the answer (forced) or the generation budget."""
    if s.task == "ppl":
        return 0
    return len(s.answer_ids) + (GENERATE_SLACK if spec.generate else 0)


def check_lengths(spec: EvalSpec, samples: list[Sample], train_length: int) -> None:
    """Every length must fit at least one requested variant's own limit (naive: the training length;
    others: factor x training length), or be cut by --truncate middle. A variant that cannot hold a
    length another variant holds runs it anyway: that is the extrapolation baseline. With
    --extrapolate every length runs as asked (naive alone past the training length, say)."""
    if spec.truncate or spec.extrapolate:
        return
    limit = max(v.max_length(train_length) for v in spec.variants)
    too_long = [s for s in samples if len(s.prompt_ids) + new_tokens(spec, s) > limit]
    if too_long:
        s = max(too_long, key=lambda s: len(s.prompt_ids))
        names = ", ".join(v.name for v in spec.variants)
        raise EvalError(
            f"length {s.length} ({s.task}: {len(s.prompt_ids) + new_tokens(spec, s)} tokens with the answer) is above "
            f"what the model holds: trained at {train_length} tokens, at most {limit} with --rope {names}; add a "
            f"variant that extends it (e.g. --rope naive,dynamic:{max(2, math.ceil((len(s.prompt_ids) + new_tokens(spec, s)) / train_length))}), "
            f"pass --truncate middle, --extrapolate to measure plain extrapolation, or drop the length."
        )


def _prepare(spec: EvalSpec, engine, s: Sample) -> tuple[list[int], bool]:
    ids = s.prompt_ids
    if spec.truncate == "middle":
        cut = middle_truncate(ids, engine.max_length, new_tokens(spec, s))
        return cut, len(cut) != len(ids)
    return ids, False


def _scored(spec, engine, variant: str, batch: list[Sample]) -> list[dict]:
    tok = engine.tokenizer
    prompts = [_prepare(spec, engine, s) for s in batch]
    forced = engine.forced([(p, s.answer_ids) for (p, _), s in zip(prompts, batch)])
    out = []
    for s, (prompt, cut), f in zip(batch, prompts, forced):
        if spec.generate:
            gen = engine.generate(prompt, new_tokens(spec, s))
            pred_ids, exact = gen, gen[:len(s.answer_ids)] == list(s.answer_ids)
            prediction = tok.decode(gen).strip().split("\n")[0]
        else:
            pred_ids, exact = f.argmax_ids, f.exact
            prediction = tok.decode(pred_ids).strip()
        score = needlebench_score(prediction, s.gold, s.keyword) if s.task == "needle" else 100.0 * exact
        out.append({"task": s.task, "variant": variant, "lang": s.lang, "length": s.length,
                    "input_length": len(prompt), "depth": s.depth, "actual_depth": round(s.actual_depth, 3),
                    "repeat": s.repeat, "prediction": prediction, "gold": s.gold, "score": round(score, 4),
                    "exact": bool(exact), "token_accuracy": round(token_accuracy(f.argmax_ids, s.answer_ids), 4),
                    "logprob": round(f.logprob, 5), "truncated": cut})
    return out


def _ppl(engine, variant: str, s: Sample, edges: list[int]) -> dict:
    nll = engine.nll(s.prompt_ids)
    return {"task": "ppl", "variant": variant, "lang": s.lang, "length": s.length, "repeat": s.repeat,
            "nll_mean": round(float(nll.double().mean()), 6), "ppl": round(perplexity(nll), 5),
            "buckets": bucket_nll(nll, edges), "concatenated": s.concatenated}


def run_grid(engine, spec: EvalSpec, samples: list[Sample], *,
             on_progress: Callable[[int, str], None] | None = None) -> Iterator[dict]:
    """Yield a result dict per (variant, sample); `on_progress(n_done_now, label)` after each batch."""
    edges = bucket_edges(max(spec.lengths))
    for variant in spec.variants:
        engine.set_rope(variant)
        name = variant.name
        scored = [s for s in samples if s.task != "ppl"]
        for length in spec.lengths:
            group = [s for s in scored if s.length == length]
            for i in range(0, len(group), spec.batch_size):
                batch = group[i:i + spec.batch_size]
                yield from _scored(spec, engine, name, batch)
                if on_progress:
                    on_progress(len(batch), f"{name} {length}")
        for s in (s for s in samples if s.task == "ppl"):
            if len(s.prompt_ids) > engine.max_length:  # only with --truncate: a text cannot be cut for ppl
                if on_progress:
                    on_progress(1, f"{name} ppl {s.length} skipped")
                continue
            yield _ppl(engine, name, s, edges)
            if on_progress:
                on_progress(1, f"{name} ppl {s.length}")
