"""Turn paths that never ran before: a send the platform refuses, a stage that crashes, the LLM
client's retries, streamed tool calls, a stream that breaks off, and a tenant's own LLM key.

Everything goes through the real signed webhook or the web chat inbound path, a real Celery worker,
the real ``openai`` client and local HTTP servers speaking the Graph API and OpenAI's wire format."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection

from channels_app.adapters.webchat import visitor_group
from channels_app.models import Channel, InboundEvent
from conversations import services as conversation_services
from conversations.models import Message
from conversations.pipeline.completion import FALLBACK_TEXT
from events.models import Event
from tests.conftest import wait_until
from tests.conversations import conftest as conversation_fixtures
from tests.conversations.conftest import deliver, make_whatsapp, webchat_say
from tests.conversations.servers import (
    FunctionEndpoint,
    OpenAIScript,
    function_handler,
    openai_handler,
)

# The conversation tests' fixtures, bound here so pytest finds them (tests/security has no conftest).
_turn_settings = conversation_fixtures._turn_settings
graph = conversation_fixtures.graph
whatsapp = conversation_fixtures.whatsapp
openai_server = conversation_fixtures.openai_server

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}},
    "required": ["order_id"],
    "additionalProperties": False,
}


@pytest.fixture
def llm(openai_server: OpenAIScript) -> OpenAIScript:
    """The deployment's LLM: a local server speaking chat completions."""
    return openai_server


def event_payloads(event_type: str) -> list[dict[str, Any]]:
    return list(Event.objects.filter(type=event_type).order_by("id").values_list("payload", flat=True))


# --- a send the platform refuses ----------------------------------------------------------------------


def test_reply_outside_the_24_hour_window_fails_permanently_with_its_reason_and_an_event(
    live_worker, whatsapp, graph, llm
):
    graph.fail_with = {
        "status": 400,
        "error": {
            "message": "Re-engagement message",
            "type": "OAuthException",
            "code": 131047,
            "error_data": {
                "messaging_product": "whatsapp",
                "details": "Message failed to send because more than 24 hours have passed since the customer "
                "last replied to this number.",
            },
            "fbtrace_id": "AbCdEf",
        },
    }

    deliver(whatsapp, text="Are you still there?")

    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="failed").first(), timeout=30)
    assert reply.content == "LLM answer to: Are you still there?"
    assert reply.error == {
        "stage": "send",
        "code": 131047,
        "reason": "outside_window",
        "permanent": True,
        "message": "outside the customer service window (131047): Re-engagement message",
    }
    assert len(graph.texts) == 1  # permanent: not retried
    failed = wait_until(lambda: event_payloads("message.failed"), timeout=30)
    assert failed == [
        {
            "conversation_id": str(reply.conversation_id),
            "message_id": reply.pk,
            "channel_id": str(whatsapp.pk),
            "platform": "whatsapp",
            "stage": "send",
            "code": 131047,
            "reason": "outside_window",
            "permanent": True,
            "message": "outside the customer service window (131047): Re-engagement message",
        }
    ]
    assert event_payloads("message.sent") == []
    assert Message.objects.get(sender="user").status == "processed"
    assert InboundEvent.objects.get().status == "processed"
    whatsapp.refresh_from_db()
    assert whatsapp.sending_disabled_reason == ""  # the window closes per contact, not for the channel


