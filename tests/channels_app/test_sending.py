"""Replies, typing indicators and error handling against a local server speaking the Graph API."""

from __future__ import annotations

import pytest

from channels_app import services
from channels_app.adapters.base import SendError
from channels_app.adapters.meta import split_text
from events.models import Event
from tests.channels_app.conftest import MS_TOKEN, WA_TOKEN, inbound_from

WA_ERROR_131047 = {
    "error": {
        "message": "(#131047) Re-engagement message",
        "type": "OAuthException",
        "code": 131047,
        "error_data": {
            "messaging_product": "whatsapp",
            "details": "Message failed to send because more than 24 hours have passed since the customer last "
            "replied to this number.",
        },
        "fbtrace_id": "AbCdEf",
    }
}
WA_ERROR_130429 = {
    "error": {
        "message": "(#130429) Rate limit hit",
        "type": "OAuthException",
        "code": 130429,
        "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached."},
        "fbtrace_id": "AbCdEg",
    }
}
TOKEN_190 = {
    "error": {
        "message": "Error validating access token: Session has expired on Tuesday.",
        "type": "OAuthException",
        "code": 190,
        "error_subcode": 463,
        "fbtrace_id": "AbCdEh",
    }
}
MS_OUTSIDE_WINDOW = {
    "error": {
        "message": "(#10) This message is sent outside of allowed window.",
        "type": "OAuthException",
        "code": 10,
        "error_subcode": 2018278,
        "fbtrace_id": "AbCdEi",
    }
}


@pytest.fixture(autouse=True)
def _contacts_wrote_an_hour_ago(request: pytest.FixtureRequest) -> None:
    """Inside the customer-service window (the window's own tests are in test_window.py)."""
    for name, sender in (("wa_channel", "972987654321"), ("ms_channel", "6944325612345678")):
        if name in request.fixturenames:
            inbound_from(request.getfixturevalue(name), sender, hours_ago=1)


def test_whatsapp_reply_is_posted_in_the_cloud_api_format(wa_channel, graph):
    result = services.send_reply(channel=wa_channel, recipient_id="972987654321", text="We open at 9.")
    [request] = graph.posts()
    assert request["path"] == "/v25.0/1122334455667/messages"
    assert request["authorization"] == f"Bearer {WA_TOKEN}"
    assert request["query"] == ""  # the token never travels in the URL
    assert request["json"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "972987654321",
        "type": "text",
        "text": {"preview_url": False, "body": "We open at 9."},
    }
    assert result.platform_message_ids == ["wamid.OUT1=="]


def test_whatsapp_reply_quotes_the_message_it_answers(wa_channel, graph):
    services.send_reply(channel=wa_channel, recipient_id="972987654321", text="Yes.", reply_to_message_id="wamid.IN1")
    assert graph.posts()[0]["json"]["context"] == {"message_id": "wamid.IN1"}


def test_long_whatsapp_reply_is_split_at_4096_on_sentence_boundaries(wa_channel, graph):
    sentence = "This sentence is part of a long answer. "
    text = (sentence * 200).strip()  # 8,000 characters
    result = services.send_reply(channel=wa_channel, recipient_id="972987654321", text=text)
    bodies = [r["json"]["text"]["body"] for r in graph.posts()]
    assert len(bodies) == 2 and len(result.platform_message_ids) == 2
    assert all(len(b) <= 4096 for b in bodies)
    assert bodies[0].endswith("long answer.")
    assert bodies[1].startswith("This sentence")
    assert " ".join(bodies) == text


def test_messenger_reply_uses_the_send_api_with_messaging_type_response(ms_channel, graph):
    result = services.send_reply(channel=ms_channel, recipient_id="6944325612345678", text="Yes, on Sundays too.")
    [request] = graph.posts()
    assert request["path"] == "/v25.0/106543210987654/messages"
    assert request["authorization"] == f"Bearer {MS_TOKEN}"
    assert request["json"] == {
        "recipient": {"id": "6944325612345678"},
        "messaging_type": "RESPONSE",
        "message": {"text": "Yes, on Sundays too."},
    }
    assert result.platform_message_ids == ["m_OUT1"]


def test_long_messenger_reply_is_split_at_2000(ms_channel, graph):
    text = "Short one. " + ("word " * 700)
    services.send_reply(channel=ms_channel, recipient_id="6944325612345678", text=text)
    bodies = [r["json"]["message"]["text"] for r in graph.posts()]
    assert [len(b) <= 2000 for b in bodies] == [True, True]
    assert "".join(bodies).replace(" ", "") == text.replace(" ", "")


