"""SecretService: AES-256-GCM encryption of tenant and channel credentials, with a key ring.

Plaintext only ever exists inside a ``with_*_secret`` callback: the decrypted bytes live in a
bytearray that is overwritten with zeros when the callback returns. (Python cannot scrub the ``str``
handed to the callback; callers must not keep or log it.) Errors name key ids, never values.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

if TYPE_CHECKING:
    from channels_app.models import Channel, ChannelSecret
    from tenants.models import Tenant, TenantSecret

T = TypeVar("T")

NONCE_BYTES = 12
TAG_BYTES = 16


class SecretError(Exception):
    """A secret could not be decrypted or found. The message never contains secret material."""


class SecretNotFound(SecretError):
    pass


class UnknownKeyId(SecretError):
    pass


class SecretIntegrityError(SecretError):
    pass


@dataclass(frozen=True, repr=False)
class KeyRing:
    active_id: str
    keys: dict[str, bytes]

    def __repr__(self) -> str:  # never show key material
        return f"<KeyRing active={self.active_id} ids={sorted(self.keys)}>"

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise UnknownKeyId(
                f"secret was encrypted with key id '{key_id}', which is not in the key ring "
                f"(active '{self.active_id}'; add it to SECRET_PREVIOUS_KEYS to read it)"
            ) from None


def _decode_key(value: str, variable: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"{variable} is not valid base64") from None
    if len(raw) != 32:
        raise ImproperlyConfigured(f"{variable} must be base64 of exactly 32 bytes (got {len(raw)} bytes)")
    return raw


def load_key_ring(
    *, active_id: str | None = None, active_key: str | None = None, previous: str | None = None
) -> KeyRing:
    """Build the key ring from settings (or explicit values); raise ImproperlyConfigured naming the variable."""
    active_id = settings.SECRET_KEY_ID if active_id is None else active_id
    active_key = settings.SECRET_ENCRYPTION_KEY if active_key is None else active_key
    previous = settings.SECRET_PREVIOUS_KEYS if previous is None else previous
    if not active_key:
        raise ImproperlyConfigured(
            "SECRET_ENCRYPTION_KEY is not set: give it base64 of 32 random bytes "
            "(python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')"
        )
    if not active_id:
        raise ImproperlyConfigured("SECRET_KEY_ID is not set: name the active encryption key (e.g. k1)")
    if not all(c.isalnum() or c in "-_." for c in active_id):
        raise ImproperlyConfigured("SECRET_KEY_ID may contain only letters, digits, '-', '_' and '.'")
    keys = {active_id: _decode_key(active_key, "SECRET_ENCRYPTION_KEY")}
    for item in (previous or "").split(","):
        item = item.strip()
        if not item:
            continue
        key_id, sep, material = item.partition(":")
        if not sep or not key_id:
            raise ImproperlyConfigured("SECRET_PREVIOUS_KEYS must look like 'id:base64key,id2:base64key'")
        if key_id == active_id:
            continue
        keys[key_id] = _decode_key(material, f"SECRET_PREVIOUS_KEYS (key '{key_id}')")
    return KeyRing(active_id=active_id, keys=keys)


_key_ring: KeyRing | None = None


def key_ring() -> KeyRing:
    global _key_ring
    if _key_ring is None:
        _key_ring = load_key_ring()
    return _key_ring


def reset_key_ring() -> None:
    """Forget the cached key ring (after the settings changed: tests, rotation)."""
    global _key_ring
    _key_ring = None


@dataclass(frozen=True, repr=False)
class Sealed:
    ciphertext: str
    iv: str
    tag: str
    key_id: str


def seal(plaintext: bytes | bytearray, *, aad: bytes, ring: KeyRing | None = None) -> Sealed:
    ring = ring or key_ring()
    nonce = os.urandom(NONCE_BYTES)
    encryptor = Cipher(algorithms.AES(ring.key(ring.active_id)), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    ciphertext = encryptor.update(bytes(plaintext)) + encryptor.finalize()
    return Sealed(
        ciphertext=base64.b64encode(ciphertext).decode(),
        iv=base64.b64encode(nonce).decode(),
        tag=base64.b64encode(encryptor.tag).decode(),
        key_id=ring.active_id,
    )


def open_sealed(sealed: Sealed, *, aad: bytes, ring: KeyRing | None = None) -> bytearray:
    """Decrypt into a fresh bytearray; the caller must ``scrub`` it."""
    ring = ring or key_ring()
    key = ring.key(sealed.key_id)
    try:
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
        nonce = base64.b64decode(sealed.iv, validate=True)
        tag = base64.b64decode(sealed.tag, validate=True)
    except (binascii.Error, ValueError):
        raise SecretIntegrityError("stored secret is not valid base64") from None
    if len(nonce) != NONCE_BYTES or len(tag) != TAG_BYTES:
        raise SecretIntegrityError("stored secret has a malformed nonce or tag")
    buffer = bytearray(len(ciphertext) + 15)
    try:
        decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(aad)
        written = decryptor.update_into(ciphertext, buffer)
        decryptor.finalize()
    except Exception:
        scrub(buffer)
        raise SecretIntegrityError(
            "stored secret failed authentication (tampered, moved to another row, or wrong key)"
        ) from None
    del buffer[written:]
    return buffer


def scrub(buffer: bytearray) -> None:
    for i in range(len(buffer)):
        buffer[i] = 0


# --- associated data: binds a ciphertext to its row --------------------------------------------------


def tenant_secret_aad(tenant_id: Any, name: str) -> bytes:
    return f"tenant-secret|{tenant_id}|{name}".encode()


def channel_secret_aad(channel_id: Any) -> bytes:
    return f"channel-secret|{channel_id}".encode()


def _sealed_of(row: TenantSecret | ChannelSecret) -> Sealed:
    return Sealed(ciphertext=row.ciphertext, iv=row.iv, tag=row.tag, key_id=row.key_id)


def _apply(row: Any, sealed: Sealed) -> None:
    row.ciphertext, row.iv, row.tag, row.key_id = sealed.ciphertext, sealed.iv, sealed.tag, sealed.key_id


# --- tenant secrets ---------------------------------------------------------------------------------

# The platform keeps its own secrets among the tenant's: webhook endpoints (events.models:
# ``webhook.<id>.signing``, ``.signing.previous``, ``.headers``) and functions (conversations.services:
# ``function.<name>.signing``). These prefixes are reserved: the generic secrets API cannot create,
# overwrite or delete such a name, and no setting may reference one, or a tenant could have a signing
# secret sent to a URL of its choosing as an API key. Compared case-insensitively so a look-alike
# (``Webhook.x.signing``) cannot be mistaken for one by a human reading the list either.
INTERNAL_SECRET_PREFIXES = ("webhook.", "function.")
# What a tenant may name its own secrets (the API's URL pattern and the settings' references).
SECRET_NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,120}"


class ReservedSecretName(SecretError):
    pass


def is_internal_secret_name(name: str) -> bool:
    return name.lower().startswith(INTERNAL_SECRET_PREFIXES)


def check_tenant_namespace(name: str) -> None:
    """Raise ReservedSecretName when ``name`` belongs to the platform's internal secrets."""
    if is_internal_secret_name(name):
        prefixes = " or ".join(f"'{p}'" for p in INTERNAL_SECRET_PREFIXES)
        raise ReservedSecretName(
            f"secret names starting with {prefixes} are reserved for the platform's own webhook and function "
            "signing secrets; choose another name"
        )


