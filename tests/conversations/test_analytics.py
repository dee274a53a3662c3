"""The admin's analytics page: exact figures of a seeded set of conversations, CSV exports, and tenant
staff never seeing another tenant's numbers (page or CSV)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from channels_app.models import Channel
from conversations import analytics
from conversations.analytics import DateRange
from conversations.models import AnalyticsDay, Contact, Conversation, Message
from events.models import Event
from events.types import EventType
from tenants import services
from tenants.models import Tenant

UTC = dt.UTC
DAY0, DAY1, DAY2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
PERIOD = DateRange(DAY0, DAY2)
QUERY = {"start": "2026-03-01", "end": "2026-03-03"}
DOC_X, DOC_Y, DOC_Z = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
USER, ASSISTANT, AGENT, TOOL = "user", "assistant", "agent", "tool"


def at(day: dt.date, clock: str) -> dt.datetime:
    hours, minutes, seconds = (int(p) for p in clock.split(":"))
    return dt.datetime(day.year, day.month, day.day, hours, minutes, seconds, tzinfo=UTC)


def source(document_id: str, title: str) -> dict[str, Any]:
    return {"marker": 1, "chunk_id": str(uuid.uuid4()), "document_id": document_id, "title": title, "page": None}


class Seed:
    """Rows written as the pipeline and the state machine write them, at chosen instants."""

    def __init__(self, tenant: Tenant):
        self.tenant = tenant
        self.channels: dict[str, Channel] = {}

    def channel(self, name: str, kind: str) -> Channel:
        channel = Channel.objects.create(
            tenant=self.tenant, type=kind, name=name, external_id=f"{name}-{uuid.uuid4().hex[:8]}"
        )
        self.channels[name] = channel
        return channel

    def conversation(self, channel: Channel, when: dt.datetime) -> Conversation:
        contact = Contact.objects.create(tenant=self.tenant, channel=channel, external_id=uuid.uuid4().hex)
        conversation = Conversation.objects.create(tenant=self.tenant, channel=channel, contact=contact)
        Conversation.objects.filter(pk=conversation.pk).update(created_at=when, last_activity_at=when)
        return conversation

    def message(
        self, conversation: Conversation, sender: str, when: dt.datetime, text: str = "", **fields: Any
    ) -> Message:
        direction = Message.Direction.INBOUND if sender == USER else Message.Direction.OUTBOUND
        message = Message.objects.create(
            tenant=self.tenant,
            conversation=conversation,
            channel_id=conversation.channel_id,
            direction=direction,
            sender=sender,
            content=text,
            **fields,
        )
        Message.objects.filter(pk=message.pk).update(created_at=when)
        return message

    def reply(
        self,
        conversation: Conversation,
        when: dt.datetime,
        question: Message,
        *,
        sources: list[dict[str, Any]] = (),  # type: ignore[assignment]
        retrieved: int | None = 0,
        handoff: bool = False,
        fallback: bool = False,
        tokens: tuple[int, int] = (0, 0),
        cost: str = "0",
    ) -> Message:
        payload = {
            "sources": list(sources),
            "handoff": handoff,
            "fallback": fallback,
            "retrieved": retrieved,
            "in_reply_to": [question.pk],
        }
        return self.message(
            conversation,
            ASSISTANT,
            when,
            "answer",
            payload=payload,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            cost_usd=Decimal(cost),
            status=Message.Status.SENT,
        )

    def moved(self, conversation: Conversation, when: dt.datetime, previous: str, state: str) -> None:
        event = Event.objects.create(
            tenant=self.tenant,
            type=EventType.CONVERSATION_UPDATED,
            payload={"conversation_id": str(conversation.pk), "previous_state": previous, "state": state},
        )
        Event.objects.filter(pk=event.pk).update(created_at=when)


def seed_acme(tenant: Tenant) -> dict[str, Any]:
    """Four conversations over two days on two channels (and one before the range)."""
    s = Seed(tenant)
    wa, web = s.channel("Acme WhatsApp", Channel.Type.WHATSAPP), s.channel("Acme site", Channel.Type.WEBCHAT)

    c1 = s.conversation(wa, at(DAY1, "10:00:00"))
    q = s.message(c1, USER, at(DAY1, "10:00:00"), "Opening hours?")
    s.reply(
        c1, at(DAY1, "10:00:02"), q, sources=[source(DOC_X, "Store guide")], retrieved=2, tokens=(100, 20), cost="0.001"
    )
    s.message(c1, TOOL, at(DAY1, "10:04:00"), "search_documents")  # a tool call: not a message
    q = s.message(c1, USER, at(DAY1, "10:05:00"), "And on Sunday?")
    s.reply(
        c1, at(DAY1, "10:05:04"), q, sources=[source(DOC_X, "Store guide"), source(DOC_Y, "Holidays")], retrieved=3,
        tokens=(200, 30), cost="0.002",
    )  # fmt: skip

    c2 = s.conversation(web, at(DAY1, "11:00:00"))
    q = s.message(c2, USER, at(DAY1, "11:00:00"), "Do you ship to Mars?")
    s.reply(c2, at(DAY1, "11:00:10"), q, retrieved=0, tokens=(50, 10), cost="0.0005")
    q = s.message(c2, USER, at(DAY1, "11:01:00"), "I want a human")
    s.moved(c2, at(DAY1, "11:01:00"), "bot", "handoff_requested")
    s.reply(c2, at(DAY1, "11:01:01"), q, handoff=True)  # the handoff notice: not unanswered
    s.message(c2, AGENT, at(DAY1, "11:03:00"), "Hello, Anna here")
    s.moved(c2, at(DAY1, "11:03:00"), "handoff_requested", "agent")
    s.moved(c2, at(DAY1, "11:10:00"), "agent", "resolved")

    c3 = s.conversation(wa, at(DAY2, "09:00:00"))
    q = s.message(c3, USER, at(DAY2, "09:00:00"), "What is the warranty on bikes?")
    s.reply(c3, at(DAY2, "09:00:30"), q, retrieved=3, tokens=(80, 15), cost="0.0008")  # found, cited none
    s.moved(c3, at(DAY2, "09:30:00"), "bot", "resolved")

    c4 = s.conversation(web, at(DAY2, "12:00:00"))
    q = s.message(c4, USER, at(DAY2, "12:00:00"), "Cancel my order")
    s.reply(c4, at(DAY2, "12:00:01"), q, fallback=True)  # the LLM was down: not unanswered
    s.moved(c4, at(DAY2, "12:10:00"), "bot", "agent")  # an agent took over by replying
    s.message(c4, AGENT, at(DAY2, "12:10:00"), "Done")

    before = s.conversation(wa, at(DAY0 - dt.timedelta(days=1), "23:59:59"))
    q = s.message(before, USER, at(DAY0 - dt.timedelta(days=1), "23:59:59"), "Too early")
    s.reply(before, at(DAY0 - dt.timedelta(days=1), "23:59:59"), q, retrieved=0, tokens=(999, 999), cost="1")
    return {"conversations": [c1, c2, c3, c4], "channels": s.channels}


def seed_globex(tenant: Tenant) -> dict[str, Any]:
    s = Seed(tenant)
    wa = s.channel("Globex WhatsApp", Channel.Type.WHATSAPP)
    c = s.conversation(wa, at(DAY1, "08:00:00"))
    for n in range(3):
        q = s.message(c, USER, at(DAY1, f"08:0{n}:00"), f"Globex secret question {n}")
        s.reply(c, at(DAY1, f"08:0{n}:05"), q, retrieved=0, tokens=(7777777, 700), cost="0.07")
    q = s.message(c, USER, at(DAY1, "08:05:00"), "Globex cites")
    s.reply(c, at(DAY1, "08:05:01"), q, sources=[source(DOC_Z, "Globex pricing")], retrieved=1)
    s.moved(c, at(DAY1, "08:06:00"), "bot", "handoff_requested")
    s.moved(c, at(DAY1, "08:07:00"), "handoff_requested", "resolved")
    return {"conversation": c}


@pytest.fixture
def seeded(tenant: Tenant, other_tenant: Tenant) -> dict[str, Any]:
    return {"acme": seed_acme(tenant), "globex": seed_globex(other_tenant)}


@pytest.fixture(params=["rolled up", "live"])
def mode(request, monkeypatch):
    """Closed days come from the rollups; "live": every day still open (computed from the messages)."""
    if request.param == "live":
        monkeypatch.setattr(analytics, "last_closed_day", lambda now=None: DAY0 - dt.timedelta(days=1))
    return request.param


def test_figures_of_one_tenant_are_exact(tenant, seeded, mode):
    ids = [tenant.pk]
    days = analytics.message_days(ids, PERIOD)
    assert [(r["day"], r["channel"], r["messages"]) for r in analytics.messages_per_day(days)] == [
        (DAY1, "Acme WhatsApp (whatsapp)", 4),
        (DAY1, "Acme site (webchat)", 5),
        (DAY2, "Acme WhatsApp (whatsapp)", 2),
        (DAY2, "Acme site (webchat)", 3),
    ]
    assert analytics.conversations_per_day(ids, PERIOD) == [
        {"day": DAY0, "new": 0, "resolved": 0, "handoffs": 0},
        {"day": DAY1, "new": 2, "resolved": 1, "handoffs": 1},
        {"day": DAY2, "new": 2, "resolved": 1, "handoffs": 1},
    ]
    assert analytics.handoff_rate(analytics.conversations_per_day(ids, PERIOD)) == {
        "conversations": 4,
        "handed_off": 2,
        "rate": 0.5,
        "percent": 50.0,
    }
    # Bot: 2, 10, 30 and 1 s; human: 120 s (c2) and 0 s (c4); resolution: 600 s and 1800 s.
    assert analytics.response_times(ids, PERIOD) == [
        {"measure": "Bot first response", "count": 4, "p50": 6.0, "p95": 27.0},
        {"measure": "Human first response", "count": 2, "p50": 60.0, "p95": 114.0},
        {"measure": "Resolution", "count": 2, "p50": 1200.0, "p95": 1740.0},
    ]
    unanswered = analytics.unanswered(ids, PERIOD)
    conversations = seeded["acme"]["conversations"]
    assert unanswered["total"] == 2
    assert [(r["question"], r["reason"], r["conversation_id"], r["channel"]) for r in unanswered["rows"]] == [
        ("What is the warranty on bikes?", "answer cites no passage", str(conversations[2].pk), "Acme WhatsApp"),
        ("Do you ship to Mars?", "retrieval found nothing", str(conversations[1].pk), "Acme site"),
    ]
    assert analytics.top_documents(ids, PERIOD) == [
        {"document_id": DOC_X, "title": "Store guide", "replies": 2},
        {"document_id": DOC_Y, "title": "Holidays", "replies": 1},
    ]
    assert analytics.usage_per_day(days, PERIOD) == [
        {"day": DAY0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": Decimal(0)},
        {"day": DAY1, "prompt_tokens": 350, "completion_tokens": 60, "cost_usd": Decimal("0.0035")},
        {"day": DAY2, "prompt_tokens": 80, "completion_tokens": 15, "cost_usd": Decimal("0.0008")},
    ]


def test_all_tenants_add_up(tenant, other_tenant, seeded, mode):
    ids = [tenant.pk, other_tenant.pk]
    assert analytics.conversations_per_day(ids, PERIOD)[1] == {"day": DAY1, "new": 3, "resolved": 2, "handoffs": 2}
    assert analytics.unanswered(ids, PERIOD)["total"] == 5
    assert analytics.handoff_rate(analytics.conversations_per_day(ids, PERIOD))["rate"] == 0.6


def staff_client(client: Any, tenant: Tenant, role: str = "owner") -> Any:
    user, _ = services.staff_user_create(
        tenant=tenant, username=f"{role}-{tenant.slug}", role=role, password="pw-123456789"
    )
    client.force_login(user)
    return client


def page_url() -> str:
    return reverse("admin:conversations_conversation_analytics")


def csv_rows(response: Any) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.mark.parametrize("role", ["owner", "agent"])
def test_tenant_staff_see_their_figures_and_never_another_tenants(client, tenant, other_tenant, seeded, role):
    staff_client(client, tenant, role)
    response = client.get(page_url(), QUERY)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="total-messages">14<' in html
    assert 'id="total-new">4<' in html
    assert 'id="handoff-rate">50.0 %<' in html
    assert 'id="total-unanswered">2<' in html
    assert "messagelist" not in html  # the tables are not shown as flash messages
    assert "What is the warranty on bikes?" in html
    assert reverse("admin:conversations_conversation_change", args=[seeded["acme"]["conversations"][1].pk]) in html
    for foreign in ("Globex", DOC_Z, str(seeded["globex"]["conversation"].pk), "7777777"):
        assert foreign not in html

    # Asking for the other tenant by id is refused, on the page and for a CSV.
    assert client.get(page_url(), {**QUERY, "tenant": str(other_tenant.pk)}).status_code == 403
    assert client.get(page_url(), {**QUERY, "tenant": str(other_tenant.pk), "export": "messages"}).status_code == 403

    for table in ("messages", "conversations", "response_times", "unanswered", "documents", "usage"):
        body = client.get(page_url(), {**QUERY, "export": table}).content.decode()
        assert "Globex" not in body and DOC_Z not in body and "7777777" not in body, table


def test_csv_exports_have_the_tables_figures(client, tenant, seeded):
    staff_client(client, tenant)
    get = lambda table: csv_rows(client.get(page_url(), {**QUERY, "export": table}))  # noqa: E731
    assert get("messages") == [
        ["day", "channel", "messages"],
        ["2026-03-02", "Acme WhatsApp (whatsapp)", "4"],
        ["2026-03-02", "Acme site (webchat)", "5"],
        ["2026-03-03", "Acme WhatsApp (whatsapp)", "2"],
        ["2026-03-03", "Acme site (webchat)", "3"],
    ]
    assert get("conversations") == [
        ["day", "new", "resolved", "handoffs"],
        ["2026-03-01", "0", "0", "0"],
        ["2026-03-02", "2", "1", "1"],
        ["2026-03-03", "2", "1", "1"],
    ]
    assert get("response_times") == [
        ["measure", "count", "p50_seconds", "p95_seconds"],
        ["Bot first response", "4", "6.0", "27.0"],
        ["Human first response", "2", "60.0", "114.0"],
        ["Resolution", "2", "1200.0", "1740.0"],
    ]
    c2, c3 = seeded["acme"]["conversations"][1:3]
    assert get("unanswered") == [
        ["at", "channel", "question", "reason", "conversation_id"],
        ["2026-03-03T09:00:30+00:00", "Acme WhatsApp", "What is the warranty on bikes?", "answer cites no passage", str(c3.pk)],
        ["2026-03-02T11:00:10+00:00", "Acme site", "Do you ship to Mars?", "retrieval found nothing", str(c2.pk)],
    ]  # fmt: skip
    assert get("documents") == [
        ["document_id", "title", "citing_replies"],
        [DOC_X, "Store guide", "2"],
        [DOC_Y, "Holidays", "1"],
    ]
    assert get("usage") == [
        ["day", "prompt_tokens", "completion_tokens", "cost_usd"],
        ["2026-03-01", "0", "0", "0"],
        ["2026-03-02", "350", "60", "0.003500"],
        ["2026-03-03", "80", "15", "0.000800"],
    ]


def test_superuser_picks_a_tenant_or_all(client, tenant, other_tenant, seeded):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123456")
    client.force_login(user)
    html = client.get(page_url(), QUERY).content.decode()
    assert 'id="total-messages">22<' in html and "Globex WhatsApp" in html
    html = client.get(page_url(), {**QUERY, "tenant": str(other_tenant.pk)}).content.decode()
    assert 'id="total-messages">8<' in html and "Acme" not in html.split('id="analytics-range"')[1].split("</form>")[1]
    assert client.get(page_url(), {**QUERY, "tenant": str(uuid.uuid4())}).status_code == 403


def test_a_bad_range_is_a_form_error_and_the_index_links_the_page(client, tenant, seeded):
    staff_client(client, tenant)
    response = client.get(page_url(), {"start": "2026-03-03", "end": "2026-03-01"})
    assert response.status_code == 400 and "The end date is before the start date." in response.content.decode()
    assert client.get(page_url(), {**QUERY, "export": "nope"}).status_code == 404
    assert page_url() in client.get(reverse("admin:index")).content.decode()


def test_anonymous_users_are_sent_to_the_login(client):
    response = client.get(page_url())
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_staff_user_without_a_tenant_is_refused(client, db):
    user = get_user_model().objects.create_user("lonely", password="pw-123456789", is_staff=True)
    client.force_login(user)
    assert client.get(page_url()).status_code == 403


def test_a_real_turn_that_found_nothing_is_an_unanswered_question(live_worker, whatsapp, graph, tenant):
    from django.utils import timezone

    from tests.conftest import wait_until
    from tests.conversations.conftest import deliver

    deliver(whatsapp, text="Do you repair tandem bicycles?")
    reply = wait_until(lambda: Message.objects.filter(sender=ASSISTANT, status=Message.Status.SENT).first())
    assert reply.payload["retrieved"] == 0  # retrieval ran (no documents) and found nothing
    today = timezone.localdate()
    found = analytics.unanswered([tenant.pk], DateRange(today, today))
    assert [(r["question"], r["reason"]) for r in found["rows"]] == [
        ("Do you repair tandem bicycles?", "retrieval found nothing")
    ]


def test_a_first_answer_that_comes_after_the_day_was_rolled_up_counts(tenant, seeded):
    s = Seed(tenant)
    channel = s.channels["x"] = s.channel("Acme late", Channel.Type.WEBCHAT)
    late = s.conversation(channel, at(DAY2, "23:50:00"))
    s.message(late, USER, at(DAY2, "23:50:00"), "Anyone?")
    s.moved(late, at(DAY2, "23:51:00"), "bot", "handoff_requested")
    before = {r["measure"]: r["count"] for r in analytics.response_times([tenant.pk], PERIOD)}  # days rolled up
    assert before == {"Bot first response": 4, "Human first response": 2, "Resolution": 2}
    assert AnalyticsDay.objects.get(tenant=tenant, day=DAY2).pending == [
        [str(late.pk), at(DAY2, "23:50:00").isoformat(), "bot"],
        [str(late.pk), at(DAY2, "23:51:00").isoformat(), "human"],
    ]

    s.message(late, AGENT, at(DAY2, "23:51:00") + dt.timedelta(hours=9), "Good morning")  # the next day
    times = analytics.response_times([tenant.pk], PERIOD)
    assert times[1] == {
        "measure": "Human first response",
        "count": 3,
        "p50": 120.0,
        "p95": 29172.0,
    }  # 0, 120 and 32,400 s
    assert times[0]["count"] == 4  # still no assistant reply: not a bot response


def test_the_hourly_task_rolls_up_closed_days_before_anyone_asks(tenant, other_tenant, seeded, monkeypatch):
    from conversations.models import AnalyticsDay
    from conversations.tasks import roll_up_analytics

    monkeypatch.setattr(analytics, "last_closed_day", lambda now=None: DAY2)

    assert roll_up_analytics(days=3) == 2  # the task body, as beat runs it

    rows = AnalyticsDay.objects.filter(tenant=tenant).order_by("day").values_list("day", "new", "handoffs")
    assert list(rows) == [(DAY0, 0, 0), (DAY1, 2, 1), (DAY2, 2, 1)]
    assert AnalyticsDay.objects.filter(tenant=other_tenant, day=DAY1).values_list("new", flat=True).get() == 1
