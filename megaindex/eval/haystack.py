"""Haystacks from held-out real documents that training never reads.

The split. `tools/prepare_corpus.py` writes `heldout.jsonl` beside `pretrain.jsonl`: whole documents
chosen deterministically (the CI fixture: two Python tutorial pages and two Chinese kernel-doc books
that the fixture's selection never takes; the full corpus: a fixed 2% of long documents by a hash of
their source name) and left out of every training file. It is a document-level split that lives
outside the data pipeline: training reads only `data.data_path` / `data.valid_data_path`, and no
recipe lists `heldout.jsonl`, so no preprocessing, blending or `split` string can ever pull a
haystack document into a batch (tests/test_eval_tasks.py checks the tiny recipes against the
held-out text). megatron's `split` test range was the alternative, but it is a contiguous tail of
the document order — in the fixture only Chinese poems — and it moves whenever the corpus changes.

`--haystack` takes that JSONL ({"text", "lang"} per line) or a recipe YAML, meaning the
`heldout.jsonl` files beside the recipe's data files. `resolve_haystack` also refuses a haystack
file that the checkpoint's own recipe trains on.

Owns: loading held-out documents per language, `Haystack.tokens(lang, n, seed)` (documents shuffled
by the seed, joined by a blank line, cut to exactly n model tokens) and sentence-end snapping.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from megaindex.eval import EvalError

NEWLINE = "\n"
SENTENCE_ENDS = tuple(".?!。？！")
HELDOUT_NAME = "heldout.jsonl"


def _data_files(cfg) -> list[Path]:
    from megaindex.data.builder import parse_blend

    paths = parse_blend(cfg.data.data_path, "data.data_path")[0] + parse_blend(cfg.data.valid_data_path,
                                                                                "data.valid_data_path")[0]
    return [Path(p) for p in paths]


def resolve_haystack(source: str | Path | None, train_config=None) -> list[Path]:
    """The held-out JSONL files for `--haystack` (a JSONL or a recipe), or beside the training data."""
    from megaindex.config import ConfigError
    from megaindex.config_load import load_config

    if source is None and train_config is None:
        raise EvalError("no haystack: pass --haystack HELDOUT.jsonl (tools/prepare_corpus.py writes heldout.jsonl) "
                        "or a recipe whose data directory holds one.")
    if source is not None and str(source).endswith((".jsonl", ".jsonl.gz")):
        files = [Path(source)]
        if not files[0].is_file():
            raise EvalError(f"--haystack {source} does not exist.")
    else:
        cfg = train_config
        if source is not None:
            try:
                cfg = load_config(source)
            except ConfigError as e:
                raise EvalError(f"--haystack {source}: not a held-out .jsonl and not a usable recipe ({e}).") from None
        dirs = dict.fromkeys(p.parent for p in _data_files(cfg))
        files = [d / HELDOUT_NAME for d in dirs if (d / HELDOUT_NAME).is_file()]
        if not files:
            where = ", ".join(map(str, dirs)) or "(no data paths)"
            raise EvalError(f"no {HELDOUT_NAME} beside the recipe's data ({where}); run tools/prepare_corpus.py "
                            f"or pass --haystack HELDOUT.jsonl.")
    if train_config is not None:
        trained = {p.resolve() for p in _data_files(train_config)}
        for f in files:
            if f.resolve() in trained:
                raise EvalError(f"haystack {f} is in the checkpoint's training data (data.data_path); "
                                f"a haystack must be held out: use {HELDOUT_NAME} from tools/prepare_corpus.py.")
    return files


def load_documents(files: list[Path]) -> dict[str, list[str]]:
    """{lang: [text, ...]} from held-out JSONL files; errors name FILE:LINE."""
    docs: dict[str, list[str]] = {}
    for f in files:
        for n, line in enumerate(Path(f).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text, lang = rec["text"], rec.get("lang", "en")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("empty text")
            except (ValueError, KeyError, TypeError) as e:
                raise EvalError(f"{f}:{n}: a held-out document needs a non-empty \"text\" (and \"lang\"): {e}") from None
            docs.setdefault(lang, []).append(text)
    if not docs:
        raise EvalError(f"no documents in {', '.join(map(str, files))}.")
    return docs


class Haystack:
    """Held-out documents of each language, tokenised once (lazily) with the model's tokenizer."""

    def __init__(self, docs: dict[str, list[str]], tokenizer):
        self.docs, self.tok = docs, tokenizer
        self._ids: dict[str, list[list[int]]] = {}
        self.newline = tokenizer.encode("a" + NEWLINE)[-1:]  # the newline piece alone (no dummy prefix)
        self._ends: dict[int, bool] = {}

    @classmethod
    def from_files(cls, files: list[Path], tokenizer) -> "Haystack":
        return cls(load_documents(files), tokenizer)

    @property
    def langs(self) -> list[str]:
        return sorted(self.docs)

    def _doc_ids(self, lang: str) -> list[list[int]]:
        if lang not in self.docs:
            raise EvalError(f"the haystack has no '{lang}' documents (it has: {', '.join(self.langs)}).")
        if lang not in self._ids:
            self._ids[lang] = self.tok.encode_batch(self.docs[lang])
        return self._ids[lang]

    def available(self, lang: str) -> int:
        return sum(len(d) + 2 for d in self._doc_ids(lang))

    def tokens(self, lang: str, n: int, seed: int | str) -> list[int]:
        """Exactly `n` tokens of held-out text: documents in a seeded order, joined by a blank line."""
        docs = self._doc_ids(lang)
        if n > self.available(lang):
            raise EvalError(f"the held-out '{lang}' documents hold {self.available(lang)} tokens, fewer than the "
                            f"{n} this length needs; use a larger held-out set (tools/prepare_corpus.py, full corpus).")
        order = list(range(len(docs)))
        random.Random(f"haystack-{lang}-{seed}").shuffle(order)
        out: list[int] = []
        for i in order:
            out += docs[i] + self.newline * 2
            if len(out) >= n:
                break
        return out[:n]

    def ends_sentence(self, token_id: int) -> bool:
        if token_id not in self._ends:
            piece = self.tok.decode([token_id]).rstrip()
            self._ends[token_id] = piece.endswith(SENTENCE_ENDS)
        return self._ends[token_id]

    def snap_back(self, ids: list[int], pos: int) -> int:
        """The last sentence end at or before `pos`: the largest p <= pos whose previous token ends in
        . ? ! 。 ？ or ！ (0 when there is none), so an inserted needle starts a sentence."""
        for p in range(min(pos, len(ids)), 0, -1):
            if self.ends_sentence(ids[p - 1]):
                return p
        return 0
