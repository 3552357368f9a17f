"""`megaindex summarize FILE --model CKPT_OR_HF_DIR`: Index's long-text demo.

Owns what bilibili/Index-1.9B's demo/cli_long_text_demo.py does: the
prompt `<unk>` + system + `reserved_0` + enc("请用中文总结以下内容：" + "\\n"*6 + document + "\\n"*6 +
"请用中文总结以上内容：") + `reserved_1` (Index's chat format, no BOS), greedy decoding with
repetition penalty 1.1 and 500 new tokens, printed as the tokens come; `--watch` summarises again
whenever the file changes (its mtime, polled). A document longer than the model holds (its
training length, or factor x that with --rope) is middle-truncated (first and last halves of the
budget kept, Index's OpenCompass rule) with a warning saying how much was dropped.

Generation runs in transformers with a KV cache (the hf engine; a megaindex checkpoint is exported
in memory).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from megaindex import exit_codes
from megaindex.data.tokenizer import ASSISTANT, UNK, USER
from megaindex.eval import EvalError

# Index's demo, verbatim: its system message and the instruction around the document.
INDEX_SYSTEM = ("你是由哔哩哔哩人工智能平台部自主研发的大语言模型，名为“Index”。你能够根据用户传入的信息，"
                "帮助用户完成指定的任务，并生成恰当的、符合要求的回复。")
BEFORE, AFTER = "请用中文总结以下内容：" + "\n" * 6, "\n" * 6 + "请用中文总结以上内容："
MAX_NEW_TOKENS, REPETITION_PENALTY = 500, 1.1


def summary_prompt(encode: Callable[[str], list[int]], document: str, system: str = INDEX_SYSTEM) -> list[int]:
    """The demo's input ids for `document`."""
    return [UNK] + (encode(system) if system else []) + [USER] + encode(BEFORE + document + AFTER) + [ASSISTANT]


class TextStream:
    """on_token callback printing decoded text as it grows (SentencePiece pieces only decode
    correctly in context; an incomplete UTF-8 byte sequence waits for its next byte)."""

    def __init__(self, decode: Callable[[list[int]], str], out: TextIO):
        self.decode, self.out, self.ids, self.shown = decode, out, [], 0

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.decode(self.ids)
        if not text.endswith("\ufffd"):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)

    def finish(self) -> str:
        text = self.decode(self.ids)
        self.out.write(text[self.shown:] + "\n")
        self.out.flush()
        return text


def summarize(engine, document: str, *, max_new_tokens: int = MAX_NEW_TOKENS, system: str = INDEX_SYSTEM,
              out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> str:
    """Stream a summary of `document` to `out`; returns it. Warnings (truncation) go to `err`."""
    from megaindex.eval.truncate import middle_truncate

    tok = engine.tokenizer
    ids = summary_prompt(tok.encode, document, system)
    kept = middle_truncate(ids, engine.max_length, max_new_tokens)
    if len(kept) < len(ids):
        err.write(f"warning: the prompt is {len(ids)} tokens ({len(document)} characters); the model holds "
                  f"{engine.max_length} (trained at {engine.train_length}, RoPE {engine.rope.name}) with "
                  f"{max_new_tokens} new tokens, so {len(ids) - len(kept)} tokens were dropped from the middle "
                  f"of the document (middle truncation). Use --rope dynamic:8 (or similar) to read more.\n")
        err.flush()
    stream = TextStream(tok.decode, out)
    engine.generate(kept, max_new_tokens, repetition_penalty=REPETITION_PENALTY, on_token=stream)
    return stream.finish()


def watch(path: Path, engine, *, poll_seconds: float = 1.0, max_runs: int | None = None,
          out: TextIO = sys.stdout, err: TextIO = sys.stderr, **kw) -> int:
    """Summarise `path` now and again whenever its mtime changes; returns the number of summaries."""
    runs, seen = 0, None
    while max_runs is None or runs < max_runs:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime != seen:
            seen = mtime
            text = path.read_text(encoding="utf-8")
            out.write(f">> {path} ({len(text)} characters) at {time.strftime('%H:%M:%S')}:\n")
            summarize(engine, text, out=out, err=err, **kw)
            runs += 1
            if max_runs is None:
                out.write(f">> watching {path} for changes (Ctrl-C to stop)\n")
                out.flush()
            continue
        time.sleep(poll_seconds)
    return runs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megaindex summarize", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("file", type=Path, help="UTF-8 text file to summarise")
    p.add_argument("--model", required=True, help="megaindex checkpoint (any layout, a save dir or `latest`) or HF directory")
    p.add_argument("--watch", action="store_true", help="summarise again whenever the file changes (Ctrl-C to stop)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="tokens to generate (Index's demo: 500)")
    p.add_argument("--rope", default=None, help="training-free RoPE variant: naive | linear:F | dynamic:F | yarn:F")
    p.add_argument("--train-length", type=int, default=None, help="the model's training length (default: from the checkpoint)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the checkpoint's)")
    p.add_argument("--system", default=INDEX_SYSTEM, help="system message (default: Index's)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="--watch: how often to look at the file")
    return p


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if not a.file.is_file():
        print(f"megaindex summarize: {a.file} does not exist (or is not a file).", file=sys.stderr)
        return exit_codes.BAD_USAGE
    if a.max_new_tokens < 1:
        print("megaindex summarize: --max-new-tokens must be at least 1.", file=sys.stderr)
        return exit_codes.BAD_USAGE
    try:
        from megaindex.eval.engine import load_engine

        engine = load_engine(a.model, engine="hf", rope=a.rope, train_length=a.train_length, tokenizer_model=a.tokenizer)
        kw = dict(max_new_tokens=a.max_new_tokens, system=a.system)
        if a.watch:
            watch(a.file, engine, poll_seconds=a.poll_seconds, **kw)
        else:
            summarize(engine, a.file.read_text(encoding="utf-8"), **kw)
    except EvalError as e:
        print(f"megaindex summarize: {e}", file=sys.stderr)
        return exit_codes.BAD_USAGE
    except UnicodeDecodeError as e:
        print(f"megaindex summarize: {a.file} is not UTF-8 text ({e.reason} at byte {e.start}).", file=sys.stderr)
        return exit_codes.BAD_USAGE
    except KeyboardInterrupt:
        return 0
    return 0
