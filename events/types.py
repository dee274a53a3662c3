"""Every event type the platform emits. Tenant webhooks subscribe by these names."""

from django.db import models


class EventType(models.TextChoices):
    # The original design's event types: the names tenants' webhooks already subscribe to.
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_SENT = "message.sent"
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_UPDATED = "conversation.updated"
    HUMAN_HANDOFF_REQUESTED = "human_handoff.requested"
    DOCUMENT_UPLOADED = "document.uploaded"
    DOCUMENT_INDEXED = "document.indexed"
    # Failures and operations: every failure is visible as an event too.
    MESSAGE_FAILED = "message.failed"
    MESSAGE_STATUS = "message.status"
    DOCUMENT_FAILED = "document.failed"
    DOCUMENT_DELETED = "document.deleted"
    TOOL_CALLED = "tool.called"
    CHANNEL_DISABLED = "channel.disabled"
    WEBHOOK_DELIVERY_DEAD = "webhook.delivery_dead"
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"
    TENANT_UPDATED = "tenant.updated"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    SECRET_UPDATED = "secret.updated"
    SECRET_DELETED = "secret.deleted"
    # Campaigns (channels_app.services.campaigns): written with the campaign's state change.
    CAMPAIGN_STARTED = "campaign.started"
    CAMPAIGN_PAUSED = "campaign.paused"
    CAMPAIGN_RESUMED = "campaign.resumed"
    CAMPAIGN_FINISHED = "campaign.finished"
