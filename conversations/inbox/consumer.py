"""The staff WebSocket: ``/ws/inbox/?tenant=<tenant id>`` (protocol in docs/conversations.md, "Agent inbox").

Authenticated by the Django session (the admin's login cookie, read by Channels' AuthMiddlewareStack):
an active staff user who is an agent of the tenant (a Membership; superusers: any tenant). The Origin
must be the page's own host (a page of another site cannot ride the agent's cookie: cross-site
WebSocket hijacking). Refusals close with 4401 (not logged in) or 4403 (not this tenant's agent,
foreign origin). An open socket checks every RECHECK_SECONDS that its session still logs the agent in
and that they are still the tenant's agent; if not (logged out, expired, password changed, membership
removed, deactivated) it gets ``session_ended`` and closes with 4401.

The socket joins its tenant's group (``live.tenant_group``) and receives every frame pushed there:
``message``, ``conversation``, ``assigned``, ``note``, ``agent_typing``, ``contact_typing``, ``rating``,
``analysis``.
It sends ``typing`` ({conversation_id, on}): the other agents see "X is replying" and the end user sees
our typing indicator; and ``ping``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model

from conversations.inbox import live, services
from conversations.models import Conversation
from tenants.models import Membership, Tenant

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
# Typing frames forwarded per conversation at most this often (the end user's channel, the others' marker).
TYPING_INTERVAL_SECONDS = 2.5
# How often an open socket checks that its session and the agent's access still hold (logout, expiry,
# password change, deactivation, membership removed): the socket then closes.
RECHECK_SECONDS = 30.0


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def same_origin(scope: dict[str, Any]) -> bool:
    """The Origin header names the host the socket was opened on."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def tenant_for(user: Any, tenant_id: str) -> Tenant | None:
    """The tenant the socket is for, if ``user`` is one of its agents (the only tenant of a one-tenant
    agent when none is named)."""
    if not tenant_id:
        ids = list(Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True)[:2])
        if len(ids) != 1:
            return None
        tenant_id = str(ids[0])
    try:
        uuid.UUID(str(tenant_id))
    except ValueError:
        return None
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None or not services.is_tenant_agent(tenant, user):
        return None
    return tenant


def still_allowed(session_key: str | None, user_id: Any, tenant: Tenant) -> bool:
    """The session still logs this user in (not logged out, expired, or invalidated by a password
    change) and the user is still an active agent of the tenant."""
    if not session_key:
        return False
    engine = import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key)
    if str(session.get(SESSION_KEY, "")) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not hmac.compare_digest(str(session.get(HASH_SESSION_KEY, "")), user.get_session_auth_hash()):
        return False
    return services.is_tenant_agent(tenant, user)


def typing(tenant: Tenant, user: Any, conversation_id: str, on: bool) -> bool:
    conversation = (
        Conversation.objects.for_tenant(tenant).select_related("contact", "channel").filter(pk=conversation_id).first()
    )
    if conversation is None:
        return False
    services.agent_typing(tenant=tenant, conversation=conversation, user=user, on=on)
    return True


class InboxConsumer(AsyncJsonWebsocketConsumer):
    tenant: Tenant | None = None
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated or not user.is_active or not user.is_staff:
            await self._refuse(CLOSE_UNAUTHORIZED, "not_authenticated", "Log in to the admin first.")
            return
        if not same_origin(self.scope):
            await self._refuse(CLOSE_FORBIDDEN, "origin_not_allowed", "The inbox socket is for the inbox's own pages.")
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        tenant_id = (query.get("tenant") or [""])[0]
        self.tenant = await database_sync_to_async(tenant_for, thread_sensitive=False)(user, tenant_id)
        if self.tenant is None:
            await self._refuse(CLOSE_FORBIDDEN, "forbidden", "You are not an agent of this tenant.")
            return
        self.group = live.tenant_group(self.tenant.pk)
        self._typing_sent: dict[tuple[str, bool], float] = {}
        await self.channel_layer.group_add(self.group, self.channel_name)
        self._watcher = asyncio.create_task(self._watch(user.pk))
        await self.send_json(
            {
                "type": "ready",
                "tenant_id": str(self.tenant.pk),
                "me": services.user_frame(user),
            }
        )

    async def _refuse(self, code: int, error: str, message: str) -> None:
        logger.info("inbox socket refused", extra={"code": error})
        await self.send_json({"type": "error", "code": error, "message": message})
        await self.close(code=code)

    async def _watch(self, user_id: Any) -> None:
        session = self.scope.get("session")
        session_key = getattr(session, "session_key", None)
        check = database_sync_to_async(still_allowed, thread_sensitive=False)
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            if not await check(session_key, user_id, self.tenant):
                await self._leave()
                await self._refuse(CLOSE_UNAUTHORIZED, "session_ended", "Your session ended: log in again.")
                return

    async def _leave(self) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None

    async def disconnect(self, code: int) -> None:
        watcher = getattr(self, "_watcher", None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self.tenant is None or self.group is None or not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "typing":
            await self._typing(content)
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_json({"type": "error", "code": "unknown_type", "message": "Unknown frame type."})

    async def _typing(self, content: dict[str, Any]) -> None:
        conversation_id = str(content.get("conversation_id") or "")
        on = content.get("on") is not False
        try:
            uuid.UUID(conversation_id)
        except ValueError:
            await self.send_json({"type": "error", "code": "invalid_conversation", "message": "No such conversation."})
            return
        key = (conversation_id, on)
        now = time.monotonic()
        if on and now - self._typing_sent.get(key, 0.0) < TYPING_INTERVAL_SECONDS:
            return
        self._typing_sent[key] = now
        found = await database_sync_to_async(typing, thread_sensitive=False)(
            self.tenant, self.scope["user"], conversation_id, on
        )
        if not found:
            await self.send_json({"type": "error", "code": "invalid_conversation", "message": "No such conversation."})

    async def inbox_event(self, message: dict[str, Any]) -> None:
        if self.group is not None:
            await self.send_json(message["event"])
