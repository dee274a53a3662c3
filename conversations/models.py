from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models

from tenants.scoping import TenantOwned


class Contact(TenantOwned):
    """An end user as seen by one channel (WhatsApp wa_id / BSUID, Messenger PSID, web visitor id)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.CASCADE, related_name="+")
    external_id = models.CharField(max_length=255)
    profile_name = models.CharField(max_length=255, blank=True, default="")
    language = models.CharField(max_length=16, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "channel", "external_id"], name="contact_unique_external")
        ]

    def __str__(self) -> str:
        return self.profile_name or self.external_id


class Conversation(TenantOwned):
    """Who owns the conversation is an explicit state machine (conversations.state)."""

    class State(models.TextChoices):
        BOT = "bot", "Bot"
        HANDOFF_REQUESTED = "handoff_requested", "Waiting for a human"
        AGENT = "agent", "With an agent"
        RESOLVED = "resolved", "Resolved"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="conversations")
    state = models.CharField(max_length=20, choices=State.choices, default=State.BOT)
    # The LLM's context starts after this message (the last handoff boundary).
    context_start_message_id = models.BigIntegerField(null=True, blank=True)
    last_activity_at = models.DateTimeField(auto_now_add=True)
    created_at = models.DateTimeField(auto_now_add=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    # Why the conversation left the bot last ("keyword: human", "tool: request_human", "agent", ...).
    handoff_reason = models.CharField(max_length=255, blank=True, default="")
    # The agent inbox (conversations.inbox): who works on it, since when the user waits for a human,
    # and when the closing message asked for a satisfaction rating (the next 1-5 answer is stored).
    assignee = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    waiting_since = models.DateTimeField(null=True, blank=True)
    satisfaction_requested_at = models.DateTimeField(null=True, blank=True)
    # The language the user writes in (ISO 639-1, detected from their messages: conversations.language).
    language = models.CharField(max_length=16, blank=True, default="")
    # Conversation intelligence (conversations.intelligence): the user's sentiment and the tenant's
    # categories the conversation is about, from what the user wrote up to analysed_at.
    sentiment = models.CharField(
        max_length=10,
        blank=True,
        default="",
        choices=[("negative", "Negative"), ("neutral", "Neutral"), ("positive", "Positive")],
    )
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    analysed_at = models.DateTimeField(null=True, blank=True)
    # The A/B test (conversations.experiments) whose variant answered this conversation, recorded by the
    # turn that applied it; the variant is its name in the experiment.
    experiment = models.ForeignKey(
        "conversations.Experiment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    experiment_variant = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        ordering = ["-last_activity_at"]
        indexes = [
            models.Index(fields=["tenant", "state", "-last_activity_at"], name="conv_tenant_state_activity"),
            models.Index(fields=["tenant", "contact", "-last_activity_at"], name="conv_tenant_contact"),
            models.Index(fields=["tenant", "channel", "-last_activity_at"], name="conv_tenant_channel"),
            # Analytics: conversations created per day.
            models.Index(fields=["tenant", "created_at"], name="conv_tenant_created"),
            models.Index(fields=["tenant", "assignee", "-last_activity_at"], name="conv_tenant_assignee"),
            models.Index(
                fields=["tenant", "experiment", "experiment_variant"],
                condition=models.Q(experiment__isnull=False),
                name="conv_tenant_experiment",
            ),
        ]

    def __str__(self) -> str:
        return f"Conversation {self.id} ({self.state})"


class Message(TenantOwned):
    class Direction(models.TextChoices):
        INBOUND = "in", "Inbound"
        OUTBOUND = "out", "Outbound"

    class Sender(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        AGENT = "agent", "Agent"
        TOOL = "tool", "Tool"
        SYSTEM = "system", "System"

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        READ = "read", "Read"
        FAILED = "failed", "Failed"
        STORED = "stored", "Stored (not sent)"

    id = models.BigAutoField(primary_key=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.CASCADE, related_name="+", db_index=False)
    direction = models.CharField(max_length=3, choices=Direction.choices)
    sender = models.CharField(max_length=10, choices=Sender.choices)
    kind = models.CharField(max_length=20, default="text")
    content = models.TextField(blank=True, default="")
    # Normalized payload (media, location, ...), tool call arguments/results, sources cited.
    payload = models.JSONField(default=dict, blank=True)
    platform_message_id = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RECEIVED)
    error = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    timings = models.JSONField(default=dict, blank=True)
    agent_user = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["tenant", "conversation", "id"], name="msg_tenant_conv_id"),
            # Analytics (conversations.analytics): a day range of a tenant's messages, aggregated from
            # the index alone (index-only scan), and the replies that cite nothing (unanswered questions).
            models.Index(
                fields=["tenant", "created_at"],
                include=["channel", "sender", "conversation", "prompt_tokens", "completion_tokens", "cost_usd"],
                name="msg_tenant_created",
            ),
            models.Index(
                fields=["tenant", "created_at"],
                condition=models.Q(sender="assistant", payload__sources=[]),
                name="msg_tenant_uncited",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "channel", "platform_message_id"],
                condition=~models.Q(platform_message_id=""),
                name="msg_unique_platform_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.sender}: {self.content[:60]}"


class ConversationRead(TenantOwned):
    """How far one agent has read a conversation: inbound messages after it are unread for them."""

    id = models.BigAutoField(primary_key=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+", db_index=False)
    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="+")
    last_read_message_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "conversation", "user"], name="conversationread_unique")
        ]


class ConversationNote(TenantOwned):
    """A private note of an agent on a conversation: shown to the tenant's agents, never sent."""

    id = models.BigAutoField(primary_key=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+", db_index=False)
    author = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["tenant", "conversation", "id"], name="note_tenant_conv_id")]


