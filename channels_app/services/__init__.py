"""Channel operations, one module per job; views, admin, tasks and the turn pipeline call these.

- ``channels``: create, change and delete channels, their credentials and Graph-verified ids;
- ``intake``: webhook routing, verification, storing and the handshake;
- ``sending``: ``call_adapter`` (the one way to a platform), text replies, options to tap, typing;
- ``window``: the customer-service window, checked before every free-form send;
- ``templates``: WhatsApp message templates (sync, preview, send);
- ``conversation_sends``: rich sends into a conversation, stored as an agent's message by the core;
- ``statuses``: delivery statuses handed to the core;
- ``media``: inbound attachments fetched before the turn;
- ``health``: the channels health check.

Names are re-exported here, so ``from channels_app import services`` keeps working.
"""

from channels_app.services import health as health
from channels_app.services.channels import (
    CREDENTIAL_NAMES,
    META_PLATFORMS,
    ChannelError,
    ExternalIdClaim,
    channel_create,
    channel_credential_names,
    channel_delete,
    channel_disable_sending,
    channel_enable_sending,
    channel_set_credentials,
    channel_update,
    external_id_claim_apply,
    external_id_claim_verify,
    graph_can_read,
)
from channels_app.services.intake import (
    Route,
    WebhookOutcome,
    clear_route_cache,
    find_routes,
    receive_webhook,
    verify_handshake,
    webhook_answer,
    webhook_too_large,
)
from channels_app.services.media import media_storage_path, prepare_inbound_message
from channels_app.services.sending import (
    call_adapter,
    choices_as_text,
    guard_sendable,
    send_choices,
    send_reply,
    send_typing,
)
from channels_app.services.statuses import StatusTargetNotFound, apply_status_update

__all__ = [
    "CREDENTIAL_NAMES",
    "META_PLATFORMS",
    "ChannelError",
    "ExternalIdClaim",
    "Route",
    "StatusTargetNotFound",
    "WebhookOutcome",
    "apply_status_update",
    "call_adapter",
    "channel_create",
    "channel_credential_names",
    "channel_delete",
    "channel_disable_sending",
    "channel_enable_sending",
    "channel_set_credentials",
    "channel_update",
    "choices_as_text",
    "clear_route_cache",
    "external_id_claim_apply",
    "external_id_claim_verify",
    "find_routes",
    "graph_can_read",
    "guard_sendable",
    "health",
    "media_storage_path",
    "prepare_inbound_message",
    "receive_webhook",
    "send_choices",
    "send_reply",
    "send_typing",
    "verify_handshake",
    "webhook_answer",
    "webhook_too_large",
]
