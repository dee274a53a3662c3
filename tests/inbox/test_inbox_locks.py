"""Meta being slow never holds a conversation: the "<agent> joined" notice and the closing message with
the satisfaction question go to the channel after the assignment or resolution is committed, so
another agent's action on the same conversation does not wait for the Graph API's answer."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from conversations.inbox import services
from conversations.models import Conversation
from tests.channels_app.conftest import inbound_from
from tests.conftest import wait_until
from tests.conversations.conftest import make_whatsapp
from tests.inbox.conftest import make_conversation

pytestmark = pytest.mark.django_db(transaction=True)

CONTACT = "15557650000"


def row_is_free(conversation: Conversation) -> bool:
    """Whether another agent's action could lock the conversation's row right now."""
    try:
        with transaction.atomic():
            Conversation.objects.select_for_update(nowait=True).get(pk=conversation.pk)
    except DatabaseError:
        return False
    return True


def in_thread(action: Any) -> threading.Thread:
    def run() -> None:
        try:
            action()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("action", ["assign", "resolve"])
def test_the_conversation_is_not_locked_while_meta_answers(tenant, make_agent, graph, action):
    amy = make_agent(tenant, "amy")
    whatsapp = make_whatsapp(tenant)
    inbound_from(whatsapp, CONTACT, hours_ago=1)
    conversation = make_conversation(tenant, channel=whatsapp, external_id=CONTACT, state="handoff_requested")
    graph.delay = 3.0

    if action == "assign":
        thread = in_thread(lambda: services.assign(tenant=tenant, conversation=conversation, assignee=amy, by=amy))
    else:
        thread = in_thread(lambda: services.resolve(tenant=tenant, conversation=conversation, user=amy))
    wait_until(lambda: graph.requests, timeout=10)  # the notice is at Meta, which has not answered yet

    assert row_is_free(conversation)
    thread.join(timeout=15)
    assert not thread.is_alive()
    conversation.refresh_from_db()
    assert conversation.state == ("agent" if action == "assign" else "resolved")
