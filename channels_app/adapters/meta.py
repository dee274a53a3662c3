"""What the WhatsApp and Messenger adapters share: Meta's webhook signature and reply splitting."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

SHA256_HEADER = "x-hub-signature-256"
SHA1_HEADER = "x-hub-signature"


class MetaSignatureVerifier:
    """HMAC of the raw body with the app secret, compared in constant time.

    Holds prepared HMAC objects (copied per request) rather than the secret string, so a cached
    verifier keeps no plaintext credential around in a readable form.
    """

    __slots__ = ("_sha1", "_sha256")

    def __init__(self, app_secret: str):
        key = app_secret.encode()
        self._sha256 = hmac.new(key, digestmod=hashlib.sha256)
        self._sha1 = hmac.new(key, digestmod=hashlib.sha1)

    def __repr__(self) -> str:
        return "<MetaSignatureVerifier>"

    def verify(self, *, body: bytes, headers: Mapping[str, str], accept_sha1: bool = False) -> bool:
        sig256 = _header(headers, SHA256_HEADER)
        if sig256:
            return _matches(self._sha256, body, sig256, "sha256=")
        sig1 = _header(headers, SHA1_HEADER)
        if sig1 and accept_sha1:
            return _matches(self._sha1, body, sig1, "sha1=")
        return False


def as_dict(value: Any) -> dict[str, Any]:
    """A payload part that should be an object, or {} when it is anything else (the sender is Meta,
    or whoever holds the app secret: a part of the wrong type is skipped, never a crash)."""
    return value if isinstance(value, dict) else {}


def dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a payload part that should be a list of objects."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
        return ""
    return value


def _matches(prepared: hmac.HMAC, body: bytes, header: str, prefix: str) -> bool:
    if not header.startswith(prefix):
        return False
    mac = prepared.copy()
    mac.update(body)
    return hmac.compare_digest(mac.hexdigest(), header[len(prefix) :].strip().lower())


def sign(body: bytes, app_secret: str, algorithm: str = "sha256") -> str:
    """The header value Meta would send (tests, benchmarks)."""
    digest = hmac.new(app_secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return f"{algorithm}={digest}"


# A sentence ends with . ! ? … (or CJK equivalents), maybe closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*\s+")


def split_text(text: str, limit: int) -> list[str]:
    """Split a reply into parts of at most ``limit`` characters, preferring paragraph breaks, then
    sentence ends, then line breaks, then spaces; a single overlong word is cut hard."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = _best_cut(window, limit)
        part = rest[:cut].rstrip()
        if part:
            parts.append(part)
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def _best_cut(window: str, limit: int) -> int:
    floor = limit // 3  # never produce a tiny first part when a later boundary exists
    para = window.rfind("\n\n", 0, limit)
    if para >= floor:
        return para + 2
    best = -1
    for match in _SENTENCE_END.finditer(window):
        end = match.end()
        if end > limit:
            # the whitespace after the punctuation may straddle the limit: cut after the punctuation
            end = match.start() + 1
            if end <= limit:
                best = end
            break
        best = end
    if best >= floor:
        return best
    for sep in ("\n", " "):
        pos = window.rfind(sep, 0, limit)
        if pos >= floor:
            return pos + 1
    return limit
