"""Tenant and channel secrets: AES-256-GCM at rest, bound to their row, rotatable, never shown."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from channels_app import secrets as channel_secrets
from channels_app.models import Channel, ChannelSecret
from events.models import Event
from tenants import secrets
from tenants.models import TenantSecret

ROOT = Path(__file__).resolve().parents[2]
CANARY = "sk-CANARY-7f3a9c1e-do-not-leak"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def key_ring_settings(settings):
    """Switch the key ring through settings; the cached ring is reset before and after."""

    def use(active_id: str, active_key: str, previous: str = "") -> None:
        settings.SECRET_KEY_ID, settings.SECRET_ENCRYPTION_KEY, settings.SECRET_PREVIOUS_KEYS = (
            active_id,
            active_key,
            previous,
        )
        secrets.reset_key_ring()

    yield use
    secrets.reset_key_ring()


@pytest.mark.django_db
def test_tenant_secret_round_trip_through_the_callback(tenant):
    secrets.tenant_secret_set(tenant=tenant, name="openai", value=CANARY)

    seen = secrets.with_tenant_secret(tenant=tenant, name="openai", fn=lambda value: value[::-1])

    assert seen == CANARY[::-1]
    row = TenantSecret.objects.get(tenant=tenant, name="openai")
    assert CANARY not in row.ciphertext and CANARY not in repr(row) and CANARY not in str(row)


@pytest.mark.django_db
def test_every_write_uses_a_fresh_nonce(tenant):
    first = secrets.tenant_secret_set(tenant=tenant, name="k", value=CANARY)
    first_iv, first_ct = first.iv, first.ciphertext
    second = secrets.tenant_secret_set(tenant=tenant, name="k", value=CANARY)

    assert len(base64.b64decode(second.iv)) == 12
    assert second.iv != first_iv and second.ciphertext != first_ct


@pytest.mark.django_db
def test_channel_credentials_round_trip_and_merge(tenant):
    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="wa", external_id="111")
    channel_secrets.channel_secret_set(channel=channel, values={"app_secret": CANARY, "access_token": "tok-1"})
    channel_secrets.channel_secret_set(channel=channel, values={"access_token": "tok-2"})

    values = channel_secrets.with_channel_secret(channel=channel, fn=dict)

    assert values == {"app_secret": CANARY, "access_token": "tok-2"}
    assert channel_secrets.channel_secret_names(channel=channel) == ["access_token", "app_secret"]
    assert CANARY not in ChannelSecret.objects.get(channel=channel).ciphertext


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["ciphertext", "tag", "iv"])
def test_tampered_ciphertext_tag_or_iv_is_refused(tenant, field):
    row = secrets.tenant_secret_set(tenant=tenant, name="k", value=CANARY)
    raw = bytearray(base64.b64decode(getattr(row, field)))
    raw[0] ^= 0x01
    TenantSecret.objects.filter(pk=row.pk).update(**{field: base64.b64encode(bytes(raw)).decode()})

    with pytest.raises(secrets.SecretIntegrityError) as error:
        secrets.with_tenant_secret(tenant=tenant, name="k", fn=lambda v: v)
    assert CANARY not in str(error.value)


@pytest.mark.django_db
def test_a_ciphertext_moved_to_another_row_does_not_decrypt(tenant, other_tenant):
    source = secrets.tenant_secret_set(tenant=tenant, name="openai", value=CANARY)
    renamed = secrets.tenant_secret_set(tenant=tenant, name="other", value="x")
    foreign = secrets.tenant_secret_set(tenant=other_tenant, name="openai", value="y")
    for target in (renamed, foreign):
        TenantSecret.objects.filter(pk=target.pk).update(
            ciphertext=source.ciphertext, iv=source.iv, tag=source.tag, key_id=source.key_id
        )

    for tenant_, name in ((tenant, "other"), (other_tenant, "openai")):
        with pytest.raises(secrets.SecretIntegrityError):
            secrets.with_tenant_secret(tenant=tenant_, name=name, fn=lambda v: v)


@pytest.mark.django_db
def test_channel_ciphertext_moved_to_another_channel_is_refused(tenant):
    a = Channel.objects.create(tenant=tenant, type="messenger", name="a", external_id="p1")
    b = Channel.objects.create(tenant=tenant, type="messenger", name="b", external_id="p2")
    channel_secrets.channel_secret_set(channel=a, values={"app_secret": CANARY})
    channel_secrets.channel_secret_set(channel=b, values={"app_secret": "other"})
    sa = ChannelSecret.objects.get(channel=a)
    ChannelSecret.objects.filter(channel=b).update(ciphertext=sa.ciphertext, iv=sa.iv, tag=sa.tag)

    with pytest.raises(secrets.SecretIntegrityError):
        channel_secrets.with_channel_secret(channel=b, fn=dict)


@pytest.mark.django_db
def test_plaintext_canary_written_through_the_api_is_in_neither_database_nor_logs(
    tenant, tenant_api, pg_dump_text, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    put = tenant_api.put(f"/api/tenants/{tenant.pk}/secrets/openai_api_key", {"value": CANARY}, format="json")
    listed = tenant_api.get(f"/api/tenants/{tenant.pk}/secrets/")
    secrets.with_tenant_secret(tenant=tenant, name="openai_api_key", fn=lambda v: logging.getLogger("x").info("used"))

    assert put.status_code == 201
    assert CANARY not in put.content.decode() and CANARY not in listed.content.decode()
    results = listed.json()["results"]
    assert [r["name"] for r in results] == ["openai_api_key"]
    assert set(results[0]) == {"name", "key_id", "created_at", "updated_at"}
    assert Event.objects.for_tenant(tenant).filter(type="secret.updated").count() == 1
    dump = pg_dump_text()
    assert "openai_api_key" in dump  # the dump did capture the row...
    assert CANARY not in dump  # ...but not the value
    assert CANARY not in caplog.text
    out, err = capfd.readouterr()
    assert CANARY not in out and CANARY not in err


@pytest.mark.django_db
def test_secret_update_and_delete_over_the_api(tenant, tenant_api):
    url = f"/api/tenants/{tenant.pk}/secrets/fn_auth"
    created = tenant_api.put(url, {"value": "one"}, format="json")
    replaced = tenant_api.put(url, {"value": "two"}, format="json")
    deleted = tenant_api.delete(url)
    missing = tenant_api.delete(url)

    assert (created.status_code, replaced.status_code, deleted.status_code, missing.status_code) == (201, 200, 204, 404)
    assert not TenantSecret.objects.for_tenant(tenant).exists()


@pytest.mark.django_db
def test_a_tenant_cannot_read_list_write_or_delete_another_tenants_secrets(tenant, other_tenant, api_for):
    secrets.tenant_secret_set(tenant=tenant, name="openai", value=CANARY)
    intruder = api_for(other_tenant)
    base = f"/api/tenants/{tenant.pk}/secrets/"

    answers = [
        intruder.get(base).status_code,
        intruder.put(base + "openai", {"value": "hijack"}, format="json").status_code,
        intruder.delete(base + "openai").status_code,
    ]

    assert answers == [404, 404, 404]
    assert secrets.with_tenant_secret(tenant=tenant, name="openai", fn=lambda v: v) == CANARY
    assert not TenantSecret.objects.for_tenant(other_tenant).exists()


@pytest.mark.django_db
def test_admin_secret_page_never_shows_the_value(client, tenant):
    from django.contrib.auth import get_user_model

    row = secrets.tenant_secret_set(tenant=tenant, name="openai", value=CANARY)
    client.force_login(get_user_model().objects.create_superuser("root", "", "pw-root-123456"))

    page = client.get(f"/admin/tenants/tenantsecret/{row.pk}/change/").content.decode()

    assert "openai" in page and CANARY not in page and row.ciphertext not in page


@pytest.mark.django_db
def test_rotation_moves_every_row_to_the_new_key_and_the_old_key_can_go(tenant, key_ring_settings):
    old, new = new_key(), new_key()
    key_ring_settings("old", old)
    for i in range(5):
        secrets.tenant_secret_set(tenant=tenant, name=f"s{i}", value=f"{CANARY}-{i}")
    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="wa", external_id="42")
    channel_secrets.channel_secret_set(channel=channel, values={"app_secret": CANARY})

    key_ring_settings("new", new, previous=f"old:{old}")
    out = StringIO()
    call_command("rotate_secrets", stdout=out)
    again = StringIO()
    call_command("rotate_secrets", stdout=again)
    key_ring_settings("new", new)  # the old key is removed

    assert set(TenantSecret.objects.values_list("key_id", flat=True)) == {"new"}
    assert ChannelSecret.objects.get(channel=channel).key_id == "new"
    assert "rotated 6 secret(s) (5 tenant, 1 channel)" in out.getvalue()
    assert "rotated 0 secret(s)" in again.getvalue()
    assert secrets.with_tenant_secret(tenant=tenant, name="s3", fn=lambda v: v) == f"{CANARY}-3"
    assert channel_secrets.with_channel_secret(channel=channel, fn=dict) == {"app_secret": CANARY}


@pytest.mark.django_db
def test_rotation_resumes_after_an_interruption(tenant, key_ring_settings):
    old, new = new_key(), new_key()
    key_ring_settings("old", old)
    for i in range(4):
        secrets.tenant_secret_set(tenant=tenant, name=f"s{i}", value=str(i))
    key_ring_settings("new", new, previous=f"old:{old}")

    class Crash(Exception):
        pass

    def crash_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Crash

    with pytest.raises(Crash):
        secrets.rotate_secrets(progress=crash_after_two)
    mixed = sorted(TenantSecret.objects.values_list("key_id", flat=True))
    report = secrets.rotate_secrets()

    assert mixed == ["new", "new", "old", "old"]
    assert report.rotated_by_kind["tenant"] == 2
    assert [secrets.with_tenant_secret(tenant=tenant, name=f"s{i}", fn=lambda v: v) for i in range(4)] == list("0123")


@pytest.mark.django_db
def test_unknown_key_id_is_named_in_the_error(tenant, key_ring_settings):
    key_ring_settings("gone", new_key())
    secrets.tenant_secret_set(tenant=tenant, name="k", value=CANARY)
    key_ring_settings("current", new_key())

    with pytest.raises(secrets.UnknownKeyId, match="'gone'"):
        secrets.with_tenant_secret(tenant=tenant, name="k", fn=lambda v: v)


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"active_id": "k", "active_key": ""}, "SECRET_ENCRYPTION_KEY is not set"),
        ({"active_id": "", "active_key": new_key()}, "SECRET_KEY_ID"),
        ({"active_id": "k", "active_key": "not base64!"}, "SECRET_ENCRYPTION_KEY is not valid base64"),
        ({"active_id": "k", "active_key": base64.b64encode(b"short").decode()}, "exactly 32 bytes"),
        ({"active_id": "k", "active_key": new_key(), "previous": "nocolon"}, "SECRET_PREVIOUS_KEYS"),
        ({"active_id": "k", "active_key": new_key(), "previous": "old:xx"}, "SECRET_PREVIOUS_KEYS (key 'old')"),
    ],
)
def test_malformed_key_configuration_names_the_variable(values, variable):
    with pytest.raises(ImproperlyConfigured, match=variable.replace("(", r"\(").replace(")", r"\)")):
        secrets.load_key_ring(**{"previous": "", **values})


def test_start_up_stops_with_a_clear_message_when_the_key_is_missing():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRET_")}
    env["VAR_DIR"] = str(ROOT / "var" / "no-keys-here")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert "SECRET_ENCRYPTION_KEY is not set" in result.stderr
