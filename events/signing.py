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


def sign(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` entry."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signature_header(*, secrets: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(secret=s, webhook_id=webhook_id, timestamp=timestamp, body=body) for s in secrets)
