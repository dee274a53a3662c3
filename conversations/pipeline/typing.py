"""Stage between the handoff check and retrieval: show the user we are on it (typing indicator,
WhatsApp read mark) while retrieval and the LLM work. Sent from a thread of the process, so that the
platform's round trip is not added to the turn's; the reply stage waits for it (``Turn.typing_done``)
so the indicator never arrives after the reply. Best effort: never fails the turn."""

from __future__ import annotations

from conversations import outbound
from conversations.pipeline.turn import Turn


def run(turn: Turn) -> None:
    if not turn.answering or turn.contact is None:
        return
    reply_to = turn.user_messages[-1].platform_message_id if turn.user_messages else ""
    # In the background: retrieval and the LLM go on meanwhile; the reply stage waits for it.
    turn.typing = outbound.send_typing_soon(
        channel=turn.channel, recipient_id=turn.contact.external_id, reply_to_message_id=reply_to
    )
