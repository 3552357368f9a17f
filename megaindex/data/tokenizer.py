"""The Index tokenizer: a SentencePiece BPE model with Index's special-token layout.

Owns: loading a `tokenizer.model` (a real Index one or one trained by tools/train_tokenizer.py),
checking its special ids, and the few ids the data pipeline needs by name. Index-1.9B's layout is
`<unk>`0 `<s>`1 `</s>`2 (EOD, also used as pad) `reserved_0`3 (user turn) `reserved_1`4 (assistant
turn). The reserved tokens are control symbols: plain text never encodes to them, so a document that
contains the string "reserved_0" cannot forge a chat turn; the chat formatter inserts their ids.

Also satisfies the small tokenizer interface megatron-core's GPTDataset reads (`eod`, `pad`,
`vocab_size`), so the same object goes into its config.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

UNK, BOS, EOS, USER, ASSISTANT = 0, 1, 2, 3, 4
SPECIAL_PIECES = {UNK: "<unk>", BOS: "<s>", EOS: "</s>", USER: "reserved_0", ASSISTANT: "reserved_1"}


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message says which file and why."""


class IndexTokenizer:
    """SentencePiece wrapper with Index's special ids (`eod` = `</s>` = 2)."""

    def __init__(self, model_path: str | Path):
        self.model_path = str(model_path)
        if not Path(model_path).is_file():
            raise TokenizerError(
                f"tokenizer model {model_path} does not exist; train one with tools/train_tokenizer.py "
                f"or point data.tokenizer_model at Index's tokenizer.model."
            )
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.model_path)
        except (RuntimeError, OSError) as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise TokenizerError(
                f"{model_path} is not a SentencePiece model ({reason}); point it at Index's tokenizer.model "
                f"or train one with tools/train_tokenizer.py."
            ) from None
        for i, piece in SPECIAL_PIECES.items():
            got = self.sp.id_to_piece(i) if i < self.sp.get_piece_size() else None
            if got != piece:
                raise TokenizerError(
                    f"{model_path}: id {i} is {got!r}, but Index's layout needs {piece!r} "
                    f"(<unk>0 <s>1 </s>2 reserved_0 3 reserved_1 4); retrain with tools/train_tokenizer.py."
                )

    # megatron-core's tokenizer interface (GPTDatasetConfig reads these) ------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eod(self) -> int:
        return EOS

    @property
    def pad(self) -> int:
        return EOS  # Index pads with eos; pad positions are always loss-masked

    # ids and text ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text -> ids, no BOS/EOS added (documents get EOD appended by preprocessing)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        """Ids -> text; special ids appear by name so a decoded chat shows its turn markers."""
        out, run = [], []
        for i in (int(x) for x in ids):
            if i in SPECIAL_PIECES:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(SPECIAL_PIECES[i])
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def __repr__(self) -> str:
        return f"IndexTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(model_path: str | Path | None) -> IndexTokenizer:
    if not model_path:
        raise TokenizerError("data.tokenizer_model is not set; point it at a SentencePiece tokenizer.model.")
    return IndexTokenizer(model_path)
