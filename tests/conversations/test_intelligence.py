"""Conversation intelligence (issue #17): the user's sentiment and the tenant's own categories as tags,
offline with the real multilingual e5 embedder, stored on the conversation, filterable in the API,
counted in analytics, and never another tenant's."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from channels_app.models import Channel, new_widget_key
from conversations import intelligence
from conversations.analytics import DateRange, insights
from conversations.models import Conversation
from conversations.tasks import analyse_conversations
from knowledge.embedders import LocalE5Embedder
from tests.conversations.conftest import conversation_with_texts

CATEGORIES = [
    {"name": "Shipping", "description": "Delivery times, shipping costs, tracking a parcel, delivery countries"},
    {"name": "Returns", "description": "Returning an item, refunds, exchanges, return labels"},
    {"name": "Billing", "description": "Invoices, payments, charges on a card, payment methods, receipts"},
    {"name": "Opening hours", "description": "When the shop is open, store hours, holidays"},
    {"name": "Account", "description": "Logging in, passwords, changing email address or personal details"},
]

# Labelled by hand; none of them is an anchor sentence of conversations.intelligence.
SENTIMENT_EXAMPLES = [
    ("negative", "I'm really annoyed, my package is two weeks late and no one replies"),
    ("negative", "Este produto é horrível, quero meu dinheiro de volta"),
    ("negative", "Estoy muy molesto, nadie me responde"),
    ("negative", "C'est inadmissible, la commande est arrivée cassée"),
    ("negative", "worst experience ever"),
    ("neutral", "Do you ship to Portugal?"),
    ("neutral", "Qual é o horário de funcionamento?"),
    ("neutral", "¿Cuánto cuesta el envío?"),
    ("neutral", "Quels sont vos horaires d'ouverture ?"),
    ("neutral", "I need to update my email address"),
    ("positive", "Thanks a lot, you solved my problem!"),
    ("positive", "Muito obrigado, excelente atendimento"),
    ("positive", "¡Genial, muchas gracias por la ayuda!"),
    ("positive", "Vielen Dank, super Service!"),
    ("positive", "awesome, that's exactly what I needed"),
]
TAG_EXAMPLES = [
    (["Shipping"], "How much is shipping to Spain?"),
    (["Shipping"], "Where is my parcel? The tracking hasn't moved"),
    (["Shipping"], "Vocês entregam em Portugal?"),
    (["Returns"], "I want to return these shoes and get my money back"),
    (["Returns"], "¿Cómo puedo devolver un producto?"),
    (["Billing"], "I was charged twice on my credit card"),
    (["Opening hours"], "Are you open on Sunday?"),
    (["Account"], "I forgot my password"),
    (["Account"], "Ich möchte meine E-Mail-Adresse ändern"),
    ([], "Hello"),
    ([], "What's the weather like?"),
]


@pytest.fixture(scope="module")
def e5() -> LocalE5Embedder:
    return LocalE5Embedder()


@pytest.mark.parametrize(("expected", "text"), SENTIMENT_EXAMPLES)
def test_sentiment_of_labelled_messages_in_five_languages(e5: LocalE5Embedder, expected: str, text: str) -> None:
    insight = intelligence.analyse_texts([text], [], e5)
    assert insight is not None and insight.sentiment == expected


@pytest.mark.parametrize(("expected", "text"), TAG_EXAMPLES)
def test_tags_from_the_tenants_categories_and_none_for_small_talk(
    e5: LocalE5Embedder, expected: list[str], text: str
) -> None:
    insight = intelligence.analyse_texts([text], CATEGORIES, e5)
    assert insight is not None and insight.tags == expected


def _conversation(channel: Channel, texts: list[str], *, created: dt.datetime) -> Conversation:
    # The bot's words are not the user's sentiment.
    conversation = conversation_with_texts(channel, texts, reply="Thank you, wonderful, great, perfect!")
    old = created - dt.timedelta(minutes=5)
    Conversation.objects.filter(pk=conversation.pk).update(created_at=created, last_activity_at=old)
    return conversation


@pytest.mark.django_db(transaction=True)
def test_conversations_get_sentiment_and_tags_filterable_in_the_api_and_counted_per_tenant(
    tenant, other_tenant, api_for
) -> None:
    tenant.settings = {**tenant.settings, "categories": CATEGORIES}
    tenant.save(update_fields=["settings"])
    other_tenant.settings = {**other_tenant.settings, "categories": CATEGORIES}
    other_tenant.save(update_fields=["settings"])
    now = timezone.now()
    channel, other_channel = (
        Channel.objects.create(tenant=t, type=Channel.Type.WEBCHAT, name="Site", external_id=new_widget_key())
        for t in (tenant, other_tenant)
    )
    angry = _conversation(channel, ["Where is my parcel?", "It is two weeks late, this is unacceptable!"], created=now)
    happy = _conversation(channel, ["Thanks a lot, you solved my problem!"], created=now)
    theirs = _conversation(other_channel, ["Still no delivery, I'm furious"], created=now)

    assert analyse_conversations() == 3

    angry.refresh_from_db()
    happy.refresh_from_db()
    assert (angry.sentiment, angry.tags) == ("negative", ["Shipping"])
    assert (happy.sentiment, happy.tags) == ("positive", [])
    assert analyse_conversations() == 0  # nothing new from the users since

    client = api_for(tenant)
    url = f"/api/tenants/{tenant.pk}/conversations/"
    listed = client.get(url, {"sentiment": "negative", "tag": "Shipping"}).json()["results"]
    assert [c["id"] for c in listed] == [str(angry.pk)]  # not the other tenant's angry shipper
    assert listed[0]["sentiment"] == "negative" and listed[0]["tags"] == ["Shipping"]
    assert client.get(url, {"sentiment": "furious"}).status_code == 400

    today = timezone.localdate()
    counted = insights([tenant.pk], DateRange(today - dt.timedelta(days=1), today))
    assert {r["sentiment"]: r["conversations"] for r in counted["sentiment"]} == {
        "Negative": 1,
        "Neutral": 0,
        "Positive": 1,
        "Not analysed yet": 0,
    }
    assert counted["tags"] == [{"tag": "Shipping", "conversations": 1}]
    assert theirs.pk not in {c.pk for c in Conversation.objects.for_tenant(tenant)}


def test_a_tenants_own_embedding_endpoint_never_shares_cached_vectors_with_the_deployments() -> None:
    from knowledge.embedders import OpenAIEmbedder

    def embedder(base_url: str | None) -> OpenAIEmbedder:
        return OpenAIEmbedder(
            provider="openai", model="text-embedding-3-small", base_url=base_url, dimensions=None,
            with_key=lambda call: call("k"), guarded=True,
        )  # fmt: skip

    deployment, hostile = embedder(None), embedder("https://tenant.example/v1")
    assert deployment.model_id == hostile.model_id
    assert intelligence._embedder_key(deployment) != intelligence._embedder_key(hostile)


@pytest.mark.django_db(transaction=True)
def test_a_tenant_with_a_broken_embedder_never_holds_up_the_others(tenant, other_tenant, settings) -> None:
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    tenant.settings = {
        **tenant.settings,
        # Nothing listens there: every embedding call of this tenant fails.
        "embedding": {"provider": "openai_compatible", "model": "m", "baseUrl": "http://127.0.0.1:9/v1"},
    }
    tenant.save(update_fields=["settings"])
    now = timezone.now()
    channel, other_channel = (
        Channel.objects.create(tenant=t, type=Channel.Type.WEBCHAT, name="Site", external_id=new_widget_key())
        for t in (tenant, other_tenant)
    )
    broken = [_conversation(channel, [f"Where is my parcel {n}?"], created=now) for n in range(3)]
    theirs = _conversation(other_channel, ["Thanks a lot, you solved my problem!"], created=now)
    Conversation.objects.filter(pk=theirs.pk).update(last_activity_at=now - dt.timedelta(minutes=1))

    assert intelligence.analyse_pending(limit=2) == 0  # the broken tenant's two oldest fail...
    assert intelligence.analyse_pending(limit=2) == 1  # ...and are not retried ahead of the others

    theirs.refresh_from_db()
    assert theirs.sentiment == "positive"
    assert Conversation.objects.filter(pk__in=[c.pk for c in broken], analysed_at__isnull=False).count() == 3
    assert not Conversation.objects.filter(pk__in=[c.pk for c in broken]).exclude(sentiment="").exists()
