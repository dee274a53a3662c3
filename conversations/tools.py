"""Function calling: the tools the LLM may call and how each call runs.

Tenant functions (``TenantFunction`` rows) are HTTPS endpoints: the model's arguments are parsed and
validated against the function's JSON schema *before* anything leaves the platform, the request is
signed (``X-MetaChat-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`` with the function's
signing secret) and sent through the egress guard (``config.egress``: private/loopback/link-local
targets refused at connect time, no redirects, the answer's size capped); the timeout is the function's.
Built-ins: ``search_knowledge`` (the tenant's documents) and ``request_human`` (handoff).
Every failure becomes a result the model can read (``{"error": ...}``), never an exception.

A function's answer may also carry files and options for the user (``split_answer``):
``{"result": ..., "attachments": [{"kind", "link", "mime_type", "filename", "caption"}],
"choices": {"body", "options": [{"id", "title", "description"}], "header", "footer", "button_label",
"layout"}}`` (the names of the conversation media and choices API). The model reads only ``result``;
the files and options are checked here (shape, https, the egress guard's URL rules) and sent after
the turn's text reply by the pipeline (``conversations.pipeline.function_sends``), which applies the
platform's own limits and the customer-service window. The request names the option the user tapped
(``reply``), so a function can act on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jsonschema
import requests
from django.conf import settings

from channels_app.adapters.base import Choice, Choices, OutboundMedia
from config import egress
from conversations.llm.base import ContextPassage, ToolCall

if TYPE_CHECKING:
    from conversations.models import TenantFunction
    from tenants.models import Tenant

SEARCH_KNOWLEDGE = "search_knowledge"
REQUEST_HUMAN = "request_human"
BUILTIN_NAMES = frozenset({SEARCH_KNOWLEDGE, REQUEST_HUMAN})
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SIGNATURE_HEADER = "X-MetaChat-Signature"


class FunctionDefinitionError(ValueError):
    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))


@dataclass
class FunctionSend:
    """A file or options to tap that a function's answer gives the user, sent after the turn's text
    reply. ``refused``: why it is not sent (recorded as a failed message instead)."""

    function: str
    kind: str  # image | document | audio | video | choices
    described: dict[str, Any]  # what the transcript and the events say about it
    media: OutboundMedia | None = None
    choices: Choices | None = None
    refused: str = ""


@dataclass
class ToolResult:
    ok: bool
    content: Any  # what the model reads back (JSON-able)
    error: str = ""
    handoff_reason: str = ""
    passages: list[ContextPassage] = field(default_factory=list)
    status_code: int | None = None
    duration_ms: int = 0
    arguments: Any = None
    sends: list[FunctionSend] = field(default_factory=list)  # files and options for the user


# --- files and options in a function's answer -------------------------------------------------------------

SEND_KINDS = ("image", "document", "audio", "video")
MAX_ATTACHMENTS = 5  # per answer
MAX_SENDS_PER_TURN = 10  # files and options of all the turn's calls
ATTACHMENT_FIELDS = frozenset({"kind", "link", "mime_type", "filename", "caption"})
CHOICES_FIELDS = frozenset({"body", "options", "header", "footer", "button_label", "layout"})
OPTION_FIELDS = frozenset({"id", "title", "description"})
LAYOUTS = ("auto", "buttons", "list")


def split_answer(function_name: str, answer: Any) -> tuple[Any, list[FunctionSend]]:
    """(what the model reads, the files and options for the user) of a function's JSON answer.

    An answer without ``attachments`` or ``choices`` is read by the model as it is. With them, the
    model reads ``result`` only (or, without ``result``, the other keys), never the links: it should
    not repeat them. Each item is checked on its own; a bad one is kept as refused (recorded, not
    sent) and the others go."""
    if not isinstance(answer, dict) or not ({"attachments", "choices"} & answer.keys()):
        return answer, []
    sends: list[FunctionSend] = []
    attachments = answer.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            sends.append(_refused(function_name, "document", {}, "attachments must be a list"))
        else:
            for index, item in enumerate(attachments):
                if index >= MAX_ATTACHMENTS:
                    why = f"at most {MAX_ATTACHMENTS} attachments in one answer"
                    described = _describe(item)
                    sends.append(_refused(function_name, _recorded_kind(described), described, why))
                else:
                    sends.append(attachment_send(function_name, item))
    if answer.get("choices") is not None:
        sends.append(choices_send(function_name, answer["choices"]))
    if "result" in answer:
        return answer["result"], sends
    return {k: v for k, v in answer.items() if k not in ("attachments", "choices")}, sends


def _refused(function_name: str, kind: str, described: dict[str, Any], why: str) -> FunctionSend:
    return FunctionSend(function=function_name, kind=kind, described=described, refused=why)


def _describe(item: Any) -> dict[str, Any]:
    """An item as the transcript keeps it: its known string fields, bounded."""
    if not isinstance(item, dict):
        return {}
    return {k: str(item[k])[:2048] for k in sorted(ATTACHMENT_FIELDS) if isinstance(item.get(k), str)}


def _text(item: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = item.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise ValueError(f"{name} is required")
    if len(value) > limit:
        raise ValueError(f"{name} is over {limit} characters")
    return value


def attachment_send(function_name: str, item: Any) -> FunctionSend:
    """One ``attachments`` item as a file sent by link (the platform fetches it), or refused: an
    https link that the egress guard's URL rules accept (no credentials, no private, loopback,
    link-local or metadata address), a known kind and type (``mime_type``, or the link's or the
    filename's extension), a filename and caption within bounds."""
    described = _describe(item)
    kind = str(described.get("kind", ""))
    try:
        if not isinstance(item, dict):
            raise ValueError("an attachment must be an object")
        unknown = sorted(set(item) - ATTACHMENT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {unknown}: use {', '.join(sorted(ATTACHMENT_FIELDS))}")
        link = _text(item, "link", egress.MAX_URL_LENGTH, required=True)
        if urlsplit(link).scheme != "https":
            raise ValueError("the link must be an https:// URL (the platform fetches it)")
        try:
            egress.check_url(link, https_only=True)
        except egress.EgressRefused as exc:
            raise ValueError(f"the link is refused: {exc}") from None
        filename = _text(item, "filename", 240)
        caption = _text(item, "caption", 1024)
        mime_type = _text(item, "mime_type", 127).lower()
        mime_type = mime_type or _guess_type(filename, _path(link))
        if not mime_type:
            raise ValueError("give mime_type (the link's and the filename's extension do not say the type)")
        kind = _text(item, "kind", 16) or _kind_of(mime_type)
        if kind not in SEND_KINDS:
            raise ValueError(f"kind must be one of {', '.join(SEND_KINDS)}")
    except ValueError as exc:
        return _refused(function_name, kind if kind in SEND_KINDS else _recorded_kind(described), described, str(exc))
    described = {"kind": kind, "link": link, "mime_type": mime_type, "filename": filename, "caption": caption}
    media = OutboundMedia(kind=kind, link=link, mime_type=mime_type, filename=filename, caption=caption)
    return FunctionSend(function=function_name, kind=kind, described=described, media=media)


def _recorded_kind(described: dict[str, Any]) -> str:
    """The kind a refused attachment is recorded as: its own when valid, else what its link says."""
    kind = str(described.get("kind", ""))
    if kind in SEND_KINDS:
        return kind
    return _kind_of(_guess_type(str(described.get("filename", "")), _path(str(described.get("link", "")))))


def _path(link: str) -> str:
    try:
        return urlsplit(link).path
    except ValueError:
        return ""


def _guess_type(*names: str) -> str:
    """The type the first of ``names`` with a known extension says ("" when none does)."""
    for name in names:
        guessed = mimetypes.guess_type(name)[0] if name else None
        if guessed:
            return guessed.lower()
    return ""


def _kind_of(mime_type: str) -> str:
    family = mime_type.split("/")[0]
    return family if family in ("image", "audio", "video") else "document"


def choices_send(function_name: str, item: Any) -> FunctionSend:
    """``choices`` as options to tap, or refused. The shape and the widest platform bounds are checked
    here; each platform's own (WhatsApp: 3 buttons of 20 characters or 10 rows of 24; Messenger: 13
    quick replies of 20) when it is sent."""
    described: dict[str, Any] = item if isinstance(item, dict) else {}
    try:
        if not isinstance(item, dict):
            raise ValueError("choices must be an object")
        unknown = sorted(set(item) - CHOICES_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {unknown}: use {', '.join(sorted(CHOICES_FIELDS))}")
        options = item.get("options")
        if not isinstance(options, list) or not 1 <= len(options) <= 13:
            raise ValueError("options must be a list of 1-13 options")
        parsed: list[Choice] = []
        for option in options:
            if not isinstance(option, dict) or set(option) - OPTION_FIELDS:
                raise ValueError(f"each option is an object with {', '.join(sorted(OPTION_FIELDS))}")
            parsed.append(
                Choice(
                    id=_text(option, "id", 256, required=True),
                    title=_text(option, "title", 24, required=True),
                    description=_text(option, "description", 72),
                )
            )
        if len({o.id for o in parsed}) != len(parsed):
            raise ValueError("every option needs its own id")
        layout = _text(item, "layout", 10) or "auto"
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
        choices = Choices(
            body=_text(item, "body", 4096, required=True),
            options=parsed,
            header=_text(item, "header", 60),
            footer=_text(item, "footer", 60),
            button_label=_text(item, "button_label", 20),
            style=layout,
        )
    except ValueError as exc:
        return _refused(function_name, "choices", storable_choices(described), str(exc))
    return FunctionSend(function=function_name, kind="choices", described=asdict(choices), choices=choices)


def storable_choices(value: dict[str, Any]) -> dict[str, Any]:
    """A refused ``choices`` as the transcript keeps it: bounded (its JSON, cut at 2,000 characters)."""
    text = json.dumps(value, default=str)
    return value if len(text) <= 2000 else {"truncated": text[:2000]}


# --- definitions -------------------------------------------------------------------------------------


def validate_definition(*, name: str, parameters: Any, endpoint_url: str, timeout_seconds: float) -> None:
    """Raise FunctionDefinitionError naming each bad field."""
    errors: dict[str, list[str]] = {}
    if not NAME_RE.match(name or ""):
        errors["name"] = ["1-64 letters, digits, '_' or '-', starting with a letter"]
    elif name in BUILTIN_NAMES:
        errors["name"] = [f"'{name}' is a built-in tool"]
    if not isinstance(parameters, dict):
        errors["parameters"] = ["must be a JSON schema object"]
    else:
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            errors["parameters"] = [f"not a valid JSON schema: {exc.message}"]
        else:
            if parameters and parameters.get("type", "object") != "object":
                errors["parameters"] = ["the top-level schema must have type 'object'"]
    try:
        egress.check_url(endpoint_url, https_only=True)
    except egress.EgressRefused as exc:
        errors["endpoint_url"] = [str(exc)]
    if not 0.1 <= float(timeout_seconds) <= 60:
        errors["timeout_seconds"] = ["between 0.1 and 60 seconds"]
    if errors:
        raise FunctionDefinitionError(errors)


def tool_specs(*, functions: list[TenantFunction], search: bool, handoff: bool) -> list[dict[str, Any]]:
    """OpenAI ``tools`` for this turn."""
    specs = [
        {
            "type": "function",
            "function": {
                "name": f.name,
                "description": f.description,
                "parameters": f.parameters or {"type": "object", "properties": {}},
            },
        }
        for f in functions
    ]
    if search:
        specs.append(
            {
                "type": "function",
                "function": {
                    "name": SEARCH_KNOWLEDGE,
                    "description": "Search the business's documents. Use it for questions the context does not answer.",
                    "parameters": {
                        "type": "object",
                        "properties": {"query": {"type": "string", "description": "what to look for"}},
                        "required": ["query"],
                    },
                },
            }
        )
    if handoff:
        specs.append(
            {
                "type": "function",
                "function": {
                    "name": REQUEST_HUMAN,
                    "description": "Hand the conversation to a human member of staff when the user asks for a "
                    "person, is upset, or needs something you cannot do.",
                    "parameters": {
                        "type": "object",
                        "properties": {"reason": {"type": "string", "description": "why a human is needed"}},
                    },
                },
            }
        )
    return specs


# --- running calls ----------------------------------------------------------------------------------------


def parse_arguments(call: ToolCall, schema: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """(arguments, "") or (None, why they are invalid)."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return None, f"arguments are not valid JSON ({exc.msg} at position {exc.pos})"
    if not isinstance(arguments, dict):
        return None, "arguments must be a JSON object"
    if schema:
        validator = jsonschema.Draft202012Validator(schema)
        problems = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
        if problems:
            first = problems[0]
            where = "/".join(str(p) for p in first.path) or "(root)"
            return None, f"arguments do not match the schema at {where}: {first.message}"
    return arguments, ""


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def call_function(
    *,
    tenant: Tenant,
    function: TenantFunction,
    arguments: dict[str, Any],
    conversation_id: str,
    call_id: str,
    reply: dict[str, Any] | None = None,
) -> ToolResult:
    """POST the call to the function's endpoint. ``reply``: the option the user tapped in the
    messages this turn answers (``{"payload", "title"}``), sent as the request's ``reply``."""
    from tenants.secrets import SecretError, with_tenant_secret

    started = time.monotonic()

    def done(**kwargs: Any) -> ToolResult:
        return ToolResult(duration_ms=int((time.monotonic() - started) * 1000), arguments=arguments, **kwargs)

    body = json.dumps(
        {
            "function": function.name,
            "arguments": arguments,
            "call_id": call_id,
            "conversation_id": conversation_id,
            "tenant_id": str(tenant.pk),
            "reply": reply,
        },
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "MetaChat-Functions/1",
        "X-MetaChat-Function": function.name,
        "X-MetaChat-Request-Id": uuid.uuid4().hex,
    }
    try:
        if function.signing_secret_name:
            headers[SIGNATURE_HEADER] = with_tenant_secret(
                tenant=tenant,
                name=function.signing_secret_name,
                fn=lambda secret: sign(secret=secret, timestamp=int(time.time()), body=body),
            )
        if function.auth_header_name and function.auth_secret_name:
            with_tenant_secret(
                tenant=tenant,
                name=function.auth_secret_name,
                fn=lambda value: headers.__setitem__(function.auth_header_name, value),
            )
    except SecretError as exc:
        return done(ok=False, content={"error": "the function is misconfigured"}, error=f"secret: {exc}")
    try:
        response = egress.post(
            function.endpoint_url,
            body=body,
            headers=headers,
            timeout=function.timeout_seconds,
            max_bytes=settings.FUNCTION_MAX_RESPONSE_CHARS * 4,
        )
    except egress.EgressRefused as exc:
        return done(ok=False, content={"error": f"the function endpoint was refused: {exc}"}, error=str(exc))
    except egress.ResponseTooLarge as exc:
        return done(ok=False, content={"error": f"the function endpoint's {exc}"}, error=str(exc))
    except requests.Timeout:
        error = f"the function endpoint did not answer within {function.timeout_seconds:g} s"
        return done(ok=False, content={"error": error}, error=error)
    except requests.RequestException as exc:
        error = f"the function endpoint could not be reached ({type(exc).__name__})"
        return done(ok=False, content={"error": error}, error=error)
    finally:
        headers.pop(function.auth_header_name, None)  # the secret header value dies with this call
    limit = settings.FUNCTION_MAX_RESPONSE_CHARS
    text = response.text[:limit]
    try:
        content: Any = response.json() if len(response.text) <= limit else text
    except ValueError:
        content = text
    if not 200 <= response.status_code < 300:
        error = f"the function endpoint answered HTTP {response.status_code}"
        return done(
            ok=False, content={"error": error, "body": text[:500]}, error=error, status_code=response.status_code
        )
    content, sends = split_answer(function.name, content)
    return done(ok=True, content=content, status_code=response.status_code, sends=sends)


def run_tool_call(
    *,
    tenant: Tenant,
    call: ToolCall,
    functions: dict[str, TenantFunction],
    conversation_id: str,
    marker_start: int,
    search_enabled: bool,
    handoff_enabled: bool,
    reply: dict[str, Any] | None = None,
) -> ToolResult:
    """Validate and run one call the model made. Never raises for the model's mistakes. ``reply``:
    the option the user tapped (see ``call_function``)."""
    started = time.monotonic()
    if call.name == REQUEST_HUMAN and handoff_enabled:
        arguments, problem = parse_arguments(call, None)
        reason = str((arguments or {}).get("reason", ""))[:200]
        return ToolResult(
            ok=True,
            content={"status": "handoff_requested"},
            handoff_reason=f"tool: {REQUEST_HUMAN}" + (f" ({reason})" if reason else ""),
            arguments=arguments,
        )
    if call.name == SEARCH_KNOWLEDGE and search_enabled:
        schema = {"type": "object", "properties": {"query": {"type": "string", "minLength": 1}}, "required": ["query"]}
        arguments, problem = parse_arguments(call, schema)
        if arguments is None:
            return ToolResult(ok=False, content={"error": problem}, error=problem)
        from conversations.pipeline.retrieval import search_passages

        passages = search_passages(tenant=tenant, query=arguments["query"], marker_start=marker_start)
        return ToolResult(
            ok=True,
            content={
                "passages": [{"source": f"[{p.marker}] {p.label()}", "text": p.content} for p in passages]
                or "nothing relevant found"
            },
            passages=passages,
            arguments=arguments,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    function = functions.get(call.name)
    if function is None:
        error = f"there is no tool named '{call.name}'"
        return ToolResult(ok=False, content={"error": error}, error=error)
    arguments, problem = parse_arguments(call, function.parameters)
    if arguments is None:
        return ToolResult(ok=False, content={"error": problem}, error=problem)
    return call_function(
        tenant=tenant,
        function=function,
        arguments=arguments,
        conversation_id=conversation_id,
        call_id=call.id,
        reply=reply,
    )
