"""Fixtures of the events tests: a real local webhook receiver, a Standard Webhooks verifier written
from the spec (independent of events.signing), and a real RabbitMQ queue bound to a per-test exchange."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest


def verify_standard_webhook(*, secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks v1, from the specification: HMAC-SHA256 keyed with base64-decoded secret
    (after 'whsec_') over '{webhook-id}.{webhook-timestamp}.{body}'; any 'v1,<b64>' entry may match."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_") :])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A tenant's webhook receiver: answers the next status of ``plan`` (then ``default``)."""

    url: str = ""
    plan: list[int] = field(default_factory=list)
    default: int = 200
    hang_seconds: float = 0.0
    location: str = ""
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.plan.pop(0) if self.plan else self.default


@pytest.fixture
def make_receiver(local_http_server: Callable[..., Any]) -> Callable[..., Receiver]:
    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                if receiver.hang_seconds:
                    time.sleep(receiver.hang_seconds)
                status = receiver.next_status()
                answer = json.dumps({"received": True, "status": status}).encode()
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        running = local_http_server(Handler)
        receiver.url = running.url + "/hooks/metachat"
        return receiver

    return make


@pytest.fixture
def receiver(make_receiver: Callable[..., Receiver]) -> Receiver:
    return make_receiver()


@dataclass
class Rabbit:
    url: str
    exchange: str
    connection: Any
    channel: Any

    def bind(self, pattern: str) -> str:
        queue = self.channel.queue_declare(queue="", exclusive=True).method.queue
        self.channel.queue_bind(queue=queue, exchange=self.exchange, routing_key=pattern)
        return queue

    def drain(self, queue: str, *, expect: int, timeout: float = 10.0) -> list[tuple[Any, Any, bytes]]:
        """Messages in ``queue``: waits until ``expect`` arrived (or ``timeout``), then until a marker
        this helper queues behind them arrives, so that any extra, unexpected message already queued
        is seen too."""
        import pika

        messages: list[tuple[Any, Any, bytes]] = []
        deadline = time.monotonic() + timeout
        marker = ""
        while True:
            method, properties, body = self.channel.basic_get(queue=queue, auto_ack=True)
            if method is not None:
                if marker and properties.message_id == marker:
                    return messages
                messages.append((method, properties, body))
                continue
            if not marker and (len(messages) >= expect or time.monotonic() > deadline):
                marker = f"drain-marker-{uuid.uuid4().hex}"
                self.channel.basic_publish(
                    exchange="", routing_key=queue, body=b"", properties=pika.BasicProperties(message_id=marker)
                )
                continue
            if marker and time.monotonic() > deadline + 10:
                raise AssertionError(f"the marker queued behind the messages never arrived in {queue}")
            self.connection.sleep(0.05)


def pika_parameters(url: str) -> Any:
    """pika parameters for a RABBITMQ_URL in the kombu/Celery spelling of the default vhost
    (``amqp://host:5672//``), which pika would read as an empty vhost name."""
    import pika

    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if slash and path in ("", "/"):
        url = f"{scheme}{sep}{host}/%2F"
    return pika.URLParameters(url)


@contextmanager
def per_test_exchange(settings: Any) -> Iterator[Rabbit]:
    """A topic exchange of this test's own on the machine's RabbitMQ (``EVENTS_EXCHANGE`` names it), and a
    connection of the test's own to read it; skips the test where RABBITMQ_URL is not set."""
    url = os.environ.get("RABBITMQ_URL")
    if not url:
        pytest.skip("RABBITMQ_URL not set")
    import pika

    settings.EVENTS_EXCHANGE = f"metachat.events.test.{uuid.uuid4().hex[:12]}"
    connection = pika.BlockingConnection(pika_parameters(url))
    channel = connection.channel()
    channel.exchange_declare(exchange=settings.EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    yield Rabbit(url=url, exchange=settings.EVENTS_EXCHANGE, connection=connection, channel=channel)
    channel.exchange_delete(exchange=settings.EVENTS_EXCHANGE)
    connection.close()


@pytest.fixture
def rabbit(settings: Any) -> Iterator[Rabbit]:
    from events import publisher

    with per_test_exchange(settings) as broker:
        settings.RABBITMQ_URL = broker.url
        yield broker
    with publisher._shared.lock:
        publisher._shared.close()
