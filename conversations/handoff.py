"""Human handoff: keyword detection and what the user is told.

Keywords are the tenant's ``humanHandoffKeywords``, matched case- and accent-insensitively as whole
words (or whole phrases): "HUMANO" and "humáno" match "humano"; "helpful" does not match "help".
The built-in tool ``request_human`` (conversations.tools) reaches the same state change.
"""

from __future__ import annotations

import re
from functools import lru_cache

from conversations.textnorm import fold

HANDOFF_NOTICE = {
    "en": "I'm passing you to a member of our team. Someone will reply here as soon as possible.",
    "fr": "Je vous mets en relation avec un membre de notre équipe. Quelqu'un vous répondra ici dès que possible.",
    "es": "Te paso con una persona de nuestro equipo. Alguien te responderá aquí lo antes posible.",
    "pt": "Vou passar você para alguém da nossa equipe. Alguém responderá aqui assim que possível.",
    "de": "Ich verbinde Sie mit einem Mitglied unseres Teams. Jemand antwortet Ihnen hier so bald wie möglich.",
}
WAITING_NOTICE = {
    "en": "A member of our team will reply here soon.",
}


@lru_cache(maxsize=512)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    folded = sorted({" ".join(fold(k).split()) for k in keywords if k.strip()}, key=len, reverse=True)
    if not folded:
        return None
    # Phrases match across any whitespace; \b-like edges that also work next to non-ASCII letters.
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in k.split()) for k in folded)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.UNICODE)


def matched_keyword(text: str, keywords: list[str]) -> str | None:
    """The keyword (folded) found in ``text`` as a whole word or phrase, else None."""
    pattern = _pattern(tuple(keywords))
    if pattern is None or not text:
        return None
    match = pattern.search(fold(text))
    return " ".join(match.group(0).split()) if match else None


def notice_text(language: str) -> str:
    return HANDOFF_NOTICE.get((language or "en").split("-")[0].lower(), HANDOFF_NOTICE["en"])


def keyword_hint(keywords: list[str]) -> str:
    """What the offline answerer suggests: 'write "human"'."""
    return f'write "{keywords[0]}"' if keywords else ""
