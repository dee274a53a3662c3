"""Voice notes: the audio is downloaded from the local Graph API server and transcribed by a local
OpenAI-compatible transcription server; the transcript becomes the message's text (what the pipeline
answers), the audio stays stored beside it. Without an endpoint the message is marked untranscribed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from channels_app.models import InboundEvent
from channels_app.services import prepare_inbound_message
from tests.channels_app.conftest import WA_SECRET, WA_TOKEN, fresh_fixture_bytes
from tests.conversations.conftest import openai_server  # noqa: F401  (fixture)

OGG = b"OggS\x00\x02" + b"\x01" * 200
MEDIA_ID = "2093201377827364"  # the fixture's audio id


class Transcriber:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.lock = threading.Lock()


@pytest.fixture
def transcriber(local_http_server: Any, settings: Any) -> Transcriber:
    state = Transcriber()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.calls.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization", ""), "body": body}
                )
                status, answer = (
                    state.answers.pop(0) if state.answers else (200, {"text": " Do you deliver on Sundays? "})
                )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = local_http_server(Handler)
    settings.VOICE_TRANSCRIPTION_URL = f"{server.url}/v1"
    settings.VOICE_TRANSCRIPTION_API_KEY = "sk-transcribe"
    settings.VOICE_TRANSCRIPTION_MODEL = "whisper-1"
    return state


@pytest.fixture(autouse=True)
def _files_in_tmp(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = str(tmp_path)


def receive_voice_note(wa_channel: Any, graph: Any, post_webhook: Any) -> InboundEvent:
    graph.media[MEDIA_ID] = (OGG, "audio/ogg")
    assert post_webhook("whatsapp", fresh_fixture_bytes("whatsapp", "audio_voice"), WA_SECRET).status_code == 200
    return InboundEvent.objects.get(channel=wa_channel, kind="message")


def test_a_voice_note_is_transcribed_into_the_users_message(wa_channel, graph, post_webhook, transcriber):
    row = receive_voice_note(wa_channel, graph, post_webhook)

    assert prepare_inbound_message(inbound_id=row.pk)

    [call] = transcriber.calls
    assert call["path"] == "/v1/audio/transcriptions"
    assert call["authorization"] == "Bearer sk-transcribe"
    assert b'name="model"\r\n\r\nwhisper-1' in call["body"] and OGG in call["body"]
    row.refresh_from_db()
    assert row.normalized["text"] == "Do you deliver on Sundays?"
    assert row.normalized["raw"]["_transcript"] == {"text": "Do you deliver on Sundays?", "model": "whisper-1"}
    assert row.normalized["media"][0]["storage_path"]  # the audio stays beside the transcript
    assert any(r["authorization"] == f"Bearer {WA_TOKEN}" for r in graph.requests)


def test_without_an_endpoint_the_voice_note_is_marked_untranscribed(wa_channel, graph, post_webhook, settings):
    settings.VOICE_TRANSCRIPTION_URL = ""
    row = receive_voice_note(wa_channel, graph, post_webhook)

    assert prepare_inbound_message(inbound_id=row.pk)

    row.refresh_from_db()
    assert row.normalized["text"] == ""
    assert row.normalized["raw"]["_voice_untranscribed"] is True


def test_a_busy_endpoint_is_retried_then_given_up_with_the_reason(wa_channel, graph, post_webhook, transcriber):
    from channels_app.adapters.base import SendError

    transcriber.answers = [(503, {"error": "busy"}), (503, {"error": "busy"})]
    row = receive_voice_note(wa_channel, graph, post_webhook)

    with pytest.raises(SendError):  # the task retries later
        prepare_inbound_message(inbound_id=row.pk)
    assert prepare_inbound_message(inbound_id=row.pk, final_attempt=True)

    row.refresh_from_db()
    assert row.normalized["raw"]["_voice_untranscribed"] is True
    assert "HTTP 503" in row.normalized["raw"]["_transcript_error"]


@pytest.fixture
def worker(live_worker: Any) -> Any:
    """The live worker, drained at the end (as in test_end_to_end)."""
    yield live_worker
    from tests.conftest import wait_until

    wait_until(lambda: not InboundEvent.objects.filter(status="pending").exists(), timeout=30)


def test_a_voice_note_is_answered_from_its_transcript_through_a_real_turn(
    worker,
    wa_channel,
    graph,
    post_webhook,
    transcriber,
    openai_server,  # noqa: F811
    settings,
):
    from conversations.models import Message
    from tests.conftest import wait_until

    settings.TURN_DEBOUNCE_SECONDS = 0
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    settings.LLM_MAX_RETRIES = 0
    graph.media[MEDIA_ID] = (OGG, "audio/ogg")

    assert post_webhook("whatsapp", fresh_fixture_bytes("whatsapp", "audio_voice"), WA_SECRET).status_code == 200

    def answer() -> list[str]:
        return [p["json"]["text"]["body"] for p in graph.posts() if (p["json"] or {}).get("type") == "text"]

    assert wait_until(answer, timeout=60) == ["LLM answer to: Do you deliver on Sundays?"]
    assert openai_server.requests[0]["messages"][-1] == {"role": "user", "content": "Do you deliver on Sundays?"}
    user_message = wait_until(lambda: Message.objects.filter(sender="user").first())
    assert user_message.content == "Do you deliver on Sundays?"


def test_without_an_endpoint_a_voice_note_gets_an_honest_reply_and_the_way_to_a_person(
    worker, wa_channel, graph, post_webhook, settings
):
    from tests.conftest import wait_until

    settings.TURN_DEBOUNCE_SECONDS = 0
    settings.VOICE_TRANSCRIPTION_URL = ""
    graph.media[MEDIA_ID] = (OGG, "audio/ogg")

    assert post_webhook("whatsapp", fresh_fixture_bytes("whatsapp", "audio_voice"), WA_SECRET).status_code == 200

    def answer() -> list[str]:
        return [p["json"]["text"]["body"] for p in graph.posts() if (p["json"] or {}).get("type") == "text"]

    assert wait_until(answer, timeout=60) == [
        "Sorry, I couldn't understand your voice note. Could you write your message instead? "
        'If you would like to talk to a person, write "human".'
    ]