def secret_reference_problem(*, tenant: Tenant | None, name: str) -> str | None:
    """Why a setting of ``tenant`` may not name the secret ``name`` (None when it may): it must be one of
    the tenant's own secrets, and exist now rather than fail at the first call that needs it."""
    try:
        check_tenant_namespace(name)
    except ReservedSecretName as exc:
        return str(exc)
    if tenant is None or not tenant_secret_exists(tenant=tenant, name=name):
        return f"the tenant has no secret named '{name}'"
    return None


def tenant_secret_set(*, tenant: Tenant, name: str, value: str) -> TenantSecret:
    """Create or replace a tenant secret. The plaintext is encrypted before any database write."""
    from tenants.models import TenantSecret

    plaintext = bytearray(value.encode())
    try:
        sealed = seal(plaintext, aad=tenant_secret_aad(tenant.pk, name))
    finally:
        scrub(plaintext)
    with transaction.atomic():
        row = TenantSecret.objects.select_for_update().filter(tenant=tenant, name=name).first()
        if row is None:
            row = TenantSecret(tenant=tenant, name=name)
        _apply(row, sealed)
        row.save()
    return row


def tenant_secret_delete(*, tenant: Tenant, name: str) -> bool:
    from tenants.models import TenantSecret

    deleted, _ = TenantSecret.objects.filter(tenant=tenant, name=name).delete()
    return deleted > 0


def tenant_secret_exists(*, tenant: Tenant, name: str) -> bool:
    from tenants.models import TenantSecret

    return TenantSecret.objects.filter(tenant=tenant, name=name).exists()


