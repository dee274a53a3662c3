"""Key ring for tenant and channel secrets (AES-256-GCM).

SECRET_KEY_ID + SECRET_ENCRYPTION_KEY (base64 of 32 bytes) is the active key; SECRET_PREVIOUS_KEYS
(``id:base64,id:base64``) lists keys still accepted for reading during a rotation. ``make run``
generates a local key into var/secret_keys.env when none is set, and the local programs read it from
there (config/local.py); anything else without a key stops at start-up with a message naming the
variable.
"""

import os

SECRET_KEY_ID = os.environ.get("SECRET_KEY_ID", "")
SECRET_ENCRYPTION_KEY = os.environ.get("SECRET_ENCRYPTION_KEY", "")
SECRET_PREVIOUS_KEYS = os.environ.get("SECRET_PREVIOUS_KEYS", "")
