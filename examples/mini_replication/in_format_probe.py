#!/usr/bin/env python3
"""In-format retrieval probe (issue #16): does a base model retrieve in its own training format?

The mini replication's base misses the gate (needle >= 90 at <= 2K) at 65-76 / 41-55 across model sizes
and retrieval-data versions, mostly on the first answer piece. This probe asks whether retrieval itself
is unreliable, or only its transfer to the evaluation's phrasing: it draws *held-out* retrieval
documents with the generator that made the training data (megaindex.data.retrieval_docs, configured as
an attempt's stage-0 data, `--data`: v5, the fifth's, the RetrievalDocConfig defaults, v6b, the sixth's,
one fact moved early in half the documents, or v7, the seventh's, half of them framed in varied wordings, so
that framed and plain questions show apart (breakdown "frame"), or v8, the eighth's, with subjects keyed by random
words (breakdown "subject": closed / open / random), or v9, the ninth's, half of the random values and owners drawn
by word frequency (value_kind "random-frequency", subject "random-frequency"), its Chinese values with 在/的/了
(breakdown "zh_value": starts 在 / holds 在的了 / none, "en" for English) and random keys in prepositional frames
(breakdown "key_frame": prepositional / other); a seed training never used), at a fixed target length each
(min_tokens = max_tokens = L, so every document is ~L tokens and its facts spread over the whole body), and
for every question feeds the document, as training tokenized it, up to and including the answer prefix
("...A: {Subject} is" / "...{subject}是", or a framed document's "...According to the text, {subject} is") and
greedy-decodes the value.

Per question: exact (greedy tokens = the gold value's tokens, through the final "." / "。"), first piece
(the first greedy token right), first character (the first non-space character the greedy tokens spell:
a lone "▁" piece or the UTF-8 lead byte of a byte-fallback CJK character, shared by many characters, is
not one), forced token accuracy (teacher forcing: the share of the gold tokens
that are the argmax at their own position) and, for misses, whether the forced tokens after the first
are all right (a first-piece-only miss). Broken down by value kind, language, document kind (single-key,
multi-key, same-form), haystack (prose / repetitive), fact-to-question distance in tokens (the body's
last statement of the value with its subject within 80 characters, to the answer's value: the measure
of benchmarks/retrieval_docs_v5.py) and the question's rank in the document.

    python examples/mini_replication/in_format_probe.py /work/gpu5/base_hf \\
        --filler runs/mini_replication/corpus/pretrain.jsonl --lengths 1024,2048 --docs 100 \\
        --compare benchmarks/replication_gate5/results_base_0.jsonl.gz \\
        --out benchmarks/replication_gate6/in_format_probe        # -> .json, .md, .png

`--compare` sets the same model's evaluation rows (`megaindex eval` results, base + naive) beside the probe;
`--rescore` rebuilds the tables and the plot from OUT.json's records (in_format_report.py) without the model.

The model runs in transformers, loaded as `megaindex eval --engine hf` loads a checkpoint or an HF directory
(fp32, on the GPU where there is one): one forward over each whole document
gives every question's forced argmax; each greedy decode continues from that forward's KV cache cut at
the question's prompt, so the prompt is never re-read (one document at a time; batching padded
documents buys nothing on CPU, where a 2K forward already fills the cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megaindex.data.retrieval_docs import FillerText, RetrievalDocConfig, RetrievalDocGenerator  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from in_format_report import (BREAKDOWNS, ProbeError, distance_bucket, evaluation_rows, markdown,  # noqa: E402,F401
                              scores, summarize, write)

SEED = 20261128  # training used seeds 0 (stage 0) and 1 (stage 1)
NEAR = 80        # characters: a statement holds its subject and value within this of each other
EXTRA_TOKENS = 3  # greedy tokens past the gold answer's length, so a miss shows how it goes on


# The stage-0 data of an attempt, as run.py's step_retrieval configured it (besides max/min tokens and seed):
# v5 the fifth attempt's (every share at its default: lengths log-uniform, early_fact_share 0), v6b the sixth's,
# v7 the seventh's (v5 with half of the documents framed: context.V7_RETRIEVAL; records say "frame"), v8 the eighth's
# (v7 with random-key subjects and more random values: context.V8_RETRIEVAL; records say "subject"), v9 the ninth's
# (v8 with half of the random draws by word frequency, Chinese values with 在/的/了, prepositional random keys:
# context.V9_RETRIEVAL).
DATA = {"v5": {"length_draw": "log-uniform", "early_fact_share": 0.0},
        "v6b": {"length_draw": "uniform", "early_fact_share": 0.5},
        "v7": {"length_draw": "log-uniform", "early_fact_share": 0.0, "frame_share": 0.5},
        "v8": {"length_draw": "log-uniform", "early_fact_share": 0.0, "frame_share": 0.5, "random_subject_share": 0.4,
               "random_value_share": 0.25, "open_value_share": 0.35}}
DATA["v9"] = {**DATA["v8"], "random_frequency_share": 0.5, "zh_value_particles": True, "prepositional_frame_share": 0.3}


def probe_config(length: int, seed: int = SEED, data: str = "v5") -> RetrievalDocConfig:
    """Retrieval documents as `data` (DATA) drew them, at a fixed target `length` (min_tokens = max_tokens)."""
    if data not in DATA:
        raise ProbeError(f"--data {data!r}: use one of {', '.join(DATA)}")
    return RetrievalDocConfig(max_tokens=length, min_tokens=length, seed=seed, **DATA[data])


def doc_kind(doc: dict) -> str:
    return "same-form" if doc["form"] == "same_form" else "single-key" if len(doc["facts"]) == 1 else "multi-key"


def subject_kind(doc: dict, fact: int) -> str:
    """Fact `fact`'s subject: "closed", "open" or "random" (v8 documents list them per fact), "random-frequency" (v9:
    its owner drawn by frequency); before v8, "mixed" for a document whose subjects are of both kinds."""
    kind = doc["subject_kinds"][fact] if "subject_kinds" in doc else doc["subjects"]
    return "random-frequency" if doc.get("frequent_owners", [False] * (fact + 1))[fact] else kind


def value_kind(doc: dict, fact: int) -> str:
    """The document's value kind; v9's frequency-drawn random values apart: "random-frequency"."""
    return "random-frequency" if doc.get("frequent_values", [False] * (fact + 1))[fact] else doc["kind"]


def key_frame(doc: dict, fact: int) -> str:
    """"prepositional" when fact `fact`'s random key is in a prepositional frame (v9's second part), else "other"."""
    return "prepositional" if doc.get("prepositional_subjects", [False] * (fact + 1))[fact] else "other"


def zh_value(doc: dict, fact: int) -> str:
    """A Chinese value: "starts 在" (its answer's first piece is the merged "是在"), "holds 在的了", "none"; "en"."""
    value = doc["facts"][fact][1]
    if doc["lang"] != "zh":
        return "en"
    return "starts 在" if value.startswith("在") else "holds 在的了" if set(value) & set("在的了") else "none"


def rank_bucket(rank: int) -> str:
    return "1st" if rank == 0 else "2nd-3rd" if rank < 3 else "4th+"


def questions(doc: dict, tok: IndexTokenizer, ids: list[int]) -> list[dict]:
    """Every question of `doc` as training saw it: the prompt (ids[:k], the document's own tokens up to and
    including "is" / "是"), the gold answer ids[k:m] (the value and its full stop), the fact-to-answer distance.

    k: where the prompt text's own encoding stops agreeing with the document's (a piece merged across the
    boundary goes to the answer, as megaindex.eval.sample.split_answer does); m: the tokens of the text
    through the answer's full stop."""
    text, zh = doc["text"], doc["lang"] == "zh"
    low = _lower(text)
    tail = low.rindex("\n\n")  # the questions follow the body's last blank line
    body = low[:tail]
    out = []
    for f, (subject, value) in enumerate(doc["facts"]):
        s, v = _lower(subject), _lower(value)
        head = s + ("是" if zh else " is ") + v + ("。" if zh else ".")
        at = low.find(head, tail)
        if at < 0 or low.find(head, at + 1) >= 0:
            raise ProbeError(f"{doc['source']}: the answer {head!r} occurs {'no' if at < 0 else 'more than one'} "
                             f"time(s) after the body; the generator's question format changed?")
        start = at + len(s) + (1 if zh else 4)             # the value's first character
        cut = start if zh else start - 1                   # the prompt ends "是" / "is" (the space is the answer's)
        end = start + len(v) + 1                           # through "。" / "."
        spots = [m.start() for m in re.finditer(re.escape(v), body)
                 if s in body[max(0, m.start() - NEAR - len(s)):m.start() + len(v) + NEAR + len(s)]]
        if not spots:
            raise ProbeError(f"{doc['source']}: no statement of fact {f} ({subject!r} = {value!r}) in the body")
        prompt = tok.encode(text[:cut])
        through = tok.encode(text[:end])
        k = 0
        while k < min(len(prompt), len(through)) and prompt[k] == through[k]:
            k += 1
        m = len(through)
        out.append({"fact": f, "subject": subject, "value": value, "k": k, "m": m,
                    "seq": None if through == ids[:m] else through,  # None: the document's own tokens
                    "merged": k < len(prompt),      # a prompt piece merged into the answer's first piece
                    "distance": len(tok.encode(text[:start])) - len(tok.encode(text[:spots[-1]])),
                    "answer_at": at})
    out.sort(key=lambda q: q["answer_at"])  # the order the questions are asked in
    return out


def _lower(text: str) -> str:
    """Lowercase, one character for one ("İ".lower() is two: str.lower() would shift every position after it)."""
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class Probe:
    """One model, one tokenizer: scores documents question by question (see the module docstring)."""

    def __init__(self, model, tok: IndexTokenizer):
        import inspect

        self.model, self.tok = model.eval(), tok
        self.vocab = model.config.vocab_size
        self.device = next(model.parameters()).device
        # transformers 5.24 names the forward's KV cache `cache`, earlier releases `past_key_values`
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _ids(self, ids: list) -> "torch.Tensor":
        import torch

        return torch.tensor([ids], device=self.device)

    @staticmethod
    def cache_of(out):
        """The KV cache of a forward's output, under either name (see __init__)."""
        return out.cache if hasattr(out, "cache") else out.past_key_values

    def _argmax(self, hidden, positions: list[int]) -> list[int]:
        return self.model.lm_head(hidden[0, positions])[:, :self.vocab].argmax(-1).tolist()

    def _greedy(self, cache, first: int, k: int, steps: int) -> list[int]:
        """Greedy tokens after a prompt of k tokens whose last logits gave `first`; `cache` holds at least k."""
        import torch

        cache = copy.deepcopy(cache)
        extra = cache.get_seq_length() - k
        if extra > 0:
            cache.crop(-extra)
        out = [first]
        for _ in range(steps - 1):
            res = self.model(input_ids=self._ids([out[-1]]), use_cache=True, **{self.cache_arg: cache})
            out.append(int(res.logits[0, -1, :self.vocab].argmax()))
        return out

    def document(self, doc: dict) -> list[dict]:
        """One record per question of `doc` (see the module docstring for the fields' meaning)."""
        import torch

        tok = self.tok
        ids = tok.encode(doc["text"])
        records = []
        with torch.inference_mode():
            res = self.model.model(input_ids=self._ids(ids), use_cache=True)
            for rank, q in enumerate(questions(doc, tok, ids)):
                k, m, seq = q["k"], q["m"], q["seq"]
                if seq is None:  # the document's own tokens: its one forward serves every question
                    seq, out = ids, res
                else:            # the text through this answer tokenizes otherwise alone (rare): its own forward
                    out = self.model.model(input_ids=self._ids(seq), use_cache=True)
                gold = seq[k:m]
                forced = self._argmax(out.last_hidden_state, list(range(k - 1, m - 1)))
                greedy = self._greedy(self.cache_of(out), forced[0], k, len(gold) + EXTRA_TOKENS)
                right = [int(a == b) for a, b in zip(forced, gold)]
                records.append({
                    "source": doc["source"], "lang": doc["lang"], "value_kind": value_kind(doc, q["fact"]), "doc_kind": doc_kind(doc),
                    "haystack": doc["haystack"], "facts": len(doc["facts"]), "question_rank": rank_bucket(rank),
                    "frame": "framed" if doc.get("frame") else "plain", "subject": subject_kind(doc, q["fact"]),
                    "key_frame": key_frame(doc, q["fact"]), "zh_value": zh_value(doc, q["fact"]),
                    "distance_tokens": q["distance"], "distance": distance_bucket(q["distance"]),
                    "prompt_tokens": k, "answer_tokens": len(gold), "exact": greedy[:len(gold)] == gold,
                    "first": greedy[0] == gold[0], "first_char": _first_char(tok, greedy) == _first_char(tok, gold),
                    "token_accuracy": sum(right) / len(gold),
                    "rest_forced_right": all(right[1:]), "merged": q["merged"], "own_tokens": q["seq"] is None,
                    "value": q["value"], "gold": tok.decode(gold), "prediction": tok.decode(greedy),
                    "prompt_end": tok.decode(seq[max(0, k - 12):k]),
                })
        return records


def _first_char(tok: IndexTokenizer, ids: list[int]) -> str:
    """The first non-space character the tokens spell (a lone "▁" piece or a UTF-8 lead byte is not one)."""
    return tok.decode(ids).lstrip()[:1]


# ---- command line ------------------------------------------------------------------------------------------


def load_model(path: Path, tokenizer: Path | None = None):
    """(transformers model, tokenizer) for a megaindex checkpoint (or a run's checkpoints/ directory) or an HF
    directory, loaded as `megaindex eval --engine hf` loads it (megaindex.eval: resolve_path, HFEngine) in fp32,
    on the GPU where there is one; the tokenizer is TOKENIZER, else the one the checkpoint names or holds."""
    import torch

    from megaindex.eval.engine import EvalError, resolve_path
    from megaindex.eval.hf_engine import HFEngine

    try:
        kind, resolved = resolve_path(path)
        load = HFEngine.from_hf_dir if kind == "hf" else HFEngine.from_checkpoint
        engine = load(resolved, tokenizer_model=tokenizer, dtype=torch.float32)
    except EvalError as e:
        raise ProbeError(f"model {path}: {e}") from None
    return engine.model, engine.tokenizer


def run(model_dir: Path, filler_path: Path, tokenizer: Path | None, lengths: list[int], docs: int, seed: int = SEED,
        progress=print, data: str = "v5") -> dict:
    """Score `docs` held-out documents of `data` (DATA) per length; the JSON result (records included)."""
    probe_config(64, seed, data)  # an unknown --data fails before the model loads
    if filler_path.name == "heldout.jsonl":
        raise ProbeError(f"--filler {filler_path}: that is the evaluation's haystack file; give the training split "
                         f"(runs/mini_replication/corpus/pretrain.jsonl), as the training documents used")
    for p, what in ((filler_path, "--filler"), (tokenizer, "--tokenizer")):
        if p is not None and not p.is_file():
            raise ProbeError(f"{what} {p}: no such file")
    model, tok = load_model(model_dir, tokenizer)
    limit = model.config.max_position_embeddings
    if max(lengths) > limit:
        raise ProbeError(f"--lengths {max(lengths)} is past the model's max_position_embeddings {limit}: the probe "
                         f"measures the training format; use lengths <= {limit}")
    t0 = time.time()
    filler = FillerText([filler_path])
    progress(f"[probe] {filler.summary()}; model {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"
             f" parameters, fp32, {next(model.parameters()).device})")
    probe = Probe(model, tok)
    by_length, records_all = {}, {}
    for L in lengths:
        gen = RetrievalDocGenerator(tok, filler, probe_config(L, seed, data))
        records, tokens = [], 0
        for i in range(docs):
            doc = gen.document(i)
            tokens += len(tok.encode(doc["text"])) + 1
            records += probe.document(doc)
            if (i + 1) % 10 == 0 or i + 1 == docs:
                sc = scores(records)
                progress(f"[probe {L}] {i + 1}/{docs} documents, {sc['questions']} questions: exact {sc['exact_pct']}%,"
                         f" first piece {sc['first_pct']}%, forced token {sc['token_accuracy_pct']}% "
                         f"({time.time() - t0:.0f} s)")
        by_length[str(L)] = {**summarize(records), "documents": docs, "mean_document_tokens": round(tokens / docs, 1),
                             "prompt_piece_merged": sum(r["merged"] for r in records),
                             "scored_alone": sum(not r["own_tokens"] for r in records)}
        records_all[str(L)] = records
    return {"schema": "megaindex.in_format_probe/1", "model": str(model_dir), "filler": str(filler_path),
            "tokenizer": str(tok.model_path), "seed": seed,
            "generator": {"version": data, "config": {k: v for k, v in vars(probe_config(64, seed, data)).items()
                                                      if k not in ("max_tokens", "min_tokens")},
                          "min_tokens = max_tokens": lengths},
            "seconds": round(time.time() - t0, 1), "by_length": by_length, "records": records_all}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="megaindex checkpoint (or a run's checkpoints/) or Hugging Face directory")
    ap.add_argument("--filler", type=Path, default=REPO / "runs/mini_replication/corpus/pretrain.jsonl",
                    help="the training split the retrieval documents took their filler from (never heldout.jsonl)")
    ap.add_argument("--tokenizer", type=Path, help="SentencePiece model (default: the one the model names or holds)")
    ap.add_argument("--lengths", default="1024,2048", help="target document lengths in tokens, comma-separated")
    ap.add_argument("--docs", type=int, default=100, help="documents per length")
    ap.add_argument("--data", default="v5", help=f"which stage-0 data to draw like: {', '.join(DATA)} (the "
                    "fifth attempt's base trained on v5, the sixth's on v6b, the seventh's on v7)")
    ap.add_argument("--seed", type=int, default=SEED, help="generator seed (training used 0 and 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared CPU more were slower, 2.9 s vs 1.4 s per 2K forward)")
    ap.add_argument("--out", type=Path, required=True, help="output prefix: writes OUT.json, OUT.md and OUT.png")
    ap.add_argument("--compare", type=Path,
                    help="the same model's `megaindex eval` results_*.jsonl[.gz]: its needle and passkey beside "
                         "the probe")
    ap.add_argument("--rescore", action="store_true",
                    help="no model: recompute the tables and the plot from the records of OUT.json (MODEL is ignored)")
    a = ap.parse_args(argv)
    if a.rescore:
        result = json.loads(Path(f"{a.out}.json").read_text(encoding="utf-8"))
        for L, records in result["records"].items():
            result["by_length"][L].update(summarize(records))
        try:
            if a.compare:
                result["evaluation"] = evaluation_rows(a.compare)
        except ProbeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        write(result, a.out)
        return 0
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
    except ValueError:
        print(f"error: --lengths {a.lengths!r}: give token counts like 1024,2048", file=sys.stderr)
        return 1
    if a.docs < 1 or min(lengths) < 64:
        print(f"error: need --docs >= 1 and lengths >= 64, got {a.docs} and {lengths}", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(a.threads)
    try:
        evaluation = evaluation_rows(a.compare) if a.compare else None
        result = run(a.model, a.filler, a.tokenizer, lengths, a.docs, a.seed, data=a.data)
        if evaluation:
            result["evaluation"] = evaluation
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result.update(command=" ".join(["python", *sys.argv]) if argv is None else f"main({argv})",
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                          f"{torch.get_num_threads()}, torch {torch.__version__}")
    write(result, a.out)
    print(f"[probe] in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