class CannedReply(TenantOwned):
    """A tenant's saved answer, inserted in the inbox's composer by typing ``/shortcut``."""

    id = models.BigAutoField(primary_key=True)
    shortcut = models.SlugField(max_length=40)
    text = models.TextField(max_length=4096)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["shortcut"]
        verbose_name_plural = "canned replies"
        constraints = [models.UniqueConstraint(fields=["tenant", "shortcut"], name="cannedreply_unique_shortcut")]

    def __str__(self) -> str:
        return f"/{self.shortcut}"


class SatisfactionRating(TenantOwned):
    """The user's 1-5 answer to the closing message's satisfaction question (one per resolution)."""

    id = models.BigAutoField(primary_key=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+", db_index=False)
    score = models.PositiveSmallIntegerField()
    # The agent the conversation was assigned to when it was resolved.
    agent = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="rating_tenant_created"),
            models.Index(fields=["tenant", "conversation"], name="rating_tenant_conv"),
        ]
        constraints = [models.CheckConstraint(condition=models.Q(score__gte=1, score__lte=5), name="rating_1_to_5")]


class Experiment(TenantOwned):
    """An A/B test of the tenant's assistant (conversations.experiments): variants of its settings, each
    answering a share of the contacts, compared on one goal. ``variants`` is a list of
    ``{"name", "share", "overrides"}`` (camelCase overrides of the tenant settings; the first variant is
    the control); the shares sum to 100. At most one experiment of a tenant runs at a time."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    class Goal(models.TextChoices):
        RESOLVED_WITHOUT_HUMAN = "resolved_without_human", "Resolved without a human (rate)"
        SATISFACTION = "satisfaction", "Satisfaction (mean 1-5 rating)"
        COST = "cost", "Cost per conversation (mean, lower is better)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120)
    goal = models.CharField(max_length=30, choices=Goal.choices)
    variants = models.JSONField(default=list)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # The variant whose overrides were written into the tenant settings (empty: none promoted).
    promoted_variant = models.CharField(max_length=40, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="experiment_tenant_created")]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"], condition=models.Q(status="running"), name="experiment_one_running"
            )
        ]

    def __str__(self) -> str:
        return self.name


class TenantFunction(TenantOwned):
    """A function the LLM may call: a tenant's HTTPS endpoint described by a JSON schema.

    Calls are POSTed as JSON, signed with HMAC-SHA256 (``X-MetaChat-Signature``) using the secret
    named ``signing_secret_name``; ``auth_secret_name`` optionally names a TenantSecret whose value
    is sent as the ``auth_header_name`` header. No secret value is stored on this row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64)
    description = models.TextField(max_length=1024)
    parameters = models.JSONField(default=dict, blank=True)
    endpoint_url = models.CharField(max_length=1000)  # validated by conversations.tools (https, SSRF)
    timeout_seconds = models.FloatField(default=10.0)
    auth_header_name = models.CharField(max_length=100, blank=True, default="")
    auth_secret_name = models.CharField(max_length=120, blank=True, default="")
    signing_secret_name = models.CharField(max_length=120, blank=True, default="")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="tenantfunction_unique_name")]

    def __str__(self) -> str:
        return self.name


class AnalyticsDay(TenantOwned):
    """A tenant's closed day, rolled up once for the analytics page (conversations.analytics): counts,
    and the day's response and resolution times as arrays (percentiles of any range come from them).
    ``pending``: conversations still waiting for a first answer when the day was rolled up, as
    ``[conversation id, since (ISO), "bot" | "human"]``, looked up again when a range includes the day."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    new = models.PositiveIntegerField(default=0)
    resolved = models.PositiveIntegerField(default=0)
    handoffs = models.PositiveIntegerField(default=0)
    unanswered = models.PositiveIntegerField(default=0)
    bot_seconds = ArrayField(models.FloatField(), default=list)
    human_seconds = ArrayField(models.FloatField(), default=list)
    resolution_seconds = ArrayField(models.FloatField(), default=list)
    pending = models.JSONField(default=list)
    computed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="analyticsday_unique")]


class AnalyticsChannelDay(TenantOwned):
    """Messages, tokens and cost of one channel on a closed day (see AnalyticsDay)."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.CASCADE, related_name="+", db_index=False)
    messages = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=6, default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day", "channel"], name="analyticschannelday_unique")]


class AnalyticsDocumentDay(TenantOwned):
    """How many replies of a closed day cite a document (its id and title as cited: the document may be
    gone since)."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    document_id = models.CharField(max_length=64)
    title = models.CharField(max_length=300, blank=True, default="")
    replies = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "document_id"], name="analyticsdocumentday_unique")
        ]
