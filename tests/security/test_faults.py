"""Faults with real processes: a Celery worker SIGKILLed mid-turn, Redis restarted, the worker's
PostgreSQL sessions terminated, RabbitMQ unreachable for 30 s, an LLM endpoint failing then hanging.

Users write through the real signed webhook; replies reach a local Graph API server; the LLM is a
local OpenAI-compatible server. Processes are real: ``celery -A config worker`` (and its beat),
daphne and ``redis-server`` started here with the test's environment, and a TCP proxy in front of
the machine's RabbitMQ (never the machine's Redis or RabbitMQ themselves)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from django.conf import settings
from django.db import connection

from channels_app.models import Channel, InboundEvent
from config.openai_clients import reset_clients
from conversations.models import Message
from conversations.pipeline.completion import FALLBACK_TEXT
from events.models import Event
from tests.conftest import terminate_other_sessions, wait_until
from tests.conversations import conftest as conversation_fixtures
from tests.conversations.conftest import APP_SECRET, deliver, whatsapp_payload
from tests.conversations.servers import OpenAIScript, openai_handler

ROOT = Path(__file__).resolve().parents[2]


# The conversation tests' fixtures, bound here so pytest finds them (tests/security has no conftest).
_turn_settings = conversation_fixtures._turn_settings
graph = conversation_fixtures.graph
whatsapp = conversation_fixtures.whatsapp


class HeldLLM(OpenAIScript):
    """The fake OpenAI server; a reply with ``"hold": True`` is answered only once ``release`` is set
    (a turn caught in the middle of its LLM call)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def next(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = super().next(body)
        if reply.get("hold"):
            self.release.wait(60)
        return reply


@pytest.fixture
def llm(local_http_server: Callable[..., Any], settings: Any) -> Iterator[HeldLLM]:
    script = HeldLLM()
    script.url = local_http_server(openai_handler(script)).url + "/v1"  # type: ignore[attr-defined]
    settings.OPENAI_API_KEY = "sk-test-deployment-key"
    settings.OPENAI_BASE_URL = script.url  # type: ignore[attr-defined]
    yield script
    script.release.set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- real processes -----------------------------------------------------------------------------------


class Process:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def sigkill(self) -> None:
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@pytest.fixture
def processes(transactional_db: Any, tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """``start(name, cmd, **env)``: a process with this test's environment: the test database (it sees
    committed rows only, hence ``transactional_db``), the run's Redis key prefix, and the local
    Graph API / LLM servers. Stopped at the end of the test, before the database is flushed."""
    started: list[Process] = []

    def start(name: str, cmd: list[str], **extra: str) -> Process:
        url = urlparse(settings.DATABASE_URL)
        env = dict(os.environ)
        env |= {
            "DATABASE_URL": url._replace(path="/" + connection.settings_dict["NAME"]).geturl(),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "TURN_DEBOUNCE_SECONDS": "0",
            "LLM_MAX_RETRIES": "0",
            "GRAPH_API_BASE_URL": settings.GRAPH_API_BASE_URL,
            "OPENAI_API_KEY": settings.OPENAI_API_KEY,
            "OPENAI_BASE_URL": settings.OPENAI_BASE_URL,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        process = Process(name, cmd, env, tmp_path)
        started.append(process)
        return process

    start.directory = tmp_path  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.stop()
    # pytest shows a test's captured output only when it fails: then each process's last lines are there.
    for process in started:
        print(f"--- {process.name} (last lines) ---\n{process.log()}")


def celery_worker(
    start: Callable[..., Process], name: str, *, beat: bool = False, threads: int = 4, **env: str
) -> Process:
    """A turn worker as ``make run`` starts one (threads pool); ``beat`` runs the beat schedule in it
    (the stale-inbound requeue, the outbox sweep)."""
    cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,webhooks", "-P", "threads",
           "-c", str(threads), "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]  # fmt: skip
    if beat:
        cmd += ["-B", "-s", str(start.directory / f"beat-{name}")]  # type: ignore[attr-defined]
    return start(name, cmd, **env)


def post_webhook(base_url: str, channel: Channel, text: str) -> requests.Response:
    """What Meta sends for a user's message, signed with the channel's app secret."""
    body = json.dumps(
        whatsapp_payload(
            phone_number_id=channel.external_id, sender="15551234567", text=text, wamid=f"wamid.{uuid.uuid4().hex}"
        )
    ).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(
        f"{base_url}/webhooks/whatsapp",
        data=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        timeout=15,
    )


# --- SIGKILL of a worker in the middle of a turn -------------------------------------------------------


def test_a_worker_killed_mid_turn_is_replaced_and_the_reply_is_sent_exactly_once(processes, whatsapp, graph, llm):
    from config.celery import app

    llm.replies = [{"hold": True}]  # the first LLM call never returns: the worker dies during it
    doomed = celery_worker(processes, "doomed")
    deliver(whatsapp, text="Where is my parcel?")
    wait_until(lambda: llm.requests, timeout=60)

    doomed.sigkill()

    inbound = InboundEvent.objects.get()
    assert inbound.status == "pending"
    assert graph.texts == []
    # A new worker: its beat re-enqueues the inbound event left pending (the killed worker's task is
    # unacknowledged: the broker gives it back only after its visibility timeout).
    celery_worker(processes, "replacement", beat=True, threads=1, INBOUND_REQUEUE_AFTER_SECONDS="1")
    wait_until(lambda: graph.texts, timeout=60)
    assert graph.text_bodies() == ["LLM answer to: Where is my parcel?"]
    assert len(llm.requests) == 2

    # That unacknowledged task, redelivered at last, is a no-op; the next message is answered after it.
    app.send_task("conversations.handle_inbound_message", args=[inbound.pk])
    deliver(whatsapp, text="Thanks!")
    wait_until(lambda: len(graph.texts) == 2, timeout=30)
    assert graph.text_bodies() == ["LLM answer to: Where is my parcel?", "LLM answer to: Thanks!"]
    assert len(llm.requests) == 3
    wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").count() == 2, timeout=30)
    assert Message.objects.filter(sender="assistant").count() == 2
    assert InboundEvent.objects.get(pk=inbound.pk).status == "processed"


# --- PostgreSQL sessions terminated ---------------------------------------------------------------------


def test_worker_database_sessions_killed_mid_turn_the_turn_is_retried_once_and_later_turns_work(
    live_worker_keeping_connections, whatsapp, graph, llm
):
    llm.replies = [{"hold": True}]
    deliver(whatsapp, text="First question?")
    wait_until(lambda: llm.requests, timeout=30)

    # Every session of the worker (its turn's included) ends while the turn waits for the LLM.
    assert terminate_other_sessions() >= 1
    llm.release.set()

    wait_until(lambda: graph.texts, timeout=30)
    assert graph.text_bodies() == ["LLM answer to: First question?"]
    assert len(llm.requests) == 2  # the turn ran again from its pending inbound event
    wait_until(lambda: Message.objects.filter(sender="user", status="processed").count() == 1, timeout=30)

    deliver(whatsapp, text="Second question?")
    wait_until(lambda: Event.objects.filter(type="message.sent").count() == 2, timeout=30)
    # Sessions killed between turns: the next turn reconnects.
    assert terminate_other_sessions() >= 1
    deliver(whatsapp, text="Third question?")
    wait_until(lambda: len(graph.texts) == 3, timeout=30)

    assert graph.text_bodies() == [
        "LLM answer to: First question?",
        "LLM answer to: Second question?",
        "LLM answer to: Third question?",
    ]
    wait_until(lambda: Event.objects.filter(type="message.sent").count() == 3, timeout=30)
    assert Message.objects.filter(sender="assistant").count() == 3
    assert set(InboundEvent.objects.values_list("status", flat=True)) == {"processed"}


# --- an LLM endpoint answering 500, then hanging ------------------------------------------------------------


def test_llm_answering_500_then_hanging_gets_the_fallback_within_the_timeout_and_later_turns_answer(
    live_worker, whatsapp, graph, llm, settings
):
    settings.LLM_MAX_RETRIES = 1
    settings.LLM_TIMEOUT_SECONDS = 2
    reset_clients()
    llm.replies = [{"status": 500}, {"hold": True}]

    deliver(whatsapp, text="Hello?")

    # Two attempts of at most LLM_TIMEOUT_SECONDS each, and the client's backoff between them.
    wait_until(lambda: graph.texts, timeout=2 * 2 + 8 + 5)
    assert graph.text_bodies() == [FALLBACK_TEXT]
    assert len(llm.requests) == 2
    user_message = wait_until(lambda: Message.objects.filter(sender="user", status="failed").first(), timeout=30)
    assert user_message.error == {"code": "llm_timeout", "message": "the LLM provider timed out", "retryable": True}

    deliver(whatsapp, text="Are you back?")  # the endpoint is healthy again
    wait_until(lambda: len(graph.texts) == 2, timeout=30)
    assert graph.text_bodies()[1] == "LLM answer to: Are you back?"
    assert len(llm.requests) == 3


def test_a_hanging_llm_is_not_retried_past_the_turn_deadline(live_worker, whatsapp, graph, llm, settings):
    settings.LLM_MAX_RETRIES = 2
    settings.LLM_TIMEOUT_SECONDS = 2
    settings.TURN_MAX_SECONDS = 3
    reset_clients()
    llm.default = lambda body: {"hold": True}

    deliver(whatsapp, text="Anyone there?")

    wait_until(lambda: graph.texts, timeout=20)
    assert graph.text_bodies() == [FALLBACK_TEXT]
    # Attempts start at 0 s and after 2 s + backoff: a third would start past the 3-second deadline.
    assert len(llm.requests) <= 2


# --- Redis restarted --------------------------------------------------------------------------------------


def wait_for_port(port: int, process: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited with {process.popen.returncode}: {process.log()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.name} did not listen on {port}: {process.log()}")
        time.sleep(0.1)


@pytest.fixture
def private_redis(processes: Callable[..., Process]) -> Callable[[], Process]:
    """``start()``: a redis-server of this test's own on a fixed free port, without persistence (a
    restart loses whatever it held, as a Redis without AOF does)."""
    port = free_port()

    def start() -> Process:
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = processes(f"redis-{port}-{time.monotonic_ns()}", cmd)
        wait_for_port(port, server)
        server.url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
        return server

    return start


def test_redis_restarted_loses_nothing_messages_sent_meanwhile_are_answered(
    processes, private_redis, whatsapp, graph, llm
):
    redis_server = private_redis()
    on_private_redis = {"REDIS_URL": redis_server.url, "INBOUND_REQUEUE_AFTER_SECONDS": "1"}
    port = free_port()
    web = processes("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "config.asgi:application"], **on_private_redis)  # fmt: skip
    celery_worker(processes, "worker", beat=True, **on_private_redis)
    wait_for_port(port, web)
    base_url = f"http://127.0.0.1:{port}"

    assert post_webhook(base_url, whatsapp, "Before the restart?").status_code == 200
    wait_until(lambda: graph.texts, timeout=60)

    redis_server.stop()
    during = post_webhook(base_url, whatsapp, "While Redis is down?")
    assert during.status_code == 200, during.text  # stored; its task could not be queued
    redis_server = private_redis()

    wait_until(lambda: len(graph.texts) == 2, timeout=45)  # the beat's requeue of pending messages
    assert post_webhook(base_url, whatsapp, "After the restart?").status_code == 200
    wait_until(lambda: len(graph.texts) == 3, timeout=30)
    assert graph.text_bodies() == [
        "LLM answer to: Before the restart?",
        "LLM answer to: While Redis is down?",
        "LLM answer to: After the restart?",
    ]
    wait_until(lambda: set(InboundEvent.objects.values_list("status", flat=True)) == {"processed"}, timeout=30)


# --- RabbitMQ unreachable for 30 s ------------------------------------------------------------------------

OUTAGE_SECONDS = 30


class CuttableProxy:
    """A TCP proxy of this test in front of the machine's RabbitMQ. ``cut()`` drops every connection
    and refuses new ones, as a stopped broker does, until ``restore()``."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.up = True
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def rabbit(settings: Any) -> Iterator[Any]:
    """A per-test exchange on the machine's RabbitMQ, and a connection of the test's own to read it."""
    from tests.events.conftest import per_test_exchange

    with per_test_exchange(settings) as broker:
        yield broker


def test_rabbitmq_unreachable_for_30_s_the_events_of_that_time_are_published_afterwards_in_order(
    processes, rabbit, tenant, whatsapp, graph, llm, client
):
    broker = urlparse(rabbit.url)
    proxy = CuttableProxy((broker.hostname or "127.0.0.1", broker.port or 5672))
    through_proxy = broker._replace(netloc=f"{broker.username}:{broker.password}@127.0.0.1:{proxy.port}").geturl()
    queue = rabbit.bind(f"tenant.{tenant.pk}.#")
    try:
        celery_worker(processes, "publisher", beat=True, RABBITMQ_URL=through_proxy, EVENTS_EXCHANGE=rabbit.exchange)
        deliver(whatsapp, text="Before the outage?")
        before = rabbit.drain(queue, expect=3, timeout=60)
        assert [json.loads(body)["type"] for _, _, body in before] == [
            "conversation.created",
            "message.received",
            "message.sent",
        ]

        proxy.cut()
        cut_at = time.monotonic()
        deliver(whatsapp, text="During the outage?")
        wait_until(lambda: len(graph.texts) == 2, timeout=30)  # turns do not need the broker
        deliver(whatsapp, text="Still down?")
        wait_until(lambda: len(graph.texts) == 3, timeout=30)
        wait_until(lambda: Event.objects.filter(publish_pending=True).count() == 4, timeout=30)
        health = wait_until(
            lambda: (h := client.get("/api/health").json())["checks"]["event_outbox"]["status"] == "down" and h,
            timeout=30,
        )
        assert health["checks"]["event_outbox"]["publish_pending"] == 4
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))  # the outage lasts its 30 s
        proxy.restore()

        after = rabbit.drain(queue, expect=4, timeout=30)
    finally:
        proxy.close()
    published = [json.loads(body) for _, _, body in after]
    assert [(e["type"], e["payload"]["text"]) for e in published] == [
        ("message.received", "During the outage?"),
        ("message.sent", "LLM answer to: During the outage?"),
        ("message.received", "Still down?"),
        ("message.sent", "LLM answer to: Still down?"),
    ]
    written = [
        str(i) for i in Event.objects.filter(tenant_id=tenant.pk).order_by("id").values_list("event_id", flat=True)
    ]
    assert [json.loads(body)["id"] for _, _, body in before + after] == written  # all of them, once, in order
    wait_until(lambda: not Event.objects.filter(publish_pending=True).exists(), timeout=30)
