#!/usr/bin/env python3
"""Needle-form probe (issue #16): which part of the evaluation's needle sample costs a base model its retrieval?

The seventh attempt's base retrieves 92/88% exact in its own training format (in_format_probe.py, framed and
plain alike) but scores 65/42 on the evaluation's needle at 1K/2K, and text new to the model costs the
in-format probe nothing (fresh_filler.py). This probe keeps the evaluation's needle samples
(megaindex.eval.needle.needle_sample: the same needles, depths, repeats, prompt, question and answer) and
changes one part at a time, scoring each exactly as `megaindex eval` does (run_grid: forced argmax, the
NeedleBench score, exact match):

  eval          the evaluation's sample, unchanged (reproduces the recorded base + naive rows)
  inline        the needle sentence inside the running text (English: a space before it; Chinese: nothing;
                nothing added after it, so the next haystack token follows as it comes, with or without its
                space), not on a line of its own ("\\n" + needle + "\\n"); at depth 0 it opens the document
                after the instruction's line break (" " + needle in English)
  fresh_hay     the haystack from other unseen documents (fresh_filler.py: Git manuals, Chinese Debian FAQ
                and maintainers' guide) instead of the held-out ones: the documents' make-up, not their novelty
  fresh_inline  both
  clean_hay     the held-out haystack re-spaced as the retrieval documents' filler is (retrieval_filler: the
                whitespace after every sentence end becomes one space in English, so a paragraph or line break
                after a full stop goes; lines without a sentence end stay; Chinese filler keeps its breaks)
  clean_inline  clean_hay with the needle inline: the training documents' layout around the evaluation's needle
  mid_hay       each held-out document entered at a random sentence start in its first 80% instead of its
                beginning (the retrieval filler's way in: a run of sentences from a random place), so the
                haystack opens in running text, not at a title and headers
  train_fact    the evaluation's haystack, prompt and place, but the needle is a fact the retrieval documents'
                generator draws (draw_facts, closed word lists: a table word or phrase, its plain statement
                "{S} is {v}." / "{s}是{v}。") and the question asks for it in the evaluation's own template:
                the needle's vocabulary and kind alone
  train_random  as train_fact, the value a v5 random value (1-4 words / 2-6 CJK characters drawn uniformly from
                the training filler's vocabulary, `--filler`): no value list to remember, only copying gives it
  train_open    as train_fact, the value a span cut from the training filler (1-6 words / 2-8 characters)
  train_frequent as train_random, the value's words drawn by their frequency in the training filler (v9's
                frequency draw, count ** 0.75: "the", "a", "at" often, so a value token often follows a token the
                haystack holds many times): does copying fail after a frequent token?
  swap_value    the evaluation's needle with its value replaced by a v5 random value (its subject, statement,
                question and answer prefix kept): held-out subject, trained kind of value
  novel_owner   the generator's subject frame ("the {attribute} of {owner}" / "{owner}'s {attribute}" / "{owner}的
                {attribute}", a closed-list attribute) around the evaluation needle's own words as the owner (its
                city, or its person's dish), a v5 random value: the key's words held out, its grammar trained
  owner_frequent novel_owner's frame with a frequency-drawn owner (random_owner, v9) instead of the needle's words
  swap_subject  a generator fact's subject (closed lists) stating the evaluation needle's own value, asked in the
                evaluation's template: trained subject, held-out value
  fresh_fact    train_fact in the unseen documents' haystack (fresh_hay's): do other documents hurt a trained fact?
  train_qa      the evaluation's haystack and needle, but no instruction lines before the document and the
                question asked in the retrieval documents' plainest form ("Q: {question}\nA: {answer prefix}",
                "问：{question}\n答：{answer prefix}"): the prompt's wording alone

Nothing here trains or selects anything: it reads a model and writes what each change does, so that the next
data change is chosen from a measured cause. The evaluation itself is not changed.

    python examples/mini_replication/needle_form_probe.py BASE --haystack runs/mini_replication/corpus/heldout.jsonl \\
        --fresh runs/fresh_filler/fresh.jsonl --out runs/needle_form      # -> .json, .md
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import random
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megaindex.data import retrieval_words as W  # noqa: E402
from megaindex.data.needle_words import Needle, draw_needle  # noqa: E402
from megaindex.data.retrieval_docs import JOIN  # noqa: E402
from megaindex.data.retrieval_facts import _subject, draw_facts  # noqa: E402
from megaindex.data.retrieval_filler import SENTENCE, FillerText  # noqa: E402
from megaindex.data.retrieval_subjects import open_value, random_owner, random_value  # noqa: E402
from megaindex.eval import needle as needle_module  # noqa: E402
from megaindex.eval.grid import EvalSpec  # noqa: E402
from megaindex.eval.haystack import Haystack  # noqa: E402
from megaindex.eval.needle import TEXT, needle_sample  # noqa: E402
from megaindex.eval.run import run_grid  # noqa: E402
from megaindex.eval.sample import Sample, encode_text, split_answer  # noqa: E402

TAIL = {lang: "\n\n" + TEXT[lang]["question"] + "\n" + TEXT[lang]["answer"] for lang in TEXT}  # as needle_sample

FORMS = ("eval", "inline", "fresh_hay", "fresh_inline", "clean_hay", "clean_inline", "mid_hay", "train_fact", "train_random", "train_frequent", "train_open", "swap_value", "novel_owner", "owner_frequent",
         "swap_subject", "fresh_fact", "train_qa")
TRAIN_FACT = {"train_fact": "closed", "train_random": "random", "train_frequent": "frequent", "train_open": "open",
              "fresh_fact": "closed"}
SWAPS = ("swap_value", "novel_owner", "owner_frequent", "swap_subject")
NEEDS_FILLER = ("train_random", "train_frequent", "train_open", "swap_value", "novel_owner",
                "owner_frequent")  # forms that draw values from `--filler`
DEPTHS = [float(d) for d in range(0, 101, 10)]


def find(seq: list[int], sub: list[int]) -> int:
    """The last index where `sub` occurs in `seq` (-1 when it does not)."""
    for i in range(len(seq) - len(sub), -1, -1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


def inline(s: Sample, tok, needle_text: str) -> Sample:
    """`s` with its needle's own lines joined into the running text: "\\n" + needle + "\\n" becomes " " + needle
    (English) or the needle alone (Chinese); the sample is 1-2 tokens shorter than its length."""
    isolated = encode_text(tok, f"\n{needle_text}\n")
    at = find(list(s.prompt_ids), isolated)
    if at < 0:
        raise ValueError(f"needle {needle_text!r} not found in its own sample")
    joined = encode_text(tok, "\n" + (" " if s.lang == "en" else "") + needle_text)[len(encode_text(tok, "\n")):]
    ids = list(s.prompt_ids[:at]) + joined + list(s.prompt_ids[at + len(isolated):])
    return Sample(s.task, s.lang, s.length, s.repeat, ids, s.answer_ids, gold=s.gold, keyword=s.keyword,
                  depth=s.depth, actual_depth=s.actual_depth)


QA = {"en": "\n\nQ: {q}\nA: {p}", "zh": "\n\n问：{q}\n答：{p}"}


def train_qa(s: Sample, tok, needle, head_len: int) -> Sample:
    """`s` without its first `head_len` tokens (the instruction lines) and with the question and answer prefix
    in the retrieval documents' Q/A form; the answer tokens are split from that prefix as the evaluation splits
    them (split_answer), and the sample is shorter than its length by what the instruction lines held."""
    at = find(list(s.prompt_ids), encode_text(tok, f"\n{needle.text}\n"))
    old_tail, _ = split_answer(tok, TAIL[s.lang].format(q=needle.question) + needle.answer_prefix, needle.answer)
    body = list(s.prompt_ids[head_len:len(s.prompt_ids) - len(old_tail)])
    assert at >= head_len and s.prompt_ids[len(s.prompt_ids) - len(old_tail):] == old_tail, "sample layout changed"
    tail, answer = split_answer(tok, QA[s.lang].format(q=needle.question, p=needle.answer_prefix), needle.answer)
    return Sample(s.task, s.lang, s.length, s.repeat, body + tail, answer, gold=tok.decode(answer).strip(),
                  keyword=s.keyword, depth=s.depth, actual_depth=s.actual_depth)


def stating(prefix: str, question: str, value: str, lang: str) -> Needle:
    """The Needle whose sentence is `prefix` + `value` + the full stop, asked by `question`."""
    sep, end = (" ", ".") if lang == "en" else ("", "。")
    return Needle(f"{prefix}{sep}{value}{end}", question, prefix, f"{sep}{value}{end}", value)


def about(subject: str, value: str, lang: str) -> Needle:
    """The plain statement of a generator fact as a Needle: "{S} is {v}." asked "What is {s}?" / "{s}是{v}。"
    asked "{s}是什么？"."""
    if lang == "en":
        return stating(f"{subject[0].upper()}{subject[1:]} is", f"What is {subject}?", value, lang)
    return stating(f"{subject}是", f"{subject}是什么？", value, lang)


def random_fact_value(rng: random.Random, lang: str, filler) -> str:
    """A v5 random value, drawn as the generator draws one for a fact of kind "random"."""
    return draw_facts(1, rng, lang, kind="random", filler_value=lambda r: random_value(filler, r, lang))[0].value


def training_needle(lang: str, rng: random.Random, kind: str = "closed", filler=None) -> Needle:
    """One fact as the retrieval documents' generator draws it, as the evaluation's Needle (`about`). `kind`
    closed: a closed word list's table word or phrase; random / open: a value drawn from `filler` (FillerText)
    as v5 / v4 draw them; frequent: a random value drawn by word frequency, as v9 draws one."""
    if kind == "closed":
        fact = draw_facts(1, rng, lang, kind=rng.choice(("word", "phrase")))[0]
    else:
        draw = {"random": random_value, "open": open_value,
                "frequent": lambda f, r, lang: random_value(f, r, lang, frequency=True)}[kind]
        fact = draw_facts(1, rng, lang, kind="open" if kind == "open" else "random",
                          filler_value=lambda r: draw(filler, r, lang))[0]
    return about(fact.subject, fact.value, lang)


def swapped(form: str, needle: Needle, lang: str, rng: random.Random, filler) -> Needle:
    """novel_owner: a generator subject frame around `needle`'s own words, a random value; owner_frequent: that
    frame around a frequency-drawn owner (v9's random_owner); swap_value: `needle` stating a random value;
    swap_subject: a closed-list subject stating `needle`'s value."""
    if form == "owner_frequent":
        owner = random_owner(filler, rng, lang, frequency=True)
        attr = rng.choice(W.attributes(lang, "word"))
        return about(_subject(owner, attr, lang, rng), random_fact_value(rng, lang, filler), lang)
    if form == "novel_owner":
        words = needle.question.removeprefix("What is the best thing to do in ").removeprefix(
            "What is the secret ingredient in ").rstrip("?") if lang == "en" else None
        if lang == "zh":
            q = needle.question.removesuffix("是什么？")
            words = q.removeprefix("在").removesuffix("最值得做的事情").removesuffix("的秘密配料")
        attr = rng.choice(W.attributes(lang, "word"))
        value = random_fact_value(rng, lang, filler)
        return about(_subject(words, attr, lang, rng), value, lang)
    if form == "swap_value":
        return stating(needle.answer_prefix, needle.question, random_fact_value(rng, lang, filler), lang)
    own = training_needle(lang, rng)
    return stating(own.answer_prefix, own.question, needle.keyword, lang)


def respaced(docs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each document re-spaced as FillerText cuts the retrieval documents' filler into sentences and the generator
    joins them: in English the whitespace after a sentence end becomes one space (JOIN); Chinese pieces keep
    their own line breaks and are joined with nothing, so a Chinese document stays as it is."""
    return {lang: [JOIN["en"].join(p for p in SENTENCE.split(d) if p.strip()) if lang == "en" else d for d in texts]
            for lang, texts in docs.items()}


def entered_midway(docs: dict[str, list[str]], seed: str = "mid") -> dict[str, list[str]]:
    """Each document from a random sentence start in its first 80% (seeded per document) to its end."""
    out = {}
    for lang, texts in docs.items():
        ends = (". ", "? ", "! ", ".\n", "。", "？", "！")
        cut = []
        for i, d in enumerate(texts):
            at = random.Random(f"{seed}-{lang}-{i}").randrange(max(1, int(0.8 * len(d))))
            nxt = [j for j in (d.find(e, at) for e in ends) if j >= 0]
            cut.append(d[min(nxt) + 1:].lstrip() if nxt else d)
        out[lang] = cut
    return out


def samples(form: str, hays: dict[str, Haystack], lengths: list[int], repeats: int, filler=None) -> list[Sample]:
    held = hays["held"]
    hay = hays[form.split("_")[0]] if form.startswith(("fresh", "clean", "mid")) else held
    out = []
    for lang in held.langs:
        for length in lengths:
            for depth in DEPTHS:
                for repeat in range(repeats):
                    if form in TRAIN_FACT or form in SWAPS:  # needle_sample draws its needle through draw_needle
                        rng = random.Random(f"{form.replace('_', '-')}-{lang}-{length}-{depth}-{repeat}")
                        if form in TRAIN_FACT:
                            own = training_needle(lang, rng, TRAIN_FACT[form], filler)
                        else:
                            ref = draw_needle(lang, random.Random(f"needle-{lang}-{length}-{depth}-{repeat}"))
                            own = swapped(form, ref, lang, rng, filler)
                        with mock.patch.object(needle_module, "draw_needle", lambda *_: own):
                            s = needle_sample(hay, lang=lang, length=length, depth=depth, repeat=repeat)
                        out.append(s)
                        continue
                    s = needle_sample(hay, lang=lang, length=length, depth=depth, repeat=repeat)
                    needle = draw_needle(lang, random.Random(f"needle-{lang}-{length}-{depth}-{repeat}"))
                    if form.endswith("inline"):
                        s = inline(s, hay.tok, needle.text)
                    elif form == "train_qa":
                        t = TEXT[lang]
                        s = train_qa(s, hay.tok, needle, len(encode_text(hay.tok, f"{t['intro']}\n{t['document']}\n")))
                    out.append(s)
    return out


def table(rows: list[dict], lengths: list[int]) -> list[str]:
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["form"], r["length"])].append(r)
        by[(r["form"], r["length"], r["lang"])].append(r)
    head = "| form | " + " | ".join(f"{L} score / exact % (en, zh exact)" for L in lengths) + " |"
    lines = [head, "|---|" + "---|" * len(lengths)]
    for form in FORMS:
        cells = []
        for L in lengths:
            g = by.get((form, L))
            if not g:
                cells.append("—")
                continue
            mean = sum(r["score"] for r in g) / len(g)
            ex = lambda rs: 100.0 * sum(r["exact"] for r in rs) / len(rs) if rs else float("nan")  # noqa: E731
            cells.append(f"{mean:.1f} / {ex(g):.1f} ({ex(by.get((form, L, 'en'), [])):.0f}, "
                         f"{ex(by.get((form, L, 'zh'), [])):.0f})")
        if any(c != "—" for c in cells):
            lines.append(f"| {form} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="megaindex checkpoint (or a run's checkpoints/) or Hugging Face directory")
    ap.add_argument("--haystack", type=Path, required=True, help="the evaluation's held-out JSONL (heldout.jsonl)")
    ap.add_argument("--fresh", type=Path, help="unseen documents for fresh_hay / fresh_inline (fresh_filler.py)")
    ap.add_argument("--filler", type=Path, default=REPO / "runs/mini_replication/corpus/pretrain.jsonl",
                    help="the training text the retrieval documents took their filler from (train_random, train_open)")
    ap.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {', '.join(FORMS)}")
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, required=True, help="output prefix: OUT.json, OUT.md")
    args = ap.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    bad = [f for f in forms if f not in FORMS]
    if bad or (any(f.startswith("fresh") for f in forms) and not args.fresh):
        print(f"error: --forms {args.forms}: use {', '.join(FORMS)}; the fresh forms need --fresh", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from megaindex.eval.engine import resolve_path
    from megaindex.eval.haystack import load_documents
    from megaindex.eval.hf_engine import HFEngine

    t0 = time.time()
    kind, resolved = resolve_path(args.model)  # loaded as `megaindex eval --engine hf` loads it, in fp32
    load = HFEngine.from_hf_dir if kind == "hf" else HFEngine.from_checkpoint
    engine = load(resolved, tokenizer_model=args.tokenizer, dtype=torch.float32)
    tok = engine.tokenizer
    held_docs = load_documents([args.haystack])
    hays = {"held": Haystack(held_docs, tok), "clean": Haystack(respaced(held_docs), tok),
            "mid": Haystack(entered_midway(held_docs), tok)}
    if args.fresh:
        hays["fresh"] = Haystack(load_documents([args.fresh]), tok)
    lengths = [int(x) for x in args.lengths.split(",")]
    spec = EvalSpec(tasks=["needle"], lengths=lengths, depths=DEPTHS, repeats=args.repeats)
    filler = FillerText([args.filler]) if set(forms) & set(NEEDS_FILLER) else None  # read once (its vocabulary too)
    rows = []
    for form in forms:
        batch = samples(form, hays, lengths, args.repeats, filler)
        t = time.time()
        for r in run_grid(engine, spec, batch):
            rows.append({"form": form, **r})
        got = [r for r in rows if r["form"] == form]
        print(f"[needle-form] {form}: {len(got)} samples, mean score "
              f"{sum(r['score'] for r in got) / len(got):.1f}, exact {100 * sum(r['exact'] for r in got) / len(got):.1f}% "
              f"({time.time() - t:.0f} s)", flush=True)
    meta = {"model": str(args.model), "haystack": str(args.haystack), "fresh": str(args.fresh), "lengths": lengths,
            "repeats": args.repeats, "command": "python " + " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}",
            "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, ensure_ascii=False) + "\n")
    md = [f"Needle-form probe: `{args.model}` (fp32, transformers), the evaluation's needle samples with one part "
          f"changed at a time; scored as `megaindex eval` scores (forced argmax).", "",
          f"- command: `{meta['command']}`", f"- date: {meta['date']}; {meta['machine']}; {meta['seconds']} s", "",
          *table(rows, lengths), ""]
    Path(f"{args.out}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
