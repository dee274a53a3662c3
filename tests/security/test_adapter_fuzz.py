"""hypothesis over every channel adapter's inbound parsing.

Payloads start from the real-format fixtures (tests/fixtures/whatsapp, tests/fixtures/messenger) and
are mutated as a sender holding the app secret could: values of the wrong type, keys removed or
added, huge strings, NUL characters, NaN and huge numbers, deep nesting, long lists. Whatever comes
in, ``parse`` returns items PostgreSQL can store (no NUL, finite numbers, ids that fit the columns),
never more output than the input can account for; and a signed webhook carrying such a payload is
answered 200 or a JSON 4xx, never a 500 (Meta would redeliver it forever).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from channels_app import services
from channels_app.adapters.base import MAX_ID_CHARS, MAX_STATUS_CHARS, InvalidPayload, ParsedPayload
from channels_app.adapters.messenger import MessengerAdapter
from channels_app.adapters.meta import sign
from channels_app.adapters.webchat import WebchatAdapter
from channels_app.adapters.whatsapp import WhatsAppAdapter
from channels_app.models import Channel, InboundEvent
from tenants.services import tenant_create

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE_PAYLOADS = {
    platform: [json.loads(path.read_text()) for path in sorted((FIXTURES / platform).glob("*.json"))]
    for platform in ("whatsapp", "messenger")
}
ADAPTERS = {"whatsapp": WhatsAppAdapter(), "messenger": MessengerAdapter()}
APP_SECRET = "fuzz-app-secret-0123456789"

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _nested(leaf: Any, depth: int) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**4000), max_value=10**4000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from('a\x00é😀\u202e<\\"'), max_size=300),
    st.builds(lambda char, n: char * n, st.sampled_from(["x", "\x00", "é"]), st.integers(10_000, 100_000)),
)
_values = st.one_of(
    _leaves,
    st.lists(_leaves, max_size=4),
    st.dictionaries(st.text(max_size=8), _leaves, max_size=4),
    st.builds(_nested, _leaves, st.integers(1, 50)),
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _parent(payload: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        payload = payload[step]
    return payload


@st.composite
def meta_payloads(draw: st.DrawFn, platform: str) -> dict[str, Any]:
    """A real fixture of ``platform`` with one to five mutations at random places."""
    payload = json.loads(json.dumps(draw(st.sampled_from(FIXTURE_PAYLOADS[platform]))))
    for _ in range(draw(st.integers(1, 5))):
        paths = [path for path in _paths(payload) if path]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(payload, path), path[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add_key", "amplify", "stringify"]))
        if action == "replace":
            parent[key] = draw(_values)
        elif action == "delete":
            del parent[key]
        elif action == "add_key" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=10))] = draw(_values)
        elif action == "amplify":
            # Many copies of one item: the shape of a body that multiplies work or output per item.
            # Bounded to ~200 KB a time so that payloads stay within what the webhook view reads (5 MB).
            copies = max(1, min(draw(st.integers(100, 3000)), 200_000 // len(json.dumps(parent[key]))))
            parent[key] = [parent[key]] * copies
        elif action == "stringify":
            parent[key] = json.dumps(parent[key])
    return payload


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _assert_storable_and_bounded(payload: dict[str, Any], parsed: ParsedPayload) -> None:
    items = [m.to_dict() for m in parsed.messages] + [s.to_dict() for s in parsed.statuses]
    for item in items:
        assert isinstance(item["message_id"], str) and len(item["message_id"]) <= MAX_ID_CHARS
        assert isinstance(item["channel_external_id"], str)
        assert math.isfinite(item["timestamp"])
        assert not any("\x00" in text for text in _strings(item))
        assert all(math.isfinite(number) for number in _numbers(item))
    for message in parsed.messages:
        assert len(message.sender_id) <= MAX_ID_CHARS
        assert all(isinstance(getattr(message, name), str) for name in ("text", "sender_name", "type"))
    for status in parsed.statuses:
        assert len(status.recipient_id) <= MAX_ID_CHARS and len(status.status) <= MAX_STATUS_CHARS
    assert all(isinstance(reason, str) for reason in parsed.ignored)
    size_in = len(json.dumps(payload))
    size_out = len(json.dumps(items, allow_nan=False))
    # Each item costs its field names (~1 KB) plus what it copies from the payload: never a copy per
    # item of something shared by all (output quadratic in the input).
    assert size_out <= 4 * size_in + 2000 * len(items)
    assert len(items) <= size_in


@pytest.mark.parametrize("platform", ["whatsapp", "messenger"])
def test_parse_of_a_mutated_meta_payload_returns_storable_bounded_items(platform: str) -> None:
    adapter = ADAPTERS[platform]

    @settings(FUZZ, max_examples=100)
    @given(payload=meta_payloads(platform))
    def check(payload: dict[str, Any]) -> None:
        assert all(isinstance(ext, str) for ext in adapter.routing_ids(payload))
        _assert_storable_and_bounded(payload, adapter.parse(payload))

    check()


@pytest.mark.parametrize("platform", ["whatsapp", "messenger"])
def test_every_fixture_still_parses_to_what_it_did(platform: str) -> None:
    adapter = ADAPTERS[platform]
    for payload in FIXTURE_PAYLOADS[platform]:
        parsed = adapter.parse(payload)
        _assert_storable_and_bounded(payload, parsed)
        assert parsed.messages or parsed.statuses or parsed.ignored


def test_messenger_delivery_of_many_mids_does_not_copy_the_list_into_every_status() -> None:
    mids = [f"m_{i:06d}" for i in range(5000)]
    payload = {
        "object": "page",
        "entry": [
            {
                "id": "106543210987654",
                "time": 1,
                "messaging": [
                    {"sender": {"id": "1"}, "recipient": {"id": "2"}, "delivery": {"mids": mids, "watermark": 1}}
                ],
            }
        ],
    }
    parsed = MessengerAdapter().parse(payload)
    assert [s.message_id for s in parsed.statuses] == mids
    assert len(json.dumps([s.to_dict() for s in parsed.statuses])) < 2_000_000


_frame_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=50), st.lists(st.none())
)


@settings(FUZZ, max_examples=300)
@given(
    frame=st.fixed_dictionaries(
        {},
        optional={
            "channel_external_id": st.one_of(st.text(min_size=1, max_size=40), _frame_values),
            "visitor_id": st.one_of(st.text(min_size=1, max_size=40), _frame_values),
            "client_message_id": st.one_of(st.text(min_size=8, max_size=128), _frame_values),
            "text": st.one_of(st.text(min_size=1, max_size=4000), _frame_values),
            "timestamp": _frame_values,
            "page_url": _frame_values,
        },
    )
)
def test_webchat_parse_takes_a_frame_or_refuses_it_with_invalid_payload(frame: dict[str, Any]) -> None:
    try:
        parsed = WebchatAdapter().parse(frame)
    except InvalidPayload as exc:
        assert str(exc).startswith("web chat frame")
        return
    _assert_storable_and_bounded(frame, parsed)
    (message,) = parsed.messages
    assert (message.channel_external_id, message.sender_id, message.message_id) == (
        frame["channel_external_id"],
        frame["visitor_id"],
        frame["client_message_id"],
    )
    assert message.text == frame["text"].replace("\x00", "")


@pytest.fixture
def signed_channels(db: Any) -> Iterator[dict[str, Channel]]:
    tenant = tenant_create(name="Signed fuzz")
    channels = {}
    for platform, external_id in (("whatsapp", "1122334455667"), ("messenger", "106543210987654")):
        channel = Channel.objects.create(tenant=tenant, type=platform, name=platform, external_id=external_id)
        services.channel_set_credentials(channel=channel, credentials={"app_secret": APP_SECRET})
        channels[platform] = channel
    services.clear_route_cache()
    yield channels
    services.clear_route_cache()


@pytest.mark.parametrize("platform", ["whatsapp", "messenger"])
def test_signed_mutated_webhook_is_stored_or_refused_in_json_never_a_server_error(
    platform: str, signed_channels: dict[str, Channel], client: Any
) -> None:
    channel = signed_channels[platform]

    @settings(FUZZ, max_examples=40)
    @given(payload=meta_payloads(platform))
    def check(payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        response = client.generic(
            "POST",
            f"/webhooks/{platform}",
            body,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=sign(body, APP_SECRET),
        )
        assert response.status_code < 500, response.content[:300]
        answer = response.json()
        if response.status_code >= 400:
            assert set(answer["error"]) == {"code", "message", "details"}
        else:
            assert answer["status"] in {"ok", "unrouted"}

    check()
    assert InboundEvent.objects.filter(channel=channel).count() >= 1


def test_a_change_whose_field_is_not_a_string_routes_nowhere_instead_of_crashing() -> None:
    """Found by the fuzzer above: ``field`` given as an object made routing raise (unhashable dict)."""
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1234567890", "changes": [{"value": 7, "field": {"k": ["message_template_status_update"]}}]}],
    }
    assert ADAPTERS["whatsapp"].routing_ids(payload) == []
    assert ADAPTERS["whatsapp"].parse(payload).messages == []
