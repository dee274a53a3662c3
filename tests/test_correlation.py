"""One correlation id per inbound message, followed across real processes.

A signed WhatsApp webhook goes to a real daphne process; the turn runs in a separate
``celery -A config worker`` process; the reply goes to a local Graph API server, the events to a
tenant's local webhook receiver and to a RabbitMQ exchange. The id the server answered with
(``X-Request-ID``) must be the one on the server's access line, the stored inbound row, the worker's
turn line, the Graph API request's header, the stored events, the tenant webhook's header and the
RabbitMQ message's ``correlation_id`` property; and every line either process wrote is JSON."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from channels_app.models import InboundEvent
from config.openai_clients import reset_clients
from events.models import Event
from events.services import webhook_endpoint_create
from tests.conftest import wait_until
from tests.conversations.conftest import APP_SECRET, make_whatsapp, whatsapp_payload
from tests.conversations.servers import OpenAIScript, openai_handler
from tests.events import conftest as events_fixtures
from tests.events.conftest import Receiver, per_test_exchange
from tests.webchat import test_consumer as consumer_tests
from tests.webchat.conftest import ROOT, free_port, server_env, start_daphne

# The events tests' receiver fixture, and the web chat tests' clean-up of the consumer's database
# threads (module-scoped, autouse), bound here so pytest finds them.
make_receiver = events_fixtures.make_receiver
end_thread_connections = consumer_tests.end_thread_connections


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line a process wrote, each parsed as JSON (a line that is not JSON fails here)."""
    lines = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line[:300]!r}") from None
    return lines


