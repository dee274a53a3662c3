"""Channel management: create, change, delete channels; their credentials; the Graph-verified claim of
a WhatsApp phone number id or Messenger page id; turning sending off and on."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from channels_app import webchat
from channels_app.adapters import graph_platforms
from channels_app.adapters.base import SendError, get_adapter
from channels_app.graph import GraphClient
from channels_app.models import Channel
from channels_app.secrets import channel_secret_names, channel_secret_set, with_channel_secret
from channels_app.services.intake import clear_route_cache
from events.services import emit
from events.types import EventType
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# The Meta platforms (derived from the adapter registry) and the credentials each of them keeps.
META_PLATFORMS = graph_platforms()
CREDENTIAL_NAMES = ("app_secret", "access_token", "verify_token")


class ChannelError(Exception):
    """A channel operation was refused; ``field`` names the input at fault. ``code``: ``conflict`` (409),
    ``unavailable`` (503: Meta could not be asked now), anything else 400."""

    def __init__(self, message: str, *, field: str = "", code: str = "invalid"):
        super().__init__(message)
        self.field = field
        self.code = code


# Meta's ids are numeric; checked before one becomes a Graph API path.
_META_ID = re.compile(r"[0-9]{1,32}")


def _check_external_id(*, type: str, external_id: str, exclude_pk: Any = None) -> None:
    if type in META_PLATFORMS and not external_id:
        label = get_adapter(type).external_id_label
        raise ChannelError(f"a {type} channel needs its {label}", field="external_id", code="required")
    if external_id:
        clash = Channel.objects.filter(type=type, external_id=external_id)
        if exclude_pk is not None:
            clash = clash.exclude(pk=exclude_pk)
        if clash.exists():
            # Across tenants on purpose: inbound traffic is routed by this id alone.
            raise ChannelError(
                f"another {type} channel already uses external id {external_id}", field="external_id", code="conflict"
            )


def graph_can_read(*, type: str, external_id: str, access_token: str) -> bool:
    """Whether Meta says this access token reaches this WhatsApp phone number id or Messenger page.

    WhatsApp: ``GET /{phone-number-id}`` answers the number only to a token of the business that owns
    it. Messenger: ``GET /me`` with a Page access token answers that page (a page token is issued for one
    page), so another page's public id, which many tokens can read, does not pass. Raises ChannelError
    ``unavailable`` when Meta cannot be asked now (throttled, 5xx, unreachable)."""
    if not external_id.isdigit():
        return False  # Meta's ids are numbers; anything else would only put a tenant's text in the Graph path
    client = GraphClient(access_token=access_token)
    try:
        if type == Channel.Type.WHATSAPP:
            read = client.read_object_id(external_id, fields="id,display_phone_number,verified_name")
        else:
            read = client.read_object_id("me", fields="id,name")
    except SendError as exc:
        logger.warning("channel id check: graph api unavailable", extra={"type": type, "error": str(exc)[:200]})
        raise ChannelError(
            "Meta's Graph API could not confirm the id now; try again in a minute.", code="unavailable"
        ) from None
    return read == external_id


@dataclass
class ExternalIdClaim:
    """What taking an id means once Meta vouched for the claimant: the channels to release first."""

    external_id: str
    release: list[Any] = field(default_factory=list)  # holder channel ids


def external_id_claim_verify(
    *, tenant: Tenant, type: str, external_id: str, access_token: str, exclude_pk: Any = None
) -> ExternalIdClaim:
    """Before a WhatsApp/Messenger channel takes ``external_id``: Meta must confirm the tenant's own
    access token reaches it, and no other channel may hold it. Graph calls happen here, outside any
    transaction; ``external_id_claim_apply`` then acts under row locks.

    Every refusal reads the same whether or not the id is in use elsewhere; only a tenant Meta vouches
    for learns more. When another tenant's channel holds the id and Meta no longer vouches for that
    channel's token (a squatter, or a business that moved), the verified claimant takes the id over: the
    old channel is released and disabled, and its tenant gets a ``channel.disabled`` event. When Meta
    vouches for both, the id stays where it is (409, "contact support"): an operator decides."""
    label = "phone number id" if type == Channel.Type.WHATSAPP else "page id"
    if not _META_ID.fullmatch(external_id):
        raise ChannelError(f"a {type} {label} is a number", field="external_id")
    if not access_token:
        raise ChannelError(
            f"an access_token is needed: Meta must confirm it can read this {label}", field="credentials.access_token"
        )
    if not graph_can_read(type=type, external_id=external_id, access_token=access_token):
        raise ChannelError(
            f"Meta did not confirm that this access token can read {label} {external_id}: use a token of the "
            "business that owns it (WhatsApp: a system user token with whatsapp_business_messaging; Messenger: "
            "the page's own access token)",
            field="external_id",
        )
    claim = ExternalIdClaim(external_id=external_id)
    holders = Channel.objects.filter(type=type, external_id=external_id)
    if exclude_pk is not None:
        holders = holders.exclude(pk=exclude_pk)
    for holder in holders:
        if holder.tenant_id == tenant.pk:
            raise ChannelError(
                f"another channel of this tenant already uses {label} {external_id}",
                field="external_id",
                code="conflict",
            )
        holder_token = with_channel_secret(
            channel=holder, fn=lambda values: values.get("access_token", ""), missing_ok=True
        )
        if holder_token and graph_can_read(type=type, external_id=external_id, access_token=holder_token):
            logger.warning(
                "channel id claimed by two verified tenants",
                extra={"type": type, "holder_channel_id": str(holder.pk), "claimant_tenant_id": str(tenant.pk)},
            )
            raise ChannelError(f"this {label} cannot be used; contact support", field="external_id", code="conflict")
        claim.release.append(holder.pk)
    return claim


def external_id_claim_apply(claim: ExternalIdClaim) -> None:
    """Release the holders Meta no longer vouches for (inside the caller's transaction)."""
    reason = "its external id was claimed by a business whose Meta token can read it; this channel's token cannot"
    for holder in Channel.objects.select_for_update().filter(pk__in=claim.release, external_id=claim.external_id):
        Channel.objects.filter(pk=holder.pk).update(
            external_id="", is_active=False, sending_disabled_reason=reason, updated_at=timezone.now()
        )
        emit(
            tenant=holder.tenant_id,
            type=EventType.CHANNEL_DISABLED,
            payload={"channel_id": str(holder.pk), "type": holder.type, "reason": reason},
        )
        logger.warning(
            "channel external id taken over by a verified claimant",
            extra={"channel_id": str(holder.pk), "type": holder.type},
        )


def _id_taken(external_id: str) -> ChannelError:
    # A concurrent claim won the unique constraint; the loser hears what any other refusal says.
    return ChannelError(
        f"external id {external_id} cannot be used; contact support", field="external_id", code="conflict"
    )


def channel_create(
    *,
    tenant: Tenant,
    type: str,
    name: str,
    external_id: str = "",
    config: dict[str, Any] | None = None,
    is_active: bool = True,
    credentials: dict[str, str] | None = None,
    verify_claim: bool = False,
) -> Channel:
    """Create a channel. With ``verify_claim`` (every tenant-facing path sets it) a WhatsApp/Messenger id
    is taken only once Meta confirms the given ``access_token`` can read it (``external_id_claim_verify``); without
    it (fixtures, the demo, the benchmarks) the id is one the operator vouches for."""
    if type not in Channel.Type.values:
        raise ChannelError(f"unknown channel type '{type}'", field="type")
    claim = None
    if verify_claim and type in META_PLATFORMS and external_id:
        token = (credentials or {}).get("access_token", "")
        claim = external_id_claim_verify(tenant=tenant, type=type, external_id=external_id, access_token=token)
    else:
        _check_external_id(type=type, external_id=external_id)
    try:
        with transaction.atomic():
            if claim is not None:
                external_id_claim_apply(claim)
            channel = Channel.objects.create(
                tenant=tenant,
                type=type,
                name=name,
                external_id=external_id,
                config=config or {},
                is_active=is_active,
            )
            if credentials:
                channel_set_credentials(channel=channel, credentials=credentials)
    except IntegrityError:
        raise _id_taken(external_id) from None
    if claim is not None:
        clear_route_cache()
    return channel


def channel_update(*, channel: Channel, verify_claim: bool = False, access_token: str = "", **changes: Any) -> Channel:
    """Change name, external id, config or ``is_active``. With ``verify_claim`` a new WhatsApp/Messenger id
    is claimed as in ``channel_create``, with ``access_token`` (sent along) or else the stored one."""
    allowed = {"name", "external_id", "config", "is_active"}
    unknown = set(changes) - allowed
    if unknown:
        raise ChannelError(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    claim = None
    new_id = changes.get("external_id", channel.external_id)
    if new_id != channel.external_id:
        if verify_claim and channel.type in META_PLATFORMS and new_id:
            token = access_token or with_channel_secret(
                channel=channel, fn=lambda values: values.get("access_token", ""), missing_ok=True
            )
            claim = external_id_claim_verify(
                tenant=channel.tenant,
                type=channel.type,
                external_id=new_id,
                access_token=token or "",
                exclude_pk=channel.pk,
            )
        else:
            _check_external_id(type=channel.type, external_id=new_id, exclude_pk=channel.pk)
    for key, value in changes.items():
        setattr(channel, key, value)
    try:
        with transaction.atomic():
            if claim is not None:
                external_id_claim_apply(claim)
            channel.save()
    except IntegrityError:
        raise _id_taken(new_id) from None
    clear_route_cache()
    if channel.type == Channel.Type.WEBCHAT and not channel.is_active:
        transaction.on_commit(lambda: webchat.close_channel_sockets(channel_id=channel.pk))
    return channel


def channel_set_credentials(*, channel: Channel, credentials: dict[str, str]) -> list[str]:
    """Store (merge) credentials, encrypted. New credentials re-enable a channel disabled by Meta's 190.

    Returns the names of all credentials now set (never values)."""
    values = {k: v for k, v in credentials.items() if v not in (None, "")}
    if not values:
        return channel_credential_names(channel=channel)
    with transaction.atomic():
        channel_secret_set(channel=channel, values=values)
        if channel.sending_disabled_reason and "access_token" in values:
            channel.sending_disabled_reason = ""
            channel.save(update_fields=["sending_disabled_reason", "updated_at"])
        emit(
            tenant=channel.tenant_id,
            type=EventType.SECRET_UPDATED,
            payload={"channel_id": str(channel.pk), "names": sorted(values)},
        )
    clear_route_cache()
    return channel_credential_names(channel=channel)


def channel_credential_names(*, channel: Channel) -> list[str]:
    return channel_secret_names(channel=channel)


def channel_delete(*, channel: Channel) -> None:
    channel_id = channel.pk
    channel.delete()
    clear_route_cache()
    if channel.type == Channel.Type.WEBCHAT:
        transaction.on_commit(lambda: webchat.close_channel_sockets(channel_id=channel_id))


def channel_disable_sending(*, channel: Channel, reason: str) -> bool:
    """Stop all sends on this channel until new credentials arrive; emit ``channel.disabled`` once."""
    reason = reason[:500]
    with transaction.atomic():
        changed = (
            Channel.objects.for_tenant(channel.tenant_id)
            .filter(pk=channel.pk, sending_disabled_reason="")
            .update(sending_disabled_reason=reason, updated_at=timezone.now())
        )
        channel.sending_disabled_reason = reason
        if changed:
            emit(
                tenant=channel.tenant_id,
                type=EventType.CHANNEL_DISABLED,
                payload={"channel_id": str(channel.pk), "type": channel.type, "reason": reason},
            )
    if changed:
        logger.error("channel sending disabled", extra={"channel_id": str(channel.pk), "reason": reason})
    return bool(changed)


def channel_enable_sending(*, channel: Channel) -> None:
    Channel.objects.for_tenant(channel.tenant_id).filter(pk=channel.pk).update(
        sending_disabled_reason="", updated_at=timezone.now()
    )
    channel.sending_disabled_reason = ""