class ExpiredTokenGraph(BaseHTTPRequestHandler):
    """Meta's answer to every call once the access token has expired."""

    protocol_version = "HTTP/1.1"
    requests: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        type(self).requests.append(body)
        answer = json.dumps(
            {
                "error": {
                    "message": "Error validating access token: Session has expired on Tuesday.",
                    "type": "OAuthException",
                    "code": 190,
                    "error_subcode": 463,
                    "fbtrace_id": "AzYx",
                }
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def test_expired_token_disables_the_channel_once_and_later_replies_are_not_attempted(
    live_worker, tenant, llm, local_http_server, settings
):
    ExpiredTokenGraph.requests = []
    settings.GRAPH_API_BASE_URL = local_http_server(ExpiredTokenGraph).url
    channel = make_whatsapp(tenant, prefix="1077")
    reason = "access token invalid or expired (190): Error validating access token: Session has expired on Tuesday."

    deliver(channel, text="Hello?")

    wait_until(lambda: Message.objects.filter(sender="assistant", status="failed").exists(), timeout=30)
    channel.refresh_from_db()
    assert channel.sending_disabled_reason == reason
    assert event_payloads("channel.disabled") == [{"channel_id": str(channel.pk), "type": "whatsapp", "reason": reason}]
    disabled_error = {
        "stage": "send",
        "code": "channel_disabled",
        "permanent": True,
        "message": f"sending is disabled for this channel: {reason}",
    }
    first = Message.objects.get(sender="assistant")
    # The read mark went first and met the expired token: the reply was not even attempted.
    assert [r.get("status") for r in ExpiredTokenGraph.requests] == ["read"]
    assert first.error == disabled_error

    deliver(channel, text="Anyone?")

    second = wait_until(
        lambda: Message.objects.filter(sender="assistant", status="failed").exclude(pk=first.pk).first(), timeout=30
    )
    assert second.error == disabled_error
    assert len(ExpiredTokenGraph.requests) == 1  # nothing more reached Meta
    assert len(event_payloads("channel.disabled")) == 1
    assert [p["message_id"] for p in event_payloads("message.failed")] == [first.pk, second.pk]
    assert llm.requests[-1]["messages"][-1]["content"].endswith("Anyone?")


# --- a stage that crashes ------------------------------------------------------------------------------

POISON = "POISON-7f3a"


@pytest.fixture
def database_refuses_poisoned_replies(transactional_db: Any) -> Iterator[None]:
    """A fault in the real database: storing an assistant message whose text holds ``POISON`` fails
    (as a broken constraint or a bug in the reply stage would), every other row is stored."""
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_poisoned_reply() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.sender = 'assistant' AND position('{POISON}' in NEW.content) > 0 THEN "
            "RAISE EXCEPTION 'reply row refused (test fault)'; END IF; RETURN NEW; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_refuse_poisoned_reply BEFORE INSERT OR UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_poisoned_reply()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER test_refuse_poisoned_reply ON {table}")
        cursor.execute("DROP FUNCTION test_refuse_poisoned_reply()")


def test_a_crashing_stage_fails_the_turn_visibly_tells_the_user_and_the_next_message_is_answered(
    live_worker, whatsapp, graph, llm, database_refuses_poisoned_replies, caplog
):
    deliver(whatsapp, text=f"Tell me about {POISON}")

    wait_until(lambda: graph.texts, timeout=30)
    assert graph.text_bodies() == [FALLBACK_TEXT]
    user_message = wait_until(lambda: Message.objects.filter(sender="user", status="failed").first(), timeout=30)
    error = {
        "code": "turn_error",
        "stage": "reply",
        "message": "the turn failed in its reply stage (ProgrammingError)",
        "retryable": True,
    }
    assert user_message.error == error
    inbound = InboundEvent.objects.get()
    assert inbound.status == "failed"
    assert inbound.error.startswith("ProgrammingError: reply row refused (test fault)")
    failed = wait_until(lambda: event_payloads("message.failed"), timeout=30)
    assert failed == [
        {
            "conversation_id": str(user_message.conversation_id),
            "message_ids": [user_message.pk],
            "inbound_event_ids": [inbound.pk],
            **error,
        }
    ]
    # Graph has the text before the worker records the send: wait for the row to say so.
    fallback = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first(), timeout=30)
    assert (fallback.content, fallback.status, fallback.payload["fallback"]) == (FALLBACK_TEXT, "sent", True)
    assert Message.objects.filter(sender="assistant").count() == 1
    crash_logs = [r for r in caplog.records if r.getMessage() == "turn failed"]
    assert len(crash_logs) == 1
    assert crash_logs[0].exc_info is not None
    assert crash_logs[0].stage == "reply"

    # The worker is still there, and the poisoned message does not come back with the next one.
    deliver(whatsapp, text="What are your opening hours?")

    wait_until(lambda: len(graph.texts) == 2, timeout=30)
    assert graph.text_bodies()[1] == "LLM answer to: What are your opening hours?"
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": "What are your opening hours?"}
    assert Message.objects.get(pk=user_message.pk).status == "failed"
    wait_until(lambda: Message.objects.filter(sender="user", status="processed").count() == 1, timeout=30)


