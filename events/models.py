from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from django.db import models
from django.db.models import Q

from events.types import EventType
from tenants.scoping import TenantOwned


class Event(TenantOwned):
    """The audit log and the outbox: written in the same transaction as the change it records.

    Delivery (in-process subscribers, tenant webhooks, RabbitMQ) starts from committed rows only, so a
    crash or a dead broker delays delivery and loses nothing. Payloads never hold secrets.

    ``dispatch_pending`` stays true until the row has been turned into webhook deliveries;
    ``publish_pending`` (set when RabbitMQ is configured) until the broker confirmed the message. Both
    have partial indexes, so the sweeps only ever read the small set of rows still waiting.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    type = models.CharField(max_length=64, choices=EventType.choices)
    payload = models.JSONField(default=dict)
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    dispatch_pending = models.BooleanField(default=False)
    publish_pending = models.BooleanField(default=False)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["tenant", "-id"], name="event_tenant_id"),
            models.Index(fields=["tenant", "type", "-id"], name="event_tenant_type_id"),
            models.Index(fields=["tenant", "created_at"], name="event_tenant_created"),
            models.Index(fields=["tenant", "id"], condition=Q(dispatch_pending=True), name="event_dispatch_pending"),
            models.Index(fields=["tenant", "id"], condition=Q(publish_pending=True), name="event_publish_pending"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"

    def as_message(self) -> dict:
        """The JSON body sent to webhooks and RabbitMQ (same shape for both), as a dict."""
        return {
            "id": str(self.event_id),
            "type": self.type,
            "tenant_id": str(self.tenant_id),
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "payload": self.payload,
        }


def message_body(*, event_id: UUID, type: str, tenant_id: UUID, created_at: datetime, payload_json: str) -> bytes:
    """``Event.as_message()`` as JSON bytes, built around the payload's JSON text as PostgreSQL stores
    it (jsonb): the delivery paths read events with raw SQL and never decode and re-encode payloads.
    The other members are UUIDs, an event type and a timestamp: nothing to escape."""
    created = created_at.isoformat().replace("+00:00", "Z")
    return (
        f'{{"id":"{event_id}","type":"{type}","tenant_id":"{tenant_id}","created_at":"{created}",'
        f'"payload":{payload_json}}}'
    ).encode()


class WebhookEndpoint(TenantOwned):
    """A tenant's HTTPS receiver. The signing secret and custom header values are tenant secrets
    (``signing_secret_name`` / ``headers_secret_name``); this row holds only the header names."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True, default="")
    # Empty list: every event type.
    event_types = models.JSONField(default=list, blank=True)
    header_names = models.JSONField(default=list, blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True, default="")
    # First failed attempt since the last success (null while healthy): drives auto-disable.
    failing_since = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    # Until then the previous signing secret signs too (a second ``v1,`` signature).
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["tenant", "is_active"], name="webhookendpoint_tenant_active")]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.description or f"webhook {str(self.pk)[:8]}"

    @property
    def signing_secret_name(self) -> str:
        return f"webhook.{self.pk}.signing"

    @property
    def previous_secret_name(self) -> str:
        return f"webhook.{self.pk}.signing.previous"

    @property
    def headers_secret_name(self) -> str:
        return f"webhook.{self.pk}.headers"


class WebhookDelivery(TenantOwned):
    """One event to one endpoint: pending until a 2xx (succeeded) or the retry schedule ends (dead)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        DEAD = "dead", "Dead"

    id = models.BigAutoField(primary_key=True)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Attempts in the current run of the schedule (a replay starts a new run); all are in attempts.
    attempt_count = models.PositiveIntegerField(default=0)
    # When a drain may (re)try it; also the lease of a claimed delivery while it is being sent.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "endpoint", "event"], name="webhookdelivery_unique_event"),
        ]
        indexes = [
            models.Index(
                fields=["tenant", "endpoint", "next_attempt_at"],
                condition=Q(status="pending"),
                name="webhookdelivery_due",
            ),
            models.Index(fields=["tenant", "endpoint", "status", "-id"], name="webhookdelivery_endpoint"),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"delivery #{self.pk} ({self.status})"


class WebhookAttempt(TenantOwned):
    """One HTTP request of a delivery: when, how long, what came back (or what went wrong)."""

    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    success = models.BooleanField(default=False)
    response_excerpt = models.CharField(max_length=1000, blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["tenant", "delivery", "id"], name="webhookattempt_delivery")]

    def __str__(self) -> str:
        return f"attempt #{self.pk} ({self.status_code or self.error[:30]})"
