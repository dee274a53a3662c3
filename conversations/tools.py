"""Function calling: the tools the LLM may call and how each call runs.

Tenant functions (``TenantFunction`` rows) are HTTPS endpoints: the model's arguments are parsed and
validated against the function's JSON schema *before* anything leaves the platform, the request is
signed (``X-MetaChat-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`` with the function's
signing secret) and sent through the egress guard (``config.egress``: private/loopback/link-local
targets refused at connect time, no redirects, the answer's size capped); the timeout is the function's.
Built-ins: ``search_knowledge`` (the tenant's documents) and ``request_human`` (handoff).
Every failure becomes a result the model can read (``{"error": ...}``), never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonschema
import requests
from django.conf import settings

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
class ToolResult:
    ok: bool
    content: Any  # what the model reads back (JSON-able)
    error: str = ""
    handoff_reason: str = ""
    passages: list[ContextPassage] = field(default_factory=list)
    status_code: int | None = None
    duration_ms: int = 0
    arguments: Any = None


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
    *, tenant: Tenant, function: TenantFunction, arguments: dict[str, Any], conversation_id: str, call_id: str
) -> ToolResult:
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
    return done(ok=True, content=content, status_code=response.status_code)


def run_tool_call(
    *,
    tenant: Tenant,
    call: ToolCall,
    functions: dict[str, TenantFunction],
    conversation_id: str,
    marker_start: int,
    search_enabled: bool,
    handoff_enabled: bool,
) -> ToolResult:
    """Validate and run one call the model made. Never raises for the model's mistakes."""
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
        tenant=tenant, function=function, arguments=arguments, conversation_id=conversation_id, call_id=call.id
    )