# --- NUL bytes from the model or a tenant's function (PostgreSQL text and jsonb refuse them) --------------


def test_an_llm_answer_holding_nul_bytes_is_sent_and_stored_without_them(live_worker, whatsapp, graph, llm):
    llm.default = lambda body: {"content": "We open at 9\u0000 am.\ud800"}

    deliver(whatsapp, text="When do you open?")

    wait_until(lambda: graph.texts, timeout=30)
    assert graph.text_bodies() == ["We open at 9 am.?"]  # a lone surrogate cannot be stored either
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first(), timeout=30)
    assert reply.content == "We open at 9 am.?"


def test_a_function_result_holding_nul_bytes_is_stored_without_them_and_the_turn_answers(
    live_worker, tenant, whatsapp, graph, llm, local_http_server
):
    endpoint = FunctionEndpoint(answer={"status": "ship\u0000ped", "lines": ["a\u0000b"]})
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/orders")
    llm.replies = [{"tool_calls": [("get_order_status", '{"order_id": "A\\u000042"}')]}]
    llm.default = lambda body: {"content": "It has shipped."}

    deliver(whatsapp, text="Where is order A42?")

    wait_until(lambda: graph.texts, timeout=30)
    assert graph.text_bodies() == ["It has shipped."]
    tool = wait_until(lambda: Message.objects.filter(sender="tool").first(), timeout=30)
    assert tool.payload["result"] == {"status": "shipped", "lines": ["ab"]}
    assert tool.payload["arguments"] == {"order_id": "A42"}
    assert [p["arguments"] for p in event_payloads("tool.called")] == [{"order_id": "A42"}]


# --- the LLM client's retries -------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 2])
def test_llm_throttling_and_server_errors_are_retried_as_llm_max_retries_says(
    live_worker, whatsapp, graph, llm, settings, retries
):
    settings.LLM_MAX_RETRIES = retries
    llm.replies = [{"status": 429}, {"status": 500}][:retries]
    llm.default = lambda body: {"content": "Answered after the retries."}

    deliver(whatsapp, text="Is it busy?")

    wait_until(lambda: graph.texts, timeout=30)
    assert graph.text_bodies() == ["Answered after the retries."]
    assert len(llm.requests) == retries + 1
    wait_until(lambda: Message.objects.filter(sender="user", status="processed").exists(), timeout=30)


@pytest.mark.parametrize("retries", [0, 2])
def test_llm_failing_beyond_llm_max_retries_gets_the_fallback_and_keeps_the_message(
    live_worker, whatsapp, graph, llm, settings, retries
):
    settings.LLM_MAX_RETRIES = retries
    llm.default = lambda body: {"status": 503}

    deliver(whatsapp, text="Is it down?")

    wait_until(lambda: graph.texts, timeout=30)
    assert graph.text_bodies() == [FALLBACK_TEXT]
    assert len(llm.requests) == retries + 1
    user_message = wait_until(lambda: Message.objects.filter(sender="user", status="failed").first(), timeout=30)
    assert (user_message.error["code"], user_message.error["retryable"]) == ("llm_http_error", True)
    assert [p["stage"] for p in event_payloads("message.failed")] == ["llm"]


# --- streaming: tool calls in the stream, and a stream that breaks off -----------------------------------


