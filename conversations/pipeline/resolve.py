"""Stage 1: is anyone answering for this tenant and channel? Inactive ones record and say why."""

from __future__ import annotations

from conversations.pipeline.turn import Turn


def run(turn: Turn) -> None:
    if not turn.tenant.is_active:
        turn.ignore_reason = "tenant is inactive: message recorded, not answered"
    elif not turn.channel.is_active:
        turn.ignore_reason = "channel is inactive: message recorded, not answered"
