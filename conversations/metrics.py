"""Gauges of the conversations area, registered with config.metrics from ConversationsConfig.ready()."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count

from config.metrics import Sample
from conversations.models import Conversation


def conversations_gauge() -> Iterable[Sample]:
    """Conversations by state: a growing ``handoff_requested`` count is people waiting for an agent."""
    for row in Conversation.objects.values("state").annotate(n=Count("id")):
        yield "metachat_conversations", {"state": row["state"]}, row["n"]