class StreamingLLM:
    """A chat-completions endpoint that streams every answer (server-sent events). A reply:
    ``{"text": str, "tool_calls": [(name, arguments_json)], "break_after": n, "break": "cut" | "eof"}``:
    after ``n`` text deltas the answer breaks off, either cut mid-body (chunked encoding left
    unfinished) or ended cleanly (a close-delimited body) without its finish reason or ``[DONE]``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.default: dict[str, Any] = {"text": "Hello from the stream."}
        self.lock = threading.Lock()

    def next(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests.append(body)
            return self.replies.pop(0) if self.replies else self.default

    def handler(self) -> type[BaseHTTPRequestHandler]:
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                body["_headers"] = {k.lower(): v for k, v in self.headers.items()}
                reply = script.next(body)
                chunked = reply.get("break") != "eof"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

                def send(data: bytes) -> None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                    self.wfile.flush()

                def frame(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
                    chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": body.get("model", "m"), "choices": choices, **(extra or {})}  # fmt: skip
                    send(f"data: {json.dumps(chunk)}\n\n".encode())

                frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                words = reply.get("text", "").split(" ") if reply.get("text") else []
                for i, word in enumerate(words):
                    if reply.get("break") and i == reply["break_after"]:
                        if chunked:  # the connection drops in the middle of the body
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    frame([{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}])
                calls = reply.get("tool_calls", [])
                for index, (name, arguments) in enumerate(calls):
                    head = {"index": index, "id": f"call_{index}", "type": "function",
                            "function": {"name": name, "arguments": ""}}  # fmt: skip
                    frame([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}])
                    for start in range(0, len(arguments), 5):
                        piece = {"index": index, "function": {"arguments": arguments[start : start + 5]}}
                        frame([{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}])
                frame([{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}])
                frame([], {"usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}})
                send(b"data: [DONE]\n\n")
                if chunked:
                    send(b"")

        return Handler


@pytest.fixture
def streaming_llm(local_http_server: Callable[..., Any], settings: Any) -> StreamingLLM:
    script = StreamingLLM()
    settings.OPENAI_API_KEY = "sk-test-deployment-key"
    settings.OPENAI_BASE_URL = local_http_server(script.handler()).url + "/v1"
    return script


@pytest.fixture
def visitor_inbox(tenant: Any) -> Iterator[Any]:
    """A web chat channel and one visitor whose frames this test reads from the real channel layer
    (what every server process holding the visitor's sockets receives)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()  # a layer of this test's own (its asyncio locks are per loop)
    channel = Channel.objects.create(tenant=tenant, type="webchat", name="Site", external_id=f"wk_{uuid.uuid4().hex}")
    visitor = f"v_{uuid.uuid4().hex}"
    layer = get_channel_layer()
    inbox = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(visitor_group(channel_external_id=channel.external_id, visitor_id=visitor), inbox)

    class Inbox:
        def say(self, text: str) -> None:
            webchat_say(channel, visitor, text)

        def frames_until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> list[dict[str, Any]]:
            import asyncio

            frames: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout

            async def receive() -> dict[str, Any]:
                return await asyncio.wait_for(layer.receive(inbox), timeout=max(0.1, deadline - time.monotonic()))

            while True:
                frames.append(async_to_sync(receive)()["event"])
                if done(frames[-1]):
                    return frames

    yield Inbox()
    channel_layers.backends.clear()


def make_function(tenant: Any, url: str) -> Any:
    return conversation_services.function_create(
        tenant=tenant,
        name="get_order_status",
        description="Status of an order by its id",
        parameters=ORDER_SCHEMA,
        endpoint_url=url,
        timeout_seconds=5,
    )


def test_streamed_tool_calls_are_assembled_run_and_the_answer_streams_after_them(
    live_worker, tenant, streaming_llm, visitor_inbox, local_http_server
):
    endpoint = FunctionEndpoint(answer={"status": "shipped"})
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/orders")
    streaming_llm.replies = [{"tool_calls": [("get_order_status", '{"order_id": "A42"}')]}]
    streaming_llm.default = {"text": "Order A42 has shipped."}

    visitor_inbox.say("Where is order A42?")

    frames = visitor_inbox.frames_until(lambda f: f["type"] == "stream_end")
    assert [f["type"] for f in frames] == ["typing", "stream_start", *["stream_delta"] * 4, "stream_end"]
    assert frames[-1]["text"] == "Order A42 has shipped."
    assert [json.loads(c["raw"])["arguments"] for c in endpoint.calls] == [{"order_id": "A42"}]
    first, second = streaming_llm.requests
    assert (first["stream"], second["stream"]) == (True, True)
    assert second["messages"][-2]["tool_calls"][0]["function"] == {
        "name": "get_order_status",
        "arguments": '{"order_id": "A42"}',
    }
    assert json.loads(second["messages"][-1]["content"]) == {"status": "shipped"}
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first(), timeout=30)
    assert reply.content == "Order A42 has shipped."
    assert Message.objects.get(sender="tool").payload["arguments"] == {"order_id": "A42"}


