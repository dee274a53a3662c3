"""Key ring for tenant and channel secrets (AES-256-GCM).

SECRET_KEY_ID + SECRET_ENCRYPTION_KEY (base64 of 32 bytes) is the active key; SECRET_PREVIOUS_KEYS
(``id:base64,id:base64``) lists keys still accepted for reading during a rotation. ``make run``
generates a local key into var/secret_keys.env when none is set; anything else without a key stops
at start-up with a message naming the variable.
"""

import os

from config.embedded import var_dir


def _read_local_keyfile() -> dict[str, str]:
    path = var_dir() / "secret_keys.env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


_local = {} if os.environ.get("SECRET_ENCRYPTION_KEY") else _read_local_keyfile()

SECRET_KEY_ID = os.environ.get("SECRET_KEY_ID") or _local.get("SECRET_KEY_ID", "")
SECRET_ENCRYPTION_KEY = os.environ.get("SECRET_ENCRYPTION_KEY") or _local.get("SECRET_ENCRYPTION_KEY", "")
SECRET_PREVIOUS_KEYS = os.environ.get("SECRET_PREVIOUS_KEYS") or _local.get("SECRET_PREVIOUS_KEYS", "")
