"""Registry: platform name -> adapter instance. One line per platform."""

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
