"""Standard Webhooks signatures (https://www.standardwebhooks.com/, v1 = HMAC-SHA256).

The secret is ``whsec_`` + base64 of 32 random bytes; the signed content is
``f"{webhook_id}.{timestamp}.{body}"``; the ``webhook-signature`` header holds one or more
space-separated ``v1,<base64 digest>`` (two during a secret rotation's grace period).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (decoded once per drain, not once per request)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign_with_key(*, key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` entry."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def sign(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    return sign_with_key(key=secret_key(secret), webhook_id=webhook_id, timestamp=timestamp, body=body)


def signature_header_for_keys(*, keys: list[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign_with_key(key=k, webhook_id=webhook_id, timestamp=timestamp, body=body) for k in keys)
