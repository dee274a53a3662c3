"""Registry: platform name -> adapter instance. One line per platform.

Everything that differs by platform is read from here: the webhook routes (``/webhooks/<platform>``
for each Graph platform, Django's and the ASGI fast path's), which channel types are Meta's (claims
checked with the Graph API, Meta credentials), and each optional ability (``adapters.base``'s
runtime-checkable protocols: typing, media, templates, buttons).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from channels_app.adapters.messenger import MessengerAdapter
from channels_app.adapters.webchat import WebchatAdapter
from channels_app.adapters.whatsapp import WhatsAppAdapter

if TYPE_CHECKING:
    from channels_app.adapters.base import ChannelAdapter

ADAPTERS: dict[str, ChannelAdapter] = {
    "whatsapp": WhatsAppAdapter(),
    "messenger": MessengerAdapter(),
    "webchat": WebchatAdapter(),
}


def graph_platforms() -> tuple[str, ...]:
    """The Meta platforms: Graph-verified external ids, Meta credentials, a webhook route each."""
    return tuple(name for name, adapter in ADAPTERS.items() if adapter.graph_platform)