def with_tenant_secret(*, tenant: Tenant, name: str, fn: Callable[[str], T]) -> T:
    """Call ``fn(plaintext)`` and scrub the decrypted buffer afterwards. Raises SecretNotFound."""
    from tenants.models import TenantSecret

    row = TenantSecret.objects.filter(tenant=tenant, name=name).first()
    if row is None:
        raise SecretNotFound(f"tenant has no secret named '{name}'")
    buffer = open_sealed(_sealed_of(row), aad=tenant_secret_aad(row.tenant_id, row.name))
    try:
        return fn(buffer.decode())
    finally:
        scrub(buffer)


# --- channel secrets (one encrypted JSON object per channel) ------------------------------------------


def channel_secret_set(*, channel: Channel, values: dict[str, str], merge: bool = True) -> ChannelSecret:
    """Store the channel's credentials (app_secret, access_token, verify_token, ...), encrypted.

    With ``merge`` the given keys replace those already stored and the others are kept, so a
    write-only form can update one credential without re-entering the rest.
    """
    from channels_app.models import ChannelSecret

    with transaction.atomic():
        row = ChannelSecret.objects.select_for_update().filter(channel=channel).first()
        current: dict[str, str] = {}
        if row is not None and merge:
            buffer = open_sealed(_sealed_of(row), aad=channel_secret_aad(channel.pk))
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
        _apply(row, sealed)
        row.save()
    return row


def channel_secret_names(*, channel: Channel) -> list[str]:
    """Which credentials are set (names only)."""
    return with_channel_secret(channel=channel, fn=lambda values: sorted(values), missing_ok=True) or []


def with_channel_secret(*, channel: Channel, fn: Callable[[dict[str, str]], T], missing_ok: bool = False) -> T | None:
    """Call ``fn(credentials_dict)`` and scrub the decrypted buffer afterwards."""
    from channels_app.models import ChannelSecret

    row = ChannelSecret.objects.filter(channel=channel).first()
    if row is None:
        if missing_ok:
            return None
        raise SecretNotFound("channel has no stored credentials")
    buffer = open_sealed(_sealed_of(row), aad=channel_secret_aad(row.channel_id))
    values: dict[str, str] = {}
    try:
        values = json.loads(buffer.decode())
        return fn(values)
    finally:
        scrub(buffer)
        values.clear()


# --- rotation ------------------------------------------------------------------------------------------


@dataclass
class RotationReport:
    tenant_secrets: int = 0
    channel_secrets: int = 0
    already_current: int = 0

    @property
    def rotated(self) -> int:
        return self.tenant_secrets + self.channel_secrets


def rotate_secrets(*, batch_size: int = 200, progress: Callable[[int, int], None] | None = None) -> RotationReport:
    """Re-encrypt every secret not under the active key. Idempotent and resumable.

    Each row is re-read under ``SELECT ... FOR UPDATE`` and re-encrypted in its own short
    transaction, so a concurrent write (which already uses the active key) is never overwritten with
    stale content, and a crash leaves every row readable (old or new key) to be finished by a re-run.
    """
    from channels_app.models import ChannelSecret
    from tenants.models import TenantSecret

    ring = key_ring()
    report = RotationReport()
    models_and_aad: list[tuple[Any, Callable[[Any], bytes], str]] = [
        (TenantSecret, lambda r: tenant_secret_aad(r.tenant_id, r.name), "tenant_secrets"),
        (ChannelSecret, lambda r: channel_secret_aad(r.channel_id), "channel_secrets"),
    ]
    total = sum(m.objects.exclude(key_id=ring.active_id).count() for m, _, _ in models_and_aad)
    report.already_current = sum(m.objects.filter(key_id=ring.active_id).count() for m, _, _ in models_and_aad)
    done = 0
    for model, aad_of, counter in models_and_aad:
        while True:
            ids = list(model.objects.exclude(key_id=ring.active_id).values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            for pk in ids:
                with transaction.atomic():
                    row = model.objects.select_for_update().filter(pk=pk).first()
                    if row is None or row.key_id == ring.active_id:
                        continue
                    aad = aad_of(row)
                    buffer = open_sealed(_sealed_of(row), aad=aad, ring=ring)
                    try:
                        _apply(row, seal(buffer, aad=aad, ring=ring))
                    finally:
                        scrub(buffer)
                    row.save(update_fields=["ciphertext", "iv", "tag", "key_id", "updated_at"])
                setattr(report, counter, getattr(report, counter) + 1)
                done += 1
                if progress:
                    progress(done, total)
    return report
