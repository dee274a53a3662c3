"""Accent- and case-insensitive text folding and word splitting (handoff keywords, offline answerer)."""

from __future__ import annotations

import re
import unicodedata

WORD_RE = re.compile(r"\w+", re.UNICODE)


def fold(text: str) -> str:
    """'Humáno  AGENTE' -> 'humano  agente': NFKD, combining marks dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    return WORD_RE.findall(fold(text))
