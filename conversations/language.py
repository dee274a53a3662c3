"""The language a user writes in, detected offline from their messages.

py3langid (langid.py's naive Bayes over byte n-grams, 97 languages, 4.6 MB, numpy only) classifies
the turn's text. Short chat messages are hard: on the labelled messages of
tests/conversations/language_examples.py (100 messages of 2-12 words in en/pt/es/fr/de) it is
right 99 % of the time (lingua-language-detector, 96 MB, the same 99 % restricted to those five
languages and 84 % over all of its languages in low-accuracy mode; measured when this was chosen).
A detection is kept only when it is confident:

- the best of all languages with probability >= ``CONFIDENT`` (an Italian or Dutch message is
  recognised as such, and the LLM answers in it), else
- the best of the *expected* languages (the platform's five, the tenant's locales, the conversation's
  language so far) with >= ``EXPECTED_SHARE`` of their probability mass,

and only for text with at least ``MIN_LETTERS`` letters in at least two distinct words ("ok",
"thanks", "question 1 question 2" say nothing). Otherwise the conversation keeps the language it had (``None`` here).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from conversations import phrases

CONFIDENT = 0.5
EXPECTED_SHARE = 0.6
MIN_LETTERS = 8
WORD = re.compile(r"[^\W\d_]+")
URL_OR_MENTION = re.compile(r"https?://\S+|www\.\S+|\S+@\S+|@\w+")

_lock = threading.Lock()
_identifier: Any = None


def _model() -> Any:
    """The classifier, loaded once per process (~1 s: the model is xz-compressed)."""
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def _base(tag: str) -> str:
    return (tag or "").replace("_", "-").split("-")[0].strip().lower()


def detect(text: str, expected: Iterable[str] = ()) -> str | None:
    """The ISO 639-1 code of the language ``text`` is written in, or None when it is too short or
    the detector is not confident. ``expected``: language tags more likely than the rest."""
    cleaned = URL_OR_MENTION.sub(" ", text or "")
    words = WORD.findall(cleaned)
    distinct = {w.casefold() for w in words}
    if len(distinct) < 2 or sum(len(w) for w in distinct) < MIN_LETTERS:
        return None
    ranked: list[tuple[str, float]] = _model().rank(cleaned[:2000])
    best, probability = ranked[0]
    if probability >= CONFIDENT:
        return str(best)
    likely = {*phrases.LANGUAGES, *(_base(tag) for tag in expected)}
    among = [(code, p) for code, p in ranked if code in likely]
    total = sum(p for _, p in among)
    if among and total > 0 and among[0][1] / total >= EXPECTED_SHARE:
        return str(among[0][0])
    return None


def conversation_language(text: str, *, current: str = "", fallback: str = "en", expected: Iterable[str] = ()) -> str:
    """The language to answer ``text`` in: detected from it, else the conversation's ``current``
    language, else ``fallback`` (the contact's or the tenant's main locale)."""
    detected = detect(text, expected=[*expected, *([current] if current else [])])
    return detected or _base(current) or _base(fallback) or phrases.DEFAULT_LANGUAGE


# English names of the languages people most often write in, for the LLM's instruction.
NAMES = {
    "en": "English", "pt": "Portuguese", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
    "nl": "Dutch", "pl": "Polish", "ro": "Romanian", "sv": "Swedish", "da": "Danish", "no": "Norwegian",
    "fi": "Finnish", "cs": "Czech", "el": "Greek", "tr": "Turkish", "ru": "Russian", "uk": "Ukrainian",
    "ar": "Arabic", "he": "Hebrew", "hi": "Hindi", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
    "id": "Indonesian", "vi": "Vietnamese", "th": "Thai", "ca": "Catalan", "gl": "Galician", "hu": "Hungarian",
}  # fmt: skip


def name(code: str) -> str:
    """The language's English name for the LLM ("Portuguese"), or its code when not listed."""
    base = _base(code) or phrases.DEFAULT_LANGUAGE
    return NAMES.get(base, f"the language with ISO 639-1 code '{base}'")
