"""Registry: platform name -> adapter instance. One line per platform."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels_app.adapters.base import ChannelAdapter

ADAPTERS: dict[str, ChannelAdapter] = {}
