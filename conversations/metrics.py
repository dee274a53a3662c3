"""The conversations area's metrics: turns and their stages, LLM calls, messages per tenant and channel,
conversations by state (a scrape-time gauge), and the ranking that names the busiest tenants in the
``tenant`` label (config.metrics.tenant_label). Declared when ConversationsConfig.ready() imports this."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Sum
from django.utils import timezone

from config.metrics import LLM_BUCKETS, Sample, counter, histogram, tenant_label
from conversations.models import AnalyticsChannelDay, Conversation

if TYPE_CHECKING:
    from conversations.pipeline.turn import Turn

# conversations.pipeline.STAGES, by module name (a test checks they agree).
TURN_STAGES = (
    "resolve", "intake", "handoff_check", "typing", "retrieval", "completion", "reply", "function_sends", "finish",
)  # fmt: skip
TURN_OUTCOMES = ("answered", "handoff", "silent", "ignored", "llm_failed", "send_failed", "error")
# The closed days whose messages rank the tenants for the tenant label.
RANKING_DAYS = 7

turns = counter(
    "turns_total",
    "Turns (one answer to a burst of a contact's messages) by platform and outcome",
    labels=("platform", "outcome"),
)
turn_duration = histogram(
    "turn_duration_seconds",
    "Whole turns, from the worker taking the inbound message to the outcome recorded, by platform",
    labels=("platform",),
)
stage_duration = histogram(
    "turn_stage_duration_seconds",
    "Each stage of a turn (conversations.pipeline.STAGES), by stage",
    labels=("stage",),
    initial=[{"stage": stage} for stage in TURN_STAGES],
)
stage_timers = {stage: stage_duration.labels(stage=stage) for stage in TURN_STAGES}
llm_duration = histogram(
    "llm_request_duration_seconds",
    "LLM requests by provider and mode: complete = the whole answer, stream = until the first text",
    labels=("provider", "mode"),
    buckets=LLM_BUCKETS,
)
# Conversation intelligence (conversations.intelligence): analyses by the method that produced them, and
# the LLM analyses that fell back to the offline one, by the LLM error's code (a bounded set).
counter(
    "conversation_analyses_total",
    "Conversation analyses (sentiment and tags) stored, by method: llm or offline",
    labels=("method",),
    initial=[{"method": "llm"}, {"method": "offline"}],
)
counter(
    "conversation_analysis_llm_fallbacks_total",
    "Conversation analyses the tenant's LLM failed (error, timeout, invalid answer) and the embedder made, by reason",
    labels=("reason",),
)
messages = counter(
    "messages_total",
    "Messages by tenant (the busiest N by slug, else other), channel type and direction "
    "(inbound: stored from a contact; outbound: replies the channel accepted)",
    labels=("tenant", "channel", "direction"),
)


def observe_stage(stage: str, seconds: float) -> None:
    timer = stage_timers.get(stage)
    if timer is not None:
        timer.observe(seconds)


def count_turn(turn: Turn, outcome: str, seconds: float) -> None:
    """A finished (or crashed) turn: its outcome, its duration and its messages in and out."""
    platform = turn.channel.type
    turns.labels(platform=platform, outcome=outcome).inc()
    turn_duration.labels(platform=platform).observe(seconds)
    tenant = tenant_label(turn.tenant.pk)
    if turn.new_messages:
        messages.labels(tenant=tenant, channel=platform, direction="inbound").inc(len(turn.new_messages))
    if turn.delivered:
        messages.labels(tenant=tenant, channel=platform, direction="outbound").inc()


def busiest_tenants(n: int) -> list[tuple[Any, str]]:
    """The n tenants with the most messages over the last RANKING_DAYS closed days (the analytics
    rollups: a few hundred rows, whatever the traffic), busiest first; when fewer have any, the oldest
    other tenants fill the list (a deployment with at most n tenants names them all)."""
    from tenants.models import Tenant

    since = timezone.localdate() - dt.timedelta(days=RANKING_DAYS)
    ranked = list(
        AnalyticsChannelDay.objects.filter(day__gte=since)
        .values("tenant_id")
        .annotate(total=Sum("messages"))
        .order_by("-total", "tenant_id")
        .values_list("tenant_id", flat=True)[:n]
    )
    if len(ranked) < n:
        ranked += list(
            Tenant.objects.exclude(pk__in=ranked)
            .order_by("created_at", "pk")
            .values_list("pk", flat=True)[: n - len(ranked)]
        )
    slugs = dict(Tenant.objects.filter(pk__in=ranked).values_list("pk", "slug"))
    return [(pk, slugs[pk]) for pk in ranked if pk in slugs]


def conversations_gauge() -> Iterable[Sample]:
    """Conversations by state: a growing ``handoff_requested`` count is people waiting for an agent."""
    for row in Conversation.objects.values("state").annotate(n=Count("id")):
        yield "metachat_conversations", {"state": row["state"]}, row["n"]
