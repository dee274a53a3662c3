"""The embedded default when no LLM is configured: an extractive, grounded answerer.

It quotes the sentences of the retrieved passages that best match the question, names their
sources, says plainly when nothing relevant was retrieved, and says what it is (no AI model). It
never invents text, makes no network call and costs nothing, which is what a tenant trying the
platform without an OpenAI key needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from conversations.llm.base import Completion, CompletionRequest, ContextPassage, Usage, sources_line
from conversations.textnorm import words

SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
MAX_SENTENCES = 3
MAX_PASSAGES = 3
MAX_SENTENCE_CHARS = 400

# Words that say nothing about the topic (English, French, Spanish, Portuguese, German basics).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "please",
        "should",
        "tell",
        "that",
        "the",
        "their",
        "them",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "about",
        "any",
        "some",
        "hi",
        "hello",
        "thanks",
        "thank",
        "le",
        "la",
        "les",
        "un",
        "une",
        "des",
        "du",
        "de",
        "et",
        "est",
        "en",
        "que",
        "qui",
        "quoi",
        "comment",
        "pour",
        "par",
        "sur",
        "avec",
        "dans",
        "au",
        "aux",
        "ce",
        "cette",
        "je",
        "vous",
        "nous",
        "il",
        "elle",
        "mon",
        "ma",
        "mes",
        "votre",
        "vos",
        "el",
        "los",
        "las",
        "y",
        "es",
        "en",
        "que",
        "como",
        "para",
        "por",
        "con",
        "del",
        "al",
        "lo",
        "una",
        "uno",
        "mi",
        "su",
        "sus",
        "se",
        "o",
        "os",
        "as",
        "um",
        "uma",
        "do",
        "da",
        "dos",
        "das",
        "em",
        "no",
        "na",
        "com",
        "por",
        "para",
        "e",
        "der",
        "die",
        "das",
        "und",
        "ist",
        "ein",
        "eine",
        "zu",
        "mit",
        "von",
        "wie",
        "was",
        "wo",
        "ich",
        "sie",
    ]
)


def _terms(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())}


def _sentences(content: str) -> list[str]:
    out = []
    for raw in SENTENCE_SPLIT.split(content):
        sentence = " ".join(raw.split())
        if len(sentence) >= 3:
            out.append(sentence if len(sentence) <= MAX_SENTENCE_CHARS else sentence[:MAX_SENTENCE_CHARS] + "…")
    return out


def select_sentences(query: str, passages: list[ContextPassage]) -> list[tuple[ContextPassage, list[str]]]:
    """The best-matching sentences of the best passages, each group in document order."""
    terms = _terms(query)
    scored: list[tuple[float, int, int, ContextPassage, str]] = []
    for p_index, passage in enumerate(passages[:MAX_PASSAGES]):
        for s_index, sentence in enumerate(_sentences(passage.content)):
            overlap = len(terms & _terms(sentence))
            if overlap:
                # Term overlap first; earlier passages (better retrieval rank) break ties.
                scored.append((overlap - 0.01 * p_index, p_index, s_index, passage, sentence))
    if not scored and passages:
        # Retrieval judged the passage relevant (e.g. semantically) though no word matches: quote its opening.
        first = passages[0]
        return [(first, _sentences(first.content)[:2])]
    best = sorted(scored, key=lambda item: -item[0])[:MAX_SENTENCES]
    groups: dict[int, tuple[ContextPassage, list[tuple[int, str]]]] = {}
    for _, p_index, s_index, passage, sentence in best:
        groups.setdefault(p_index, (passage, []))[1].append((s_index, sentence))
    return [(passage, [s for _, s in sorted(items)]) for _, (passage, items) in sorted(groups.items())]


class OfflineAnswerer:
    name = "offline"
    model = "offline-extractive"
    supports_tools = False
    supports_streaming = False

    def complete(self, request: CompletionRequest) -> Completion:
        brand = request.brand_name or "our"
        owner = f"{brand}'s" if request.brand_name else "our"
        if not request.passages:
            hint = f" If you need a person, {request.handoff_hint}." if request.handoff_hint else ""
            text = (
                f"I couldn't find anything about that in {owner} documents. I'm an automatic assistant "
                f"that can only quote those documents (no AI model is connected), so I can't answer this "
                f"one.{hint}"
            )
            return Completion(text=text, usage=Usage(), model=self.model, finish_reason="stop")
        groups = select_sentences(request.query, request.passages)
        quoted = "\n".join(" ".join(sentences) for _, sentences in groups if sentences)
        cited = [passage for passage, sentences in groups if sentences]
        text = (
            f"Here is what I found in {owner} documents:\n\n{quoted}\n\n{sources_line(cited)}\n\n"
            "(Automatic answer quoted from the documents; no AI model is connected.)"
        )
        return Completion(
            text=text,
            usage=Usage(),
            model=self.model,
            finish_reason="stop",
            cited_markers=[p.marker for p in cited],
        )

    def stream(self, request: CompletionRequest) -> _WholeStream:
        return _WholeStream(self.complete(request))


class _WholeStream:
    """A non-streaming completion seen through the stream protocol (one delta)."""

    def __init__(self, completion: Completion):
        self._completion = completion

    def start(self) -> None:
        return None

    @property
    def has_text(self) -> bool:
        return bool(self._completion.text)

    def deltas(self) -> Iterator[str]:
        yield self._completion.text

    def completion(self) -> Completion:
        return self._completion
