"""The /ws/webchat/ consumer over the real Redis channel layer (channels' WebsocketCommunicator).

The consumer's database work runs in other threads (database_sync_to_async), which see only
committed data: hence transactional tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

import jwt
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from channels_app import webchat
from channels_app.models import InboundEvent
from channels_app.routing import websocket_urlpatterns
from tests.webchat.conftest import ORIGIN

from channels.routing import URLRouter  # isort: skip

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module", autouse=True)
def end_thread_connections(django_db_setup, django_db_blocker):
    """The consumer's database calls run in executor threads that outlive a test, each holding its own
    connection (as in daphne, where they are reused). End them after this module, or the test database
    could not be dropped at the end of the run."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


APP = URLRouter(websocket_urlpatterns)
VISITOR = "v_" + "a" * 22


def communicator(token: str, origin: str = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin.encode())] if origin else []
    return WebsocketCommunicator(APP, f"/ws/webchat/?token={token}", headers=headers)


async def connected(token: str, origin: str = ORIGIN) -> WebsocketCommunicator:
    socket = communicator(token, origin)
    accepted, _ = await socket.connect()
    assert accepted
    assert await socket.receive_json_from(timeout=5) == {"type": "ready", "visitor_id": jwt.decode(
        token, options={"verify_signature": False})["sub"]}  # fmt: skip
    return socket


async def refused(token: str, origin: str = ORIGIN) -> tuple[dict, int]:
    socket = communicator(token, origin)
    accepted, _ = await socket.connect()
    assert accepted  # accepted only to say why, then closed
    frame = await socket.receive_json_from(timeout=5)
    closed = await socket.receive_output(timeout=5)
    assert closed["type"] == "websocket.close"
    return frame, closed["code"]


def token_for(channel, visitor_id: str = VISITOR, **kwargs) -> str:
    return webchat.token_issue(channel=channel, visitor_id=visitor_id, **kwargs)[0]


def inbound_rows(channel):
    return list(InboundEvent.objects.for_tenant(channel.tenant_id).filter(channel=channel).order_by("id"))


def test_valid_token_and_origin_connect_and_get_ready(webchat_channel):
    async def scenario():
        socket = await connected(token_for(webchat_channel))
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(timeout=5) == {"type": "pong"}
        await socket.disconnect()

    async_to_sync(scenario)()


def test_expired_token_is_refused_with_4401(webchat_channel):
    token = token_for(webchat_channel, now=time.time() - 2 * settings.WEBCHAT_JWT_TTL_SECONDS)

    frame, code = async_to_sync(refused)(token)

    assert frame["code"] == "token_expired"
    assert code == 4401


def test_forged_token_is_refused_with_4401(webchat_channel, tenant):
    claims = jwt.decode(token_for(webchat_channel), options={"verify_signature": False})
    forged = jwt.encode(claims, "an-attacker-key-that-is-long-enough!", algorithm="HS256")

    frame, code = async_to_sync(refused)(forged)

    assert frame["code"] == "token_invalid"
    assert code == 4401


def test_missing_token_is_refused_with_4401(webchat_channel):
    frame, code = async_to_sync(refused)("")

    assert frame["code"] == "token_missing"
    assert code == 4401


def test_foreign_origin_is_refused_with_4403(webchat_channel):
    frame, code = async_to_sync(refused)(token_for(webchat_channel), "https://evil.example")

    assert frame["code"] == "origin_not_allowed"
    assert code == 4403


def test_message_is_acknowledged_and_stored_as_a_normalized_webchat_message(webchat_channel):
    async def scenario():
        socket = await connected(token_for(webchat_channel))
        await socket.send_json_to({"type": "message", "client_message_id": "c_1234567890", "text": "Are you open?"})
        ack = await socket.receive_json_from(timeout=5)
        echo = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return ack, echo

    ack, echo = async_to_sync(scenario)()

    assert ack == {"type": "ack", "client_message_id": "c_1234567890", "status": "stored"}
    assert echo["type"] == "message" and echo["role"] == "user" and echo["client_message_id"] == "c_1234567890"
    [row] = inbound_rows(webchat_channel)
    assert row.dedupe_key == "c_1234567890"
    assert row.sender_external_id == VISITOR
    assert row.status == InboundEvent.Status.PENDING
    assert row.normalized["platform"] == "webchat"
    assert row.normalized["channel_external_id"] == webchat_channel.external_id
    assert row.normalized["text"] == "Are you open?"
    assert row.normalized["type"] == "text"


