"""OpenAI and every OpenAI-compatible endpoint (Azure OpenAI's v1 API, Ollama, vLLM, LM Studio, ...),
through the real ``openai`` client. Retries on 429/5xx/connection errors are made here, not by the
SDK, so that they respect the turn's deadline: at most LLM_MAX_RETRIES more attempts, with exponential
backoff (0.5 s doubling, at most 8 s, or the answer's Retry-After), each attempt's timeout
LLM_TIMEOUT_SECONDS cut to the time the turn has left, and none started after it. Whatever still
fails becomes an LLMError.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
from django.conf import settings
from openai.types.chat import ChatCompletionChunk

from config import egress
from conversations.llm.base import Completion, CompletionRequest, LLMError, ToolCall, Usage

_SAFE_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What can go wrong while a response is read: the SDK's own errors, the HTTP client's (a stream cut
# mid-way) and the egress guard's refusals and size cap.
READ_ERRORS = (openai.OpenAIError, httpx2.HTTPError, egress.ResponseTooLarge, egress.EgressRefused)


def _llm_error(exc: Exception) -> LLMError:
    """Name what went wrong by status and a short, safe reason: never the upstream body, which a tenant's
    endpoint controls (it would reach transcripts and API answers) and odd proxies fill with the request."""
    refusal = egress.refusal_in(exc)
    if isinstance(refusal, egress.EgressRefused):
        return LLMError(f"the LLM endpoint is not allowed ({refusal})", retryable=False, code="llm_egress_refused")
    if isinstance(refusal, egress.ResponseTooLarge):
        return LLMError(f"the LLM provider's {refusal}", retryable=False, code="llm_response_too_large")
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("the LLM provider timed out", retryable=True, code="llm_timeout")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("the LLM provider could not be reached", retryable=True, code="llm_unreachable")
    if isinstance(exc, openai.RateLimitError):
        return LLMError("the LLM provider is throttling requests (429)", retryable=True, code="llm_rate_limited")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMError(f"the LLM provider refused the API key ({exc.status_code})", retryable=False, code="llm_auth")
    if isinstance(exc, openai.APIStatusError):
        retryable = exc.status_code >= 500 or exc.status_code == 429
        reason = getattr(exc, "code", None)
        reason = reason if isinstance(reason, str) and _SAFE_CODE.fullmatch(reason) else ""
        return LLMError(
            f"the LLM provider answered {exc.status_code}" + (f" ({reason})" if reason else ""),
            retryable=retryable,
            code="llm_http_error",
        )
    if isinstance(exc, httpx2.HTTPError):
        return LLMError("the LLM provider's answer broke off", retryable=True, code="llm_unreachable")
    return LLMError(f"the LLM provider failed: {type(exc).__name__}", retryable=True)


def _retry_delay(exc: Exception, attempt: int) -> float:
    """The answer's Retry-After (up to 60 s), else 0.5 s doubling per attempt up to 8 s, with jitter."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after", "") if response is not None else ""
    try:
        asked = float(header)
    except ValueError:
        asked = -1.0
    if 0 <= asked <= 60:
        return asked
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