def test_text_streamed_before_tool_calls_does_not_end_the_turn_the_tools_run_and_the_answer_follows(
    live_worker, tenant, streaming_llm, visitor_inbox, local_http_server
):
    endpoint = FunctionEndpoint(answer={"status": "shipped"})
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/orders")
    streaming_llm.replies = [
        {"text": "Let me check that order.", "tool_calls": [("get_order_status", '{"order_id": "A42"}')]}
    ]
    streaming_llm.default = {"text": "Order A42 has shipped."}

    visitor_inbox.say("Where is order A42?")

    frames = visitor_inbox.frames_until(lambda f: f["type"] == "stream_end" and "shipped" in f["text"])
    ends = [f for f in frames if f["type"] == "stream_end"]
    assert [f["text"] for f in ends] == ["Let me check that order.", "Order A42 has shipped."]
    assert len({f["id"] for f in frames if f["type"].startswith("stream")}) == 1  # one bubble, rewritten
    assert [json.loads(c["raw"])["arguments"] for c in endpoint.calls] == [{"order_id": "A42"}]
    assert len(streaming_llm.requests) == 2
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first(), timeout=30)
    assert reply.content == "Order A42 has shipped."
    assert (reply.prompt_tokens, reply.completion_tokens) == (100, 20)  # both rounds
    tool = Message.objects.get(sender="tool")
    assert (tool.payload["name"], tool.payload["ok"]) == ("get_order_status", True)
    assert [p["name"] for p in event_payloads("tool.called")] == ["get_order_status"]


@pytest.mark.parametrize("how", ["cut", "eof"])
def test_a_stream_breaking_off_is_not_kept_as_the_answer_the_user_gets_the_fallback(
    live_worker, tenant, streaming_llm, visitor_inbox, how
):
    streaming_llm.default = {"text": "Our opening hours are from nine to five", "break": how, "break_after": 3}

    visitor_inbox.say("When are you open?")

    frames = visitor_inbox.frames_until(lambda f: f["type"] == "message")
    assert [f["type"] for f in frames] == ["typing", "stream_start", "stream_delta", "stream_delta", "stream_delta",
                                           "message"]  # fmt: skip
    assert "".join(f["delta"] for f in frames if f["type"] == "stream_delta") == "Our opening hours"
    # The same bubble is rewritten with the fallback: the partial answer never ends as if complete.
    assert (frames[-1]["id"], frames[-1]["text"]) == (frames[1]["id"], FALLBACK_TEXT)
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first(), timeout=30)
    assert (reply.content, reply.payload["fallback"]) == (FALLBACK_TEXT, True)
    user_message = wait_until(lambda: Message.objects.filter(sender="user", status="failed").first(), timeout=30)
    assert user_message.error["retryable"] is True
    assert [p["stage"] for p in event_payloads("message.failed")] == ["llm"]


# --- a tenant's own LLM endpoint, with its key from a tenant secret ---------------------------------------


def test_tenant_llm_endpoint_gets_exactly_the_tenant_secret_key_and_never_the_deployment_key(
    live_worker, tenant, tenant_api, whatsapp, graph, llm, local_http_server
):
    own = OpenAIScript()
    own.default = lambda body: {"content": "Answered by the tenant's own model."}
    own_url = local_http_server(openai_handler(own)).url + "/v1"
    assert (
        tenant_api.put(f"/api/tenants/{tenant.pk}/secrets/llm-key/", {"value": "sk-tenant-own-key"}).status_code == 201
    )
    llm_settings = {
        "provider": "openai_compatible",
        "baseUrl": own_url,
        "model": "own-model",
        "apiKeySecret": "llm-key",
    }
    response = tenant_api.patch(f"/api/tenants/{tenant.pk}/", {"settings": {"llm": llm_settings}}, format="json")
    assert response.status_code == 200, response.content

    deliver(whatsapp, text="Who answers?")
    wait_until(lambda: graph.texts, timeout=30)
    deliver(whatsapp, text="And again?")

    wait_until(lambda: len(graph.texts) == 2, timeout=30)
    assert graph.text_bodies() == ["Answered by the tenant's own model."] * 2
    assert [r["_headers"]["authorization"] for r in own.requests] == ["Bearer sk-tenant-own-key"] * 2
    assert [r["model"] for r in own.requests] == ["own-model"] * 2
    assert llm.requests == []  # the deployment's endpoint heard nothing
    assert not any("sk-test-deployment-key" in json.dumps(r) for r in own.requests)
