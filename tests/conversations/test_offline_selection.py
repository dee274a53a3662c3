"""Which sentences the offline answerer quotes (conversations.llm.offline.select), on keyword scores
alone (no embedder): two sentences the scores cannot tell apart are both quoted, whatever their
length; a clear best sentence is quoted alone; a short answer is not padded with sentences that do not
answer (nor with another heading's)."""

from __future__ import annotations

from conversations.llm import offline
from conversations.llm.base import ContextPassage


def passage(marker: int, content: str, section: str = "") -> ContextPassage:
    return ContextPassage(
        marker=marker, chunk_id=str(marker), document_id="d", title="Guide", content=content, section=section
    )


def quoted(query: str, *passages: ContextPassage) -> list[str]:
    return [s.text for s in offline.select(query, list(passages)).sentences]


LONG_TAIL = (
    "which the owners of the company confirmed in a letter sent to every shareholder and to the staff of "
    "the four regional offices before the end of the financial year"
)


def test_two_sentences_the_scores_cannot_tell_apart_are_both_quoted_whatever_their_length():
    first = f"The harbour of Dyrrachium was rebuilt by the Normans in 1082, {LONG_TAIL}."
    second = f"The harbour of Dyrrachium was taken back by the Byzantines in 1083, {LONG_TAIL}."
    assert len(first.split()) + len(second.split()) > offline.MAX_WORDS

    answer = quoted("Who held the harbour of Dyrrachium?", passage(1, f"{first} {second}"))

    assert answer == [first, second]


def test_a_clear_best_sentence_is_quoted_alone():
    best = f"Standard shipping to Spain costs 7.90 EUR and takes two to four business days, {LONG_TAIL}."
    text = f"{best} Gift wrapping is free for every order placed before December."

    assert quoted("How much does shipping to Spain cost?", passage(1, text)) == [best]


def test_a_short_answer_is_not_padded_with_the_sentences_around_it():
    text = (
        "The league sold six packages of live matches in 2006. Sky picked up the remaining four for 1.3 billion "
        "pounds. Setanta Sports, an Irish broadcaster, bought the other two packages after a long auction."
    )

    answer = quoted("How many packages of live matches did the league sell in 2006?", passage(1, text))

    assert answer == ["The league sold six packages of live matches in 2006."]


def test_another_headings_sentence_never_joins_a_short_answer():
    text = (
        "Shipping\nShipping to Spain costs 7.90 EUR.\n\n"
        "Price match\nIf you find the same device cheaper elsewhere, we refund the difference."
    )

    assert quoted("How much is shipping to Spain?", passage(1, text)) == ["Shipping to Spain costs 7.90 EUR."]
