#!/usr/bin/env python3
"""Write long single-turn chat conversations (LongAlign-style long instructions) from pretraining text.

    python tools/make_long_sft.py tests/fixtures/corpus/pretrain.jsonl --tokenizer tests/fixtures/tokenizer.model \\
        -o .bench_data/long_sft.jsonl --count 28 --min-tokens 4096 --max-tokens 32000

Stage 2's long half (the report: 30K+ long instructions) is not shipped, so benchmarks build it from
the corpus they have. Conversation i (seeded by --seed and i alone: the same arguments write the
same file) is one `{"messages": [user, assistant]}` record:

  * user: a span of the corpus of about L tokens of the real tokenizer, L uniform in
    [--min-tokens, --max-tokens] (default 4K-32K: long instructions that fit stage 2's 32K window;
    LongAlign-10k's own range is 8K-64K, whose longer half a 32K run truncates to full rows),
    taken from a random token offset
    of the documents joined end to end (a span may cross documents, joined by a blank line), then
    a question asking to quote the paragraph of the text that begins with the first words of one
    of its paragraphs;
  * assistant: that paragraph, cut to at most --answer-tokens tokens (at a sentence end if one
    is in the second half), so the trained part is short against the prompt, as in LongAlign.

Conversations longer than a run's data.seq_length are the trainer's to truncate or drop
(data.sft_overlength): the file holds the lengths as drawn. Each line also carries "tokens", the
conversation's length in the chat format (data/chat.py), so the lengths can be checked without
tokenizing again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megaindex import exit_codes  # noqa: E402
from megaindex.data.tokenizer import IndexTokenizer, TokenizerError  # noqa: E402

QUESTION = ("\n\nAnswer from the text above. Quote, word for word, the paragraph of the text that begins "
            "with \"{head}\".")
INSTRUCTION = "Read the following text carefully.\n\n"
SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)")


class CorpusTokens:
    """The documents of JSONL files ({"text"} lines) as one token stream with document boundaries."""

    def __init__(self, paths: list[Path], tokenizer: IndexTokenizer):
        self.tokenizer = tokenizer
        docs = []
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{n}: not a JSON object with a \"text\" field") from None
                    if isinstance(text, str) and text.strip():
                        docs.append(tokenizer.encode(text))
        if not docs:
            raise ValueError(f"no documents with text in {', '.join(map(str, paths))}")
        self.docs = docs
        self.starts = np.cumsum([0] + [len(d) for d in docs])  # document d holds stream tokens [starts[d], starts[d+1])

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def span_text(self, start: int, length: int) -> str:
        """`length` tokens of the stream from `start` (wrapping around), documents joined by a blank line."""
        parts, pos, left = [], start % self.total, length
        while left > 0:
            d = int(np.searchsorted(self.starts, pos, side="right") - 1)
            off = pos - int(self.starts[d])
            take = min(left, len(self.docs[d]) - off)
            parts.append(self.tokenizer.decode(self.docs[d][off:off + take]).strip())
            left -= take
            pos = (pos + take) % self.total
        return "\n\n".join(p for p in parts if p)


def _paragraphs(text: str) -> list[str]:
    """Paragraphs worth quoting: blank-line separated blocks of at least 80 characters."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= 80]


def _head(paragraph: str) -> str:
    """The first words of a paragraph: 8 words, at most 60 characters (text without spaces: 24)."""
    words = paragraph.split()
    head = " ".join(words[:8]) if len(words) >= 8 else paragraph[:24].replace("\n", " ")
    return head[:60]


def _answer(paragraph: str, tokenizer: IndexTokenizer, max_tokens: int) -> str:
    ids = tokenizer.encode(paragraph)
    if len(ids) <= max_tokens:
        return paragraph
    cut = tokenizer.decode(ids[:max_tokens])
    ends = [m.end() for m in SENTENCE_END.finditer(cut)]
    return cut[:ends[-1]] if ends and ends[-1] > len(cut) // 2 else cut


def conversation(corpus: CorpusTokens, i: int, *, min_tokens: int, max_tokens: int, answer_tokens: int,
                 seed: int) -> dict:
    """Conversation i: depends on (seed, i) and the corpus only."""
    rng = np.random.default_rng([seed, i])
    length = int(rng.integers(min_tokens, max_tokens + 1))
    span = corpus.span_text(int(rng.integers(0, corpus.total)), length)
    paragraphs = _paragraphs(span) or [span]
    paragraph = paragraphs[int(rng.integers(0, len(paragraphs)))]
    user = INSTRUCTION + span + QUESTION.format(head=_head(paragraph))
    assistant = _answer(paragraph, corpus.tokenizer, answer_tokens)
    tok = corpus.tokenizer
    tokens = 1 + 1 + len(tok.encode(user)) + 1 + len(tok.encode(assistant)) + 1  # <unk> reserved_0 .. reserved_1 .. </s>
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "tokens": tokens, "source": f"make_long_sft seed {seed} #{i}"}


def write_long_sft(inputs: list[Path], tokenizer_model: Path, output: Path, *, count: int, min_tokens: int,
                   max_tokens: int, answer_tokens: int = 400, seed: int = 0) -> list[int]:
    """Write `count` conversations to `output` (JSONL); returns their lengths in tokens."""
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"--min-tokens {min_tokens} and --max-tokens {max_tokens}: need 0 < min <= max")
    corpus = CorpusTokens(inputs, IndexTokenizer(tokenizer_model))
    output.parent.mkdir(parents=True, exist_ok=True)
    lengths = []
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(count):
            rec = conversation(corpus, i, min_tokens=min_tokens, max_tokens=max_tokens, answer_tokens=answer_tokens,
                               seed=seed)
            lengths.append(rec["tokens"])
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(output)
    return lengths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="JSONL files of training text ({'text'} lines)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece tokenizer.model (lengths count in it)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="JSONL of {'messages'} records to write")
    ap.add_argument("--count", type=int, default=28, help="conversations to write")
    ap.add_argument("--min-tokens", type=int, default=4096, help="shortest document span (tokens)")
    ap.add_argument("--max-tokens", type=int, default=32000, help="longest document span (tokens)")
    ap.add_argument("--answer-tokens", type=int, default=400, help="longest answer (tokens)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        lengths = write_long_sft(args.inputs, args.tokenizer, args.output, count=args.count, min_tokens=args.min_tokens,
                                 max_tokens=args.max_tokens, answer_tokens=args.answer_tokens, seed=args.seed)
    except (OSError, ValueError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.FAILED
    print(f"{args.output}: {len(lengths)} conversations, {sum(lengths):,} tokens "
          f"(min {min(lengths, default=0):,}, median {int(np.median(lengths)) if lengths else 0:,}, max {max(lengths, default=0):,})")
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
