"""Framing of the v7 retrieval documents: how a document is introduced, closed and questioned.

Owns the tables of generic framing families, in English and Chinese — a preamble before the text (an
instruction line, "Here is a document:"-style presentation, a header such as "Context:" or "【文档】", or an
instruction followed by a header), an optional closing line after it (paired with the header where the
header opens a block: "[Document]" ... "[End of document]"), and the question block (an optional heading,
one question style per document: a marker such as "Question: {q}\\nAnswer: " or "{n}. {q}\\n" with a
lead-in of the answer, or a completion cue with no question) — the per-document draw (`draw_frame`),
how a framed question and its answer are written (`Frame.ask`), and the enumeration of every
combination (`preambles`, `tails`, `surface_forms`) that the held-out test checks.

Why (v7, after the sixth attempt; in-format probe of the fifth base, 2026-11-28): held-out documents of
the training format were answered 92.8 / 86.3% exact at 1K / 2K against 72.7 / 50.0 on the evaluation's
needle, so most of the miss is transfer to a prompt wording and framing the model never saw. The
families follow generic instruction-data practice (reading-comprehension prompts, "Context: /
Question: / Answer:" blocks, numbered questions, fill-in cues), not the evaluation's prompts: no
combination holds a phrase of megaindex.data.held_out.HELD_OUT_PHRASES (tests/test_retrieval_docs.py
enumerates every one), and the generator still checks each whole document.

Every answer still ends "{subject} is" + " {value}." / "{subject}是" + "{value}。": lead-ins come before
the subject ("According to the text, the locker number of Marisol Achebe is 48213."), so an answer
restates the body's statement verbatim as in v1-v6. Layout of a framed document (the questions follow
the text's last blank line, as before; no table entry holds a blank line):

    {preamble}{body}{closing}\\n\\n{heading}{question 1}\\n{question 2}\\n...
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# ---- preambles: "{verb} {noun}{end}", "{opener} {noun}{end}", a header, or an instruction and a header --
INSTRUCTION = {
    "en": (["Read", "Please read", "Now read", "Go through", "Study", "Look over", "Review"],
           ["the passage below", "the following text", "the text below", "the document below", "this document",
            "the article that follows", "the notes below", "the excerpt below", "the material below"],
           [".", " carefully.", " and answer the questions that follow.", " and then answer the questions.",
            "; questions follow.", ", then answer what is asked about it."]),
    "zh": (["阅读", "请阅读", "仔细阅读", "请认真阅读", "先读一读", "浏览一下"],
           ["下面的文章", "以下材料", "下面这段文字", "这篇文档", "下文", "下面的短文", "以下内容"],
           ["。", "，然后回答问题。", "，并回答后面的问题。", "，再回答下列问题。", "，之后会有几个问题。", "，回答其后的提问。"]),
}
PRESENTATION = {
    "en": (["Here is", "Below is", "The following is", "What follows is", "Attached is"],
           ["a document", "a passage", "a text", "an excerpt", "some reference material", "an article",
            "a set of notes"],
           [".", ":", " to read.", ". Questions about it come after it.", ", followed by a few questions."]),
    "zh": (["下面是", "以下是", "这是", "接下来是"],
           ["一篇文档", "一段文字", "一份材料", "一篇短文", "一段摘录", "几页笔记"],
           ["：", "。", "，请读完再答题。", "，后面附有问题。"]),
}
# (header, the closing line it pairs with or None: then a closing line is drawn from CLOSINGS, or none)
HEADERS = {
    "en": [("Document:", None), ("Text:", None), ("Context:", None), ("Passage:", None), ("Article:", None),
           ("Source text:", None), ("Reference:", None), ("### Document", None), ("=== Passage ===", None),
           ("[Document]", "[End of document]"), ("<text>", "</text>"), ("--- begin text ---", "--- end text ---")],
    "zh": [("文档：", None), ("正文：", None), ("上下文：", None), ("材料：", None), ("文章：", None), ("原文：", None),
           ("＝＝ 材料 ＝＝", None), ("【文档】", "【文档结束】"), ("【正文】", "【正文完】")],
}
CLOSINGS = {
    "en": ["End of document.", "(end of text)", "That is the whole passage.", "The text ends here.", "---",
           "Now answer the questions.", "Use the text above to answer.", "End of passage."],
    "zh": ["（全文完）", "文档结束。", "以上是全部内容。", "请根据上文回答下列问题。", "——完——", "材料到此结束。", "以上为原文。"],
}
CLOSING_SHARE = 0.5  # of the documents whose header pairs with no closing line: one drawn from CLOSINGS

# ---- the question block --------------------------------------------------------------------------------
HEADINGS = {  # the block's first line ("" twice: half the blocks have none)
    "en": ["", "", "Questions:", "Questions about the text:", "Answer the following.", "Now some questions."],
    "zh": ["", "", "问题：", "请回答下列问题：", "下面是几个问题。"],
}
# A question: MARKER with {q} = an ASKS wording of the fact (drawn per question) and {n} = its number,
# then LEAD + " {v}." ("{v}。"). A document's style is one (marker, lead) pair, or one completion CUE.
MARKERS = {
    "en": ["Q: {q}\nA: ", "Question: {q}\nAnswer: ", "{q}\n", "{q} ", "Q{n}: {q}\nA{n}: ", "{n}. {q}\n",
           "Question {n}: {q}\nAnswer: ", "({n}) {q}\n", "Query: {q}\nResponse: ", "> {q}\n"],
    "zh": ["问：{q}\n答：", "问题：{q}\n回答：", "{q}\n", "{q}", "第{n}题：{q}\n答：", "{n}. {q}\n", "问题{n}：{q}\n答案：",
           "（{n}）{q}\n"],
}
ASKS = {
    "en": ["What is {s}?", "What was {s}?", "Can you tell me {s}?", "Do you know {s}?",
           "What does the text give as {s}?", "What is {s}, according to the text?",
           "According to the text above, what is {s}?", "Based on the document, what is {s}?",
           "From the passage, what is {s}?", "In the text, what is {s}?", "Looking back at the text, what is {s}?",
           "Which value does the text give for {s}?", "What is stated as {s}?", "Who or what is {s}?"],
    "zh": ["{s}是什么？", "请问{s}是什么？", "根据上文，{s}是什么？", "根据文档，{s}是什么？", "文中的{s}是什么？",
           "上文提到的{s}是什么？", "按照材料，{s}是什么？", "你知道{s}是什么吗？", "{s}是什么呢？"],
}
LEADS = {  # the answer up to its value ("{S} is" twice: the plain restatement is the most common)
    "en": ["{S} is", "{S} is", "According to the text, {s} is", "The text says that {s} is", "As stated above, {s} is",
           "In the passage, {s} is"],
    "zh": ["{s}是", "{s}是", "根据上文，{s}是", "文中说{s}是", "材料里写着{s}是", "按原文，{s}是"],
}
CUES = {  # completion only: the cue, then " {v}." ("{v}。")
    "en": ["{S} is", "Complete from the text: {S} is", "Fill in from the passage: {s} is", "Recall from above: {s} is",
           "From the document, {s} is", "Finish the sentence: {S} is", "{n}. {S} is"],
    "zh": ["{s}是", "根据上文，{s}是", "填空：{s}是", "请补全：{s}是", "按文中所说，{s}是", "{n}. {s}是"],
}
CUE_SHARE = 0.2  # of framed documents: completion cues instead of questions
END = {"en": " {v}.", "zh": "{v}。"}
PREAMBLE_KINDS = ("instruction", "presentation", "header", "instruction+header")


def _preamble(lang: str, kind: str, idx: tuple[int, ...]) -> tuple[str, str | None]:
    """(preamble text, the closing line its header pairs with or None) of `kind` at table indices `idx`."""
    space = " " if lang == "en" else ""
    if kind in ("instruction", "instruction+header"):
        verbs, nouns, ends = INSTRUCTION[lang]
        text = f"{verbs[idx[0]]}{space}{nouns[idx[1]]}{ends[idx[2]]}\n\n"
        if kind == "instruction":
            return text, None
        header, close = HEADERS[lang][idx[3]]
        return f"{text}{header}\n", close
    if kind == "presentation":
        openers, nouns, ends = PRESENTATION[lang]
        end = ends[idx[2]]
        return f"{openers[idx[0]]}{space}{nouns[idx[1]]}{end}" + ("\n" if end in (":", "：") else "\n\n"), None
    header, close = HEADERS[lang][idx[0]]
    return f"{header}\n", close


def _sizes(lang: str, kind: str) -> tuple[int, ...]:
    """The table sizes `kind`'s indices run over."""
    if kind == "header":
        return (len(HEADERS[lang]),)
    table = PRESENTATION[lang] if kind == "presentation" else INSTRUCTION[lang]
    return tuple(map(len, table)) + ((len(HEADERS[lang]),) if kind == "instruction+header" else ())