def test_resend_after_reconnect_is_stored_once(webchat_channel):
    frame = {"type": "message", "client_message_id": "c_resend00001", "text": "only once please"}

    async def scenario():
        first = await connected(token_for(webchat_channel))
        await first.send_json_to(frame)
        ack1 = await first.receive_json_from(timeout=5)
        await first.disconnect()  # the connection drops; the widget did not see the ack, so it resends
        second = await connected(token_for(webchat_channel))
        await second.send_json_to(frame)
        ack2 = await second.receive_json_from(timeout=5)
        nothing_more = await second.receive_nothing(timeout=0.3)
        await second.disconnect()
        return ack1, ack2, nothing_more

    ack1, ack2, nothing_more = async_to_sync(scenario)()

    assert ack1["status"] == "stored"
    assert ack2 == {"type": "ack", "client_message_id": "c_resend00001", "status": "duplicate"}
    assert nothing_more  # no echo for a duplicate
    assert [r.dedupe_key for r in inbound_rows(webchat_channel)] == ["c_resend00001"]


def test_too_long_message_is_refused_and_not_stored(webchat_channel):
    limit = settings.WEBCHAT_MAX_MESSAGE_CHARS

    async def scenario():
        socket = await connected(token_for(webchat_channel))
        await socket.send_json_to({"type": "message", "client_message_id": "c_toolong0001", "text": "x" * (limit + 1)})
        error = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return error

    error = async_to_sync(scenario)()

    assert error["type"] == "error"
    assert error["code"] == "message_too_long"
    assert error["client_message_id"] == "c_toolong0001"
    assert error["details"] == {"limit": limit}
    assert inbound_rows(webchat_channel) == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "message", "client_message_id": "c_empty00001", "text": "   "}, "empty_message"),
        ({"type": "message", "client_message_id": "bad id!", "text": "hi"}, "invalid_message_id"),
        ({"type": "message", "text": "hi"}, "invalid_message_id"),
        ({"type": "dance"}, "unknown_type"),
    ],
)
def test_invalid_frames_get_a_clear_error_and_store_nothing(webchat_channel, frame, code):
    async def scenario():
        socket = await connected(token_for(webchat_channel))
        await socket.send_json_to(frame)
        error = await socket.receive_json_from(timeout=5)
        await socket.send_to(text_data="{not json")
        not_json = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return error, not_json

    error, not_json = async_to_sync(scenario)()

    assert (error["type"], error["code"]) == ("error", code)
    assert not_json["code"] == "invalid_json"
    assert inbound_rows(webchat_channel) == []


def test_visitor_over_the_rate_limit_is_told_when_to_retry(webchat_channel, settings):
    settings.WEBCHAT_RATE_LIMIT_PER_MINUTE = 2

    async def scenario():
        socket = await connected(token_for(webchat_channel))
        frames = []
        for n in range(3):
            await socket.send_json_to({"type": "message", "client_message_id": f"c_rate{n:07d}", "text": f"m{n}"})
            frames.append(await socket.receive_json_from(timeout=5))
            if frames[-1]["type"] == "ack":
                await socket.receive_json_from(timeout=5)  # the echo
        await socket.disconnect()
        return frames

    frames = async_to_sync(scenario)()

    assert [f["type"] for f in frames] == ["ack", "ack", "error"]
    assert frames[2]["code"] == "rate_limited"
    assert frames[2]["client_message_id"] == "c_rate0000002"
    assert 1 <= frames[2]["details"]["retry_after"] <= 60
    assert [r.dedupe_key for r in inbound_rows(webchat_channel)] == ["c_rate0000000", "c_rate0000001"]


def test_reply_sent_through_the_adapter_reaches_the_visitor_with_sources(webchat_channel, adapter):
    async def scenario():
        socket = await connected(token_for(webchat_channel))
        result = await sync_to_async(adapter.send_message, thread_sensitive=False)(
            channel_external_id=webchat_channel.external_id,
            recipient_id=VISITOR,
            text="We open at 9.",
            sources=[{"title": "Opening hours", "page": 3, "section": "Hours", "document_id": "d1"}],
            message_id=42,
            credentials={},
        )
        frame = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return result, frame

    result, frame = async_to_sync(scenario)()

    assert result.platform_message_ids == ["m42"]
    sent_at = datetime.fromisoformat(frame.pop("created_at"))  # the time the widget shows beside it
    assert abs(sent_at.timestamp() - time.time()) < 30 and sent_at.tzinfo is not None
    assert frame == {
        "type": "message",
        "id": "m42",
        "role": "assistant",
        "text": "We open at 9.",
        "sources": [{"title": "Opening hours", "url": "", "page": 3}],
    }


