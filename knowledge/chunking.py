"""Split parsed blocks into chunks of about N tokens that follow headings, paragraphs and sentences.

A heading (and a new PDF page) always starts a new chunk and becomes its ``section`` (the heading path, "A > B"). Whole
paragraphs are packed while they fit; a paragraph too long for one chunk is cut between sentences,
a sentence too long for one chunk between words. When a section continues in a new chunk, the last
sentences of the previous one (up to the overlap budget) are repeated, so no statement loses its
context. Chunks without any word character are never produced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from knowledge.parsers import Block

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class ChunkDraft:
    position: int
    content: str
    page: int | None
    section: str
    token_count: int

    @property
    def embedding_text(self) -> str:
        """What the embedder sees: the section heading gives a continuation chunk its context."""
        if self.section and not self.content.startswith(self.section.rsplit(" > ", 1)[-1]):
            return f"{self.section}\n{self.content}"
        return self.content


@dataclass
class _Unit:
    text: str
    tokens: int
    page: int | None
    paragraph_start: bool


@dataclass
class _Builder:
    budget: int
    overlap: int
    count: Callable[[str], int]
    drafts: list[ChunkDraft] = field(default_factory=list)
    units: list[_Unit] = field(default_factory=list)
    used: int = 0
    section: str = ""
    has_new_text: bool = False

    def add(self, unit: _Unit) -> None:
        self.units.append(unit)
        self.used += unit.tokens
        self.has_new_text = True

    def fits(self, tokens: int) -> bool:
        return self.used + tokens <= self.budget

    def flush(self, *, carry_overlap: bool) -> None:
        if self.units and self.has_new_text:
            content = ""
            for i, unit in enumerate(self.units):
                sep = "" if i == 0 else ("\n\n" if unit.paragraph_start else " ")
                content += sep + unit.text
            if _WORD.search(content):
                self.drafts.append(
                    ChunkDraft(
                        position=len(self.drafts),
                        content=content,
                        page=next((u.page for u in self.units if u.page is not None), None),
                        section=self.section,
                        token_count=self.used,
                    )
                )
        kept: list[_Unit] = []
        if carry_overlap and self.overlap > 0:
            total = 0
            for unit in reversed(self.units):
                if total + unit.tokens > self.overlap:
                    break
                kept.insert(0, unit)
                total += unit.tokens
        self.units = [_Unit(u.text, u.tokens, u.page, i == 0 or u.paragraph_start) for i, u in enumerate(kept)]
        self.used = sum(u.tokens for u in self.units)
        self.has_new_text = False


def chunk_blocks(
    blocks: list[Block], *, count_tokens: Callable[[str], int], max_tokens: int = 512, overlap_tokens: int = 64
) -> list[ChunkDraft]:
    # The embedder adds special tokens and its "passage: " prefix; keep room for them.
    baseline = max(count_tokens(""), 0)
    budget = max(max_tokens - baseline - 4, 16)

    counted: dict[str, int] = {}

    # Tokenising is most of the chunker's time (e5: ~8 ms per page-sized block, ~0.4 ms per
    # sentence): count every block, then every sentence of the blocks too long for one chunk, up
    # front on all cores, so a long document becomes keyword-searchable sooner.
    def precount(texts: list[str]) -> None:
        texts = [t for t in dict.fromkeys(texts) if t not in counted]
        if len(texts) < 16:
            return  # not worth a pool; counted on demand
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for text, tokens in zip(texts, pool.map(count_tokens, texts, chunksize=16), strict=True):
                counted[text] = max(tokens - baseline, 1)

    precount([b.text for b in blocks if _WORD.search(b.text)])
    precount([sentence for b in blocks if counted.get(b.text, 0) > budget for sentence in _SENTENCE_END.split(b.text)])

    def count(text: str) -> int:
        # Tokenising is the slow part of chunking (a 300-page PDF: tens of thousands of sentences),
        # and a sentence is measured when split and again when packed: count each text once.
        if text not in counted:
            counted[text] = max(count_tokens(text) - baseline, 1)
        return counted[text]

    builder = _Builder(budget=budget, overlap=min(overlap_tokens, budget // 2), count=count)
    headings: list[tuple[int, str]] = []
    for block in blocks:
        if not _WORD.search(block.text):
            continue  # punctuation-only text ranks high with e5 for unrelated queries: never index it
        if block.heading_level:
            builder.flush(carry_overlap=False)
            headings = [h for h in headings if h[0] < block.heading_level] + [(block.heading_level, block.text)]
            builder.section = " > ".join(h[1] for h in headings)[:300]
            builder.add(_Unit(block.text, count(block.text), block.page, True))
            builder.has_new_text = False  # a heading alone is not worth a chunk
            continue
        if builder.has_new_text and block.page is not None and builder.units[-1].page != block.page:
            builder.flush(carry_overlap=False)  # a chunk cites one page
        tokens = count(block.text)
        if builder.fits(tokens):
            builder.add(_Unit(block.text, tokens, block.page, True))
            continue
        if tokens <= budget:
            builder.flush(carry_overlap=True)
            if not builder.fits(tokens):
                builder.flush(carry_overlap=False)
            builder.add(_Unit(block.text, tokens, block.page, True))
            continue
        first = True
        for sentence in _sentences(block.text, budget, count):
            sentence_tokens = count(sentence)
            if not builder.fits(sentence_tokens):
                builder.flush(carry_overlap=True)
                if not builder.fits(sentence_tokens):
                    builder.flush(carry_overlap=False)
            builder.add(_Unit(sentence, sentence_tokens, block.page, first))
            first = False
    builder.flush(carry_overlap=False)
    return builder.drafts


def _sentences(text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if count(sentence) <= budget:
            out.append(sentence)
            continue
        words = sentence.split(" ")
        piece: list[str] = []
        for word in words:  # a "sentence" longer than a chunk (tables, lists): cut between words
            if piece and count(" ".join([*piece, word])) > budget:
                out.append(" ".join(piece))
                piece = []
            piece.append(word)
        if piece:
            out.append(" ".join(piece))
    return out
