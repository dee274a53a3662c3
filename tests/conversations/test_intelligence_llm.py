"""Conversation intelligence with the tenant's LLM (issue #17): one chat completion per analysis through
the real openai client against a local OpenAI-compatible server, validated strictly, and the offline
embedder analysis whenever the LLM fails, times out or answers something else."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
from django.utils import timezone

from channels_app.models import Channel, new_widget_key
from config import metrics
from conversations import intelligence
from conversations.models import Conversation
from tests.conversations.conftest import conversation_with_texts
from tests.conversations.servers import OpenAIScript

CATEGORIES = [
    {"name": "Shipping", "description": "Delivery times, shipping costs, tracking a parcel, delivery countries"},
    {"name": "Returns", "description": "Returning an item, refunds, exchanges, return labels"},
    {"name": "Billing", "description": "Invoices, payments, charges on a card, payment methods, receipts"},
]
# What the embedder makes of these words (tests/conversations/test_intelligence.py): negative, Shipping.
LATE_PARCEL = ["Where is my parcel?", "It is two weeks late, this is unacceptable!"]
OFFLINE = ("negative", ["Shipping"])


def _conversation(tenant: Any, texts: list[str]) -> Conversation:
    tenant.settings = {**tenant.settings, "categories": CATEGORIES}
    tenant.save(update_fields=["settings"])
    channel = Channel.objects.filter(tenant=tenant).first() or Channel.objects.create(
        tenant=tenant, type=Channel.Type.WEBCHAT, name="Site", external_id=new_widget_key()
    )
    # The bot's words are not sent to the LLM.
    conversation = conversation_with_texts(channel, texts, reply="The bot said something wonderful.")
    Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now() - dt.timedelta(minutes=5))
    return Conversation.objects.select_related("tenant").get(pk=conversation.pk)


def _analysis(conversation: Conversation) -> tuple[str, list[str]]:
    conversation.refresh_from_db()
    assert conversation.analysed_at is not None
    return conversation.sentiment, conversation.tags


def _count(name: str, **labels: str) -> float:
    return metrics.scrape_registry(gauges=False).get_sample_value(f"metachat_{name}", labels) or 0.0


def _answer(sentiment: Any, tags: Any) -> dict[str, Any]:
    return {"content": json.dumps({"sentiment": sentiment, "tags": tags})}


@pytest.mark.django_db(transaction=True)
def test_a_tenant_with_an_llm_gets_the_llms_sentiment_and_tags_from_one_call_listing_its_categories(
    tenant, openai_server: OpenAIScript
) -> None:
    conversation = _conversation(tenant, LATE_PARCEL)
    openai_server.replies.append(_answer("positive", ["Billing"]))  # not what the embedder would say
    llm_before = _count("conversation_analyses_total", method="llm")

    intelligence.conversation_analyse(conversation=conversation)

    assert _analysis(conversation) == ("positive", ["Billing"])
    assert _count("conversation_analyses_total", method="llm") == llm_before + 1
    [request] = openai_server.requests
    system, user = request["messages"]
    for category in CATEGORIES:
        assert f"- {category['name']}: {category['description']}" in system["content"]
    assert user == {"role": "user", "content": " ".join(LATE_PARCEL)}  # the user's words, not the bot's
    assert request["temperature"] == 0 and request["max_tokens"] == intelligence.LLM_MAX_TOKENS
    # The call's usage joins the conversation's totals (the local server reports 100 + 20 tokens).
    assert (conversation.prompt_tokens, conversation.completion_tokens) == (100, 20)


@pytest.mark.django_db(transaction=True)
def test_only_the_tenants_exact_category_names_are_kept_as_tags(tenant, openai_server: OpenAIScript) -> None:
    conversation = _conversation(tenant, ["I want my money back for these shoes"])
    answer = {"sentiment": "negative", "tags": ["Refunds", "returns", "Returns", "Returns", 7, "Billing"]}
    openai_server.replies.append({"content": "```json\n" + json.dumps(answer) + "\n```"})

    intelligence.conversation_analyse(conversation=conversation)

    assert _analysis(conversation) == ("negative", ["Returns", "Billing"])


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({"content": "The customer seems negative and asks about Shipping."}, "llm_invalid_answer"),
        (_answer("furious", ["Billing"]), "llm_invalid_answer"),
        (_answer("positive", "Billing"), "llm_invalid_answer"),
        ({"status": 500}, "llm_http_error"),
        ({**_answer("positive", ["Billing"]), "delay": 2.5}, "llm_timeout"),
        ({"body": b"<html>502 Bad Gateway</html>"}, "llm_invalid_response"),
        ({"body": b'{"id": "x", "object": "chat.completion", "choices": []}'}, "llm_empty"),
        ({"body": b'{"choices": [{"message": "hello"}]}'}, "llm_invalid_response"),
    ],
    ids=[
        "prose",
        "unknown-sentiment",
        "tags-not-a-list",
        "http-500",
        "timeout",
        "not-json",
        "no-choices",
        "no-message",
    ],
)
@pytest.mark.django_db(transaction=True)
def test_a_failing_llm_falls_back_to_the_embedders_analysis(
    tenant, openai_server: OpenAIScript, settings, caplog, reply: dict[str, Any], reason: str
) -> None:
    settings.LLM_TIMEOUT_SECONDS = 1
    conversation = _conversation(tenant, LATE_PARCEL)
    openai_server.replies.append(reply)
    fallbacks_before = _count("conversation_analysis_llm_fallbacks_total", reason=reason)

    with caplog.at_level(logging.WARNING, logger="conversations.intelligence"):
        insight = intelligence.conversation_analyse(conversation=conversation)

    assert insight is not None
    assert _analysis(conversation) == OFFLINE
    assert len(openai_server.requests) == 1
    assert [getattr(r, "reason", None) for r in caplog.records] == [reason]
    assert _count("conversation_analysis_llm_fallbacks_total", reason=reason) == fallbacks_before + 1
    assert (conversation.prompt_tokens, conversation.completion_tokens) == (0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_tenant_without_an_llm_never_calls_it(tenant, openai_server: OpenAIScript) -> None:
    tenant.settings = {**tenant.settings, "llm": {"provider": "offline"}}
    tenant.save(update_fields=["settings"])
    conversation = _conversation(tenant, LATE_PARCEL)

    assert intelligence.analyse_pending() == 1

    assert _analysis(conversation) == OFFLINE
    assert openai_server.requests == []


@pytest.mark.django_db(transaction=True)
def test_a_tenants_own_endpoint_goes_through_the_egress_guard_and_a_refusal_skips_the_llm_for_the_run(
    tenant, other_tenant, openai_server: OpenAIScript, settings, caplog
) -> None:
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    # The tenant's own endpoint (not the deployment's) at a private address: refused by the guard.
    own = openai_server.url.removesuffix("/v1") + "/tenant/v1"  # type: ignore[attr-defined]
    tenant.settings = {**tenant.settings, "llm": {"provider": "openai_compatible", "baseUrl": own}}
    tenant.save(update_fields=["settings"])
    mine = [_conversation(tenant, LATE_PARCEL) for _ in range(2)]
    # The deployment's endpoint is the operator's: not guarded, so the other tenant still uses the LLM.
    theirs = _conversation(other_tenant, ["Thanks, all sorted"])
    openai_server.default = lambda body: _answer("positive", [])

    with caplog.at_level(logging.WARNING, logger="conversations.intelligence"):
        assert intelligence.analyse_pending() == 3

    assert [_analysis(c) for c in mine] == [OFFLINE, OFFLINE]
    assert _analysis(theirs) == ("positive", [])
    assert [r["messages"][-1]["content"] for r in openai_server.requests] == ["Thanks, all sorted"]
    # Refused once; the tenant's second conversation did not try its LLM again in the same run.
    assert [getattr(r, "reason", None) for r in caplog.records] == ["llm_egress_refused"]