class GraphServer:
    """Meta's Graph API as the WhatsApp Cloud API answers it, recording each request's headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        graph = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with graph.lock:
                    graph.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                if body.get("type") == "text":
                    answer = {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                        "messages": [{"id": f"wamid.out.{uuid.uuid4().hex}"}],
                    }
                else:
                    answer = {"success": True}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def texts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["body"].get("type") == "text"]


@pytest.fixture
def rabbit(settings: Any) -> Iterator[Any]:
    with per_test_exchange(settings) as broker:
        yield broker


class Worker:
    """A turn worker as the Procfile starts one (threads pool), with Celery's task lines at INFO; its
    output (stdout and stderr) in ``log_path``."""

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        name = f"correlation-{uuid.uuid4().hex[:6]}@%h"
        cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,webhooks", "-P", "threads",
               "-c", "4", "-n", name, "--loglevel", "INFO"]  # fmt: skip
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def worker_process(transactional_db: Any, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``start(**env)``: a worker with the test database's environment plus ``env``."""
    started: list[Worker] = []

    def start(**extra: str) -> Worker:
        started.append(Worker(tmp_path / "worker.log", {**server_env(), **extra}))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def test_one_id_follows_a_whatsapp_message_from_the_webhook_to_the_reply_events_and_broker(
    transactional_db,
    tenant,
    local_http_server,
    make_receiver,
    rabbit,
    worker_process,
    tmp_path,
    settings,
):
    graph = GraphServer()
    graph_url = local_http_server(graph.handler()).url
    llm = OpenAIScript()
    llm_url = local_http_server(openai_handler(llm)).url + "/v1"
    settings.GRAPH_API_BASE_URL = graph_url
    reset_clients()
    channel = make_whatsapp(tenant)
    receiver: Receiver = make_receiver()
    webhook_endpoint_create(tenant=tenant, url=receiver.url, event_types=["message.sent"])
    queue = rabbit.bind(f"tenant.{tenant.pk}.message.sent")
    env = {
        "GRAPH_API_BASE_URL": graph_url,
        "OPENAI_API_KEY": "sk-test-deployment-key",
        "OPENAI_BASE_URL": llm_url,
        "TURN_DEBOUNCE_SECONDS": "0",
        "LLM_MAX_RETRIES": "0",
        "EGRESS_ALLOW_PRIVATE_TARGETS": "true",
        "RABBITMQ_URL": rabbit.url,
        "EVENTS_EXCHANGE": rabbit.exchange,
        "LOG_LEVEL": "INFO",
    }
    worker = worker_process(**env)
    server = start_daphne(free_port(), tmp_path, env)
    try:
        # Generous waits: the machine running the tests may be busy; nothing here is timed.
        wait_until(lambda: any(line["message"].endswith(" ready.") for line in json_lines(worker.log_path)), 180)
        body = json.dumps(
            whatsapp_payload(
                phone_number_id=channel.external_id, sender="15551230000", text="Where is my order?", wamid="wamid.c1"
            )
        ).encode()
        signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
        response = requests.post(
            f"{server.url}/webhooks/whatsapp",
            data=body,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            timeout=15,
        )
        assert response.status_code == 200, response.text
        cid = response.headers["X-Request-ID"]  # Meta sends none: the platform made one

        reply = wait_until(lambda: graph.texts(), timeout=120)[0]
        delivered = wait_until(lambda: list(receiver.requests), timeout=120)[0]
        (published,) = rabbit.drain(queue, expect=1, timeout=120)
        wait_until(lambda: [line for line in json_lines(worker.log_path) if line["message"] == "turn finished"], 60)
    finally:
        server.stop()
        worker.stop()  # its shutdown notice too must be a JSON line

    assert reply["body"]["text"]["body"] == "LLM answer to: Where is my order?"
    assert reply["headers"]["X-Request-ID"] == cid
    assert InboundEvent.objects.get(channel=channel, dedupe_key="wamid.c1").correlation_id == cid
    events = dict(Event.objects.filter(tenant_id=tenant.pk).values_list("type", "correlation_id"))
    assert events["message.received"] == cid
    assert events["message.sent"] == cid
    assert delivered.headers["x-request-id"] == cid
    assert delivered.json["type"] == "message.sent"
    _method, properties, _body = published
    assert properties.correlation_id == cid

    server_lines = json_lines(server.log_path)
    (access,) = [line for line in server_lines if line["logger"] == "metachat.access"]
    assert access["correlation_id"] == cid
    assert (access["method"], access["route"], access["status"]) == ("POST", "webhooks/whatsapp", 200)
    worker_lines = json_lines(worker.log_path)
    (turn,) = [line for line in worker_lines if line["message"] == "turn finished"]
    assert (turn["correlation_id"], turn["outcome"], turn["tenant_id"]) == (cid, "answered", str(tenant.pk))
    # The tasks the message caused (its turn, the events' dispatch, delivery and publishing) all
    # finish with its id, not with Celery's task id.
    finished = [line for line in worker_lines if line["logger"] == "celery.app.trace"]
    tasks = {line["data"]["name"] for line in finished if line.get("correlation_id") == cid}
    assert {"conversations.handle_inbound_message", "events.deliver_endpoint", "events.publish_events"} <= tasks
    assert cid not in {line["data"]["id"] for line in finished}
    assert not [line for line in worker_lines if line["level"] in ("ERROR", "CRITICAL")]
    assert any("shutdown" in line["message"] for line in worker_lines)


def test_a_message_whose_task_was_lost_is_requeued_with_its_own_id(db, tenant):
    """The beat sweep re-publishes a pending message's task under the id stored with the message,
    not the sweep's own."""
    from celery import signals
    from django.utils import timezone

    from channels_app.inbound import requeue_stale_pending
    from config.logs import TASK_HEADER, correlation_id

    channel = make_whatsapp(tenant)
    row = InboundEvent.objects.create(
        tenant=tenant,
        channel=channel,
        kind=InboundEvent.Kind.MESSAGE,
        dedupe_key="wamid.lost1",
        sender_external_id="15551230001",
        normalized={"platform": "whatsapp", "type": "text", "text": "hello?", "media": []},
        correlation_id="lost-message-7",
    )
    InboundEvent.objects.filter(pk=row.pk).update(received_at=timezone.now() - timedelta(hours=1))
    published: list[tuple[str, str | None]] = []

    def record(headers: dict | None = None, **_: Any) -> None:
        published.append(((headers or {}).get("task", ""), (headers or {}).get(TASK_HEADER)))

    signals.before_task_publish.connect(record, weak=False)
    token = correlation_id.set("the-sweeps-own-id")
    try:
        assert requeue_stale_pending(older_than=timedelta(minutes=5)) == 1
    finally:
        correlation_id.reset(token)
        signals.before_task_publish.disconnect(record)

    assert published == [("conversations.handle_inbound_message", "lost-message-7")]


