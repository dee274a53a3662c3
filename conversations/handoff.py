"""Human handoff: does the user ask for a person? And what the user is told.

Keywords are the tenant's ``humanHandoffKeywords``, matched case- and accent-insensitively as whole
words (or whole phrases): "HUMANO" and "humáno" match "humano"; "helpful" does not match "help".

A keyword hands off only when the message is a **request for a person** (``requested_handoff``), not
when the word sits inside an ordinary question:

- the message says nothing but the request: the keyword with only request words around it
  ("help", "human please", "I want to talk to an agent", "¡Quiero un humano ya!");
- or a person is asked for by a contact verb ("Can I speak to an agent about my refund?",
  "put me through to a human").

Besides the tenant's keywords, a short list of words for a person (``PERSON_WORDS``: "operator",
"representative", "a real person", their French, Spanish, Portuguese and German equivalents) is
recognised under the same two rules, so that "operator" reaches a human whatever the keyword list.
"Can you help me find gluten-free bread?" has "help" but asks the bot something: the bot answers (and
may still call ``request_human``, conversations.tools, when it cannot).
"""

from __future__ import annotations

import re
from functools import lru_cache

from conversations import phrases
from conversations.textnorm import fold, words

# Words for a person, recognised as if they were keywords (folded, whole words).
PERSON_WORDS = (
    "human", "humans", "person", "operator", "representative", "agent", "someone", "somebody", "staff",
    "humain", "conseiller", "conseillere", "operateur", "operatrice",
    "humano", "persona", "operador", "operadora", "asesor", "asesora", "agente",
    "atendente", "pessoa", "humana",
    "mensch", "menschen", "mitarbeiter", "mitarbeiterin", "berater",
)  # fmt: skip

# Words that may surround a keyword in a message that only asks for a person (folded). Anything
# else (a product, a place, a verb such as "find") makes the message a question for the bot.
_REQUEST_WORDS = """
    i im i'm me my we us you your u can could may might would will shall please pls plz ok okay hi hello hey
    now asap right away just only need needs want wanna would like like d get give have let talk speak chat
    connect contact reach transfer put through call see with to a an the some one any real live actual
    proper another other member of team from support is are there here anybody anyone yes sir thanks
    thank urgent urgently immediately again still directly am be being do does
    je veux voudrais parler a avec un une le la les des au aux moi svp stp s il vous plait merci besoin j ai
    de d du quelqu quelqu'un vrai vraie maintenant tout suite bonjour salut est ce que peux pouvez puis
    yo quiero querria quisiera hablar con el los por favor necesito ya ahora mismo hola puedo puede alguien
    real gracias de del una unas unos
    eu quero queria gostaria falar com o os um uma por favor preciso agora ola oi posso pode alguem obrigado
    ich mochte will bitte mit einem einer einen ein sprechen reden brauche jetzt sofort hallo kann konnen
    ist da jemand danke den die der das
"""
REQUEST_WORDS = frozenset(_REQUEST_WORDS.split())

# A person asked for by a contact verb, whatever follows ("speak to an agent about my refund").
CONTACT_VERBS = (
    "talk", "speak", "chat", "connect", "transfer", "transferred", "contact", "reach", "through",
    "parler", "hablar", "falar", "sprechen", "reden", "verbinden",
)  # fmt: skip
# Words allowed between the contact verb and the person ("talk to a real human").
_BRIDGE = r"(?:(?:to|with|me|a|an|the|one|of|your|some|real|live|actual|au|avec|un|une|le|la|con|el|una|com|o|um|uma|mit|einem|einer|einen|ein)\s+){0,4}"


@lru_cache(maxsize=512)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    folded = sorted({" ".join(fold(k).split()) for k in keywords if k.strip()}, key=len, reverse=True)
    if not folded:
        return None
    # Phrases match across any whitespace; \b-like edges that also work next to non-ASCII letters.
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in k.split()) for k in folded)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.UNICODE)


def matched_keyword(text: str, keywords: list[str]) -> str | None:
    """The keyword (folded) found in ``text`` as a whole word or phrase, else None (no intent test)."""
    pattern = _pattern(tuple(keywords))
    if pattern is None or not text:
        return None
    match = pattern.search(fold(text))
    return " ".join(match.group(0).split()) if match else None


@lru_cache(maxsize=512)
def _contact_pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    pattern = _pattern(keywords)
    if pattern is None:
        return None
    verbs = "|".join(CONTACT_VERBS)
    return re.compile(rf"(?<!\w)(?:{verbs})\s+{_BRIDGE}(?:{pattern.pattern})", re.UNICODE)


def _only_request_words(text: str, keyword: str) -> bool:
    """Whether ``text`` is ``keyword`` with nothing but request words around it."""
    folded = fold(text)
    phrase = r"\s+".join(re.escape(part) for part in keyword.split())
    rest = re.sub(rf"(?<!\w){phrase}(?!\w)", " ", folded, count=1)
    return all(word in REQUEST_WORDS for word in words(rest.replace("'", " ")))


def requested_handoff(text: str, keywords: list[str]) -> str | None:
    """The keyword (folded) of a message that asks for a person, else None (see the module's rules)."""
    if not text or not text.strip():
        return None
    # Each message of a burst (one per line) is judged on its own: "hi\nhuman please" asks.
    for line in text.splitlines():
        found = _requested_in(line, tuple(keywords) + PERSON_WORDS)
        if found:
            return found
    return None


def _requested_in(text: str, candidates: tuple[str, ...]) -> str | None:
    pattern = _pattern(candidates)
    if pattern is None or not text.strip():
        return None
    folded = fold(text)
    for match in pattern.finditer(folded):
        keyword = " ".join(match.group(0).split())
        if _only_request_words(folded, keyword):
            return keyword
    contact = _contact_pattern(candidates)
    found = contact.search(folded) if contact is not None else None
    if found is not None:
        inner = pattern.search(found.group(0))
        return " ".join(inner.group(0).split()) if inner else None
    return None


def notice_text(language: str) -> str:
    """The one handoff notice the user gets, in their language."""
    return phrases.phrase("handoff_notice", language)


def keyword_hint(keywords: list[str]) -> str:
    """What the offline answerer suggests: 'write "human"'."""
    return f'write "{keywords[0]}"' if keywords else ""
