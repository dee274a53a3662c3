from __future__ import annotations

import uuid

from django.db import models

from events.types import EventType
from tenants.scoping import TenantOwned


class Event(TenantOwned):
    """The audit log and the outbox: written in the same transaction as the change it records.

    Delivery (in-process subscribers, tenant webhooks, RabbitMQ) starts from committed rows only, so a
    crash or a dead broker delays delivery and loses nothing. Payloads never hold secrets.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    type = models.CharField(max_length=64, choices=EventType.choices)
    payload = models.JSONField(default=dict)
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["tenant", "-id"], name="event_tenant_id"),
            models.Index(fields=["tenant", "type", "-id"], name="event_tenant_type_id"),
            models.Index(fields=["tenant", "created_at"], name="event_tenant_created"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"
