"""Real daphne processes sharing one Redis channel layer and one database, driven by a real WebSocket client."""

from __future__ import annotations

import asyncio
import json

import requests
from websockets.asyncio.client import connect

from channels_app.adapters.webchat import WebchatAdapter
from channels_app.models import InboundEvent
from tests.webchat.conftest import ORIGIN


def new_session(server, channel, visitor_token: str = "") -> dict:
    response = requests.post(
        f"{server.url}/api/webchat/sessions/",
        json={"widget_key": channel.external_id, "visitor_token": visitor_token},
        headers={"Origin": ORIGIN},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def open_socket(server, token: str):
    socket = await connect(f"{server.ws_url}/ws/webchat/?token={token}", origin=ORIGIN, proxy=None)
    assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "ready"
    return socket


async def next_frame(socket) -> dict:
    return json.loads(await asyncio.wait_for(socket.recv(), 10))


def test_two_server_processes_deliver_to_one_visitor(daphne_servers, webchat_channel):
    server_a, server_b = daphne_servers(), daphne_servers()
    session = new_session(server_a, webchat_channel)
    resumed = new_session(server_b, webchat_channel, session["visitor_token"])
    assert resumed["visitor_id"] == session["visitor_id"]

    async def scenario():
        tab_on_a = await open_socket(server_a, session["token"])
        tab_on_b = await open_socket(server_b, resumed["token"])
        # The visitor types in the tab served by B; B stores it and tells the visitor's group,
        # so the tab served by A shows it too.
        await tab_on_b.send(json.dumps({"type": "message", "client_message_id": "c_twoproc0001", "text": "hi"}))
        ack = await next_frame(tab_on_b)
        echo_on_a = await next_frame(tab_on_a)
        # A reply produced elsewhere (a Celery worker: here, this test process) reaches both servers' sockets.
        await asyncio.to_thread(
            WebchatAdapter().send_message,
            channel_external_id=webchat_channel.external_id,
            recipient_id=session["visitor_id"],
            text="Hello from the worker",
            sources=[],
            message_id=1,
            credentials={},
        )
        frames_b = [await next_frame(tab_on_b), await next_frame(tab_on_b)]
        reply_on_a = await next_frame(tab_on_a)
        await tab_on_a.close()
        await tab_on_b.close()
        return ack, echo_on_a, frames_b, reply_on_a

    ack, echo_on_a, frames_b, reply_on_a = asyncio.run(scenario())

    assert ack == {"type": "ack", "client_message_id": "c_twoproc0001", "status": "stored"}
    assert (echo_on_a["role"], echo_on_a["text"], echo_on_a["id"]) == ("user", "hi", "c_twoproc0001")
    assert [f["type"] for f in frames_b] == ["message", "message"]  # its own echo, then the reply
    assert frames_b[1]["text"] == "Hello from the worker"
    assert (reply_on_a["id"], reply_on_a["role"], reply_on_a["text"]) == ("m1", "assistant", "Hello from the worker")


def test_resend_after_reconnect_to_another_server_is_stored_once(daphne_servers, webchat_channel):
    server_a, server_b = daphne_servers(), daphne_servers()
    session = new_session(server_a, webchat_channel)
    frame = json.dumps({"type": "message", "client_message_id": "c_reconnect01", "text": "did you get this?"})

    async def scenario():
        first = await open_socket(server_a, session["token"])
        await first.send(frame)
        ack1 = await next_frame(first)
        await first.close()
        server_a.stop()  # the server the visitor was on goes away; the widget reconnects elsewhere
        second = await open_socket(server_b, new_session(server_b, webchat_channel, session["visitor_token"])["token"])
        await second.send(frame)
        ack2 = await next_frame(second)
        await second.close()
        return ack1, ack2

    ack1, ack2 = asyncio.run(scenario())

    assert ack1["status"] == "stored"
    assert ack2["status"] == "duplicate"
    rows = InboundEvent.objects.for_tenant(webchat_channel.tenant_id).filter(channel=webchat_channel)
    assert [r.dedupe_key for r in rows] == ["c_reconnect01"]