def test_a_dead_webhook_delivery_is_reported_under_the_id_of_what_caused_it(db, tenant, make_receiver, settings):
    """Every attempt carries the event's id, and so does the webhook.delivery_dead event, although the
    drain that gives up runs under an id of its own."""
    from django.utils import timezone

    from config.logs import correlation_id
    from events import delivery
    from events.services import emit
    from events.types import EventType

    settings.WEBHOOK_RETRY_SCHEDULE = [5]
    receiver = make_receiver(default=500)
    endpoint = webhook_endpoint_create(tenant=tenant, url=receiver.url, event_types=["message.received"]).endpoint
    token = correlation_id.set("inbound-message-99")
    try:
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"text": "hi"})
    finally:
        correlation_id.reset(token)

    now = timezone.now()
    token = correlation_id.set("a-drain-task")
    try:
        for _attempt in range(2):
            delivery.dispatch_pending_events(now=now)
            assert delivery.deliver_due(endpoint_id=endpoint.pk, now=now).sent == 1
            now += timedelta(seconds=60)
    finally:
        correlation_id.reset(token)

    assert [r.headers["x-request-id"] for r in receiver.requests] == ["inbound-message-99"] * 2
    dead = Event.objects.get(type=EventType.WEBHOOK_DELIVERY_DEAD)
    assert dead.correlation_id == "inbound-message-99"


@pytest.mark.django_db(transaction=True)
def test_each_web_chat_frame_gets_an_id_of_its_own_stored_with_the_message(tenant):
    from asgiref.sync import async_to_sync

    from channels_app.models import Channel, new_widget_key
    from tests.webchat.conftest import ORIGIN
    from tests.webchat.test_consumer import connected, inbound_rows, token_for

    channel = Channel.objects.create(
        tenant=tenant, type=Channel.Type.WEBCHAT, name="site", external_id=new_widget_key(),
        config={"allowed_origins": [ORIGIN]},
    )  # fmt: skip

    async def scenario() -> None:
        socket = await connected(token_for(channel))
        for n in (1, 2):
            await socket.send_json_to({"type": "message", "client_message_id": f"c_corr00000{n}", "text": "hi"})
            assert (await socket.receive_json_from(timeout=5))["status"] == "stored"
            await socket.receive_json_from(timeout=5)  # the echo
        await socket.disconnect()

    async_to_sync(scenario)()

    ids = [row.correlation_id for row in inbound_rows(channel)]
    assert len(ids) == 2 and all(ids) and ids[0] != ids[1]


def test_an_api_call_gives_its_id_to_the_graph_api_call_and_the_events_it_causes(
    db, tenant, tenant_api, local_http_server, settings
):
    """An agent's reply through the API: the request's X-Request-ID is the Graph API call's and the
    message.sent event's."""
    import time

    from conversations.models import Contact, Conversation

    graph = GraphServer()
    settings.GRAPH_API_BASE_URL = local_http_server(graph.handler()).url
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    channel = make_whatsapp(tenant)
    contact = Contact.objects.create(tenant=tenant, channel=channel, external_id="15551230002")
    conversation = Conversation.objects.create(
        tenant=tenant, channel=channel, contact=contact, state="handoff_requested"
    )
    InboundEvent.objects.create(  # the contact wrote a minute ago: WhatsApp's window is open
        tenant=tenant, channel=channel, kind=InboundEvent.Kind.MESSAGE, dedupe_key="wamid.api1",
        sender_external_id=contact.external_id, status="processed",
        normalized={"platform": "whatsapp", "type": "text", "text": "help", "timestamp": time.time() - 60},
    )  # fmt: skip

    response = tenant_api.post(
        f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/reply/",
        {"text": "Hi, Ana here"},
        format="json",
        HTTP_X_REQUEST_ID="helpdesk-ticket-5521",
    )

    assert response.status_code == 201, response.content
    assert response.headers["X-Request-ID"] == "helpdesk-ticket-5521"
    (sent,) = graph.texts()
    assert sent["headers"]["X-Request-ID"] == "helpdesk-ticket-5521"
    assert Event.objects.get(tenant_id=tenant.pk, type="message.sent").correlation_id == "helpdesk-ticket-5521"
