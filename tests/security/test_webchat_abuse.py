"""Finding 8: web chat abuse, driven as the attacker did: session floods over HTTP, a pile of sockets on
one visitor token, and sockets that outlive their channel being switched off.

The sockets go through the real consumer over the real Redis channel layer (channels'
WebsocketCommunicator); its database work runs in other threads, hence transactional tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from channels_app import webchat
from channels_app.models import Channel, InboundEvent
from channels_app.routing import websocket_urlpatterns
from tenants.models import Tenant
from tests.webchat import conftest as webchat_fixtures
from tests.webchat.conftest import daphne_servers  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/webchat/sessions/"
ORIGIN = "https://shop.example"
APP = URLRouter(websocket_urlpatterns)


# The web chat tests' fixtures, bound here so pytest finds them (tests/security has no conftest).
_fresh_channel_layer = webchat_fixtures._fresh_channel_layer
make_webchat_channel = webchat_fixtures.make_webchat_channel
webchat_channel = webchat_fixtures.webchat_channel


@pytest.fixture(scope="module", autouse=True)
def _end_thread_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """The consumer's executor threads keep their database connections: end them so the test database
    can be dropped."""
    yield
    from tests.conftest import terminate_other_sessions

    with django_db_blocker.unblock():
        terminate_other_sessions()


@pytest.fixture
def channel(webchat_channel: Channel) -> Channel:
    return webchat_channel


def start_session(client: Any, channel: Channel, address: str = "203.0.113.7", **headers: str) -> Any:
    return client.post(
        URL,
        {"widget_key": channel.external_id},
        content_type="application/json",
        HTTP_ORIGIN=ORIGIN,
        REMOTE_ADDR=address,
        **headers,
    )


def assert_capped(statuses: list[int], limit: int) -> None:
    """What a per-minute limit guarantees to a burst of 2 x limit + 1 requests within a minute: the
    first ``limit`` pass, and since a fixed window lets ``limit`` through and the burst spans at most
    two windows, at most 2 x ``limit`` pass (at least one is refused)."""
    assert len(statuses) == 2 * limit + 1
    assert statuses[:limit] == [201] * limit
    assert set(statuses) == {201, 429}
    assert statuses.count(201) <= 2 * limit


def test_sessions_from_one_address_over_the_default_limit_answer_429_with_retry_after(client, channel):
    limit = django_settings.WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE

    responses = [start_session(client, channel) for _ in range(2 * limit + 1)]

    assert_capped([r.status_code for r in responses], limit)
    refused = next(r for r in responses if r.status_code == 429)
    body = refused.json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["message"].startswith("Too many chat sessions from your network; try again in ")
    assert body["error"]["details"]["limit"] == limit
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert body["error"]["details"]["retry_after"] == int(refused["Retry-After"])
    assert refused["Access-Control-Allow-Origin"] == ORIGIN  # the widget can read why
    assert start_session(client, channel, address="198.51.100.9").status_code == 201  # another visitor


def test_a_forged_x_forwarded_for_buys_no_new_sessions_when_no_proxy_is_trusted(client, channel, settings):
    settings.WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE = 2
    settings.TRUSTED_PROXY_COUNT = 0

    statuses = [start_session(client, channel, HTTP_X_FORWARDED_FOR=f"10.0.0.{n}").status_code for n in range(1, 6)]

    assert_capped(statuses, 2)


def test_behind_a_trusted_proxy_the_address_it_recorded_is_the_client(client, channel, settings):
    settings.WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE = 2
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "192.0.2.1"

    # The client writes whatever it likes on the left; the proxy appends the address it saw.
    spoofed = [
        start_session(client, channel, address=proxy, HTTP_X_FORWARDED_FOR=f"10.0.0.{n}, 203.0.113.50").status_code
        for n in range(1, 6)
    ]
    other_visitor = start_session(client, channel, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.51")

    assert_capped(spoofed, 2)
    assert other_visitor.status_code == 201


def test_sessions_on_one_widget_from_many_addresses_are_capped(client, channel, settings):
    settings.WEBCHAT_SESSIONS_PER_CHANNEL_PER_MINUTE = 3

    responses = [start_session(client, channel, address=f"198.51.100.{n}") for n in range(1, 8)]

    assert_capped([r.status_code for r in responses], 3)
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["message"].startswith("This chat is starting too many sessions; try again in ")


# --- sockets ------------------------------------------------------------------------------------------


def token_for(channel: Channel, visitor_id: str = "v_" + "b" * 22) -> str:
    return webchat.token_issue(channel=channel, visitor_id=visitor_id)[0]


def communicator(token: str) -> WebsocketCommunicator:
    return WebsocketCommunicator(APP, f"/ws/webchat/?token={token}", headers=[(b"origin", ORIGIN.encode())])


async def ready_socket(token: str) -> WebsocketCommunicator:
    """A socket connected with ``token`` that has had its ``ready`` frame."""
    socket = communicator(token)
    await socket.connect()
    assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
    return socket


async def switch_tenant_off(admin_api: Any, tenant: Tenant) -> int:
    response = await sync_to_async(admin_api.patch)(f"/api/tenants/{tenant.pk}/", {"is_active": False}, format="json")
    return response.status_code


async def close_frame(socket: WebsocketCommunicator) -> dict[str, Any]:
    output = await socket.receive_output(timeout=5)
    assert output["type"] == "websocket.close", output
    return output


def test_sockets_over_the_cap_on_one_visitor_token_are_refused_with_4429(channel):
    cap = django_settings.WEBCHAT_MAX_SOCKETS_PER_VISITOR
    token = token_for(channel)

    async def scenario() -> tuple[list[str], dict, dict, str]:
        sockets = []
        for _ in range(cap):
            socket = communicator(token)
            assert (await socket.connect())[0]
            sockets.append(socket)
        ready = [(await socket.receive_json_from(timeout=5))["type"] for socket in sockets]
        extra = communicator(token)
        await extra.connect()
        refusal = await extra.receive_json_from(timeout=5)
        closed = await close_frame(extra)
        await sockets.pop().disconnect()  # a tab closes: its place is free again
        again = communicator(token)
        await again.connect()
        reopened = (await again.receive_json_from(timeout=5))["type"]
        for socket in [*sockets, again]:
            await socket.disconnect()
        return ready, refusal, closed, reopened

    ready, refusal, closed, reopened = async_to_sync(scenario)()

    assert ready == ["ready"] * cap
    assert refusal == {
        "type": "error",
        "code": "too_many_connections",
        "message": f"This visitor already has {cap} chat connections open; close a tab and try again.",
        "details": {"limit": cap},
    }
    assert closed["code"] == 4429
    assert reopened == "ready"


def test_switching_the_channel_off_closes_its_open_sockets(channel, tenant, tenant_api):
    other_visitor = token_for(channel, "v_" + "c" * 22)

    async def scenario() -> tuple[int, list[dict], list[int]]:
        sockets = [communicator(token_for(channel)), communicator(other_visitor)]
        for socket in sockets:
            await socket.connect()
            assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
        response = await sync_to_async(tenant_api.patch)(
            f"/api/tenants/{tenant.pk}/channels/{channel.pk}/", {"is_active": False}, format="json"
        )
        frames = [await socket.receive_json_from(timeout=5) for socket in sockets]
        codes = [(await close_frame(socket))["code"] for socket in sockets]
        return response.status_code, frames, codes

    status, frames, codes = async_to_sync(scenario)()

    assert status == 200
    assert frames == [{"type": "error", "code": "channel_inactive", "message": "This chat is switched off."}] * 2
    assert codes == [4403, 4403]


def test_switching_the_tenant_off_closes_its_open_sockets(channel, tenant, admin_api):
    async def scenario() -> tuple[int, dict, int]:
        socket = await ready_socket(token_for(channel))
        status = await switch_tenant_off(admin_api, tenant)
        frame = await socket.receive_json_from(timeout=5)
        code = (await close_frame(socket))["code"]
        return status, frame, code

    status, frame, code = async_to_sync(scenario)()

    assert status == 200
    assert frame == {"type": "error", "code": "channel_inactive", "message": "This chat is switched off."}
    assert code == 4403


def test_a_message_on_a_socket_of_a_switched_off_tenant_is_refused_and_not_stored(
    channel, tenant, admin_api, monkeypatch
):
    # The notice to the sockets is lost (best effort, e.g. the channel layer was down): the socket stays
    # open until its next message, which is refused.
    monkeypatch.setattr(webchat, "close_channel_sockets", lambda channel_id: None)

    async def scenario() -> tuple[int, dict, int]:
        socket = await ready_socket(token_for(channel))
        status = await switch_tenant_off(admin_api, tenant)
        await socket.send_json_to({"type": "message", "client_message_id": "c_after_off_01", "text": "still there?"})
        frame = await socket.receive_json_from(timeout=5)
        code = (await close_frame(socket))["code"]
        return status, frame, code

    status, frame, code = async_to_sync(scenario)()

    assert status == 200
    assert frame == {
        "type": "error",
        "code": "channel_inactive",
        "message": "This chat is switched off.",
        "client_message_id": "c_after_off_01",
    }
    assert code == 4403
    assert not InboundEvent.objects.filter(channel=channel).exists()


def test_a_forged_x_forwarded_for_buys_no_sessions_from_the_server_make_run_starts(
    daphne_servers,  # noqa: F811
    channel,
):
    """daphne started as ``make run`` starts it: with ``--proxy-headers`` it took the client's own
    X-Forwarded-For as the peer address, so every forged header was a new visitor."""
    import requests

    server = daphne_servers(env={"WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE": "2", "TRUSTED_PROXY_COUNT": "0"})
    statuses = [
        requests.post(
            f"{server.url}{URL}",
            json={"widget_key": channel.external_id},
            headers={"Origin": ORIGIN, "X-Forwarded-For": f"10.0.0.{n}"},
            timeout=10,
        ).status_code
        for n in range(1, 6)
    ]

    assert_capped(statuses, 2)
