"""The platform's fixed phrases: every phrase in the five languages, English for any other."""

from __future__ import annotations

import re

import pytest

from conversations import phrases


def test_every_phrase_is_written_in_every_language_with_the_same_placeholders() -> None:
    for key, texts in phrases.PHRASES.items():
        assert set(texts) == set(phrases.LANGUAGES), key
        english = set(re.findall(r"\{(\w+)\}", texts["en"]))
        for language, text in texts.items():
            assert set(re.findall(r"\{(\w+)\}", text)) == english, (key, language)


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("pt-BR", "Ana entrou na conversa."),
        ("es", "Ana se unió a la conversación."),
        ("FR", "Ana a rejoint la conversation."),
        ("de_DE", "Ana ist dem Gespräch beigetreten."),
        ("ja", "Ana joined the conversation."),
        (None, "Ana joined the conversation."),
        ("", "Ana joined the conversation."),
    ],
)
def test_phrase_in_the_conversation_language_or_english(language: str | None, expected: str) -> None:
    assert phrases.phrase("agent_joined", language, agent="Ana") == expected


def test_owner_names_the_brand_as_each_language_does() -> None:
    assert phrases.owner("Acme", "en") == "Acme's"
    assert phrases.owner("", "en") == "our"
    assert phrases.phrase("offline_preamble", "pt", owner=phrases.owner("Acme", "pt")) == (
        "Eis o que encontrei nos documentos da Acme:"
    )


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(KeyError):
        phrases.phrase("no_such_phrase", "en")
