"""The admin analytics page's server time for a tenant with 1,000,000 messages over 90 days.

Seeds (once, in the kept database ``bench_analytics``; ``--rebuild`` to redo) a tenant with
``--messages`` transcript rows over 90 days on three channels, written with COPY: conversations of
10 messages (user / assistant turns; a tenth of them handed to a human, with the notice and an agent's
reply: 11 rows), replies with tokens, cost and cited sources (a fifth cite nothing: retrieval found nothing or
the answer cites no passage), the state machine's ``conversation.updated`` events (handoffs,
resolutions) and, as production has, a ``message.received`` / ``message.sent`` event per message.
A second tenant with ``--other-messages`` rows shares the tables.

Then requests the page as the tenant's owner (in-process Django test client: the view, its SQL, the
template; no network): once with no rollups (the request that rolls up the 89 closed days, printed
apart), then ``--requests`` times for the default range (the last 30 days) and for the whole 90 days
(closed days from the rollups, today live), and prints p50/p95 of each. Target: p95 <= 300 ms.

    python -m bench.analytics [--messages 1000000] [--requests 30] [--rebuild]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import numpy as np

DAYS = 90
PER_CONVERSATION = 10
TENANT_NAME = "Bench Analytics"
OTHER_NAME = "Bench Analytics Other"


def seed(tenant: Any, messages: int, rng: Any, end: dt.datetime) -> None:
    """``messages`` rows for ``tenant`` ending at ``end``, with conversations, contacts and events."""
    from django.db import connection

    from channels_app.models import Channel
    from conversations.models import Contact, Conversation, Message
    from events.models import Event

    channels = [
        Channel.objects.create(tenant=tenant, type=kind, name=f"{tenant.name} {kind}", external_id=uuid.uuid4().hex)
        for kind in (Channel.Type.WHATSAPP, Channel.Type.MESSENGER, Channel.Type.WEBCHAT)
    ]
    documents = [(str(uuid.uuid4()), f"Document {n}") for n in range(60)]
    doc_p = 1 / np.arange(1, len(documents) + 1)
    doc_p /= doc_p.sum()
    count = messages // PER_CONVERSATION
    span = DAYS * 86400
    starts = np.sort(rng.uniform(0, span - 3600, size=count))
    start_of = end - dt.timedelta(seconds=span)
    channel_of = rng.integers(0, len(channels), size=count)
    handed = rng.random(count) < 0.10
    resolved = rng.random(count) < 0.60
    contacts, conversations, rows, events = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
    tenant_id = str(tenant.pk)

    def ts(seconds: float) -> str:
        return (start_of + dt.timedelta(seconds=float(seconds))).isoformat()

    def message(conversation_id: Any, channel: Any, direction: str, sender: str, content: str, at: float,
                *reply: Any) -> None:  # fmt: skip
        """A transcript row ``at`` seconds into the span; ``reply``: an answer's payload, tokens and cost."""
        rows.write(_message(tenant_id, conversation_id, channel.pk, direction, sender, content, ts(at), *reply))

    for n in range(count):
        contact_id, conversation_id = uuid.uuid4(), uuid.uuid4()
        channel = channels[channel_of[n]]
        t = starts[n]
        created = ts(t)
        contacts.write(
            _row(Contact, {"id": contact_id, "tenant_id": tenant_id, "channel_id": channel.pk,
                           "external_id": f"c{n}-{tenant_id[:8]}", "profile_name": "", "language": "",
                           "metadata": "{}", "created_at": created, "last_seen_at": "\\N"})
        )  # fmt: skip
        state = "resolved" if resolved[n] else ("agent" if handed[n] else "bot")
        turns = PER_CONVERSATION // 2
        last = t
        for turn in range(turns):
            notice = handed[n] and turn == turns - 1
            user_at = last + (0 if turn == 0 else rng.uniform(20, 300))
            reply_at = user_at + rng.uniform(0.5, 6)
            message(conversation_id, channel, "in", "user", f"question {n}.{turn}", user_at)
            if notice:
                events.write(
                    _event(tenant_id, "conversation.updated", conversation_id, "bot", "handoff_requested", ts(user_at))
                )
                events.write(
                    _event(
                        tenant_id, "human_handoff.requested", conversation_id, "bot", "handoff_requested", ts(user_at)
                    )
                )
                payload = {"sources": [], "handoff": True, "fallback": False, "retrieved": 0}
                message(conversation_id, channel, "out", "assistant", "A person will answer", reply_at, payload)
                agent_at = reply_at + rng.uniform(30, 1800)
                events.write(
                    _event(
                        tenant_id, "conversation.updated", conversation_id, "handoff_requested", "agent", ts(agent_at)
                    )
                )
                message(conversation_id, channel, "out", "agent", "Hello", agent_at)
                last = agent_at
                break
            draw = rng.random()
            if draw < 0.1:
                sources, retrieved = [], 0
            elif draw < 0.2:
                sources, retrieved = [], 3
            else:
                picked = rng.choice(len(documents), size=int(rng.integers(1, 4)), replace=False, p=doc_p)
                sources = [
                    {"marker": i + 1, "document_id": documents[d][0], "title": documents[d][1]}
                    for i, d in enumerate(picked)
                ]
                retrieved = 4
            payload = {
                "sources": sources,
                "handoff": False,
                "fallback": False,
                "retrieved": retrieved,
                "in_reply_to": [],
            }
            prompt, completion = int(rng.integers(400, 2000)), int(rng.integers(20, 300))
            cost = round(prompt * 0.15e-6 + completion * 0.6e-6, 6)
            message(conversation_id, channel, "out", "assistant", "answer", reply_at, payload, prompt, completion, cost)
            last = reply_at
        if resolved[n]:
            previous = "agent" if handed[n] else "bot"
            events.write(
                _event(
                    tenant_id,
                    "conversation.updated",
                    conversation_id,
                    previous,
                    "resolved",
                    ts(last + rng.uniform(60, 7200)),
                )
            )
        conversations.write(
            _row(Conversation, {"id": conversation_id, "tenant_id": tenant_id, "channel_id": channel.pk,
                                "contact_id": contact_id, "state": state, "context_start_message_id": "\\N",
                                "last_activity_at": ts(last), "created_at": created, "prompt_tokens": 0,
                                "completion_tokens": 0, "cost_usd": 0,
                                "handoff_reason": "keyword: human" if handed[n] else ""})
        )  # fmt: skip
    with connection.cursor() as cursor:
        for model, buffer in ((Contact, contacts), (Conversation, conversations)):
            columns = ", ".join(f.column for f in model._meta.concrete_fields)
            with cursor.copy(f"COPY {model._meta.db_table} ({columns}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())
        columns = ", ".join(f.column for f in Message._meta.concrete_fields if f.column != "id")
        with cursor.copy(f"COPY {Message._meta.db_table} ({columns}) FROM STDIN") as copy:
            copy.write(rows.getvalue())
        with cursor.copy(
            f"COPY {Event._meta.db_table} (tenant_id, event_id, type, payload, correlation_id, created_at,"
            " dispatch_pending, publish_pending) FROM STDIN"
        ) as copy:
            copy.write(events.getvalue())
        # What production also has: an event per message (and one per new conversation).
        cursor.execute(
            f"""INSERT INTO {Event._meta.db_table} (tenant_id, event_id, type, payload, correlation_id, created_at,
                    dispatch_pending, publish_pending)
                SELECT tenant_id, gen_random_uuid(),
                       CASE WHEN sender = 'user' THEN 'message.received' ELSE 'message.sent' END,
                       jsonb_build_object('conversation_id', conversation_id, 'message_id', id), '', created_at,
                       false, false
                FROM {Message._meta.db_table} WHERE tenant_id = %s
                UNION ALL
                SELECT tenant_id, gen_random_uuid(), 'conversation.created',
                       jsonb_build_object('conversation_id', id), '', created_at, false, false
                FROM {Conversation._meta.db_table} WHERE tenant_id = %s""",
            [tenant.pk, tenant.pk],
        )


def _message(
    tenant_id: str, conversation_id: Any, channel_id: Any, direction: str, sender: str, content: str, at: str,
    payload: dict[str, Any] | None = None, prompt: int = 0, completion: int = 0, cost: float = 0,
) -> str:  # fmt: skip
    from conversations.models import Message

    values = {
        "tenant_id": tenant_id, "conversation_id": conversation_id, "channel_id": channel_id, "direction": direction,
        "sender": sender, "kind": "text", "content": content, "payload": json.dumps(payload or {}),
        "platform_message_id": "", "status": "processed" if sender == "user" else "sent", "error": "{}",
        "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost, "timings": "{}",
        "agent_user_id": "\\N", "created_at": at, "updated_at": at,
    }  # fmt: skip
    return "\t".join(str(values[f.column]) for f in Message._meta.concrete_fields if f.column != "id") + "\n"


def _row(model: Any, values: dict[str, Any]) -> str:
    """A COPY text line of ``model``'s columns in their order; a column not in ``values`` takes its
    field's default (NULL where it may be null), so that a field added later needs no change here."""
    return "\t".join(_copy_text(f, values) for f in model._meta.concrete_fields) + "\n"


def _copy_text(field: Any, values: dict[str, Any]) -> str:
    if field.column in values:
        return str(values[field.column])
    if field.null:
        return "\\N"
    default = field.get_default()
    if isinstance(default, list):
        return "{" + ",".join(default) + "}"
    return json.dumps(default) if isinstance(default, dict) else str(default)


def _event(tenant_id: str, kind: str, conversation_id: Any, previous: str, state: str, at: str) -> str:
    payload = json.dumps({"conversation_id": str(conversation_id), "previous_state": previous, "state": state})
    return f"{tenant_id}\t{uuid.uuid4()}\t{kind}\t{payload}\t\t{at}\tf\tf\n"


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--other-messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)

    from bench._knowledge_setup import setup

    connection = setup("bench_analytics")
    from django.test import Client
    from django.urls import reverse

    from conversations.models import AnalyticsChannelDay, AnalyticsDay, AnalyticsDocumentDay, Conversation, Message
    from tenants import services
    from tenants.models import Tenant

    tenant = Tenant.objects.filter(name=TENANT_NAME).first()
    have = Conversation.objects.filter(tenant=tenant).count() if tenant else 0
    if args.rebuild or have != args.messages // PER_CONVERSATION:
        started = time.monotonic()
        Tenant.objects.filter(name__in=[TENANT_NAME, OTHER_NAME]).delete()
        tenant = services.tenant_create(name=TENANT_NAME)
        other = services.tenant_create(name=OTHER_NAME)
        end = dt.datetime.now(dt.UTC).replace(microsecond=0)
        print(f"seeding {args.messages:,} messages over {DAYS} days (+{args.other_messages:,} of another tenant) ...")
        seed(tenant, args.messages, np.random.default_rng(1), end)
        seed(other, args.other_messages, np.random.default_rng(2), end)
        with connection.cursor() as cursor:
            for table in ("conversations_message", "conversations_conversation", "events_event"):
                cursor.execute(f"VACUUM ANALYZE {table}")
        print(f"seeded in {time.monotonic() - started:.0f} s")
    assert tenant is not None
    total = Message.objects.filter(tenant=tenant).count()
    last = Message.objects.filter(tenant=tenant).order_by("-created_at").values_list("created_at", flat=True)[0]
    end_day = last.date()
    user, _ = services.staff_user_create(tenant=tenant, username="bench-analytics-owner", role="owner")
    client = Client()
    client.force_login(user)
    url = reverse("admin:conversations_conversation_analytics")
    print(f"tenant {tenant.name}: {total:,} messages, last on {end_day}; load average {os.getloadavg()[0]:.1f}")
    # The first request of a range rolls up its closed days (once; then only the open day is live).
    for model in (AnalyticsDay, AnalyticsChannelDay, AnalyticsDocumentDay):
        model.objects.filter(tenant=tenant).delete()
    query = {"start": (end_day - dt.timedelta(days=DAYS - 1)).isoformat(), "end": end_day.isoformat()}
    started = time.perf_counter()
    assert client.get(url, query).status_code == 200
    cold = (time.perf_counter() - started) * 1000
    print(f"first request of the 90 days, rolling up {DAYS - 1} closed days: {cold:.0f} ms (once)")
    failed = False
    for label, days in (("default range (30 days)", 30), ("whole 90 days", DAYS)):
        query = {"start": (end_day - dt.timedelta(days=days - 1)).isoformat(), "end": end_day.isoformat()}
        times = []
        for n in range(args.requests + 2):
            started = time.perf_counter()
            response = client.get(url, query)
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.status_code
            if n >= 2:  # two warm-up requests (first connection, template compilation)
                times.append(elapsed)
        p50, p95 = statistics.median(times), percentile(times, 95)
        failed |= p95 > 300
        print(
            f"analytics page, {label}: p50 {p50:.0f} ms, p95 {p95:.0f} ms over {len(times)} requests (target p95 <= 300 ms)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
