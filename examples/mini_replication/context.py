"""What every step of the mini replication is given: where things are (HERE, REPO, PY), the Scale
(FULL, or SMOKE for the CPU smoke run), the command's Ctx (work directory, --force, --set) and log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable


@dataclass
class Scale:
    """What differs between the real run and the CPU smoke run (the code path does not)."""

    corpus: str                       # "prepare" = tools/prepare_corpus.py; "fixture" = tests/fixtures/corpus
    vocab_size: int
    retrieval_max_tokens: int
    retrieval_min_tokens: int
    stage0: list[str] = field(default_factory=list)   # overrides of stage0.yaml
    stage1: list[str] = field(default_factory=list)   # overrides of stage1.yaml (and every ablation)
    ablations: dict[str, list[str]] = field(default_factory=dict)  # per-ablation extra overrides
    # Steps of every ablation (None: stage1.yaml's, so that the report compares each with Long-PT at
    # one budget). The fifth attempt trained stage 1 for 512 steps and the ablations for 128, with an
    # extra run of the recipe at 128 as their reference; since the sixth, stage 1 is 128 steps again.
    ablation_iters: int | None = None
    lengths: str = "1k,2k,4k,8k,16k,32k"
    depths: str = "0:100:11"
    repeats: int = 3
    # Two evaluation calls for the base model, each with a factor that holds the longest length
    # (megaindex eval refuses a length no requested variant holds; naive then runs it as the baseline).
    base_ropes: tuple[str, ...] = ("naive,dynamic:2,dynamic:16", "dynamic:4,dynamic:8,yarn:16")
    margin: float = 1.1               # synthetic tokens generated over the share the recipe needs
    # The corpus' split by document length (tokens, EOD included): documents with at least this many
    # go to data/corpus_long, stage 1's corpus part; the rest to data/corpus_short. 16384 = half of
    # stage 1's 32K window (run.py's step_preprocess says why).
    long_min_tokens: int = 16384
    # Documents with at least this many tokens also go to data/corpus_xl, a subset of corpus_long (not a part of
    # the partition): the `far` ablation's corpus, one document's 32K piece per row (ablations.yaml says why).
    # The smoke scale keeps it too: 6 of the fixture's 12 long documents (its long_min_tokens is the full run's).
    xl_min_tokens: int = 32768
    # RetrievalDocConfig fields of both stages' retrieval documents besides lengths and seed (run.py retrieval).
    retrieval: dict = field(default_factory=dict)
    # probe_base (in_format_probe.py on the exported base): held-out documents of the training format, per length
    probe_data: str = "v8"
    probe_lengths: str = "1024,2048"
    probe_docs: int = 120
    # needle_form (needle_form_probe.py on stage 0's checkpoint, NEEDLE_FORMS): its lengths and repeats per depth
    needle_form_lengths: str = "1024,2048"
    needle_form_repeats: int = 3


# The seventh attempt's retrieval documents (v7); why each differs from the sixth's (v6b), one line each:
V7_RETRIEVAL = {
    # v5's lengths again: v6's uniform ones (28% fewer facts per token) retrieved worse at 35M and at 72M
    "length_draw": "log-uniform",
    # v5's fact places again: v6b's early facts did not help far facts (2K needle 43.1 / 40.9 against v5's 55.2)
    "early_fact_share": 0.0,
    # half framed in varied wordings: v5's base answered its own format 92.8/86.3% at 1K/2K, the needle 72.7/50.0
    "frame_share": 0.5,
}
# The eighth attempt's (v8): v7 and, one line each, why (needle_form_probe.py on the fifth base, 1K/2K scores in
# the evaluation's own frame, haystack, prompt and place: benchmarks/replication_gate7/diagnosis/needle_form.md):
V8_RETRIEVAL = {
    **V7_RETRIEVAL,
    # keys of words never seen in a fact: a generator fact 98.8/98.8, its frame around the needle's own words 88.6/68.8
    "random_subject_share": 0.4,
    # values of novel words: v5 random values transfer (100/89.8), the needle's held-out value costs 14-15 (85.6/74.5)
    "random_value_share": 0.25,
    # taken from the filler spans (still the largest kind), not numbers (25%) or table phrases / words (15%)
    "open_value_share": 0.35,
}
# The ninth attempt's (v9): v8 and, in one line, why (the eighth base's needle errors are single value tokens right
# after a frequent word, "watching the serverbet theatre", "the best thing" template 65.2/40.1 at 1K/2K, while v5/v8
# random words are rare: every token before a trained random value is unique in its context):
V9_RETRIEVAL = {
    **V8_RETRIEVAL,
    # half of the random values and random owners drawn by word frequency (count ** 0.75): "the", "a", "at" recur
    "random_frequency_share": 0.5,
    # added after the first v9 part (needle_form_errors.py, both bases): every Chinese needle value holding 在 is
    # missed, 13 of 66, 0 exact ("是在老街" -> "是老街"), no training value started with 在 and only the closed
    # tables' phrases held 在/的/了 (5.2% of v8's Chinese values): now open and random values may too (never 是)
    "zh_value_particles": True,
    # also added then: the English needle keyed by a prepositional phrase after the attribute scores 65/40 at 1K/2K
    # against 100/95, and random keys had the owner only as "of {w}" / "{w}'s": 30% of them "the {a} near {w}" & co.
    "prepositional_frame_share": 0.3,
}
FULL = Scale(corpus="prepare", vocab_size=8000, retrieval_max_tokens=2048, retrieval_min_tokens=128,
             retrieval=V9_RETRIEVAL, probe_data="v9")
SMOKE = Scale(
    corpus="fixture", vocab_size=4000, retrieval_max_tokens=256, retrieval_min_tokens=48,
    # The tiny preset at 2 layers: on CPU a step's time is mostly per-layer overhead, not FLOPs.
    stage0=["model.preset=tiny", "model.num_layers=2", "model.max_position_embeddings=256", "data.seq_length=256",
            "data.micro_batch_size=4", "data.global_batch_tokens=2048", "data.whole_documents=256", "data.num_workers=0",
            "train.train_iters=6", "train.eval_interval=6", "train.eval_iters=1", "optim.lr_warmup_iters=1",
            "checkpoint.save_interval=6", "log.log_interval=1", "data.split=90,10,0", "eval.interval=6", "eval.lengths=[256]",
            "eval.repeats=1", "eval.tasks=[passkey]",
            "train.cuda_graph_impl=none", "data.static_thd_shapes=false"],  # CPU: eager (stage0.yaml graphs the GPU run)
    stage1=["model.preset=tiny", "model.num_layers=2", "model.max_position_embeddings=1024", "data.seq_length=1024",
            "data.global_batch_tokens=2048", "data.whole_documents=256", "data.num_workers=0", "train.train_iters=3",
            "train.eval_interval=3", "train.eval_iters=1", "optim.lr_warmup_iters=1", "checkpoint.save_interval=3",
            "log.log_interval=1", "data.split=90,10,0", "eval.interval=3", "eval.lengths=[1024]", "eval.tasks=[passkey]"],
    ablations={"ctx_warmup": ["data.context_length_warmup=[[1,256],[2,512]]"]},
    # One evaluation call for the base (the GPU run's two split its work): every child's start (~5 s of
    # imports) is most of a smoke evaluation. Two depths: the heatmap's rows, at 2/3 of the samples.
    lengths="256,512,1024", depths="0:100:2", repeats=1, base_ropes=("naive,dynamic:2,dynamic:4,yarn:4",),
    # The fixture's 21 documents are all longer than half the smoke's 1024-token window, so half of it
    # would leave corpus_short empty; the full run's 16384 puts about half of them in each part,
    # so CI runs the two-part blend of stage 0 and the long-only corpus of stage 1.
    long_min_tokens=16384,
    retrieval=V9_RETRIEVAL, probe_data="v9",  # CI generates framed, random-key and frequency-drawn documents too
    probe_lengths="256", probe_docs=2,  # the tiny base's window; two documents exercise the step
    needle_form_lengths="256", needle_form_repeats=1,  # 9 forms x 2 languages x 11 depths: 198 samples
)
# The needle-form probe's forms that need no unseen-document file (--fresh): the evaluation's sample, generator
# facts in its place, the needle's key or value swapped, and the Q/A prompt (needle_form_probe.py says what each is)
NEEDLE_FORMS = ("eval", "train_fact", "train_random", "train_frequent", "owner_frequent", "novel_owner", "swap_value",
                "swap_subject", "train_qa")


class Ctx:
    """One command's work directory, scale, --force and --set, and the step now running."""

    def __init__(self, work: Path, scale: Scale, force: bool, extra: list[str] | None = None):
        self.work, self.scale, self.force = work, scale, force
        self.step = "?"  # the step now running (run_step sets it), for the error of a failed child
        self.extra = list(extra or [])  # --set: overrides for every training step of this command
        self.smoke = scale is SMOKE

    def p(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)


def log(msg: str) -> None:
    print(f"[mini {time.strftime('%H:%M:%S')}] {msg}", flush=True)