@dataclass(frozen=True)
class Frame:
    """One document's framing (see the module docstring); `key` names the draw (table indices)."""

    lang: str
    preamble: str        # before the body; ends with a line break
    closing: str         # after the body: "" or "\n\n{closing line}" ("\n{paired close}")
    heading: str         # the question block's first line with its "\n", or ""
    marker: str | None   # MARKERS entry, or None: completion cues
    lead: str            # LEADS entry, or the CUES entry when marker is None
    key: str

    def ask(self, fill: Callable[[str], str], n: int, rng: random.Random) -> str:
        """Question `n` (1-based) of the fact whose `fill` formats {s}, {S}, {v}, and its answer; the wording
        is drawn per question."""
        return self.write(fill, n, None if self.marker is None else rng.choice(ASKS[self.lang]))

    def write(self, fill: Callable[[str], str], n: int, wording: str | None) -> str:
        if self.marker is None:
            return fill(self.lead.replace("{n}", str(n)) + END[self.lang])
        return self.marker.replace("{n}", str(n)).replace("{q}", fill(wording)) + fill(self.lead + END[self.lang])


def draw_frame(rng: random.Random, lang: str) -> Frame:
    """A framing for one document: preamble kind uniform, then each table entry uniform (see the tables)."""
    kind = rng.choice(PREAMBLE_KINDS)
    idx = tuple(rng.randrange(n) for n in _sizes(lang, kind))
    preamble, close = _preamble(lang, kind, idx)
    c = None
    if close is not None:
        closing = f"\n{close}"
    elif rng.random() < CLOSING_SHARE:
        c = rng.randrange(len(CLOSINGS[lang]))
        closing = f"\n\n{CLOSINGS[lang][c]}"
    else:
        closing = ""
    h = rng.randrange(len(HEADINGS[lang]))
    heading = f"{HEADINGS[lang][h]}\n" if HEADINGS[lang][h] else ""
    if rng.random() < CUE_SHARE:
        k = rng.randrange(len(CUES[lang]))
        marker, lead, style = None, CUES[lang][k], f"k{k}"
    else:
        m, ll = rng.randrange(len(MARKERS[lang])), rng.randrange(len(LEADS[lang]))
        marker, lead, style = MARKERS[lang][m], LEADS[lang][ll], f"m{m}.{ll}"
    key = f"{lang}:{kind}:{'.'.join(map(str, idx))}|c{'p' if close else c}|h{h}|{style}"
    return Frame(lang, preamble, closing, heading, marker, lead, key)


