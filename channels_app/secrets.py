"""Channel credentials: one AES-256-GCM encrypted JSON object per channel (``ChannelSecret``).

The encryption and the key ring are the tenants' SecretService (``tenants.secrets``); this module
stores the channel's own rows with it, and ``channel_secret_repository`` lets key rotation reach them.
Plaintext only ever exists inside the ``with_channel_secret`` callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from django.db import transaction

from channels_app.models import Channel, ChannelSecret
from tenants.secrets import (
    SecretNotFound,
    SecretRepository,
    open_sealed,
    scrub,
    seal,
    sealed_of,
    store_sealed,
)

T = TypeVar("T")


def channel_secret_aad(channel_id: UUID) -> bytes:
    """Binds a ciphertext to its channel. Unchanged since the first row was written: every stored row
    authenticates against exactly these bytes."""
    return f"channel-secret|{channel_id}".encode()


channel_secret_repository = SecretRepository(
    kind="channel", model=ChannelSecret, aad=lambda row: channel_secret_aad(row.channel_id)
)


# Where ``pin_loaded_secret`` keeps the encrypted row on a channel instance.
_PINNED = "_pinned_secret_row"


def pin_loaded_secret(channel: Channel) -> Channel:
    """Let ``with_channel_secret`` use the encrypted row loaded with this channel instance
    (``select_related("secret")``) instead of reading it again: for short-lived units of work (a turn
    sends the typing indicator and its reply with one read). Explicit, because a relation cached by
    Django alone (a ChannelSecret created for this instance caches itself on it) may be stale."""
    if Channel.secret.is_cached(channel):
        vars(channel)[_PINNED] = Channel.secret.related.get_cached_value(channel)
    return channel


def channel_secret_set(*, channel: Channel, values: dict[str, str], merge: bool = True) -> ChannelSecret:
    """Store the channel's credentials (app_secret, access_token, verify_token, ...), encrypted.

    With ``merge`` the given keys replace those already stored and the others are kept, so a
    write-only form can update one credential without re-entering the rest.
    """
    with transaction.atomic():
        row = ChannelSecret.objects.select_for_update().filter(channel=channel).first()
        current: dict[str, str] = {}
        if row is not None and merge:
            buffer = open_sealed(sealed_of(row), aad=channel_secret_aad(channel.pk))
            try:
                current = json.loads(buffer.decode())
            finally:
                scrub(buffer)
        current.update({k: v for k, v in values.items() if v is not None})
        plaintext = bytearray(json.dumps(current).encode())
        current.clear()
        try:
            sealed = seal(plaintext, aad=channel_secret_aad(channel.pk))
        finally:
            scrub(plaintext)
        if row is None:
            row = ChannelSecret(channel=channel, tenant_id=channel.tenant_id)
        store_sealed(row, sealed)
        row.save()
    if _PINNED in vars(channel):
        vars(channel)[_PINNED] = row
    return row


def channel_secret_names(*, channel: Channel) -> list[str]:
    """Which credentials are set (names only)."""
    return with_channel_secret(channel=channel, fn=lambda values: sorted(values), missing_ok=True) or []


def with_channel_secret(*, channel: Channel, fn: Callable[[dict[str, str]], T], missing_ok: bool = False) -> T | None:
    """Call ``fn(credentials_dict)`` and scrub the decrypted buffer afterwards (the row is read here, or
    was pinned on this channel instance by ``pin_loaded_secret``)."""
    pinned = _PINNED in vars(channel)
    row: ChannelSecret | None = (
        vars(channel)[_PINNED] if pinned else ChannelSecret.objects.filter(channel=channel).first()
    )
    if row is None:
        if missing_ok:
            return None
        raise SecretNotFound("channel has no stored credentials")
    buffer = open_sealed(sealed_of(row), aad=channel_secret_aad(row.channel_id))
    values: dict[str, str] = {}
    try:
        values = json.loads(buffer.decode())
        return fn(values)
    finally:
        scrub(buffer)
        values.clear()
