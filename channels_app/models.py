from __future__ import annotations

import secrets
import uuid

from django.db import models

from tenants.scoping import TenantOwned


def new_widget_key() -> str:
    return "wk_" + secrets.token_urlsafe(18)


class Channel(TenantOwned):
    """One place a tenant's assistant talks: a WhatsApp number, a Messenger page, a web chat site.

    ``external_id`` is what inbound traffic is routed by: the WhatsApp ``phone_number_id``, the
    Messenger page id, or the web chat widget key. Credentials live encrypted in ``ChannelSecret``.
    """

    class Type(models.TextChoices):
        WHATSAPP = "whatsapp", "WhatsApp"
        MESSENGER = "messenger", "Messenger"
        WEBCHAT = "webchat", "Web chat"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=20, choices=Type.choices)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    external_id = models.CharField(max_length=128, blank=True, default="")
    # Public, non-secret configuration: display_phone_number, allowed_origins, ...
    config = models.JSONField(default=dict, blank=True)
    # Set when the platform stopped sending (e.g. Meta error 190: token expired); cleared on new creds.
    sending_disabled_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["tenant", "type"], name="channel_tenant_type")]
        constraints = [
            models.UniqueConstraint(
                fields=["type", "external_id"],
                condition=~models.Q(external_id=""),
                name="channel_unique_external_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()}: {self.name}"


class ChannelSecret(TenantOwned):
    """The channel's credentials as one AES-256-GCM encrypted JSON object (see tenants.secrets)."""

    channel = models.OneToOneField(Channel, on_delete=models.CASCADE, related_name="secret")
    ciphertext = models.TextField()
    iv = models.CharField(max_length=32)
    tag = models.CharField(max_length=32)
    key_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant"], name="channelsecret_tenant"),
            models.Index(fields=["key_id"], name="channelsecret_key_id"),
        ]

    def __repr__(self) -> str:
        return f"<ChannelSecret channel={self.channel_id} key_id={self.key_id}>"

    def __str__(self) -> str:
        return f"credentials of channel {self.channel_id}"


class InboundEvent(TenantOwned):
    """Something a channel received, stored once before it is acknowledged.

    The webhook view (or WebSocket consumer) writes one row per normalized inbound message or status
    update, idempotently on (tenant, channel, dedupe_key) because platforms redeliver, then hands the
    row id to Celery after commit. ``status`` records what became of it; nothing is deleted.
    """

    class Kind(models.TextChoices):
        MESSAGE = "message", "Message"
        STATUS = "status", "Status update"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"

    id = models.BigAutoField(primary_key=True)
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="+", db_index=False)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.MESSAGE)
    # Platform message id (wamid, mid, client message id) or "<wamid>:<status>" for status updates.
    dedupe_key = models.CharField(max_length=255)
    sender_external_id = models.CharField(max_length=255, blank=True, default="")
    # The NormalizedMessage / StatusUpdate as JSON (channels_app.adapters.base).
    normalized = models.JSONField()
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # When the message's own task found its contact's turn running (conversations.pipeline): it has had
    # its place in the queue, so the running turn answers it next instead of queueing it again.
    turn_busy_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "channel", "dedupe_key"], name="inbound_unique_dedupe")
        ]
        indexes = [
            models.Index(fields=["tenant", "channel", "sender_external_id", "id"], name="inbound_sender"),
            models.Index(
                fields=["status", "received_at"],
                condition=models.Q(status="pending"),
                name="inbound_pending",
            ),
        ]


class UnroutedWebhook(models.Model):
    """A well-signed or unverifiable webhook payload that matched no channel, kept for inspection.

    Not tenant-owned (no tenant could be found); visible to superusers only. Anyone can send one, so
    only the first UNROUTED_WEBHOOK_MAX_STORED_BYTES of the body are kept, with the size and SHA-256
    of the whole; rows go after UNROUTED_WEBHOOK_RETENTION_DAYS (channels_app.unrouted).
    """

    id = models.BigAutoField(primary_key=True)
    platform = models.CharField(max_length=20)
    reason = models.CharField(max_length=200)
    external_ids = models.JSONField(default=list)
    body = models.TextField()
    body_bytes = models.PositiveIntegerField(default=0)
    body_sha256 = models.CharField(max_length=64, blank=True, default="")
    body_truncated = models.BooleanField(default=False)
    headers = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["platform", "received_at"], name="unrouted_platform_time"),
            models.Index(fields=["received_at"], name="unrouted_received_at"),
        ]

    def __str__(self) -> str:
        return f"{self.platform} webhook for {', '.join(self.external_ids) or 'nothing'} ({self.reason})"


