"""The one protocol every LLM provider implements, and the plain shapes it speaks.

Messages and tools use the OpenAI chat-completions shapes (role/content/tool_calls, JSON-schema
function tools) because every provider we support speaks them; the offline answerer reads the
retrieved passages and the user's question from the request instead. The helpers at the end build
those shapes (tool calls and their results, the sources line), so the pipeline needs no provider's module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from conversations import phrases


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text as the model produced it (validated later, never trusted)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass
class Completion:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    finish_reason: str = ""
    # Passages the answer quotes (offline answerer); LLM answers cite by [n] markers instead.
    cited_markers: list[int] = field(default_factory=list)


@dataclass
class ContextPassage:
    """A retrieved chunk as the LLM sees it: ``[marker] title (p. N, section)`` then the text."""

    marker: int
    chunk_id: str
    document_id: str
    title: str
    content: str
    page: int | None = None
    section: str = ""
    score: float = 0.0

    def label(self, language: str = "en") -> str:
        """``Title (p. 2, Section)``: where the passage is, as the sources line names it."""
        where = []
        if self.page:
            where.append(f"{phrases.phrase('page', language)} {self.page}")
        section = self.section
        if section.startswith(f"{self.title} > "):  # the document's own title heads its section path
            section = section[len(self.title) + 3 :]
        if section and section != self.title:
            where.append(section)
        return f"{self.title} ({', '.join(where)})" if where else self.title

    def as_source(self) -> dict[str, Any]:
        return {
            "marker": self.marker,
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "title": self.title,
            "page": self.page,
            "section": self.section,
            "score": round(self.score, 4),
        }


@dataclass
class CompletionRequest:
    messages: list[dict[str, Any]]
    query: str  # the user's latest words (all messages of the burst)
    passages: list[ContextPassage] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    temperature: float = 0.3
    max_tokens: int = 600
    brand_name: str = ""
    handoff_keyword: str = ""  # the word that reaches a person, offered by the offline answerer ("" = none)
    locale: str = "en"  # the conversation's language (conversations.language)
    # The offline answerer's: the tenant's embedder (to score sentences; None = keywords only), and
    # whether the sources belong in the text (False where the channel lists them beside it: web chat).
    embedder: Any = None
    sources_in_text: bool = True
    # time.monotonic() by which the answer must have started (the turn's TURN_MAX_SECONDS): no attempt
    # starts after it and each attempt's timeout is cut to what is left. None: LLM_TIMEOUT_SECONDS.
    deadline: float | None = None


class LLMError(Exception):
    """The provider failed after its own retries (``retryable``: down/throttled, worth retrying later)."""

    def __init__(self, message: str, *, retryable: bool = True, code: str = "llm_error"):
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class LLMStream(Protocol):
    """A streamed answer. ``start()`` reads until the first text or the end; if ``has_text`` is
    false the round ended with tool calls (``completion()``). Otherwise ``deltas()`` yields the text
    as it arrives, and ``completion()`` holds the whole answer and usage once it has been read."""

    def start(self) -> None: ...

    @property
    def has_text(self) -> bool: ...

    def deltas(self) -> Iterator[str]: ...

    def completion(self) -> Completion: ...


class LLMProvider(Protocol):
    name: str  # offline | openai | openai_compatible
    model: str
    supports_tools: bool
    supports_streaming: bool
    # It scores the passages' sentences with the tenant's embedder: the request carries one.
    uses_embedder: bool

    def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> LLMStream: ...


def unique_sources(passages: list[ContextPassage]) -> list[ContextPassage]:
    """The passages with one per source (title, page, section), in citation order: three chunks of
    one section are one source."""
    seen: set[tuple[str, int | None, str]] = set()
    out: list[ContextPassage] = []
    for passage in passages:
        key = (passage.title, passage.page, passage.section)
        if key not in seen:
            seen.add(key)
            out.append(passage)
    return out


def sources_line(passages: list[ContextPassage], language: str = "en") -> str:
    """The line that closes an answer: the cited passages' labels, each once, in citation order."""
    labels = list(dict.fromkeys(passage.label(language) for passage in passages))
    return f"{phrases.phrase('sources', language)}: " + "; ".join(labels)


def tool_call_message(text: str, calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant message that carries tool calls, as the next request must repeat it."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ],
    }


def tool_result_message(call_id: str, result: Any) -> dict[str, Any]:
    """A tool's result as the message the next request carries after the call."""
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "content": result if isinstance(result, str) else json.dumps(result),
    }
