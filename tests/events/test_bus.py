"""In-process subscribers: called after commit, never on rollback, and unable to break the emitter."""

from __future__ import annotations

import pytest
from django.db import transaction

from events import bus
from events.models import Event
from events.services import emit
from events.types import EventType


@pytest.fixture
def subscribed():
    calls: list[tuple[str, str]] = []
    unsubscribers = []

    def subscribe(event_type, fn):
        unsubscribers.append(bus.subscribe(event_type, fn))

    yield calls, subscribe
    for unsubscribe in unsubscribers:
        unsubscribe()


def test_subscribers_run_after_commit_and_a_failing_one_breaks_nothing(
    tenant, subscribed, django_capture_on_commit_callbacks
):
    calls, subscribe = subscribed

    def broken(event):
        raise RuntimeError("subscriber bug")

    subscribe("message.received", broken)
    subscribe("message.received", lambda e: calls.append(("typed", e.type)))
    subscribe("*", lambda e: calls.append(("all", e.type)))

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        event = emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={})
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
        assert calls == []  # nothing before the commit

    assert calls == [("typed", "message.received"), ("all", "message.received"), ("all", "message.sent")]
    assert Event.objects.filter(pk=event.pk).exists()


def test_subscribers_are_not_called_for_a_rolled_back_transaction(
    tenant, subscribed, django_capture_on_commit_callbacks
):
    calls, subscribe = subscribed
    subscribe("*", lambda e: calls.append(e.type))

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={})
        raise RuntimeError("rolled back")

    assert callbacks == []
    assert calls == []
    assert not Event.objects.filter(type="message.received").exists()


def test_subscribing_to_an_unknown_type_is_refused():
    with pytest.raises(ValueError):
        bus.subscribe("message.recieved", lambda e: None)