class MessageTemplate(TenantOwned):
    """A WhatsApp message template as Meta last reported it for a WhatsApp Business Account (WABA).

    Synced from ``GET /{waba-id}/message_templates`` (channels_app.services.templates); only an
    ``APPROVED`` one can be sent. Meta identifies a template by name and language within its WABA.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The channel it was synced through (its phone number sends it); the WABA owns it at Meta.
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="templates")
    waba_id = models.CharField(max_length=32)
    meta_id = models.CharField(max_length=64, blank=True, default="")
    name = models.CharField(max_length=512)
    language = models.CharField(max_length=16)
    category = models.CharField(max_length=32, blank=True, default="")  # MARKETING | UTILITY | AUTHENTICATION
    status = models.CharField(max_length=32, blank=True, default="")  # APPROVED | PENDING | REJECTED | PAUSED ...
    rejected_reason = models.CharField(max_length=200, blank=True, default="")
    parameter_format = models.CharField(max_length=16, blank=True, default="")  # POSITIONAL | NAMED
    components = models.JSONField(default=list, blank=True)
    synced_at = models.DateTimeField()

    class Meta:
        ordering = ["name", "language"]
        constraints = [
            models.UniqueConstraint(fields=["channel", "name", "language"], name="template_unique_name_language")
        ]
        indexes = [models.Index(fields=["tenant", "channel"], name="template_tenant_channel")]

    def __str__(self) -> str:
        return f"{self.name} ({self.language}, {self.status or 'unknown'})"


class ContactAlias(TenantOwned):
    """Another id Meta gives the same WhatsApp user on this channel: their phone number (``wa_id``) and
    their business-scoped user id (BSUID, ``user_id``) both map to the one id the contact is known by
    (``external_id``: the first seen). Written on intake (channels_app.services.identities)."""

    id = models.BigAutoField(primary_key=True)
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="+", db_index=False)
    alias = models.CharField(max_length=255)
    external_id = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "alias"], name="contact_alias_unique")]
        indexes = [models.Index(fields=["tenant", "channel", "external_id"], name="contact_alias_external_id")]

    def __str__(self) -> str:
        return f"{self.alias} -> {self.external_id}"


class Consent(TenantOwned):
    """A contact's permission to be messaged first on this channel (campaigns): where and when they
    opted in, and, forever once set, when they opted out (an opt-out word such as "STOP").
    ``variables`` are the contact's own values for campaign templates (CSV columns)."""

    id = models.BigAutoField(primary_key=True)
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="+", db_index=False)
    contact_id = models.CharField(max_length=255)  # phone number or BSUID, as the contact is known
    source = models.CharField(max_length=100)
    opted_in_at = models.DateTimeField()
    opted_out_at = models.DateTimeField(null=True, blank=True)
    opt_out_source = models.CharField(max_length=100, blank=True, default="")
    variables = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "contact_id"], name="consent_unique_contact")]
        indexes = [models.Index(fields=["tenant", "channel"], name="consent_tenant_channel")]


class Campaign(TenantOwned):
    """A template sent first to the channel's opted-in contacts, throttled to the number's throughput
    and daily limit, outside quiet hours (channels_app.services.campaigns)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        DONE = "done", "Done"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="+")
    template = models.ForeignKey(MessageTemplate, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=200)
    # {"body": ["{first_name}", "fixed"], "header": {...}}: "{column}" is the contact's own variable.
    variables = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    quiet_start = models.TimeField(null=True, blank=True)  # in UTC; no message goes from start to end
    quiet_end = models.TimeField(null=True, blank=True)
    rate_per_second = models.FloatField(default=80.0)
    daily_limit = models.PositiveIntegerField(default=1000)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "status"], name="campaign_tenant_status")]

    def __str__(self) -> str:
        return self.name


class CampaignRecipient(TenantOwned):
    """One contact of a campaign; unique per (campaign, contact), so nobody is in it twice. ``sending``
    is committed before the Graph call: a row left there by a crash is never sent again (at most
    once); the status webhooks (``biz_opaque_callback_data``) tell whether it went."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        READ = "read", "Read"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    id = models.BigAutoField(primary_key=True)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="recipients", db_index=False)
    contact_id = models.CharField(max_length=255)
    variables = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    platform_message_id = models.CharField(max_length=255, blank=True, default="")
    error = models.CharField(max_length=500, blank=True, default="")
    claimed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "contact_id"], name="campaign_recipient_unique")]
        indexes = [
            models.Index(fields=["campaign", "status"], name="campaign_recipient_status"),
            models.Index(
                fields=["platform_message_id"],
                condition=~models.Q(platform_message_id=""),
                name="campaign_recipient_wamid",
            ),
        ]
