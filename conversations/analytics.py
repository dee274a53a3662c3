"""Analytics selectors: plain functions of (tenant ids, date range) returning rows, computed in SQL.

A day is rolled up once it is over (``GRACE`` after its end): its counts per channel, per document and
per day, and its response and resolution times as arrays, go to AnalyticsChannelDay,
AnalyticsDocumentDay and AnalyticsDay (the first request for a range fills the days it lacks, with the
same grouped SQL the open days use). A range is then the rollups of its closed days plus the live
figures of the open ones (today): sums and ``percentile_cont`` in PostgreSQL over a few hundred rows,
whatever the number of messages. Python only sees aggregated rows (a row per day and channel, per
document, the newest ``UNANSWERED_LIMIT`` unanswered questions).

Definitions (days are calendar days in ``settings.TIME_ZONE``; a range's ``end`` is included):

- messages: the transcript's user, assistant and agent messages (tool calls and system rows left out);
- new conversations: by ``Conversation.created_at``; resolved: ``conversation.updated`` events that
  moved a conversation to ``resolved``;
- handoffs: ``conversation.updated`` events that took a conversation from the bot to a human
  (``handoff_requested``: a keyword, the model's request_human tool, the API; or ``agent``: an agent
  replied). Handoff rate: handoffs in the range over the conversations created in the range;
- bot first response: a conversation's first user message to its first assistant message, on the day
  the conversation was created; human first response: a handoff to the first agent message after it,
  on the handoff's day; resolution time: creation to resolution, on the resolution's day. A
  conversation still waiting when its day is rolled up is looked up again when a range includes it;
- unanswered: assistant replies (not the handoff notice, not the fallback) where retrieval ran and
  found nothing (``payload.retrieved = 0``), or found passages the answer cites none of (the prompt
  tells the model to say plainly that the context has no answer, and then it cites nothing);
- most cited documents: how many replies cite each document (``payload.sources``);
- tokens and cost: the sums recorded on the replies.

Limits: a rolled-up day keeps its figures when conversations are deleted later, and days are those
of the TIME_ZONE the rollup was made in. The first request of a long range for a large tenant pays
for the rollup of its days once (bench/analytics: ~6-10 s for 89 days of 1,000,000 messages).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from channels_app.models import Channel
from conversations.models import (
    AnalyticsChannelDay,
    AnalyticsDay,
    AnalyticsDocumentDay,
    Conversation,
    Message,
)
from events.models import Event
from events.types import EventType

# Tenants' ids, as primary keys or as their text (a tenant picked in the admin's filter).
TenantIds = Sequence[UUID | str]

UNANSWERED_LIMIT = 100
TOP_DOCUMENTS_LIMIT = 20
GRACE = dt.timedelta(minutes=10)  # a day is rolled up this long after it ended (late replies, commits)
COUNTED_SENDERS = [Message.Sender.USER.value, Message.Sender.ASSISTANT.value, Message.Sender.AGENT.value]
HUMAN_STATES = [Conversation.State.HANDOFF_REQUESTED.value, Conversation.State.AGENT.value]
UPDATED = EventType.CONVERSATION_UPDATED.value

MESSAGES = Message._meta.db_table
CONVERSATIONS = Conversation._meta.db_table
EVENTS = Event._meta.db_table
CHANNELS = Channel._meta.db_table
DAYS = AnalyticsDay._meta.db_table
CHANNEL_DAYS = AnalyticsChannelDay._meta.db_table
DOCUMENT_DAYS = AnalyticsDocumentDay._meta.db_table


@dataclass(frozen=True)
class DateRange:
    """Calendar days ``start`` to ``end``, both included."""

    start: dt.date
    end: dt.date

    @property
    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """[first instant, instant after the last day) in the site's time zone."""
        zone = ZoneInfo(settings.TIME_ZONE)
        start = dt.datetime.combine(self.start, dt.time.min, tzinfo=zone)
        end = dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
        return start, end