class OpenAIProvider:
    supports_tools = True
    supports_streaming = True
    uses_embedder = False

    def __init__(self, *, client: openai.OpenAI, model: str, name: str = "openai"):
        self.client = client
        self.model = model
        self.name = name

    def _post(self, request: CompletionRequest, *, streaming: bool = False) -> Any:
        """``POST /chat/completions`` through the SDK's own ``post`` (its auth, base URL, timeout, egress
        guard and error classes; its retries off), with retries within the request's deadline.

        ``chat.completions.create`` does the same after walking every typed parameter element by element
        against its TypedDicts (none of which chat messages or tool schemas need: ~3.4 ms of CPU per
        call for 20 messages and 3 tools) and, without streaming, builds a typed model of the answer
        (~0.4 ms more): the body goes as JSON as it is, and a whole answer is read as JSON."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.tools:
            body["tools"] = request.tools
        read: dict[str, Any] = {"cast_to": httpx2.Response}
        if streaming:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            read = {"cast_to": ChatCompletionChunk, "stream": True, "stream_cls": openai.Stream[ChatCompletionChunk]}
        attempts = settings.LLM_MAX_RETRIES + 1
        for attempt in range(attempts):
            timeout = float(settings.LLM_TIMEOUT_SECONDS)
            if request.deadline is not None:
                timeout = min(timeout, request.deadline - time.monotonic())
                if timeout <= 0.05:
                    raise LLMError("the turn's time ran out waiting for the LLM provider", code="llm_timeout")
            try:
                return self.client.post("/chat/completions", body=body, options={"timeout": timeout}, **read)
            except READ_ERRORS as exc:
                error = _llm_error(exc)
                delay = _retry_delay(exc, attempt)
                too_late = request.deadline is not None and time.monotonic() + delay >= request.deadline
                if not error.retryable or attempt == attempts - 1 or too_late:
                    raise error from None
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def complete(self, request: CompletionRequest) -> Completion:
        raw = self._post(request)
        try:
            response = json.loads(raw.content)
            choices = response.get("choices") or []
            if not choices:
                raise LLMError("the LLM provider answered no choices", retryable=True, code="llm_empty")
            choice = choices[0]
            message = choice.get("message") or {}
            calls = [
                ToolCall(id=str(c.get("id") or ""), name=str(c["function"].get("name") or ""),
                         arguments=str(c["function"].get("arguments") or ""))
                for c in message.get("tool_calls") or []
                if isinstance(c.get("function"), dict)
            ]  # fmt: skip
            usage = response.get("usage") or {}
            text, model, finish = message.get("content"), response.get("model"), choice.get("finish_reason")
            tokens = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        except (ValueError, AttributeError, TypeError, KeyError):
            raise LLMError(
                "the LLM provider answered something that is not a chat completion",
                retryable=True,
                code="llm_invalid_response",
            ) from None
        return Completion(
            text=text if isinstance(text, str) else "",
            tool_calls=calls,
            usage=tokens,
            model=model if isinstance(model, str) and model else self.model,
            finish_reason=finish if isinstance(finish, str) else "",
        )

    def stream(self, request: CompletionRequest) -> OpenAIStream:
        return OpenAIStream(self._post(request, streaming=True), model=self.model)


class OpenAIStream:
    """Server-sent chunks folded into text deltas, tool calls (assembled by index) and usage."""

    def __init__(self, chunks: Any, *, model: str):
        self._chunks = iter(chunks)
        self._raw = chunks
        self._model = model
        self._text: list[str] = []
        self._pending: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}
        self._usage = Usage()
        self._finish = ""
        self._done = False

    def _read_one(self) -> bool:
        """Consume one chunk; False at the end of the stream."""
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._done = True
            return False
        except READ_ERRORS as exc:
            self._done = True
            raise _llm_error(exc) from None
        if getattr(chunk, "usage", None):
            self._usage = Usage(
                prompt_tokens=chunk.usage.prompt_tokens or 0, completion_tokens=chunk.usage.completion_tokens or 0
            )
        if getattr(chunk, "model", None):
            self._model = chunk.model
        for choice in chunk.choices or []:
            delta = choice.delta
            if delta is not None and delta.content:
                self._text.append(delta.content)
                self._pending.append(delta.content)
            for call in (delta.tool_calls or []) if delta is not None else []:
                slot = self._calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                self._finish = choice.finish_reason
        return True

    def start(self) -> None:
        while not self._pending and not self._done:
            self._read_one()

    @property
    def has_text(self) -> bool:
        return bool(self._text)

    def deltas(self) -> Iterator[str]:
        while True:
            while self._pending:
                yield self._pending.pop(0)
            if self._done or not self._read_one():
                break
        if self._pending:
            yield from self._pending
            self._pending.clear()

    def completion(self) -> Completion:
        while not self._done:
            self._read_one()
        self._pending.clear()
        calls = [
            ToolCall(id=slot["id"] or f"call_{index}", name=slot["name"], arguments=slot["arguments"])
            for index, slot in sorted(self._calls.items())
        ]
        return Completion(
            text="".join(self._text), tool_calls=calls, usage=self._usage, model=self._model, finish_reason=self._finish
        )
