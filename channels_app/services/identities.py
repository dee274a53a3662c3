"""One WhatsApp user, one contact, whatever ids Meta names them by.

Since the 2026 rollout of usernames, Meta adds a business-scoped user id (BSUID, ``from_user_id`` /
``contacts[].user_id``) to every message, and leaves the phone number (``from`` / ``wa_id``) out for
users who chose a username. On intake each message's ids are mapped to the id its contact was first
known by (``ContactAlias``): a phone number seen with a BSUID, and then the BSUID alone, give one
sender; a BSUID first seen alone stays the key when the phone number appears later. Messages without a
BSUID (the format before the rollout) are left as they are: no contact could have been known by a
BSUID then. Mappings never change once written, so each process keeps those it has read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from channels_app.adapters.base import NormalizedMessage, ScopedIdentityAdapter, get_adapter
from channels_app.models import Channel, ContactAlias

_CACHE_MAX = 50_000
_cache: dict[tuple[str, str], str] = {}  # (channel id, alias) -> external id
_lock = threading.Lock()


def resolve_senders(*, channel: Channel, messages: Iterable[NormalizedMessage]) -> None:
    """Set each message's ``sender_id`` to its contact's id on this channel (recording new aliases)."""
    adapter = get_adapter(channel.type)
    if not isinstance(adapter, ScopedIdentityAdapter):
        return
    for message in messages:
        ids = adapter.sender_identities(message)
        if len(ids) < 2 and not (ids and not ids[0].isdigit()):
            continue  # a phone number alone: the pre-rollout format
        message.sender_id = _canonical(channel, ids)


def _canonical(channel: Channel, ids: list[str]) -> str:
    key = str(channel.pk)
    known = {i: _cache[(key, i)] for i in ids if (key, i) in _cache}
    missing = [i for i in ids if i not in known]
    if missing:
        rows = ContactAlias.objects.for_tenant(channel.tenant_id).filter(channel=channel, alias__in=missing)
        found = dict(rows.values_list("alias", "external_id"))
        known.update(found)
        _remember(key, found)
    bsuids = [i for i in ids if not i.isdigit()]
    canonical = next((known[i] for i in [*bsuids, *ids] if i in known), ids[0])
    new = [i for i in ids if i not in known]
    if new:
        ContactAlias.objects.bulk_create(
            [ContactAlias(tenant_id=channel.tenant_id, channel=channel, alias=i, external_id=canonical) for i in new],
            ignore_conflicts=True,  # a concurrent webhook may have written the same mapping
        )
        # Re-read what won (another process may have mapped these ids first).
        rows = ContactAlias.objects.for_tenant(channel.tenant_id).filter(channel=channel, alias__in=ids)
        final = dict(rows.values_list("alias", "external_id"))
        _remember(key, final)
        canonical = next((final[i] for i in [*bsuids, *ids] if i in final), canonical)
    return canonical


def _remember(key: str, mapping: dict[str, str]) -> None:
    with _lock:
        if len(_cache) > _CACHE_MAX:
            _cache.clear()
        for alias, external_id in mapping.items():
            _cache[(key, alias)] = external_id


def contact_ids(*, channel: Channel, external_id: str) -> list[str]:
    """Every id the contact known as ``external_id`` has been seen with on this channel."""
    aliases = (
        ContactAlias.objects.for_tenant(channel.tenant_id)
        .filter(channel=channel, external_id=external_id)
        .values_list("alias", flat=True)
    )
    return [external_id, *(a for a in aliases if a != external_id)]


def forget_cache() -> None:
    """Tests: start from the database."""
    with _lock:
        _cache.clear()
