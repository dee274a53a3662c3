"""Finding 4 and 12 of issue #20: request bodies are bounded before and while they are read, and bad
input gets its 4xx in the JSON error shape instead of a 500.

Three ways in, as an attacker has them: raw sockets against a real daphne process serving
``config.asgi:application`` (what ``make run`` runs: daphne buffers bodies itself, so the limits must
hold at its socket); the ASGI application called in-process with a body streamed in pieces (a server
that streams); and the API client (Django and DRF, where JSON, queries and uploads are parsed).
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from knowledge.models import Document
from tenants import services as tenant_services
from tests.channels_app.conftest import asgi_request
from tests.webchat.conftest import DaphneServer, free_port, start_daphne

JSON_LIMIT = 100_000  # the server's DATA_UPLOAD_MAX_MEMORY_SIZE in these tests
UPLOAD_LIMIT = 1024 * 1024  # its KNOWLEDGE_MAX_UPLOAD_MB=1


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[DaphneServer]:
    """One real daphne process on the test database, with small limits and a 1 s read deadline."""
    folder = tmp_path_factory.mktemp("ingress")
    limits = {
        "REQUEST_READ_TIMEOUT_SECONDS": "1",
        "DATA_UPLOAD_MAX_MEMORY_SIZE": str(JSON_LIMIT),
        "KNOWLEDGE_MAX_UPLOAD_MB": "1",
        "MEDIA_ROOT": str(folder / "media"),
    }
    with django_db_blocker.unblock():  # start_daphne points the server at the test database
        running = start_daphne(free_port(), folder, limits)
    yield running
    running.stop()


class Answer:
    def __init__(self, raw: bytes, closed: bool):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/") else None
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.body = body
        self.closed = closed

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(server: DaphneServer, head: str, pieces: Iterable[bytes] = (), wait: float = 15.0) -> Answer:
    """Send a request head and as much of the body as the server takes; read until it closes."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=wait)
    try:
        conn.sendall(head.encode())
        try:
            for piece in pieces:
                conn.sendall(piece)
        except OSError:
            pass  # the server stopped reading: what it answered is still there to read
        raw, closed = b"", False
        try:
            while chunk := conn.recv(65536):
                raw += chunk
            closed = True
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
        return Answer(raw, closed)
    finally:
        conn.close()


def request_head(method: str, path: str, headers: dict[str, str]) -> str:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def multipart(filename: str, content: bytes) -> tuple[str, bytes]:
    boundary = "ingress-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: text/plain\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={boundary}", body


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert (answer.status, answer.headers["content-type"]) == (status, "application/json")
    assert answer.json()["error"]["code"] == code
    assert answer.closed


# --- a real daphne ----------------------------------------------------------------------------------


def test_a_declared_100_mb_body_without_a_key_is_refused_413_before_any_of_it_is_sent(server):
    content_type, _ = multipart("big.txt", b"")
    head = request_head(
        "POST", "/api/tenants/", {"Content-Type": content_type, "Content-Length": str(100 * 1024 * 1024)}
    )

    answer = exchange(server, head)  # not one byte of the body

    assert_error(answer, 413, "payload_too_large")
    assert answer.json()["error"] == {
        "code": "payload_too_large",
        "message": f"The request body is over {JSON_LIMIT} bytes.",
        "details": {"limit": JSON_LIMIT},
    }


def test_a_body_that_declares_more_than_it_sends_is_answered_408_and_closed(server):
    head = request_head(
        "POST", "/api/webchat/sessions/", {"Content-Type": "application/json", "Content-Length": "5000"}
    )

    answer = exchange(server, head, [b'{"widget_key": '])

    assert_error(answer, 408, "request_timeout")


