"""Stages 5-6: the LLM completion and the bounded function-calling loop.

The system prompt comes from the tenant's brand name, tone and locales; history is the
conversation since its last handoff boundary, newest first until the token budget is spent;
retrieved passages are numbered ``[n]`` so answers can cite them. Tool calls are validated and run
(conversations.tools), stored as tool records, and fed back, at most ``MAX_TOOL_ROUNDS`` times and
within ``TURN_MAX_SECONDS``; the last round offers no tools, so the model must answer. When the
provider stays down the turn gets a fallback reply and ``turn.failure`` (the messages are kept
and can be retried).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from conversations import language, tools
from conversations.llm import LLMError, provider_for_tenant
from conversations.llm.base import (
    Completion,
    CompletionRequest,
    LLMProvider,
    sources_line,
    tool_call_message,
    tool_result_message,
    unique_sources,
)
from conversations.metrics import llm_duration
from conversations.models import Message, TenantFunction
from conversations.pipeline import handoff_check
from conversations.pipeline.turn import Turn

FALLBACK_TEXT = (
    "Sorry, I can't answer right now because of a technical problem. Your message has been kept and "
    "we will get back to you."
)
MARKER_RE = re.compile(r"\[(\d{1,2})\]")


def storable(value: Any) -> Any:
    """``value`` (text, or JSON-like data) without what PostgreSQL's text and jsonb refuse: NUL
    characters, and lone surrogates (from a JSON escape), which become "?". A model or a tenant's
    function can produce both, and the reply or tool record would then fail to store."""
    if isinstance(value, str):
        value = value.replace("\x00", "")
        try:
            value.encode()
        except UnicodeEncodeError:
            value = value.encode(errors="replace").decode()
        return value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 4


def system_prompt(turn: Turn, *, tools_offered: bool) -> str:
    config = turn.config
    lines = [
        f"You are the assistant of {config.brand_name}, talking with a customer on {turn.channel.get_type_display()}.",
        f"Tone: {config.tone}. Keep answers short and clear.",
        f"Answer in {language.name(turn.language)} (the language the user writes in; the business's languages "
        f"are {', '.join(config.locale)}).",
        "Answer from the context passages when they are relevant and cite them by their markers, like [1]. "
        "If the context does not contain the answer, say so plainly; never invent facts, prices or policies.",
    ]
    if config.prompt_addition.strip():
        lines.append(config.prompt_addition.strip())
    if turn.tap:
        # The title is what the user's message says; the id is what the business's functions know.
        lines.append(f'The user tapped the option "{turn.tap["title"]}" (option id: {turn.tap["payload"]}).')
    if tools_offered and config.enable_human_handoff:
        lines.append(
            f"If the user asks for a person or you cannot help, call {tools.REQUEST_HUMAN} instead of answering."
        )
    if turn.passages:
        lines.append("\nContext passages:")
        for passage in turn.passages:
            lines.append(f"[{passage.marker}] {passage.label()}\n{passage.content}")
    return "\n".join(lines)


def history(turn: Turn) -> list[dict[str, Any]]:
    """User, assistant and agent messages since the context boundary (loaded by intake), the newest
    kept within the token budget, oldest first."""
    budget = settings.LLM_HISTORY_TOKEN_BUDGET
    kept: list[dict[str, Any]] = []
    for message in turn.context_messages:
        if not message.content:
            continue
        cost = estimate_tokens(message.content)
        if kept and cost > budget:
            break
        budget -= cost
        role = "user" if message.sender == Message.Sender.USER else "assistant"
        kept.append({"role": role, "content": message.content})
    kept.reverse()
    return kept


def _request(
    turn: Turn, provider: LLMProvider, messages: list[dict[str, Any]], tool_specs: list[dict[str, Any]] | None
) -> CompletionRequest:
    config = turn.config
    return CompletionRequest(
        messages=messages,
        query=turn.query,
        passages=turn.passages,
        tools=tool_specs or None,
        temperature=config.llm.temperature,
        max_tokens=config.llm.max_tokens,
        brand_name=config.brand_name,
        handoff_keyword=config.human_handoff_keywords[0]
        if config.enable_human_handoff and config.human_handoff_keywords
        else "",
        locale=turn.language,
        embedder=_embedder(turn) if provider.uses_embedder else None,
        sources_in_text=not lists_sources(turn),
        deadline=turn.started + settings.TURN_MAX_SECONDS,
    )


def _embedder(turn: Turn) -> Any:
    """The tenant's embedder, for the offline answerer's sentence scores (None: keywords only)."""
    from knowledge.embedders import EmbeddingError, get_embedder

    try:
        return get_embedder(tenant=turn.tenant)
    except EmbeddingError:
        return None


def lists_sources(turn: Turn) -> bool:
    """The channel shows a reply's sources beside its text (web chat): the text does not repeat them."""
    from channels_app.adapters.base import RichMessageAdapter, get_adapter

    try:
        return isinstance(get_adapter(turn.channel.type), RichMessageAdapter)
    except KeyError:
        return False