def _rows(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _ids(tenant_ids: TenantIds) -> list[str]:
    return [str(t) for t in tenant_ids]


def _day(column: str) -> str:
    """The calendar day of a timestamptz column in the site's time zone (a ``date``)."""
    return f"(({column}) AT TIME ZONE %s)::date"


# --- closed and open days ----------------------------------------------------------------------------


def last_closed_day(now: dt.datetime | None = None) -> dt.date:
    """The latest day that ended at least ``GRACE`` ago."""
    local = timezone.localtime(now or timezone.now(), ZoneInfo(settings.TIME_ZONE))
    return (local - GRACE).date() - dt.timedelta(days=1)


def split(period: DateRange) -> tuple[DateRange | None, DateRange | None]:
    """(the closed days of ``period``: rolled up; its open days: computed live), either may be None."""
    closed_end = min(period.end, last_closed_day())
    closed = DateRange(period.start, closed_end) if closed_end >= period.start else None
    open_start = max(period.start, closed_end + dt.timedelta(days=1))
    live = DateRange(open_start, period.end) if open_start <= period.end else None
    return closed, live


def ensure_rollups(tenant_ids: TenantIds, period: DateRange) -> DateRange | None:
    """Roll up the closed days of ``period`` the tenants lack; the closed part of the range."""
    closed, _ = split(period)
    if closed is None:
        return None
    expected = len(closed.days)
    counted = (
        AnalyticsDay.objects.filter(tenant_id__in=tenant_ids, day__range=(closed.start, closed.end))
        .values("tenant_id")
        .annotate(n=Count("id"))
        .values_list("tenant_id", "n")
    )
    have = {str(tenant_id): n for tenant_id, n in counted}
    for tenant_id in tenant_ids:
        if have.get(str(tenant_id), 0) < expected:
            days = set(
                AnalyticsDay.objects.filter(tenant_id=tenant_id, day__range=(closed.start, closed.end)).values_list(
                    "day", flat=True
                )
            )
            missing = [day for day in closed.days if day not in days]
            roll_up(UUID(str(tenant_id)), DateRange(missing[0], missing[-1]), set(missing))
    return closed


def roll_up(tenant_id: UUID, period: DateRange, only: set[dt.date]) -> None:
    """Compute the days ``only`` (within ``period``) of one tenant and store them (a day another
    request stored meanwhile is kept)."""
    ids = [tenant_id]
    channel_rows = [r for r in _message_days(ids, period) if r[0] in only]
    conversations = _conversation_days(ids, period)
    unanswered = _unanswered_days(ids, period)
    documents = [r for r in _document_days(ids, period) if r[0] in only]
    bot, human, resolution = _bot_days(ids, period), _human_days(ids, period), _resolution_days(ids, period)
    days = []
    for day in sorted(only):
        new, resolved, handoffs = conversations.get(day, (0, 0, 0))
        bot_values, bot_pending = bot.get(day, ([], []))
        human_values, human_pending = human.get(day, ([], []))
        pending = [[str(c), since.isoformat(), "bot"] for c, since in bot_pending]
        pending += [[str(c), since.isoformat(), "human"] for c, since in human_pending]
        days.append(
            AnalyticsDay(
                tenant_id=tenant_id, day=day, new=new, resolved=resolved, handoffs=handoffs,
                unanswered=unanswered.get(day, 0), bot_seconds=bot_values, human_seconds=human_values,
                resolution_seconds=resolution.get(day, []), pending=pending,
            )
        )  # fmt: skip
    with transaction.atomic():
        AnalyticsChannelDay.objects.bulk_create(
            [
                AnalyticsChannelDay(
                    tenant_id=tenant_id, day=day, channel_id=channel, messages=messages, prompt_tokens=prompt,
                    completion_tokens=completion, cost_usd=cost,
                )
                for day, channel, messages, prompt, completion, cost in channel_rows
            ],
            ignore_conflicts=True,
        )  # fmt: skip
        AnalyticsDocumentDay.objects.bulk_create(
            [
                AnalyticsDocumentDay(tenant_id=tenant_id, day=day, document_id=doc, title=title[:300], replies=n)
                for day, doc, title, n in documents
            ],
            ignore_conflicts=True,
        )
        AnalyticsDay.objects.bulk_create(days, ignore_conflicts=True)


# --- the grouped SQL, per day (a closed day's rollup, or the open days live) ------------------------


def _message_days(tenant_ids: TenantIds, period: DateRange) -> list[tuple[Any, ...]]:
    """(day, channel id, messages, prompt tokens, completion tokens, cost): the covering index
    ``msg_tenant_created`` alone."""
    start, end = period.bounds()
    sql = f"""
        SELECT {_day("m.created_at")} AS day, m.channel_id,
               count(*) FILTER (WHERE m.sender = ANY(%s)), coalesce(sum(m.prompt_tokens), 0),
               coalesce(sum(m.completion_tokens), 0), coalesce(sum(m.cost_usd), 0)
        FROM {MESSAGES} m
        WHERE m.tenant_id = ANY(%s::uuid[]) AND m.created_at >= %s AND m.created_at < %s
        GROUP BY 1, 2
    """  # noqa: S608 (our tables)
    return _rows(sql, [settings.TIME_ZONE, COUNTED_SENDERS, _ids(tenant_ids), start, end])


def _conversation_days(tenant_ids: TenantIds, period: DateRange) -> dict[dt.date, tuple[int, int, int]]:
    """{day: (new conversations, resolutions, handoffs)}."""
    start, end = period.bounds()
    tenants = _ids(tenant_ids)
    sql = f"""
        SELECT day, sum(new)::int, sum(resolved)::int, sum(handoffs)::int FROM (
            SELECT {_day("c.created_at")} AS day, count(*) AS new, 0 AS resolved, 0 AS handoffs
            FROM {CONVERSATIONS} c
            WHERE c.tenant_id = ANY(%s::uuid[]) AND c.created_at >= %s AND c.created_at < %s
            GROUP BY 1
            UNION ALL
            SELECT {_day("e.created_at")}, 0,
                   count(*) FILTER (WHERE e.payload->>'state' = 'resolved'),
                   count(*) FILTER (WHERE e.payload->>'previous_state' = 'bot' AND e.payload->>'state' = ANY(%s))
            FROM {EVENTS} e
            WHERE e.tenant_id = ANY(%s::uuid[]) AND e.created_at >= %s AND e.created_at < %s AND e.type = %s
            GROUP BY 1
        ) u GROUP BY day
    """  # noqa: S608 (our tables)
    params = [settings.TIME_ZONE, tenants, start, end, settings.TIME_ZONE, HUMAN_STATES, tenants, start, end, UPDATED]
    return {day: (new, resolved, handoffs) for day, new, resolved, handoffs in _rows(sql, params)}


# The replies that cite nothing: the partial index ``msg_tenant_uncited`` holds exactly these.
UNCITED = "m.sender = 'assistant' AND (m.payload -> 'sources') = '[]'::jsonb"
UNANSWERED = (
    f"{UNCITED} AND (m.payload ->> 'retrieved') IS NOT NULL"
    " AND NOT coalesce((m.payload ->> 'handoff')::boolean, false)"
    " AND NOT coalesce((m.payload ->> 'fallback')::boolean, false)"
)


def _unanswered_days(tenant_ids: TenantIds, period: DateRange) -> dict[dt.date, int]:
    start, end = period.bounds()
    sql = f"""
        SELECT {_day("m.created_at")}, count(*) FROM {MESSAGES} m
        WHERE m.tenant_id = ANY(%s::uuid[]) AND m.created_at >= %s AND m.created_at < %s AND {UNANSWERED}
        GROUP BY 1
    """  # noqa: S608 (our tables)
    return dict(_rows(sql, [settings.TIME_ZONE, _ids(tenant_ids), start, end]))  # type: ignore[arg-type]


def _document_days(tenant_ids: TenantIds, period: DateRange) -> list[tuple[Any, ...]]:
    """(day, document id, title as cited, replies citing it)."""
    start, end = period.bounds()
    sql = f"""
        SELECT {_day("m.created_at")}, s.document_id, max(s.title), count(*)
        FROM {MESSAGES} m
        CROSS JOIN LATERAL (
            -- Each document once per reply (a reply may cite several passages of one document).
            SELECT x ->> 'document_id' AS document_id, max(coalesce(x ->> 'title', '')) AS title
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(m.payload -> 'sources') = 'array'
                                           THEN m.payload -> 'sources' ELSE '[]' END) x
            WHERE x ->> 'document_id' IS NOT NULL
            GROUP BY 1
        ) s
        WHERE m.tenant_id = ANY(%s::uuid[]) AND m.created_at >= %s AND m.created_at < %s
          AND m.sender = 'assistant' AND (m.payload -> 'sources') <> '[]'::jsonb
        GROUP BY 1, 2
    """  # noqa: S608 (our tables)
    return _rows(sql, [settings.TIME_ZONE, _ids(tenant_ids), start, end])


Pending = list[tuple[Any, dt.datetime]]


def _bot_days(tenant_ids: TenantIds, period: DateRange) -> dict[dt.date, tuple[list[float], Pending]]:
    """{conversation's day: (seconds from its first user message to the first assistant message,
    conversations not answered within the range: (id, first user message's time))}."""
    start, end = period.bounds()
    sql = f"""
        SELECT {_day("f.created_at")},
               coalesce(array_agg(extract(epoch FROM f.assistant - f.user_at)::float8)
                        FILTER (WHERE f.assistant >= f.user_at), '{{}}'),
               coalesce(array_agg(f.conversation_id) FILTER (WHERE f.assistant IS NULL), '{{}}'),
               coalesce(array_agg(f.user_at) FILTER (WHERE f.assistant IS NULL), '{{}}')
        FROM (
            SELECT m.conversation_id, min(c.created_at) AS created_at,
                   min(m.created_at) FILTER (WHERE m.sender = 'user') AS user_at,
                   min(m.created_at) FILTER (WHERE m.sender = 'assistant') AS assistant
            FROM {MESSAGES} m JOIN {CONVERSATIONS} c ON c.id = m.conversation_id
            WHERE m.tenant_id = ANY(%s::uuid[]) AND m.created_at >= %s AND m.created_at < %s
              AND m.sender IN ('user', 'assistant')
              AND c.created_at >= %s AND c.created_at < %s
            GROUP BY m.conversation_id
        ) f
        WHERE f.user_at IS NOT NULL
        GROUP BY 1
    """  # noqa: S608 (our tables)
    rows = _rows(sql, [settings.TIME_ZONE, _ids(tenant_ids), start, end, start, end])
    return {day: (list(values), list(zip(ids, since, strict=True))) for day, values, ids, since in rows}


def _human_days(tenant_ids: TenantIds, period: DateRange) -> dict[dt.date, tuple[list[float], Pending]]:
    """{handoff's day: (seconds from the handoff to the first agent message after it, handoffs no agent
    answered yet: (conversation id, handoff time))}."""
    start, end = period.bounds()
    sql = f"""
        SELECT {_day("h.at")},
               coalesce(array_agg(extract(epoch FROM a.at - h.at)::float8) FILTER (WHERE a.at IS NOT NULL), '{{}}'),
               coalesce(array_agg(h.conversation_id) FILTER (WHERE a.at IS NULL), '{{}}'),
               coalesce(array_agg(h.at) FILTER (WHERE a.at IS NULL), '{{}}')
        FROM (
            SELECT (e.payload->>'conversation_id')::uuid AS conversation_id, e.tenant_id,
                   {_day("e.created_at")} AS day, min(e.created_at) AS at
            FROM {EVENTS} e
            WHERE e.tenant_id = ANY(%s::uuid[]) AND e.created_at >= %s AND e.created_at < %s AND e.type = %s
              AND e.payload->>'previous_state' = 'bot' AND e.payload->>'state' = ANY(%s)
            GROUP BY 1, 2, 3
        ) h
        CROSS JOIN LATERAL (
            SELECT min(m.created_at) AS at FROM {MESSAGES} m
            WHERE m.tenant_id = h.tenant_id AND m.conversation_id = h.conversation_id
              AND m.sender = 'agent' AND m.created_at >= h.at
        ) a
        GROUP BY 1
    """  # noqa: S608 (our tables)
    params = [settings.TIME_ZONE, settings.TIME_ZONE, _ids(tenant_ids), start, end, UPDATED, HUMAN_STATES]
    rows = _rows(sql, params)
    return {day: (list(values), list(zip(ids, since, strict=True))) for day, values, ids, since in rows}


def _resolution_days(tenant_ids: TenantIds, period: DateRange) -> dict[dt.date, list[float]]:
    """{resolution's day: seconds from each resolved conversation's creation to its resolution}."""
    start, end = period.bounds()
    tenants = _ids(tenant_ids)
    sql = f"""
        SELECT {_day("r.at")}, array_agg(extract(epoch FROM r.at - c.created_at)::float8)
        FROM (
            SELECT (e.payload->>'conversation_id')::uuid AS conversation_id, e.tenant_id,
                   {_day("e.created_at")} AS day, min(e.created_at) AS at
            FROM {EVENTS} e
            WHERE e.tenant_id = ANY(%s::uuid[]) AND e.created_at >= %s AND e.created_at < %s AND e.type = %s
              AND e.payload->>'state' = 'resolved'
            GROUP BY 1, 2, 3
        ) r JOIN {CONVERSATIONS} c ON c.id = r.conversation_id AND c.tenant_id = r.tenant_id
        GROUP BY 1
    """  # noqa: S608 (our tables)
    rows = _rows(sql, [settings.TIME_ZONE, settings.TIME_ZONE, tenants, start, end, UPDATED])
    return {day: list(values) for day, values in rows}


# --- the selectors: closed days from the rollups, open days live ------------------------------------
# Each rolls up the closed days it lacks first, unless ``ensure`` is False (a caller that asked
# ``ensure_rollups`` once for several selectors).


def _parts(tenant_ids: TenantIds, period: DateRange, ensure: bool) -> tuple[DateRange | None, DateRange | None]:
    if ensure:
        ensure_rollups(tenant_ids, period)
    return split(period)


def message_days(tenant_ids: TenantIds, period: DateRange, *, ensure: bool = True) -> list[dict[str, Any]]:
    """Per day and channel: messages, prompt and completion tokens, cost."""
    closed, live = _parts(tenant_ids, period, ensure)
    rows: list[tuple[Any, ...]] = []
    if closed is not None:
        rows += _rows(
            f"""SELECT day, channel_id, sum(messages), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)
                FROM {CHANNEL_DAYS} WHERE tenant_id = ANY(%s::uuid[]) AND day BETWEEN %s AND %s
                GROUP BY 1, 2""",  # noqa: S608 (our tables)
            [_ids(tenant_ids), closed.start, closed.end],
        )
    if live is not None:
        rows += _message_days(tenant_ids, live)
    channels = {c.pk: c for c in Channel.objects.filter(pk__in={r[1] for r in rows}).only("name", "type")}
    result = [
        {
            "day": day,
            "channel_id": str(channel_id),
            "channel": f"{channels[channel_id].name} ({channels[channel_id].type})",
            "messages": int(messages),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "cost_usd": Decimal(cost),
        }
        for day, channel_id, messages, prompt, completion, cost in rows
    ]
    return sorted(result, key=lambda r: (r["day"], r["channel"], r["channel_id"]))


def messages_per_day(days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``message_days`` as the messages table: day, channel, messages (rows without messages left out)."""
    return [{"day": r["day"], "channel": r["channel"], "messages": r["messages"]} for r in days if r["messages"]]


def usage_per_day(days: list[dict[str, Any]], period: DateRange) -> list[dict[str, Any]]:
    """``message_days`` summed over channels: every day of the range, tokens and cost."""
    totals = {
        day: {"day": day, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": Decimal(0)} for day in period.days
    }
    for row in days:
        total = totals[row["day"]]
        total["prompt_tokens"] += row["prompt_tokens"]
        total["completion_tokens"] += row["completion_tokens"]
        total["cost_usd"] += row["cost_usd"]
    return list(totals.values())


def conversations_per_day(tenant_ids: TenantIds, period: DateRange, *, ensure: bool = True) -> list[dict[str, Any]]:
    """Every day of the range: new conversations, resolutions, handoffs to a human."""
    closed, live = _parts(tenant_ids, period, ensure)
    found: dict[dt.date, tuple[int, int, int]] = {}
    if closed is not None:
        for day, new, resolved, handoffs in _rows(
            f"""SELECT day, sum(new)::int, sum(resolved)::int, sum(handoffs)::int FROM {DAYS}
                WHERE tenant_id = ANY(%s::uuid[]) AND day BETWEEN %s AND %s GROUP BY 1""",  # noqa: S608
            [_ids(tenant_ids), closed.start, closed.end],
        ):
            found[day] = (new, resolved, handoffs)
    if live is not None:
        found.update(_conversation_days(tenant_ids, live))
    return [
        {"day": day, "new": n, "resolved": r, "handoffs": h}
        for day in period.days
        for n, r, h in [found.get(day, (0, 0, 0))]
    ]


def handoff_rate(conversations: list[dict[str, Any]]) -> dict[str, Any]:
    """From ``conversations_per_day``: new conversations, handoffs, and handoffs per new conversation."""
    new = sum(r["new"] for r in conversations)
    handoffs = sum(r["handoffs"] for r in conversations)
    rate = round(handoffs / new, 4) if new else None
    return {
        "conversations": new,
        "handed_off": handoffs,
        "rate": rate,
        "percent": None if rate is None else round(rate * 100, 1),
    }


def _answered_since(pending: list[tuple[str, str, str]]) -> dict[str, list[float]]:
    """Pending first answers of rolled-up days (conversation, since, "bot" | "human"), looked up now:
    {kind: seconds} of those answered since."""
    if not pending:
        return {}
    sql = f"""
        SELECT p.kind, extract(epoch FROM a.at - p.since)::float8
        FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[]) AS p(conversation_id, since, kind)
        JOIN {CONVERSATIONS} c ON c.id = p.conversation_id
        CROSS JOIN LATERAL (
            SELECT min(m.created_at) AS at FROM {MESSAGES} m
            WHERE m.tenant_id = c.tenant_id AND m.conversation_id = p.conversation_id
              AND m.sender = CASE p.kind WHEN 'bot' THEN 'assistant' ELSE 'agent' END AND m.created_at >= p.since
        ) a
        WHERE a.at IS NOT NULL
    """  # noqa: S608 (our tables)
    found: dict[str, list[float]] = defaultdict(list)
    for kind, seconds in _rows(sql, [[p[0] for p in pending], [p[1] for p in pending], [p[2] for p in pending]]):
        found[kind].append(seconds)
    return found


def response_times(tenant_ids: TenantIds, period: DateRange, *, ensure: bool = True) -> list[dict[str, Any]]:
    """Rows (measure, count, p50 s, p95 s): bot first response, human first response, resolution."""
    closed, live = _parts(tenant_ids, period, ensure)
    extra: dict[str, list[float]] = defaultdict(list)
    if live is not None:
        for values, _ in _bot_days(tenant_ids, live).values():
            extra["bot"] += values
        for values, _ in _human_days(tenant_ids, live).values():
            extra["human"] += values
        for values in _resolution_days(tenant_ids, live).values():
            extra["resolution"] += values
    closed_params: list[Any] = [_ids(tenant_ids), closed.start, closed.end] if closed else [[], None, None]
    if closed is not None:
        pending = _rows(
            f"""SELECT p ->> 0, p ->> 1, p ->> 2 FROM {DAYS} d, jsonb_array_elements(d.pending) p
                WHERE d.tenant_id = ANY(%s::uuid[]) AND d.day BETWEEN %s AND %s AND d.pending <> '[]'""",  # noqa: S608
            closed_params,
        )
        for kind, values in _answered_since(pending).items():  # type: ignore[arg-type]
            extra[kind] += values
    parts = []
    params: list[Any] = []
    for column, kind in (("bot_seconds", "bot"), ("human_seconds", "human"), ("resolution_seconds", "resolution")):
        parts.append(
            f"""(SELECT count(v)::float8 || coalesce(percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY v),
                                                   ARRAY[NULL, NULL]::float8[])
                 FROM (SELECT unnest(d.{column}) AS v FROM {DAYS} d
                       WHERE d.tenant_id = ANY(%s::uuid[]) AND d.day BETWEEN %s AND %s
                       UNION ALL SELECT unnest(%s::float8[])) x)"""  # noqa: S608 (our tables and columns)
        )
        params += [*closed_params, extra[kind]]
    figures = _rows(f"SELECT {', '.join(parts)}", params)[0]
    return [
        {"measure": measure, "count": int(count), "p50": _seconds(p50), "p95": _seconds(p95)}
        for measure, (count, p50, p95) in zip(
            ("Bot first response", "Human first response", "Resolution"), figures, strict=True
        )
    ]


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def unanswered(
    tenant_ids: TenantIds, period: DateRange, limit: int = UNANSWERED_LIMIT, *, ensure: bool = True
) -> dict[str, Any]:
    """The count of unanswered questions in the range and the newest ``limit`` of them: when, the
    question (the user messages the reply answered), why, and the conversation."""
    closed, live = _parts(tenant_ids, period, ensure)
    total = 0
    if closed is not None:
        total += _rows(
            f"SELECT coalesce(sum(unanswered), 0) FROM {DAYS} "  # noqa: S608
            "WHERE tenant_id = ANY(%s::uuid[]) AND day BETWEEN %s AND %s",
            [_ids(tenant_ids), closed.start, closed.end],
        )[0][0]
    if live is not None:
        total += sum(_unanswered_days(tenant_ids, live).values())
    start, end = period.bounds()
    sql = f"""
        SELECT m.created_at, m.conversation_id, m.tenant_id, (m.payload ->> 'retrieved')::int,
               coalesce(q.text, ''), ch.name
        FROM unnest(%s::uuid[]) AS t(id)
        CROSS JOIN LATERAL (
            -- Per tenant: a backward walk of the partial index that stops after ``limit`` rows.
            SELECT m.* FROM {MESSAGES} m
            WHERE m.tenant_id = t.id AND m.created_at >= %s AND m.created_at < %s AND {UNANSWERED}
            ORDER BY m.created_at DESC, m.id DESC
            LIMIT %s
        ) m
        JOIN {CHANNELS} ch ON ch.id = m.channel_id
        LEFT JOIN LATERAL (
            SELECT string_agg(u.content, ' ' ORDER BY u.id) AS text FROM {MESSAGES} u
            WHERE u.tenant_id = m.tenant_id AND u.conversation_id = m.conversation_id
              AND u.id IN (SELECT jsonb_array_elements_text(m.payload -> 'in_reply_to')::bigint)
        ) q ON true
        ORDER BY m.created_at DESC, m.id DESC
        LIMIT %s
    """  # noqa: S608 (our tables)
    rows = _rows(sql, [_ids(tenant_ids), start, end, limit, limit])
    return {
        "total": int(total),
        "rows": [
            {
                "at": at,
                "conversation_id": str(conversation_id),
                "tenant_id": str(tenant_id),
                "question": question,
                "reason": "retrieval found nothing" if retrieved == 0 else "answer cites no passage",
                "channel": channel,
            }
            for at, conversation_id, tenant_id, retrieved, question, channel in rows
        ],
    }


def top_documents(
    tenant_ids: TenantIds, period: DateRange, limit: int = TOP_DOCUMENTS_LIMIT, *, ensure: bool = True
) -> list[dict[str, Any]]:
    """The documents the replies cite most: document id, title (as cited), replies citing it."""
    closed, live = _parts(tenant_ids, period, ensure)
    replies: dict[str, int] = defaultdict(int)
    titles: dict[str, str] = {}
    rows: list[tuple[Any, ...]] = []
    if closed is not None:
        rows += _rows(
            f"""SELECT NULL, document_id, max(title), sum(replies)::int FROM {DOCUMENT_DAYS}
                WHERE tenant_id = ANY(%s::uuid[]) AND day BETWEEN %s AND %s GROUP BY 2""",  # noqa: S608
            [_ids(tenant_ids), closed.start, closed.end],
        )
    if live is not None:
        rows += _document_days(tenant_ids, live)
    for _, document_id, title, n in rows:
        replies[document_id] += n
        titles[document_id] = max(titles.get(document_id, ""), title or "")
    ranked = sorted(replies.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"document_id": doc, "title": titles[doc], "replies": n} for doc, n in ranked]


def insights(tenant_ids: TenantIds, period: DateRange) -> dict[str, list[dict[str, Any]]]:
    """The conversations started in the period by the user's sentiment and by tag
    (conversations.intelligence); not analysed yet counts as no sentiment and no tag."""
    start, end = period.bounds()
    table = CONVERSATIONS
    where = "tenant_id = ANY(%s::uuid[]) AND created_at >= %s AND created_at < %s"
    params = [_ids(tenant_ids), start, end]
    by_sentiment = dict(
        _rows(f"SELECT sentiment, count(*)::int FROM {table} WHERE {where} GROUP BY 1", params)  # noqa: S608
    )
    tags = _rows(
        f"""SELECT tag, count(*)::int FROM {table}, unnest(tags) AS tag WHERE {where}
            GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 50""",  # noqa: S608
        params,
    )
    return {
        "sentiment": [
            {"sentiment": label, "conversations": by_sentiment.get(key, 0)}
            for key, label in (
                ("negative", "Negative"),
                ("neutral", "Neutral"),
                ("positive", "Positive"),
                ("", "Not analysed yet"),
            )
        ],
        "tags": [{"tag": tag, "conversations": n} for tag, n in tags],
    }