def test_a_chunked_body_is_cut_at_the_limit_as_it_arrives(server):
    head = request_head("POST", "/api/tenants/", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    piece = b"x" * 32768
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 4  # 128 kB, the limit is 100 kB

    answer = exchange(server, head, chunks)

    assert_error(answer, 413, "payload_too_large")


@pytest.mark.django_db(transaction=True)
def test_only_a_keyed_upload_gets_the_document_limit_and_a_larger_one_is_refused_unread(server, tenant):
    key = tenant_services.api_key_create(tenant=tenant).raw_key
    path = f"/api/tenants/{tenant.pk}/documents/"
    content_type, body = multipart("notes.txt", b"returns within 30 days\n" * 20_000)  # 460 kB
    assert JSON_LIMIT < len(body) < UPLOAD_LIMIT

    without_key = exchange(
        server, request_head("POST", path, {"Content-Type": content_type, "Content-Length": str(len(body))})
    )
    with_key = exchange(
        server,
        request_head("POST", path, {"Content-Type": content_type, "Content-Length": str(len(body)), "X-API-Key": key}),
        [body],
    )
    too_large = exchange(
        server,
        request_head("POST", path, {"Content-Type": content_type, "Content-Length": "3000000", "X-API-Key": key}),
    )

    assert_error(without_key, 413, "payload_too_large")
    assert with_key.status == 201, with_key.body
    assert_error(too_large, 413, "payload_too_large")
    assert list(Document.objects.for_tenant(tenant).values_list("filename", flat=True)) == ["notes.txt"]


@pytest.mark.django_db(transaction=True)
def test_a_keyed_media_send_gets_the_media_limit_not_the_json_one(server, tenant):
    """An agent's 6 MB PDF to POST .../conversations/<id>/media/ reaches the view (which answers for
    the conversation: 404 here), where a JSON body of that size is refused 413 unread."""
    key = tenant_services.api_key_create(tenant=tenant).raw_key
    path = f"/api/tenants/{tenant.pk}/conversations/{uuid.uuid4()}/media/"
    content_type, body = multipart("brochure.pdf", b"%PDF-1.4\n" + b"0" * (6 * 1024 * 1024))
    head = {"Content-Type": content_type, "Content-Length": str(len(body))}

    with_key = exchange(server, request_head("POST", path, {**head, "X-API-Key": key}), [body])
    without_key = exchange(server, request_head("POST", path, head))

    assert_error(with_key, 404, "not_found")
    assert_error(without_key, 413, "payload_too_large")


# --- the ASGI application, body streamed in pieces -----------------------------------------------------


def call_asgi(
    method: str, path: str, pieces: list[bytes], headers: dict[str, str], *, stall: bool = False
) -> tuple[int, dict[str, Any], int]:
    """One request through config.asgi.application; ``stall``: the client stops after ``pieces``.
    Returns the status, the JSON answer and how many times the application read the body."""
    messages = [
        {"type": "http.request", "body": p, "more_body": stall or i < len(pieces) - 1} for i, p in enumerate(pieces)
    ]
    status, _, body, reads = asgi_request(
        method,
        path,
        messages,
        [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        timeout=20,
    )
    return status, json.loads(body), reads


def test_asgi_a_declared_6_mb_session_request_is_refused_without_reading_the_body():
    status, answer, reads = call_asgi(
        "POST", "/api/webchat/sessions/", [b"{}"], {"content-type": "application/json", "content-length": "6291456"}
    )

    assert (status, answer["error"]["code"], reads) == (413, "payload_too_large", 0)


@pytest.mark.django_db(transaction=True)
def test_asgi_a_streamed_6_mb_json_body_is_cut_at_the_limit(settings):
    piece = b" " * (1024 * 1024)
    pieces = [b'{"widget_key": "x"'] + [piece] * 6 + [b"}"]

    status, answer, reads = call_asgi("POST", "/api/webchat/sessions/", pieces, {"content-type": "application/json"})

    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert reads == 6  # the 5 MB limit is passed in the sixth piece; the rest is never read


def test_asgi_a_stalled_body_is_answered_408(settings):
    settings.REQUEST_READ_TIMEOUT_SECONDS = 0.5

    status, answer, _ = call_asgi(
        "POST",
        "/api/webchat/sessions/",
        [b'{"widget'],
        {"content-type": "application/json", "content-length": "900"},
        stall=True,
    )

    assert (status, answer["error"]["code"]) == (408, "request_timeout")


# --- Django and DRF ------------------------------------------------------------------------------------


def test_a_6_mb_json_patch_answers_413_not_500(tenant, tenant_api, caplog):
    body = json.dumps({"name": "Acme", "settings": {"brandName": "x" * (6 * 1024 * 1024)}})

    response = tenant_api.patch(f"/api/tenants/{tenant.pk}/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_json_nested_5000_deep_answers_400_without_a_traceback(tenant, tenant_api, caplog):
    body = '{"settings": {"brandName": ' + "[" * 5000 + "]" * 5000 + "}}"

    response = tenant_api.patch(f"/api/tenants/{tenant.pk}/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "parse_error",
        "message": "JSON parse error - nested deeper than 64 levels.",
        "details": {},
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_nul_byte_in_the_search_query_answers_400(tenant, tenant_api):
    response = tenant_api.get(f"/api/tenants/{tenant.pk}/search?q=abc%00def")

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "Text may not contain NUL characters (%00).",
        "details": {"q": ["contains a NUL character"]},
    }


def test_a_nul_character_in_a_json_string_answers_400(tenant, tenant_api):
    body = '{"settings": {"brandName": "Acme\\u0000Corp"}}'

    response = tenant_api.patch(f"/api/tenants/{tenant.pk}/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"settings.brandName": ["contains a NUL character"]}
    tenant.refresh_from_db()
    assert "Acme\x00Corp" not in json.dumps(tenant.settings)


@pytest.mark.django_db
def test_post_to_health_answers_405_in_json():
    client = Client(enforce_csrf_checks=True)  # as a browser or script without a CSRF token meets it

    response = client.post("/api/health")

    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_an_upload_over_the_limit_is_cut_as_it_arrives_and_leaves_no_file(tenant, tenant_api, settings, tmp_path: Path):
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 200_000
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    (tmp_path / "uploads").mkdir()

    response = tenant_api.post(
        f"/api/tenants/{tenant.pk}/documents/",
        {"file": SimpleUploadedFile("big.txt", b"y" * 300_000)},
        format="multipart",
    )

    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": "The upload is over 200000 bytes.",
        "details": {"limit": 200000},
    }
    assert Document.objects.for_tenant(tenant).count() == 0
    assert list((tmp_path / "uploads").iterdir()) == []
    assert not (tmp_path / "media").exists()
