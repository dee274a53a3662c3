"""Small pure parts: keyword matching, the offline answerer, the SSRF guard, cost, the state machine."""

from __future__ import annotations

from decimal import Decimal

import pytest

from config.egress import EgressRefused, check_url
from conversations import handoff, state
from conversations.llm import estimate_cost
from conversations.llm.base import CompletionRequest, ContextPassage
from conversations.llm.offline import OfflineAnswerer


@pytest.mark.parametrize(
    ("text", "keywords", "expected"),
    [
        ("Can I talk to a HUMAN?", ["human"], "human"),
        ("humans only", ["human"], None),
        ("that was helpful", ["help"], None),
        ("¡Quiero un HUMÁNO ya!", ["humano"], "humano"),
        ("Je veux un  Conseiller humain", ["conseiller humain"], "conseiller humain"),
        ("agent-smith", ["agent"], "agent"),
        ("", ["agent"], None),
        ("anything", [], None),
    ],
)
def test_handoff_keywords_match_whole_words_ignoring_case_and_accents(text, keywords, expected):
    assert handoff.matched_keyword(text, keywords) == expected


def passage(marker, title, content, page=None):
    return ContextPassage(marker=marker, chunk_id=str(marker), document_id="d", title=title, content=content, page=page)


def test_offline_answerer_quotes_the_answering_sentence_and_names_its_source_once():
    request = CompletionRequest(
        messages=[],
        query="How long does standard shipping take?",
        passages=[
            passage(
                1,
                "Shipping guide",
                "Shipping\n\nWe ship worldwide. Standard shipping takes 3 to 5 days. Gift wrap is free.",
                2,
            ),
            passage(2, "Shipping guide", "Standard shipping takes 3 to 5 days.", 2),
        ],
        brand_name="Acme",
    )

    completion = OfflineAnswerer().complete(request)

    assert completion.text == (
        "Here is what I found in Acme's documents:\n\n"
        "Standard shipping takes 3 to 5 days.\n\n"
        "Sources: Shipping guide (p. 2)\n"
        "(Automatic answer quoted from the documents; no AI model is connected.)"
    )
    assert completion.cited_markers == [1]
    assert completion.usage.prompt_tokens == 0


def test_offline_answerer_without_passages_says_it_does_not_know_and_offers_a_person():
    request = CompletionRequest(messages=[], query="Do you sell bikes?", brand_name="Acme", handoff_keyword="human")
    assert OfflineAnswerer().complete(request).text == (
        "I couldn't find anything about that in Acme's documents. I'm an automatic assistant that can only "
        "quote those documents (no AI model is connected), so I don't know the answer. "
        'If you would like to talk to a person, write "human".'
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://10.1.2.3/",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/",
        "https://localhost/",
    ],
)
def test_tool_endpoints_on_private_addresses_are_refused(url, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    with pytest.raises(EgressRefused):
        check_url(url)


def test_plain_http_is_refused_unless_private_targets_are_allowed(settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    with pytest.raises(EgressRefused, match="the endpoint must use https"):
        check_url("http://example.com/hook", https_only=True)
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    check_url("http://127.0.0.1:9/hook", https_only=True)


def test_cost_uses_the_price_table_and_dated_snapshots_of_a_model(settings):
    settings.LLM_PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.5, 10.0)}
    assert estimate_cost(model="gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=0) == Decimal("0.150000")
    assert estimate_cost(model="gpt-4o-mini-2024-07-18", prompt_tokens=0, completion_tokens=1000) == Decimal("0.000600")
    assert estimate_cost(model="llama3.1:8b", prompt_tokens=5000, completion_tokens=5000) == Decimal("0")


def test_state_machine_allows_only_listed_transitions(conversation_of_bot):
    conversation = conversation_of_bot
    state.transition(conversation=conversation, to="handoff_requested", reason="keyword: help")
    state.transition(conversation=conversation, to="agent", reason="agent replied")
    state.transition(conversation=conversation, to="resolved", reason="resolved")
    assert conversation.state == "resolved"
    state.transition(conversation=conversation, to="bot", reason="user wrote again")
    assert conversation.state == "bot"


@pytest.fixture
def conversation_of_bot(tenant):
    from channels_app.models import Channel
    from conversations.models import Contact, Conversation

    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="line")
    contact = Contact.objects.create(tenant=tenant, channel=channel, external_id="x")
    return Conversation.objects.create(tenant=tenant, channel=channel, contact=contact)
