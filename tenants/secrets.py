"""SecretService: AES-256-GCM encryption with a key ring, and the tenant's own secrets.

Plaintext only ever exists inside a ``with_*_secret`` callback: the decrypted bytes live in a
bytearray that is overwritten with zeros when the callback returns. (Python cannot scrub the ``str``
handed to the callback; callers must not keep or log it.) Errors name key ids, never values.

This module stores only ``TenantSecret`` rows. An app that keeps encrypted rows of its own (channel
credentials: ``channels_app.secrets``) seals and opens them with ``seal`` / ``open_sealed`` and
registers a ``SecretRepository`` from its ``ready()``, through which ``rotate_secrets`` re-encrypts
them; the base never imports an app above it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction

if TYPE_CHECKING:
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


# --- sealed rows: what every table of encrypted secrets carries -------------------------------------


class SealedRow(Protocol):
    ciphertext: str
    iv: str
    tag: str
    key_id: str


def sealed_of(row: SealedRow) -> Sealed:
    return Sealed(ciphertext=row.ciphertext, iv=row.iv, tag=row.tag, key_id=row.key_id)


def store_sealed(row: SealedRow, sealed: Sealed) -> None:
    """Put ``sealed`` on the row (the caller saves it)."""
    row.ciphertext, row.iv, row.tag, row.key_id = sealed.ciphertext, sealed.iv, sealed.tag, sealed.key_id


@dataclass(frozen=True)
class SecretRepository:
    """A table of sealed rows that an app owns, for rotation to re-encrypt.

    ``model`` has the ``SealedRow`` fields and ``updated_at``; ``aad`` gives a row's associated data,
    which binds its ciphertext to that row (a ciphertext copied to another row fails authentication).
    """

    kind: str  # how the rotation report counts its rows: "tenant", "channel"
    model: type[models.Model]
    aad: Callable[[Any], bytes]


_repositories: dict[str, SecretRepository] = {}


def register_secret_repository(repository: SecretRepository) -> None:
    """Called from the owning app's ``ready()``; registering a kind again replaces it."""
    _repositories[repository.kind] = repository


def secret_repositories() -> list[SecretRepository]:
    return list(_repositories.values())


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


def tenant_secret_aad(tenant_id: UUID, name: str) -> bytes:
    return f"tenant-secret|{tenant_id}|{name}".encode()


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
        store_sealed(row, sealed)
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
    buffer = open_sealed(sealed_of(row), aad=tenant_secret_aad(row.tenant_id, row.name))
    try:
        return fn(buffer.decode())
    finally:
        scrub(buffer)


# --- rotation ------------------------------------------------------------------------------------------


@dataclass
class RotationReport:
    rotated_by_kind: dict[str, int] = field(default_factory=dict)  # every registered kind, in order
    already_current: int = 0

    @property
    def rotated(self) -> int:
        return sum(self.rotated_by_kind.values())


def rotate_secrets(*, batch_size: int = 200, progress: Callable[[int, int], None] | None = None) -> RotationReport:
    """Re-encrypt every secret of every registered repository not under the active key. Idempotent and
    resumable.

    Each row is re-read under ``SELECT ... FOR UPDATE`` and re-encrypted in its own short
    transaction, so a concurrent write (which already uses the active key) is never overwritten with
    stale content, and a crash leaves every row readable (old or new key) to be finished by a re-run.
    """
    ring = key_ring()
    repositories = secret_repositories()
    report = RotationReport(rotated_by_kind={repository.kind: 0 for repository in repositories})
    rows = [repository.model._default_manager for repository in repositories]
    total = sum(manager.exclude(key_id=ring.active_id).count() for manager in rows)
    report.already_current = sum(manager.filter(key_id=ring.active_id).count() for manager in rows)
    done = 0
    for repository, manager in zip(repositories, rows, strict=True):
        while True:
            ids = list(manager.exclude(key_id=ring.active_id).values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            for pk in ids:
                with transaction.atomic():
                    # The model is only known to have the SealedRow fields (see SecretRepository).
                    row: Any = manager.select_for_update().filter(pk=pk).first()
                    if row is None or row.key_id == ring.active_id:
                        continue
                    aad = repository.aad(row)
                    buffer = open_sealed(sealed_of(row), aad=aad, ring=ring)
                    try:
                        store_sealed(row, seal(buffer, aad=aad, ring=ring))
                    finally:
                        scrub(buffer)
                    row.save(update_fields=["ciphertext", "iv", "tag", "key_id", "updated_at"])
                report.rotated_by_kind[repository.kind] += 1
                done += 1
                if progress:
                    progress(done, total)
    return report
