"""Importing the settings reads the environment and does nothing else: no server started, no file
written; a required variable that is missing stops with a message naming it (issue #19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "DJANGO_SECRET_KEY": "x" * 50,
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "SECRET_KEY_ID": "k1",
    "SECRET_ENCRYPTION_KEY": "A" * 43 + "=",
}


def import_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import django; django.setup(); from django.conf import settings; print(settings.DATABASE_URL)"
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED and k != "VAR_DIR"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_the_settings_starts_nothing_and_writes_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    done = import_settings({**REQUIRED, "VAR_DIR": str(var)})

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == REQUIRED["DATABASE_URL"]
    assert not var.exists()  # no key file, no data folder, no embedded server's socket


@pytest.mark.parametrize("missing", ["DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"])
def test_a_missing_required_variable_is_named_and_nothing_is_started(missing: str, tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    done = import_settings({**env, "VAR_DIR": str(var)})

    assert done.returncode != 0
    assert f"ImproperlyConfigured: {missing} is not set" in done.stderr
    assert "make run" in done.stderr  # says how a local checkout gets it
    assert not var.exists()


def test_a_checkouts_programs_read_what_make_run_kept_and_never_make_an_encryption_key(tmp_path: Path) -> None:
    """config.local (manage.py, the benchmarks): the Django key and the encryption key come from var/;
    without an encryption key file none is generated (make run alone does), so the settings name it."""
    from config import local

    var = tmp_path / "var"
    var.mkdir()
    (var / "django_secret_key").write_text("k" * 50)
    env = {"VAR_DIR": str(var), "DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/0"}

    assert local.prepare(env, generate=False, prefer_local_redis=False, say=lambda _m: None) == []
    assert env["DJANGO_SECRET_KEY"] == "k" * 50
    assert "SECRET_ENCRYPTION_KEY" not in env and not (var / "secret_keys.env").exists()

    local.prepare(env, generate=True, prefer_local_redis=False, say=lambda _m: None)  # what make run does
    kept = (var / "secret_keys.env").read_text()
    assert env["SECRET_ENCRYPTION_KEY"] in kept and env["SECRET_KEY_ID"] == "local1"

    again = {k: v for k, v in env.items() if not k.startswith("SECRET_")}
    local.prepare(again, generate=False, prefer_local_redis=False, say=lambda _m: None)
    assert again["SECRET_ENCRYPTION_KEY"] == env["SECRET_ENCRYPTION_KEY"]  # the same key, read back
    done = import_settings({**REQUIRED, **again})
    assert done.returncode == 0, done.stderr[-2000:]
