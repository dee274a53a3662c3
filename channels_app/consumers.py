"""The web chat WebSocket: ``/ws/webchat/?token=<session token>`` (protocol in docs/webchat.md).

At connect the token and the Origin are checked and the socket takes a place among its visitor's
open sockets (refusals are sent as an ``error`` frame, then the socket is closed with 4401 for token
problems, 4403 for origin/switched-off chat, 4429 for too many sockets of one visitor, so the widget
knows whether to fetch a new session or to wait). Then the socket joins its visitor's channel-layer
group, where replies, typing and handoff notices arrive from whichever process produces them, and its
channel's group, where the notice that the channel was switched off arrives (the socket then closes
with 4403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from channels_app import webchat, webchat_media
from channels_app.adapters.webchat import GROUP_EVENT_TYPE, now_iso, visitor_group
from config.logs import correlation_id, new_correlation_id
from conversations.inbox.live import GROUP_EVENT_TYPE as INBOX_EVENT_TYPE
from conversations.inbox.live import tenant_group

logger = logging.getLogger(__name__)

# Database work runs with thread_sensitive=False: in the default thread pool, each thread with its own
# connection, so one slow insert does not queue every other visitor's message behind it.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _close_code(status: int) -> int:
    return {401: CLOSE_UNAUTHORIZED, 429: CLOSE_TOO_MANY}.get(status, CLOSE_FORBIDDEN)


class WebchatConsumer(AsyncJsonWebsocketConsumer):
    session: webchat.SocketSession | None = None
    group: str | None = None
    channel_group: str | None = None
    _lease: asyncio.Task | None = None

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        token = (query.get("token") or [""])[0]
        origin = _header(self.scope, b"origin")
        try:
            self.session = await database_sync_to_async(webchat.socket_open, thread_sensitive=False)(
                token=token, origin=origin, socket_name=self.channel_name
            )
        except webchat.WebchatError as exc:
            logger.info("web chat connection refused", extra={"code": exc.code, "origin": origin[:200]})
            await self.accept()
            frame = {"type": "error", "code": exc.code, "message": exc.message}
            await self.send_json({**frame, "details": exc.details} if exc.details else frame)
            await self.close(code=_close_code(exc.status))
            return
        self._lease = asyncio.create_task(self._keep_lease())
        self.group = visitor_group(
            channel_external_id=self.session.channel.external_id, visitor_id=self.session.visitor_id
        )
        self.channel_group = webchat.channel_group(self.session.channel.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(self.channel_group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "ready", "visitor_id": self.session.visitor_id})

    async def _keep_lease(self) -> None:
        assert self.session is not None
        renew = sync_to_async(webchat.socket_renew, thread_sensitive=False)
        while True:
            await asyncio.sleep(webchat.SOCKET_LEASE_SECONDS / 3)
            await renew(channel=self.session.channel, visitor_id=self.session.visitor_id, socket_name=self.channel_name)

    async def _leave(self) -> None:
        """Give up this socket's groups and its place among the visitor's sockets (once)."""
        if self._lease is not None:
            self._lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease
            self._lease = None
            assert self.session is not None
            await sync_to_async(webchat.socket_release, thread_sensitive=False)(
                channel=self.session.channel, visitor_id=self.session.visitor_id, socket_name=self.channel_name
            )
        for group in (self.group, self.channel_group):
            if group:
                await self.channel_layer.group_discard(group, self.channel_name)
        self.group = self.channel_group = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch minus its ``close_old_connections`` thread hop before every handler:
        this consumer's database work goes through ``database_sync_to_async``, which does that in its
        own thread, and the group events (replies, typing) touch no database. The hop was a quarter
        of this process's CPU under bench.webchat's load."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if self.session is None or self.group is None:
            return  # refused at connect, or closed since (the frame crossed the close)
        limit = int(settings.WEBCHAT_MAX_MESSAGE_CHARS)
        if text_data is None:
            await self.send_error("invalid_frame", "Frames must be JSON text.")
            return
        if len(text_data) > limit * 6 + 1024:  # JSON-escaped text may be up to 6x longer than the text
            await self.send_error(
                "message_too_long", f"The frame is too large; the message limit is {limit} characters."
            )
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.send_error("invalid_json", "The frame is not valid JSON.")
            return
        if not isinstance(content, dict):
            await self.send_error("invalid_frame", "A frame must be a JSON object with a 'type'.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "message" or kind == "choice":
            await self.on_message(content)
        elif kind == "typing":
            await self.on_typing(content)
        elif kind == "csat":
            await self.on_rating(content)
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error("unknown_type", f"Unknown frame type {str(kind)[:40]!r}.")

    async def on_message(self, content: dict[str, Any]) -> None:
        assert self.session is not None and self.group is not None
        client_message_id = content.get("client_message_id")
        typed = content.get("text")
        text: str = typed if isinstance(typed, str) else ""  # "" is refused as an empty message
        tap = None
        if content.get("type") == "choice":
            # A tapped option: its signed token names the option (the title is what the visitor "said").
            tap = webchat_media.choice_open(
                content.get("choice"),
                widget_key=self.session.channel.external_id,
                visitor_id=self.session.visitor_id,
            )
            text = tap.title if tap else ""
        token = correlation_id.set(new_correlation_id())
        try:
            if content.get("type") == "choice":
                receive: Callable[..., webchat.Received] = partial(webchat.receive_choice, token=content.get("choice"))
            else:
                receive = partial(webchat.receive_message, text=text)
            received = await database_sync_to_async(receive, thread_sensitive=False)(
                channel=self.session.channel,
                visitor_id=self.session.visitor_id,
                client_message_id=client_message_id,
                page_url=content.get("page_url"),
            )
        except webchat.WebchatError as exc:
            await self.send_error(exc.code, exc.message, client_message_id=client_message_id, details=exc.details)
            if exc.code == "channel_inactive":
                await self._close_switched_off()
            return
        finally:
            correlation_id.reset(token)
        await self.send_json(
            {"type": "ack", "client_message_id": received.client_message_id, "status": received.status}
        )
        # The agents' inbox stops showing "typing" when a message arrives: the next keystroke is news.
        self._typing_sent = (False, 0.0)
        if received.status == "stored":
            # Other tabs of the same visitor (on any server) show the message too; this tab skips its own.
            await self.channel_layer.group_send(
                self.group,
                {
                    "type": GROUP_EVENT_TYPE,
                    "event": {
                        "type": "message",
                        "id": received.client_message_id,
                        "client_message_id": received.client_message_id,
                        "role": "user",
                        "text": text,
                        "sources": [],
                        "created_at": now_iso(),
                        **({"reply_to": tap.message_id} if tap else {}),
                    },
                },
            )

    # A visitor's typing reaches the agents when it changes, and "still typing" at most every few
    # seconds: an anonymous socket flooding typing frames must not flood every agent's socket.
    TYPING_REPEAT_SECONDS = 3.0
    # Satisfaction answers a socket may send per minute (each is a database write attempt).
    RATINGS_PER_MINUTE = 5

    async def on_typing(self, content: dict[str, Any]) -> None:
        """The visitor types: the tenant's agents see it in the inbox (no database work)."""
        assert self.session is not None
        on = content.get("on") is not False
        now = time.monotonic()
        last_on, last_at = getattr(self, "_typing_sent", (None, 0.0))
        if on == last_on and now - last_at < self.TYPING_REPEAT_SECONDS:
            return
        self._typing_sent = (on, now)
        await self.channel_layer.group_send(
            tenant_group(UUID(self.session.tenant_id)),  # the session's claims carry it as text
            {
                "type": INBOX_EVENT_TYPE,
                "event": {
                    "type": "contact_typing",
                    "channel_id": str(self.session.channel.pk),
                    "contact_external_id": self.session.visitor_id,
                    "on": on,
                },
            },
        )

    async def on_rating(self, content: dict[str, Any]) -> None:
        """The visitor's answer to the satisfaction question (a button): stored once per question."""
        assert self.session is not None
        now = time.monotonic()
        recent = [t for t in getattr(self, "_ratings_at", []) if now - t < 60]
        if len(recent) >= self.RATINGS_PER_MINUTE:
            await self.send_error("rate_limited", "Too many answers; try again in a minute.")
            return
        self._ratings_at = [*recent, now]
        score = content.get("score")
        try:
            stored = await database_sync_to_async(webchat.receive_rating, thread_sensitive=False)(
                channel=self.session.channel, visitor_id=self.session.visitor_id, score=score
            )
        except webchat.WebchatError as exc:
            await self.send_error(exc.code, exc.message)
            return
        await self.send_json({"type": "csat_ack", "score": score, "stored": stored})

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        client_message_id: Any = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if isinstance(client_message_id, str):
            frame["client_message_id"] = client_message_id
        if details:
            frame["details"] = details
        await self.send_json(frame)

    async def webchat_event(self, message: dict[str, Any]) -> None:
        """Everything pushed to the visitor's group (channels_app.adapters.webchat) goes out as is."""
        await self.send_json(message["event"])

    async def webchat_channel_closed(self, message: dict[str, Any]) -> None:
        """The channel was switched off or deleted (webchat.close_channel_sockets): say so and close."""
        if self.group is None:
            return
        await self.send_error(message["code"], message["message"])
        await self._close_switched_off()

    async def _close_switched_off(self) -> None:
        await self._leave()
        await self.close(code=CLOSE_FORBIDDEN)