def _wants_stream(turn: Turn, provider: LLMProvider) -> bool:
    from conversations import outbound

    return bool(turn.config.llm.stream and provider.supports_streaming and outbound.can_stream(turn.channel))


@dataclass
class ToolLoop:
    """The function-calling loop of one turn. Kept on the turn because a streamed round whose model
    writes some text and then calls tools is read by the reply stage, which hands the calls back here
    (``continue_after_stream``)."""

    provider: LLMProvider
    messages: list[dict[str, Any]]
    functions: dict[str, TenantFunction]
    tool_specs: list[dict[str, Any]]
    deadline: float
    stream: bool
    rounds: int = 0
    offered: bool = False  # tools were offered to the round being answered


def run(turn: Turn) -> None:
    if not turn.answering:
        return
    started = time.monotonic()
    try:
        provider = provider_for_tenant(turn.tenant)
        turn.provider_name, turn.model = provider.name, provider.model
        turn.tool_loop = _start(turn, provider)
        _rounds(turn, turn.tool_loop)
    except LLMError as exc:
        fail(turn, exc)
    turn.time("llm_ms", started)


def fail(turn: Turn, exc: LLMError) -> None:
    """The provider stayed down: the fallback reply, and the failure the finish stage records."""
    turn.failure = exc
    turn.reply_text = FALLBACK_TEXT
    turn.reply_stream = None


def continue_after_stream(turn: Turn, answer: Completion) -> bool:
    """A streamed round's whole answer, once the reply stage has shown its text. When the model called
    tools after that text, they run now and the loop goes on: True, and the next answer is in
    ``turn.reply_stream`` (streamed) or ``turn.reply_text``. False: ``answer`` is the final one."""
    loop = turn.tool_loop
    if loop is None or not answer.tool_calls or not loop.offered:
        return False
    started = time.monotonic()
    try:
        if _take(turn, loop, answer):
            _rounds(turn, loop)
    except LLMError as exc:
        fail(turn, exc)
    turn.time("llm_ms", started)
    return True


def _active_functions() -> Any:
    return TenantFunction.objects.filter(is_active=True).order_by("name")  # as the model's ordering


def functions_from_rows(rows: list[dict[str, Any]]) -> dict[str, TenantFunction]:
    """TenantFunction rows as JSON objects (``row_to_json``), as instances by name (in the rows' order)."""
    fields = TenantFunction._meta.concrete_fields
    names = [f.attname for f in fields]
    functions = [
        TenantFunction.from_db(connection.alias, names, [f.to_python(row[f.attname]) for f in fields]) for row in rows
    ]
    return {f.name: f for f in functions}


def _start(turn: Turn, provider: LLMProvider) -> ToolLoop:
    config = turn.config
    functions: dict[str, TenantFunction] = {}
    tool_specs: list[dict[str, Any]] = []
    if provider.supports_tools and config.enable_function_calling:
        if turn.functions is None:  # not loaded with the turn's events (a retried conversation)
            functions = {f.name: f for f in _active_functions().filter(tenant_id=turn.tenant.pk)}
        else:
            functions = dict(turn.functions)
        tool_specs = tools.tool_specs(
            functions=list(functions.values()), search=config.enable_rag, handoff=config.enable_human_handoff
        )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(turn, tools_offered=bool(tool_specs))},
        *history(turn),
    ]
    return ToolLoop(
        provider=provider,
        messages=messages,
        functions=functions,
        tool_specs=tool_specs,
        deadline=turn.started + settings.TURN_MAX_SECONDS,
        stream=_wants_stream(turn, provider),
    )