def test_whatsapp_typing_marks_the_message_read_with_a_typing_indicator(wa_channel, graph):
    assert services.send_typing(channel=wa_channel, recipient_id="972987654321", reply_to_message_id="wamid.IN1")
    [request] = graph.posts()
    assert request["json"] == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.IN1",
        "typing_indicator": {"type": "text"},
    }


def test_messenger_typing_sends_mark_seen_then_typing_on(ms_channel, graph):
    assert services.send_typing(channel=ms_channel, recipient_id="6944325612345678")
    assert [r["json"] for r in graph.posts()] == [
        {"recipient": {"id": "6944325612345678"}, "sender_action": "mark_seen"},
        {"recipient": {"id": "6944325612345678"}, "sender_action": "typing_on"},
    ]


def test_outside_the_24_hour_window_fails_permanently_without_retry(wa_channel, graph):
    graph.scripted = [(400, WA_ERROR_131047)]
    with pytest.raises(SendError) as caught:
        services.send_reply(channel=wa_channel, recipient_id="972987654321", text="Hi again")
    assert (caught.value.code, caught.value.permanent, caught.value.disable_channel) == (131047, True, False)
    assert caught.value.details["reason"] == "outside_window"
    assert len(graph.posts()) == 1


def test_messenger_outside_window_fails_permanently(ms_channel, graph):
    graph.scripted = [(400, MS_OUTSIDE_WINDOW)]
    with pytest.raises(SendError) as caught:
        services.send_reply(channel=ms_channel, recipient_id="6944325612345678", text="Hi again")
    assert (caught.value.code, caught.value.permanent, caught.value.details["reason"]) == (10, True, "outside_window")


def test_throttling_is_retried_with_backoff_then_succeeds(wa_channel, graph):
    graph.scripted = [(400, WA_ERROR_130429), (429, WA_ERROR_130429)]
    result = services.send_reply(channel=wa_channel, recipient_id="972987654321", text="Hello")
    assert len(graph.posts()) == 3
    assert result.platform_message_ids == ["wamid.OUT3=="]


def test_server_errors_are_retried_and_then_reported_as_transient(ms_channel, graph, settings):
    settings.GRAPH_API_MAX_ATTEMPTS = 3
    graph.scripted = [(500, {"error": {"message": "An unknown error occurred", "code": 1}})] * 3
    with pytest.raises(SendError) as caught:
        services.send_reply(channel=ms_channel, recipient_id="6944325612345678", text="Hello")
    assert caught.value.permanent is False
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert len(graph.posts()) == 3


def test_invalid_token_disables_sending_and_says_so(wa_channel, graph, client):
    graph.scripted = [(401, TOKEN_190)]
    with pytest.raises(SendError) as caught:
        services.send_reply(channel=wa_channel, recipient_id="972987654321", text="Hello")
    assert caught.value.disable_channel is True
    wa_channel.refresh_from_db()
    assert wa_channel.sending_disabled_reason.startswith("access token invalid or expired (190)")
    event = Event.objects.for_tenant(wa_channel.tenant).get(type="channel.disabled")
    assert event.payload["channel_id"] == str(wa_channel.pk)
    # no further call reaches Meta while disabled
    with pytest.raises(SendError) as again:
        services.send_reply(channel=wa_channel, recipient_id="972987654321", text="Hello")
    assert again.value.code == "channel_disabled"
    assert len(graph.posts()) == 1
    health = client.get("/api/health").json()
    assert health["checks"]["channels"] == {
        "status": "down",
        "latency_ms": health["checks"]["channels"]["latency_ms"],
        "sending_disabled": 1,
    }
    assert health["status"] == "degraded"


def test_new_access_token_re_enables_sending(wa_channel, graph):
    services.channel_disable_sending(channel=wa_channel, reason="access token invalid or expired (190)")
    services.channel_set_credentials(channel=wa_channel, credentials={"access_token": "EAAnewtoken"})
    wa_channel.refresh_from_db()
    assert wa_channel.sending_disabled_reason == ""
    services.send_reply(channel=wa_channel, recipient_id="972987654321", text="Back")
    assert graph.posts()[0]["authorization"] == "Bearer EAAnewtoken"


def test_split_text_prefers_paragraphs_then_sentences_then_words():
    assert split_text("Short.", 10) == ["Short."]
    assert split_text("One two. Three four five.", 12) == ["One two.", "Three four", "five."]
    assert split_text("Para one.\n\nPara two is here.", 20) == ["Para one.", "Para two is here."]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
