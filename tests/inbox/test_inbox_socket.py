"""The staff socket /ws/inbox/: the Django session authenticates it, it is scoped to the agent's tenant,
and it carries the tenant's changes live (and nothing of another tenant's)."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from channels_app.routing import websocket_urlpatterns
from conversations.inbox import services
from tests.inbox.conftest import make_conversation

pytestmark = pytest.mark.django_db(transaction=True)
APP = URLRouter(websocket_urlpatterns)
HOST = "inbox.example"


@pytest.fixture(scope="module", autouse=True)
def end_thread_connections(django_db_setup, django_db_blocker):
    """The consumer's database calls run in executor threads that outlive a test (see tests/webchat)."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(*, cookie: str = "", tenant=None, origin: str = f"https://{HOST}") -> WebsocketCommunicator:
    headers = [(b"host", HOST.encode())]
    if origin:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    query = f"?tenant={tenant.pk}" if tenant is not None else ""
    return WebsocketCommunicator(APP, f"/ws/inbox/{query}", headers=headers)


async def refusal(socket: WebsocketCommunicator) -> tuple[str, int]:
    accepted, _ = await socket.connect()
    assert accepted
    frame = await socket.receive_json_from(timeout=5)
    closed = await socket.receive_output(timeout=5)
    return frame["code"], closed["code"]


async def ready(socket: WebsocketCommunicator) -> dict:
    accepted, _ = await socket.connect()
    assert accepted
    frame = await socket.receive_json_from(timeout=5)
    assert frame["type"] == "ready", frame
    return frame


def test_refused_without_a_session_for_another_tenant_and_from_another_origin(tenant, other_tenant, make_agent):
    amy = make_agent(tenant, "amy")
    cookie = session_cookie(amy)

    async def scenario():
        assert await refusal(communicator(tenant=tenant)) == ("not_authenticated", 4401)
        assert await refusal(communicator(cookie="forged", tenant=tenant)) == ("not_authenticated", 4401)
        assert await refusal(communicator(cookie=cookie, tenant=other_tenant)) == ("forbidden", 4403)
        assert await refusal(communicator(cookie=cookie, tenant=tenant, origin="https://evil.example")) == (
            "origin_not_allowed",
            4403,
        )
        assert await refusal(communicator(cookie=cookie, tenant=tenant, origin="")) == ("origin_not_allowed", 4403)

    async_to_sync(scenario)()


def test_an_agent_gets_their_tenants_changes_live_and_nothing_of_another_tenant(tenant, other_tenant, make_agent):
    amy, bob = make_agent(tenant, "amy", first_name="Amy"), make_agent(tenant, "bob", first_name="Bob")
    stranger = make_agent(other_tenant, "stranger")
    mine = make_conversation(tenant, state="handoff_requested")
    theirs = make_conversation(other_tenant, state="handoff_requested")

    async def scenario():
        amy_socket = communicator(cookie=await sync_to_async(session_cookie)(amy), tenant=tenant)
        stranger_socket = communicator(cookie=await sync_to_async(session_cookie)(stranger))  # one tenant: implied
        assert (await ready(amy_socket))["me"] == {"id": amy.pk, "name": "Amy"}
        assert (await ready(stranger_socket))["tenant_id"] == str(other_tenant.pk)

        await sync_to_async(services.assign)(tenant=tenant, conversation=mine, assignee=bob, by=amy)
        frames = [await amy_socket.receive_json_from(timeout=5) for _ in range(3)]
        assigned = next(f for f in frames if f["type"] == "assigned")
        assert assigned["assignee"] == {"id": bob.pk, "name": "Bob"}
        assert assigned["conversation_id"] == str(mine.pk)
        assert {f["type"] for f in frames} >= {"assigned", "conversation"}

        # The stranger's socket hears its own tenant's change, and the first thing it hears is that.
        await sync_to_async(services.add_note)(tenant=other_tenant, conversation=theirs, text="theirs", user=stranger)
        first = await stranger_socket.receive_json_from(timeout=5)
        assert (first["type"], first["conversation_id"]) == ("note", str(theirs.pk))

        # Typing on another tenant's conversation is refused; the stranger hears nothing of it.
        await amy_socket.send_json_to({"type": "typing", "conversation_id": str(theirs.pk), "on": True})
        error = await amy_socket.receive_json_from(timeout=5)
        while error["type"] != "error":
            error = await amy_socket.receive_json_from(timeout=5)
        assert error["code"] == "invalid_conversation"
        await amy_socket.send_json_to({"type": "typing", "conversation_id": str(mine.pk), "on": True})
        marker = await amy_socket.receive_json_from(timeout=5)
        while marker["type"] != "agent_typing":
            marker = await amy_socket.receive_json_from(timeout=5)
        assert marker["agent"]["name"] == "Amy"
        # What the stranger hears next is their own tenant's note, not Amy's typing.
        await sync_to_async(services.add_note)(tenant=other_tenant, conversation=theirs, text="again", user=stranger)
        following = await stranger_socket.receive_json_from(timeout=5)
        assert (following["type"], following["note"]["text"]) == ("note", "again")
        await amy_socket.disconnect()
        await stranger_socket.disconnect()

    async_to_sync(scenario)()


async def closed_for(socket: WebsocketCommunicator) -> tuple[str, int]:
    """The frames until the socket closes: the last error's code and the close code."""
    code = ""
    while True:
        output = await socket.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            return code, output["code"]
        frame = json.loads(output["text"])
        if frame.get("type") == "error":
            code = frame["code"]


@pytest.mark.parametrize("revoke", ["logout", "membership", "password"])
def test_an_open_socket_closes_when_the_agent_loses_access(revoke, tenant, make_agent, monkeypatch):
    from django.contrib.sessions.models import Session

    from conversations.inbox import consumer
    from tenants.models import Membership

    monkeypatch.setattr(consumer, "RECHECK_SECONDS", 0.2)
    amy = make_agent(tenant, "amy")
    cookie = session_cookie(amy)

    def take_access() -> None:
        if revoke == "logout":
            Session.objects.filter(session_key=cookie).delete()
        elif revoke == "membership":
            Membership.objects.filter(user=amy).delete()
        else:
            amy.set_password("another one")
            amy.save()

    async def scenario():
        socket = communicator(cookie=cookie, tenant=tenant)
        await ready(socket)
        await sync_to_async(take_access)()
        assert await closed_for(socket) == ("session_ended", 4401)

    async_to_sync(scenario)()


def test_a_socket_whose_access_holds_stays_open_across_rechecks(tenant, make_agent, monkeypatch):
    import asyncio

    from conversations.inbox import consumer

    monkeypatch.setattr(consumer, "RECHECK_SECONDS", 0.1)
    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant)

    async def scenario():
        socket = communicator(cookie=await sync_to_async(session_cookie)(amy), tenant=tenant)
        await ready(socket)
        await asyncio.sleep(1.0)  # several rechecks
        await sync_to_async(services.add_note)(tenant=tenant, conversation=conversation, text="still here", user=amy)
        frame = await socket.receive_json_from(timeout=5)
        assert (frame["type"], frame["note"]["text"]) == ("note", "still here")
        await socket.disconnect()

    async_to_sync(scenario)()
