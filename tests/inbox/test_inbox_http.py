"""The inbox's HTTP side: the list, a conversation, assignment, notes, read marks, resolve with the
satisfaction question; and every permission: an agent sees and acts only within their tenant."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from channels_app import webchat
from conversations.inbox import services
from conversations.models import Conversation, ConversationNote, Message, SatisfactionRating
from tests.inbox.conftest import client_for, make_conversation

pytestmark = pytest.mark.django_db


def get(client: Client, path: str, tenant) -> dict:
    response = client.get(f"/inbox/api/{path}{'&' if '?' in path else '?'}tenant={tenant.pk}")
    return {"status": response.status_code, **response.json()}


def post(client: Client, path: str, tenant, body: dict | None = None) -> dict:
    response = client.post(
        f"/inbox/api/{path}?tenant={tenant.pk}", data=json.dumps(body or {}), content_type="application/json"
    )
    return {"status": response.status_code, **response.json()}


def test_the_list_puts_waiting_first_with_preview_unread_and_assignee(tenant, make_agent):
    amy = make_agent(tenant, "amy", first_name="Amy")
    make_conversation(tenant, name="Bot user", texts=("what time?",))
    waiting = make_conversation(tenant, name="Waiting user", texts=("hi", "human please"))
    Conversation.objects.filter(pk=waiting.pk).update(state="handoff_requested", waiting_since="2026-01-01T00:00Z")
    mine = make_conversation(tenant, name="Mine", state="agent", texts=("thanks",))
    services.assign(tenant=tenant, conversation=mine, assignee=amy, by=amy)

    rows = get(client_for(amy), "conversations/", tenant)["results"]

    assert [r["contact"]["name"] for r in rows] == ["Waiting user", "Mine", "Bot user"]
    first = rows[0]
    assert first["preview"] == "human please"
    assert first["unread"] == 2
    assert first["waiting_since"].startswith("2026-01-01")
    assert first["channel"]["type"] == "webchat"
    assert rows[1]["assignee"] == {"id": amy.pk, "name": "Amy"}
    mine_only = get(client_for(amy), "conversations/?scope=mine", tenant)["results"]
    assert [r["contact"]["name"] for r in mine_only] == ["Mine"]
    unassigned = get(client_for(amy), "conversations/?scope=unassigned&state=bot", tenant)["results"]
    assert [r["contact"]["name"] for r in unassigned] == ["Bot user"]


def test_opening_a_conversation_marks_it_read_for_that_agent_only(tenant, make_agent):
    amy, bob = make_agent(tenant, "amy"), make_agent(tenant, "bob")
    conversation = make_conversation(tenant, texts=("one", "two"))

    detail = get(client_for(amy), f"conversations/{conversation.pk}/", tenant)

    assert [i["text"] for i in detail["timeline"]] == ["one", "two"]
    assert get(client_for(amy), "conversations/", tenant)["results"][0]["unread"] == 0
    assert get(client_for(bob), "conversations/", tenant)["results"][0]["unread"] == 2


def test_a_web_chat_visitor_is_named_and_shows_the_page_they_were_on(tenant, make_agent):
    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant, external_id="v_abcdef123456", texts=())
    channel = conversation.channel
    webchat.receive_message(
        channel=channel, visitor_id="v_abcdef123456", client_message_id="c_12345678",
        text="hi", page_url="https://shop.example/bread",
    )  # fmt: skip

    contact = get(client_for(amy), f"conversations/{conversation.pk}/", tenant)["contact"]

    assert contact["name"] == "Visitor abcdef"
    assert contact["page_url"] == "https://shop.example/bread"
    assert contact["channel"]["type"] == "webchat"


def test_a_private_note_is_stored_and_never_reaches_the_visitor(tenant, make_agent):
    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant, state="agent")

    answer = post(client_for(amy), f"conversations/{conversation.pk}/notes/", tenant, {"text": "VIP, be nice"})

    assert answer["status"] == 200
    assert ConversationNote.objects.get().text == "VIP, be nice"
    assert not Message.objects.filter(content__contains="VIP").exists()
    history = webchat.visitor_history(channel=conversation.channel, visitor_id=conversation.contact.external_id)
    assert "VIP" not in json.dumps(history)
    timeline = get(client_for(amy), f"conversations/{conversation.pk}/", tenant)["timeline"]
    assert timeline[-1]["type"] == "note"


def test_assigning_takes_the_conversation_and_tells_the_visitor_once(tenant, make_agent):
    amy = make_agent(tenant, "amy", first_name="Amy")
    conversation = make_conversation(tenant, state="handoff_requested")

    assert (
        post(client_for(amy), f"conversations/{conversation.pk}/assign/", tenant, {"user_id": amy.pk})["status"] == 200
    )
    post(client_for(amy), f"conversations/{conversation.pk}/assign/", tenant, {"user_id": amy.pk})

    conversation.refresh_from_db()
    assert (conversation.state, conversation.assignee_id) == ("agent", amy.pk)
    joined = Message.objects.filter(sender="system", kind="agent_joined")
    assert [m.content for m in joined] == ["Amy joined the conversation."]


def test_resolve_asks_for_a_rating_that_is_stored_once_and_counted(tenant, make_agent):
    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant, state="agent")
    services.assign(tenant=tenant, conversation=conversation, assignee=amy, by=amy)

    assert post(client_for(amy), f"conversations/{conversation.pk}/resolve/", tenant)["state"] == "resolved"

    kinds = list(Message.objects.filter(sender="system").values_list("kind", flat=True))
    assert kinds[-2:] == ["closing", "csat_question"]
    channel, visitor = conversation.channel, conversation.contact.external_id
    assert webchat.receive_rating(channel=channel, visitor_id=visitor, score=4) is True
    assert webchat.receive_rating(channel=channel, visitor_id=visitor, score=1) is False  # answered already
    rating = SatisfactionRating.objects.get()
    assert (rating.score, rating.agent_id, rating.conversation_id) == (4, amy.pk, conversation.pk)
    assert get(client_for(amy), "meta/", tenant)["satisfaction"]["count"] == 1
    with pytest.raises(webchat.WebchatError):
        webchat.receive_rating(channel=channel, visitor_id=visitor, score=9)


def test_two_agents_resolving_or_answering_at_once_send_the_end_user_one_of_each(tenant, make_agent):
    """Each request holds its own copy of the conversation, read before the other one acted."""
    amy, bob = make_agent(tenant, "amy"), make_agent(tenant, "bob")
    waiting = make_conversation(tenant, state="handoff_requested")
    amys, bobs = Conversation.objects.get(pk=waiting.pk), Conversation.objects.get(pk=waiting.pk)

    services.reply(tenant=tenant, conversation=amys, text="Hi, Amy here", user=amy)
    services.reply(tenant=tenant, conversation=bobs, text="Hi, Bob here", user=bob)
    services.resolve(tenant=tenant, conversation=amys, user=amy)
    services.resolve(tenant=tenant, conversation=bobs, user=bob)

    waiting.refresh_from_db()
    assert waiting.assignee_id == amy.pk  # the first to answer took it; Bob's answer did not take it over
    kinds = list(Message.objects.filter(conversation=waiting, sender="system").values_list("kind", flat=True))
    assert kinds == ["agent_joined", "closing", "csat_question"]


# --- permissions ------------------------------------------------------------------------------------------

ENDPOINTS = [
    ("get", "conversations/{id}/"),
    ("post", "conversations/{id}/reply/"),
    ("post", "conversations/{id}/notes/"),
    ("post", "conversations/{id}/assign/"),
    ("post", "conversations/{id}/resolve/"),
    ("post", "conversations/{id}/return-to-bot/"),
    ("post", "conversations/{id}/read/"),
    ("get", "conversations/{id}/media/1/0/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_an_agent_cannot_see_or_act_on_another_tenants_conversation(method, path, tenant, other_tenant, make_agent):
    amy = make_agent(tenant, "amy")
    theirs = make_conversation(other_tenant, state="handoff_requested", texts=("secret",))
    url = path.format(id=theirs.pk)
    body = {"text": "hi", "user_id": amy.pk}
    call = (
        (lambda t: get(client_for(amy), url, t)) if method == "get" else (lambda t: post(client_for(amy), url, t, body))
    )

    assert call(tenant)["status"] == 404  # within my tenant: no such conversation
    assert call(other_tenant)["status"] == 403  # naming their tenant: not my tenant
    theirs.refresh_from_db()
    assert (theirs.state, theirs.assignee_id) == ("handoff_requested", None)
    assert not Message.objects.filter(conversation=theirs).exclude(content="secret").exists()
    assert not ConversationNote.objects.exists()


def test_the_list_and_meta_of_another_tenant_are_refused(tenant, other_tenant, make_agent):
    amy = make_agent(tenant, "amy")
    make_conversation(other_tenant, name="Theirs")

    assert get(client_for(amy), "conversations/", other_tenant)["status"] == 403
    assert get(client_for(amy), "meta/", other_tenant)["status"] == 403
    assert get(client_for(amy), "conversations/", tenant)["results"] == []
    page = client_for(amy).get("/inbox/", {"tenant": str(other_tenant.pk)})
    assert page.status_code == 403


def test_assigning_to_an_agent_of_another_tenant_is_refused(tenant, other_tenant, make_agent):
    amy, stranger = make_agent(tenant, "amy"), make_agent(other_tenant, "stranger")
    conversation = make_conversation(tenant, state="handoff_requested")

    answer = post(client_for(amy), f"conversations/{conversation.pk}/assign/", tenant, {"user_id": stranger.pk})

    assert (answer["status"], answer["error"]["code"]) == (400, "not_an_agent")
    conversation.refresh_from_db()
    assert conversation.assignee_id is None


def test_anonymous_and_non_staff_users_are_refused(tenant, make_agent, django_user_model):
    conversation = make_conversation(tenant)
    assert get(Client(), "conversations/", tenant)["status"] == 401
    assert Client().get("/inbox/").status_code == 302  # to the admin's login
    plain = django_user_model.objects.create_user(username="plain", password="x")
    assert get(client_for(plain), f"conversations/{conversation.pk}/", tenant)["status"] == 401


def test_the_page_renders_for_an_agent(tenant, make_agent):
    amy = make_agent(tenant, "amy")
    page = client_for(amy).get("/inbox/")
    assert page.status_code == 200
    assert b'id="inbox"' in page.content
    assert str(tenant.pk).encode() in page.content


def test_attachments_are_served_from_the_tenants_storage_only(tenant, other_tenant, make_agent, settings, tmp_path):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    settings.MEDIA_ROOT = tmp_path
    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant, texts=())
    image = default_storage.save(f"{tenant.pk}/media/x/photo.png", ContentFile(b"\x89PNG fake"))
    stray = default_storage.save(f"{other_tenant.pk}/media/x/theirs.pdf", ContentFile(b"%PDF theirs"))
    media = [
        {"kind": "image", "mime_type": "image/png", "storage_path": image},
        {"kind": "document", "mime_type": "application/pdf", "storage_path": stray, "filename": "theirs.pdf"},
    ]
    message = Message.objects.create(
        tenant=tenant, conversation=conversation, channel=conversation.channel, direction="in", sender="user",
        kind="image", payload={"normalized": {"media": media}},
    )  # fmt: skip
    base = f"/inbox/api/conversations/{conversation.pk}/media/{message.pk}"

    shown = client_for(amy).get(f"{base}/0/?tenant={tenant.pk}")
    assert (shown.status_code, shown["Content-Type"]) == (200, "image/png")
    assert b"".join(shown.streaming_content) == b"\x89PNG fake"
    timeline = get(client_for(amy), f"conversations/{conversation.pk}/", tenant)["timeline"]
    assert [m["kind"] for m in timeline[0]["media"]] == ["image", "document"]
    # A path outside the tenant's storage is never served, whatever the message says.
    assert client_for(amy).get(f"{base}/1/?tenant={tenant.pk}").status_code == 404
    assert client_for(amy).get(f"{base}/2/?tenant={tenant.pk}").status_code == 404


def test_the_waiting_time_runs_from_the_request_for_a_human_until_an_agent_answers(tenant, make_agent, tenant_api):
    from conversations import state

    amy = make_agent(tenant, "amy")
    conversation = make_conversation(tenant)
    state.transition(conversation=conversation, to="handoff_requested", reason="keyword: human")
    conversation.refresh_from_db()
    assert conversation.waiting_since == conversation.last_activity_at

    # Answered through the REST API (an integrator's helpdesk) as well as from the inbox.
    answer = tenant_api.post(
        f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/reply/", {"text": "on it"}, format="json"
    )
    assert answer.status_code in (200, 201), answer.content
    conversation.refresh_from_db()
    assert (conversation.state, conversation.waiting_since) == ("agent", None)
    assert get(client_for(amy), "conversations/", tenant)["results"][0]["waiting_since"] is None
