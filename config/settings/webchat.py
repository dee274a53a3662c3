"""Settings for the web chat channel (from the environment; see docs/webchat.md).

Star-imported by ``config/settings/__init__.py``; code reads them as ``settings.NAME``. The defaults
live here and nowhere else.
"""

import os

from config.settings.base import env_int

# Key that signs visitor session tokens (HS256). Empty: derived from SECRET_KEY, so a deployment
# needs nothing extra; set it to rotate web chat tokens without touching SECRET_KEY.
WEBCHAT_JWT_SECRET = os.environ.get("WEBCHAT_JWT_SECRET", "")
# Tokens only open connections; a short life limits what a leaked one is worth.
WEBCHAT_JWT_TTL_SECONDS = env_int("WEBCHAT_JWT_TTL_SECONDS", 600)
WEBCHAT_MAX_MESSAGE_CHARS = env_int("WEBCHAT_MAX_MESSAGE_CHARS", 4000)
# Messages per visitor per minute (fixed window in Redis, shared by all servers).
WEBCHAT_RATE_LIMIT_PER_MINUTE = env_int("WEBCHAT_RATE_LIMIT_PER_MINUTE", 30)
# Messages of the visitor's conversation returned with a session (oldest first).
WEBCHAT_HISTORY_LIMIT = env_int("WEBCHAT_HISTORY_LIMIT", 50)

# Abuse limits (docs/webchat.md "Abuse limits"); the client address is the TCP peer unless
# TRUSTED_PROXY_COUNT says how many proxies' X-Forwarded-For entries to believe (config/settings/ratelimit.py).
# Sessions started per minute from one client address on one widget (new and resumed visitors alike).
WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE = env_int("WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE", 20)
# Sessions started per minute on one widget from every address together.
WEBCHAT_SESSIONS_PER_CHANNEL_PER_MINUTE = env_int("WEBCHAT_SESSIONS_PER_CHANNEL_PER_MINUTE", 600)
# Sockets open at once for one visitor (all tabs, all server processes); the next is closed with 4429.
WEBCHAT_MAX_SOCKETS_PER_VISITOR = env_int("WEBCHAT_MAX_SOCKETS_PER_VISITOR", 10)
