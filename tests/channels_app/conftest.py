"""Channels test kit: channels with real encrypted credentials, signed webhook posts, a contact's
conversation, and a local HTTP server speaking the Graph API (messages of every type, media lookup,
media download, user profile, a WABA's message templates with cursor paging)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from email import policy as email_policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from channels_app import services
from channels_app.adapters.base import NormalizedMessage
from channels_app.adapters.meta import sign
from channels_app.models import Channel, InboundEvent
from conversations.models import Contact, Conversation
from tenants.models import Tenant

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WA_PHONE_NUMBER_ID = "1122334455667"
WA_WABA_ID = "2233445566778"
MS_PAGE_ID = "106543210987654"
WA_SECRET = "wa-app-secret-0123456789abcdef"
MS_SECRET = "ms-app-secret-fedcba9876543210"
WA_TOKEN = "EAAwhatsapptoken123"
MS_TOKEN = "EAAmessengertoken456"


def fixture_bytes(platform: str, name: str) -> bytes:
    return (FIXTURES / platform / f"{name}.json").read_bytes()


def fresh_fixture_bytes(platform: str, name: str) -> bytes:
    """A fixture as if sent just now: its timestamps moved to the present, so the contact's
    customer-service window is open (the recorded payloads are from 2023)."""
    body = fixture_bytes(platform, name).decode()
    now = time.time()
    body = re.sub(r'"timestamp":\s*"\d+"', f'"timestamp": "{int(now)}"', body)  # WhatsApp: seconds, as text
    body = re.sub(r'"timestamp":\s*\d{13}', f'"timestamp": {int(now * 1000)}', body)  # Messenger: ms
    return body.encode()


@pytest.fixture(autouse=True)
def _fresh_route_cache() -> Iterator[None]:
    services.clear_route_cache()
    yield
    services.clear_route_cache()


@pytest.fixture
def wa_channel(tenant: Tenant) -> Channel:
    return services.channel_create(
        tenant=tenant,
        type="whatsapp",
        name="Support line",
        external_id=WA_PHONE_NUMBER_ID,
        config={"display_phone_number": "15550001111", "waba_id": WA_WABA_ID},
        credentials={"app_secret": WA_SECRET, "access_token": WA_TOKEN, "verify_token": "wa-verify-token"},
    )


@pytest.fixture
def ms_channel(tenant: Tenant) -> Channel:
    return services.channel_create(
        tenant=tenant,
        type="messenger",
        name="Acme page",
        external_id=MS_PAGE_ID,
        credentials={"app_secret": MS_SECRET, "access_token": MS_TOKEN, "verify_token": "ms-verify-token"},
    )


@pytest.fixture
def post_webhook(client: Any) -> Callable[..., Any]:
    """``post_webhook(platform, body, secret=..., header=...)``: POST with a real HMAC signature."""

    def post(platform: str, body: bytes, secret: str | None = None, *, algorithm: str = "sha256", headers=None) -> Any:
        extra = dict(headers or {})
        if secret is not None:
            name = "HTTP_X_HUB_SIGNATURE_256" if algorithm == "sha256" else "HTTP_X_HUB_SIGNATURE"
            extra[name] = sign(body, secret, algorithm)
        return client.generic("POST", f"/webhooks/{platform}", body, content_type="application/json", **extra)

    return post


def inbound_from(channel: Channel, sender: str, *, hours_ago: float = 0.0, message_id: str = "") -> InboundEvent:
    """A message the contact sent ``hours_ago`` (Meta's timestamp), as the webhook intake stores it:
    what the customer-service window is read from."""
    stamp = time.time() - hours_ago * 3600
    message_id = message_id or f"wamid.IN{time.time_ns()}"
    normalized = NormalizedMessage(
        platform=channel.type,
        channel_external_id=channel.external_id,
        message_id=message_id,
        sender_id=sender,
        timestamp=stamp,
        type="text",
        text="Hello",
    ).to_dict()
    return InboundEvent.objects.create(
        tenant_id=channel.tenant_id,
        channel=channel,
        kind=InboundEvent.Kind.MESSAGE,
        dedupe_key=message_id,
        sender_external_id=sender,
        normalized=normalized,
        status=InboundEvent.Status.PROCESSED,
    )


def conversation_with(channel: Channel, sender: str) -> Conversation:
    """A conversation of ``channel`` with the contact ``sender`` (the platform's id of the user)."""
    contact = Contact.objects.create(tenant_id=channel.tenant_id, channel=channel, external_id=sender)
    return Conversation.objects.create(tenant_id=channel.tenant_id, channel=channel, contact=contact)


def stored_messages(channel: Channel) -> list[dict[str, Any]]:
    rows = InboundEvent.objects.for_tenant(channel.tenant_id).filter(channel=channel, kind="message").order_by("id")
    return [row.normalized for row in rows]


def stored_statuses(channel: Channel) -> list[dict[str, Any]]:
    rows = InboundEvent.objects.for_tenant(channel.tenant_id).filter(channel=channel, kind="status").order_by("id")
    return [row.normalized for row in rows]


class GraphRecorder:
    """What the fake Graph API received, and what it should answer next."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.scripted: list[tuple[int, dict[str, Any]]] = []  # answers for the next POSTs, in order
        self.media: dict[str, tuple[bytes, str]] = {}
        self.profiles: dict[str, dict[str, str]] = {}
        # WABA id -> its message templates as Meta lists them; served a page of template_page_size at a time.
        self.templates: dict[str, list[dict[str, Any]]] = {}
        self.template_page_size = 2
        self.lock = threading.Lock()
        self.counter = 0
        self.url = ""

    def posts(self, path_suffix: str = "/messages") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith(path_suffix)]


@pytest.fixture
def graph(local_http_server: Callable[..., Any], settings: Any) -> GraphRecorder:
    recorder = GraphRecorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self, body: Any) -> None:
            with recorder.lock:
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path.split("?")[0],
                        "query": self.path.partition("?")[2],
                        "authorization": self.headers.get("Authorization", ""),
                        "json": body,
                    }
                )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                return self._upload(raw)
            body = json.loads(raw or b"{}")
            self._record(body)
            with recorder.lock:
                scripted = recorder.scripted.pop(0) if recorder.scripted else None
                recorder.counter += 1
                n = recorder.counter
            if scripted is not None:
                return self._answer(*scripted)
            if "status" in body or "sender_action" in body:
                if "sender_action" in body:
                    return self._answer(200, {"recipient_id": body["recipient"]["id"]})
                return self._answer(200, {"success": True})
            if body.get("messaging_product") == "whatsapp":
                return self._answer(
                    200,
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to") or body.get("recipient"), "wa_id": body.get("to", "")}],
                        "messages": [{"id": f"wamid.OUT{n}=="}],
                    },
                )
            return self._answer(200, {"recipient_id": body["recipient"]["id"], "message_id": f"m_OUT{n}"})

        def do_GET(self) -> None:
            self._record(None)
            path = self.path.split("?")[0]
            if path.startswith("/cdn/") or path.startswith("/download/"):
                key = path.rsplit("/", 1)[1]
                if path.startswith("/download/") and self.headers.get("Authorization") != f"Bearer {WA_TOKEN}":
                    return self._answer(401, {"error": {"message": "token required", "code": 190}})
                content, mime = recorder.media[key]
                return self._answer(200, content, mime)
            if path.endswith("/message_templates"):
                return self._answer(*self._templates(path.split("/")[-2]))
            media_id = path.rsplit("/", 1)[1]
            if media_id in recorder.profiles:
                return self._answer(200, {**recorder.profiles[media_id], "id": media_id})
            if media_id in recorder.media:
                content, mime = recorder.media[media_id]
                return self._answer(
                    200,
                    {
                        "messaging_product": "whatsapp",
                        "url": f"{recorder.url}/download/{media_id}",
                        "mime_type": mime,
                        "sha256": "00",
                        "file_size": str(len(content)),
                        "id": media_id,
                    },
                )
            return self._answer(404, {"error": {"message": "Unsupported get request.", "code": 100}})

        def _upload(self, raw: bytes) -> None:
            """Media upload (WhatsApp ``/{pnid}/media``, Messenger ``/{page}/message_attachments``): the
            form's fields are recorded (files as (filename, mime, bytes)) under ``form``."""
            head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            parsed = BytesParser(policy=email_policy.HTTP).parsebytes(head + raw)
            form: dict[str, Any] = {}
            for part in parsed.iter_parts():
                name = part.get_param("name", header="content-disposition")
                content = part.get_payload(decode=True) or b""
                filename = part.get_filename()
                form[str(name)] = (filename, part.get_content_type(), content) if filename else content.decode()
            with recorder.lock:
                recorder.requests.append(
                    {
                        "method": "POST",
                        "path": self.path.split("?")[0],
                        "query": "",
                        "json": None,
                        "form": form,
                        "authorization": self.headers.get("Authorization", ""),
                    }
                )
                recorder.counter += 1
                n = recorder.counter
                scripted = recorder.scripted.pop(0) if recorder.scripted else None
            if scripted is not None:
                return self._answer(*scripted)
            if self.path.split("?")[0].endswith("/message_attachments"):
                return self._answer(200, {"attachment_id": f"att{n}"})
            return self._answer(200, {"id": f"media{n}"})

        def _templates(self, waba_id: str) -> tuple[int, dict[str, Any]]:
            """``GET /{waba-id}/message_templates``: cursor paging as the Graph API does it."""
            if self.headers.get("Authorization") != f"Bearer {WA_TOKEN}":
                return 400, {"error": {"message": "Invalid OAuth access token.", "code": 190}}
            if waba_id not in recorder.templates:
                return 400, {
                    "error": {"message": f"Unsupported get request. Object {waba_id} does not exist", "code": 100}
                }
            query = parse_qs(self.path.partition("?")[2])
            start = int(query.get("after", ["0"])[0])
            size = min(int(query.get("limit", ["25"])[0]), recorder.template_page_size)
            everything = recorder.templates[waba_id]
            page = everything[start : start + size]
            answer: dict[str, Any] = {
                "data": page,
                "paging": {"cursors": {"before": str(start), "after": str(start + size)}},
            }
            if start + size < len(everything):
                answer["paging"]["next"] = f"{recorder.url}/v25.0/{waba_id}/message_templates?after={start + size}"
            return 200, answer

    running = local_http_server(Handler)
    recorder.url = running.url
    settings.GRAPH_API_BASE_URL = running.url
    settings.GRAPH_API_VERSION = "v25.0"
    settings.GRAPH_API_BACKOFF_BASE = 0.01
    settings.GRAPH_API_BACKOFF_MAX = 0.05
    return recorder


def asgi_request(
    method: str,
    path: str,
    messages: list[dict[str, Any]],
    headers: list[tuple[bytes, bytes]],
    *,
    query: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    timeout: float | None = None,
) -> tuple[int, dict[str, str], bytes, int]:
    """One request through ``config.asgi.application`` exactly as daphne hands it over: the body arrives
    as ``messages``, then the client sends nothing more. Returns the status, the response headers, the
    body and how many times the application read the request."""
    from config.asgi import application

    pending = list(messages)
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
    }

    async def bounded() -> None:
        await asyncio.wait_for(application(scope, receive, send), timeout=timeout)

    asyncio.run(bounded())
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], response_headers, body, reads
