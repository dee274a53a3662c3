"""Voice notes to text through an OpenAI-compatible transcription endpoint (the deployment's
``VOICE_TRANSCRIPTION_URL``): ``POST <url>/audio/transcriptions`` as multipart (``file``, ``model``,
``response_format=json``) → ``{"text": "..."}``. The endpoint is the operator's, not a tenant's, so it
is called directly (like the Graph API), never with a URL a tenant chose. Errors are SendErrors:
throttling, 5xx and network failures are transient (the preparing task retries), others permanent.
"""

from __future__ import annotations

import logging

import requests
from django.conf import settings

from channels_app.adapters.base import SendError

logger = logging.getLogger(__name__)


def configured() -> bool:
    return bool(settings.VOICE_TRANSCRIPTION_URL)


def transcribe(content: bytes, *, mime_type: str, filename: str = "voice.ogg") -> str:
    """The transcript of an audio file (stripped; may be empty for silence)."""
    url = settings.VOICE_TRANSCRIPTION_URL.rstrip("/") + "/audio/transcriptions"
    headers = {"Authorization": f"Bearer {settings.VOICE_TRANSCRIPTION_API_KEY}"}
    mime = (mime_type or "audio/ogg").split(";")[0].strip()
    try:
        response = requests.post(
            url,
            headers=headers if settings.VOICE_TRANSCRIPTION_API_KEY else {},
            files={"file": (filename, content, mime)},
            data={"model": settings.VOICE_TRANSCRIPTION_MODEL, "response_format": "json"},
            timeout=settings.VOICE_TRANSCRIPTION_TIMEOUT,
        )
    except requests.RequestException as exc:
        raise SendError(f"transcription endpoint unreachable: {type(exc).__name__}", permanent=False) from None
    if response.status_code >= 400:
        transient = response.status_code == 429 or response.status_code >= 500
        raise SendError(
            f"transcription endpoint answered HTTP {response.status_code}",
            code=response.status_code,
            permanent=not transient,
        )
    try:
        text = response.json().get("text", "")
    except (ValueError, AttributeError):
        raise SendError("transcription endpoint answered without JSON text", permanent=True) from None
    return str(text or "").strip()