def _rounds(turn: Turn, loop: ToolLoop) -> None:
    """LLM rounds until a final answer (or a streamed one, which the reply stage reads)."""
    while True:
        offer = loop.tool_specs if loop.rounds < settings.MAX_TOOL_ROUNDS and time.monotonic() < loop.deadline else []
        loop.offered = bool(offer)
        request = _request(turn, loop.provider, loop.messages, offer)
        llm_started = time.monotonic()
        if loop.stream:
            handle = loop.provider.stream(request)
            handle.start()
            turn.time("llm_wait_ms", llm_started)
            llm_duration.labels(provider=loop.provider.name, mode="stream").observe(time.monotonic() - llm_started)
            if handle.has_text:
                turn.reply_stream = handle  # the reply stage sends it as it arrives
                return
            completion = handle.completion()
        else:
            completion = loop.provider.complete(request)
            turn.time("llm_wait_ms", llm_started)
            llm_duration.labels(provider=loop.provider.name, mode="complete").observe(time.monotonic() - llm_started)
        if not _take(turn, loop, completion):
            return


def _take(turn: Turn, loop: ToolLoop, completion: Completion) -> bool:
    """Account one round's answer: the final text, or its tool calls run. True: another round follows."""
    config = turn.config
    turn.usage.add(completion.usage)
    turn.model = completion.model or turn.model
    if not completion.tool_calls or not loop.offered:
        finish_text(turn, completion)
        return False
    loop.rounds += 1
    loop.messages.append(tool_call_message(completion.text, completion.tool_calls))
    for call in completion.tool_calls:
        tool_started = time.monotonic()
        result = tools.run_tool_call(
            tenant=turn.tenant,
            call=call,
            functions=loop.functions,
            conversation_id=str(turn.conversation.pk) if turn.conversation else "",
            marker_start=len(turn.passages) + 1,
            search_enabled=config.enable_rag,
            handoff_enabled=config.enable_human_handoff,
            reply=turn.tap,
        )
        turn.time("tools_ms", tool_started)
        turn.passages.extend(result.passages)
        _keep_sends(turn, result.sends)
        turn.tool_records.append(
            storable(
                {
                    "call_id": call.id,
                    "name": call.name,
                    "arguments_raw": call.arguments[:4000],
                    "arguments": result.arguments,
                    "ok": result.ok,
                    "error": result.error,
                    "result": result.content,
                    "status_code": result.status_code,
                    "duration_ms": result.duration_ms,
                    "round": loop.rounds,
                    # Files and options for the user (links included: the model never read them).
                    **({"sends": [_send_record(send) for send in result.sends]} if result.sends else {}),
                }
            )
        )
        loop.messages.append(tool_result_message(call.id, result.content))
        if result.handoff_reason:
            handoff_check.escalate(turn, reason=storable(result.handoff_reason))
            return False
    return True


def _keep_sends(turn: Turn, sends: list[tools.FunctionSend]) -> None:
    """The function's files and options join the turn's: up to ``tools.MAX_SENDS_PER_TURN`` are sent,
    as many more are recorded as refused, and beyond that only the tool record names them."""
    limit = tools.MAX_SENDS_PER_TURN
    for send in sends:
        if len(turn.function_sends) >= 2 * limit:
            return
        if len(turn.function_sends) >= limit and not send.refused:
            send.refused = f"more than {limit} files and options in one turn"
            send.media = send.choices = None
        turn.function_sends.append(send)


def _send_record(send: tools.FunctionSend) -> dict[str, Any]:
    return {"kind": send.kind, **send.described, **({"refused": send.refused} if send.refused else {})}


def finish_text(turn: Turn, completion: Completion) -> None:
    """Final text and its sources: the passages the answer cites (offline: those it quotes)."""
    text = storable(completion.text).strip()
    by_marker = {p.marker: p for p in turn.passages}
    if completion.cited_markers:
        cited = unique_sources([by_marker[m] for m in completion.cited_markers if m in by_marker])
    else:
        markers = dict.fromkeys(int(m) for m in MARKER_RE.findall(text))
        cited = unique_sources([by_marker[m] for m in markers if m in by_marker])
        line = sources_line(cited, turn.language)
        if cited and not lists_sources(turn) and line.split(":")[0] + ":" not in text:
            text = f"{text}\n\n{line}"
    # Each source once (title, page, section): the list the channel shows, or the line in the text.
    turn.sources = [p.as_source() for p in cited]
    turn.reply_text = text or FALLBACK_TEXT