# ---- every combination (the held-out test; the counts in the README) --------------------------------------
def preambles(lang: str) -> Iterator[tuple[str, str | None]]:
    """Every preamble `draw_frame` can write, with the closing its header pairs with (or None)."""
    for kind in PREAMBLE_KINDS:
        for idx in itertools.product(*map(range, _sizes(lang, kind))):
            yield _preamble(lang, kind, idx)


def _closings(lang: str) -> list[str]:
    return ["", *(f"\n\n{c}" for c in CLOSINGS[lang]), *(f"\n{c}" for _, c in HEADERS[lang] if c)]


def tails(lang: str, fill: Callable[[str], str]) -> Iterator[str]:
    """Every text `draw_frame` and `Frame.ask` can write after the body (closing, heading, one question of
    every style and wording, numbered 1, then the next question's marker numbered 2), with `fill`'s fact."""
    styles = [(None, c, None) for c in CUES[lang]] + [(m, ll, a) for m in MARKERS[lang] for ll in dict.fromkeys(
        LEADS[lang]) for a in ASKS[lang]]
    for closing, heading in itertools.product(_closings(lang), dict.fromkeys(HEADINGS[lang])):
        for marker, lead, ask in styles:
            frame = Frame(lang, "", closing, f"{heading}\n" if heading else "", marker, lead, "")
            nxt = "" if marker is None else marker.replace("{n}", "2").split("{q}")[0]
            yield closing + "\n\n" + frame.heading + frame.write(fill, 1, ask) + "\n" + nxt


def surface_forms(lang: str) -> int:
    """How many distinct framings (preamble x closing x heading x question style x wording of one question)."""
    pre = [p for p in preambles(lang)]
    paired = sum(c is not None for _, c in pre)
    closings = (len(pre) - paired) * (1 + len(CLOSINGS[lang])) + paired
    styles = len(set(CUES[lang])) + len(MARKERS[lang]) * len(set(LEADS[lang])) * len(ASKS[lang])
    return closings * len(set(HEADINGS[lang])) * styles