def test_streamed_reply_arrives_token_by_token(webchat_channel, adapter):
    async def scenario():
        socket = await connected(token_for(webchat_channel))
        await sync_to_async(adapter.stream_text, thread_sensitive=False)(
            channel_external_id=webchat_channel.external_id,
            recipient_id=VISITOR,
            chunks=iter(["We ", "open ", "", "at 9."]),
            credentials={},
            message_id=7,
        )
        frames = [await socket.receive_json_from(timeout=5) for _ in range(5)]
        await socket.disconnect()
        return frames

    frames = async_to_sync(scenario)()

    started_at = frames[0].pop("created_at")
    assert frames[4].pop("created_at") == started_at and datetime.fromisoformat(started_at).tzinfo is not None
    assert frames == [
        {"type": "stream_start", "id": "m7", "role": "assistant"},
        {"type": "stream_delta", "id": "m7", "delta": "We "},
        {"type": "stream_delta", "id": "m7", "delta": "open "},
        {"type": "stream_delta", "id": "m7", "delta": "at 9."},
        {"type": "stream_end", "id": "m7", "role": "assistant", "text": "We open at 9.", "sources": []},
    ]


def test_typing_handoff_and_sources_notices_reach_the_visitor(webchat_channel, adapter):
    async def scenario():
        socket = await connected(token_for(webchat_channel))
        send = sync_to_async(adapter.send_notice, thread_sensitive=False)
        common = {"channel_external_id": webchat_channel.external_id, "recipient_id": VISITOR, "credentials": {}}
        await send(kind="typing", data={"typing": True}, **common)
        await send(kind="handoff", data={"state": "handoff_requested", "text": "ignored"}, **common)
        await send(kind="sources", data={"message_id": 7, "sources": [{"title": "FAQ", "page": None}]}, **common)
        frames = [await socket.receive_json_from(timeout=5) for _ in range(3)]
        await socket.disconnect()
        return frames

    frames = async_to_sync(scenario)()

    assert frames == [
        {"type": "typing", "on": True},
        {"type": "handoff", "state": "handoff_requested", "message": ""},
        {"type": "sources", "id": "m7", "sources": [{"title": "FAQ", "url": "", "page": None}]},
    ]


def test_a_tenant_a_socket_never_receives_what_is_sent_to_tenant_b(
    webchat_channel, make_webchat_channel, other_tenant, adapter
):
    other_channel = make_webchat_channel(other_tenant)

    async def scenario():
        # The same visitor id on both widgets: only the widget key (hence the tenant) tells them apart.
        socket_a = await connected(token_for(webchat_channel))
        socket_b = await connected(token_for(other_channel))
        await sync_to_async(adapter.send_text, thread_sensitive=False)(
            channel_external_id=other_channel.external_id, recipient_id=VISITOR, text="for B only", credentials={}
        )
        got_b = await socket_b.receive_json_from(timeout=5)
        a_got_nothing = await socket_a.receive_nothing(timeout=0.5)
        await socket_a.send_json_to({"type": "message", "client_message_id": "c_tenanta0001", "text": "from A"})
        await socket_a.receive_json_from(timeout=5)
        b_got_nothing = await socket_b.receive_nothing(timeout=0.5)
        await socket_a.disconnect()
        await socket_b.disconnect()
        return got_b, a_got_nothing, b_got_nothing

    got_b, a_got_nothing, b_got_nothing = async_to_sync(scenario)()

    assert got_b["text"] == "for B only"
    assert a_got_nothing
    assert b_got_nothing
    assert [r.dedupe_key for r in inbound_rows(webchat_channel)] == ["c_tenanta0001"]
    assert inbound_rows(other_channel) == []


def test_token_naming_tenant_a_and_a_channel_of_tenant_b_is_refused(
    webchat_channel, make_webchat_channel, other_tenant
):
    other_channel = make_webchat_channel(other_tenant)
    claims = jwt.decode(token_for(webchat_channel), options={"verify_signature": False})
    claims["chn"] = str(other_channel.pk)  # even correctly signed, the channel is looked up in tenant A only
    token = jwt.encode(claims, webchat._jwt_key(), algorithm="HS256")

    frame, code = async_to_sync(refused)(token)

    assert frame["code"] == "token_invalid"
    assert code == 4401


def test_a_visitor_flooding_typing_frames_reaches_the_agents_only_when_it_changes(webchat_channel):
    from channels.layers import get_channel_layer

    from conversations.inbox.live import tenant_group

    async def scenario() -> list[bool]:
        layer = get_channel_layer()
        inbox = await layer.new_channel()
        await layer.group_add(tenant_group(webchat_channel.tenant_id), inbox)
        socket = await connected(token_for(webchat_channel))
        for _ in range(200):
            await socket.send_json_to({"type": "typing", "on": True})
        await socket.send_json_to({"type": "typing", "on": False})
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(timeout=5) == {"type": "pong"}  # every frame was handled
        seen = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                message = await asyncio.wait_for(layer.receive(inbox), timeout=1)
                seen.append(message["event"]["on"])
        await socket.disconnect()
        return seen

    assert async_to_sync(scenario)() == [True, False]
